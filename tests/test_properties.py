"""Property-based tests (hypothesis) of the pure consistency terms in fairseq_lrdrop.losses:
for any small shapes and values, every term is non-negative, symmetric in the two passes,
exactly 0 for identical passes, finite (with finite gradients) for extreme logits, all-padding
rows and one-token sequences, and unchanged by padding."""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fairseq_lrdrop.losses import symmetric_kl
from pairs import attention_modules, attention_pair, hidden_layers, hidden_pair, output_pair

SETTINGS = settings(max_examples=50, deadline=None)
SCALES = st.sampled_from([1.0, 30.0, 1e4])  # 1e4: logits whose softmax underflows to exact 0s
# Values at padded positions: finite, but 1e30 overflows to inf once squared or exponentiated,
# so masking must select (torch.where), not multiply by 0.
JUNK = st.sampled_from([1e4, 1e30])
DTYPES = st.sampled_from([torch.float32, torch.float64])


def _randn(seed, *shape, scale=1.0, dtype=torch.float32):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale
    if scale >= 1e4:  # some entries exactly at the extremes
        x[x.abs() > scale] = x[x.abs() > scale].sign() * scale
    return x.to(dtype)


def _mask(seed, *shape, all_false_row=False):
    mask = torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) < 0.7
    mask[..., 0] = True  # at least the first position is real ...
    if all_false_row:
        mask[0] = False  # ... except in one fully padded row (or everything, if 1-D)
    return mask


def _attention(seed, heads, batch, queries, keys, key_mask, scale, dtype):
    """H x B x T x S softmax probabilities; padded keys (key_mask False) get exactly 0."""
    scores = _randn(seed, heads, batch, queries, keys, scale=scale, dtype=dtype)
    return scores.masked_fill(~key_mask[None, :, None, :], float("-inf")).softmax(-1)


def _check_pair(term, a, b):
    """Non-negative, finite, symmetric in the passes, exactly 0 for identical passes."""
    ab, ba = term(a, b), term(b, a)
    assert torch.isfinite(ab) and ab.item() >= 0, ab
    assert torch.equal(ab, ba), (ab, ba)
    assert term(a, a).item() == 0.0 and term(b, b).item() == 0.0
    return ab


# ----- symmetric KL and the output term (R-Drop's) -----

@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 6), vocab=st.integers(1, 7), scale=SCALES,
       dtype=DTYPES, pad_rows=st.integers(0, 4), all_padding=st.booleans(), junk_scale=JUNK)
def test_output_consistency_properties(seed, n, vocab, scale, dtype, pad_rows, all_padding, junk_scale):
    logits1 = _randn(seed, n, vocab, scale=scale, dtype=dtype).requires_grad_()
    logits2 = _randn(seed + 1, n, vocab, scale=scale, dtype=dtype).requires_grad_()
    lp1, lp2 = logits1.log_softmax(-1), logits2.log_softmax(-1)
    mask = _mask(seed, n, all_false_row=all_padding)

    value = _check_pair(lambda a, b: output_pair(a, b, mask), lp1, lp2)
    assert value.dtype == torch.promote_types(dtype, torch.float32)
    if not mask.any():
        assert value.item() == 0.0
    value.backward()
    assert torch.isfinite(logits1.grad).all() and torch.isfinite(logits2.grad).all()

    # padding: extra rows with mask False and arbitrary finite (even unnormalized) values
    junk = _randn(seed + 2, 2, pad_rows, vocab, scale=junk_scale, dtype=dtype)
    padded = output_pair(torch.cat([lp1, junk[0]]), torch.cat([lp2, junk[1]]),
                                torch.cat([mask, torch.zeros(pad_rows, dtype=torch.bool)]))
    assert torch.allclose(padded, value, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=0)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), vocab=st.integers(1, 9), scale=SCALES)
def test_symmetric_kl_is_a_symmetric_nonnegative_divergence(seed, vocab, scale):
    lp = _randn(seed, 3, vocab, scale=scale).log_softmax(-1)
    lq = _randn(seed + 1, 3, vocab, scale=scale).log_softmax(-1)
    pq, qp = symmetric_kl(lp, lq), symmetric_kl(lq, lp)
    assert torch.isfinite(pq).all() and (pq >= 0).all()
    assert torch.equal(pq, qp)
    assert (symmetric_kl(lp, lp) == 0).all()


# ----- hidden states -----

@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), t=st.integers(1, 5), b=st.integers(1, 3), c=st.integers(1, 6),
       scale=SCALES, dtype=DTYPES, extra_t=st.integers(0, 3), all_padding=st.booleans(), junk_scale=JUNK)
def test_hidden_state_distance_properties(seed, t, b, c, scale, dtype, extra_t, all_padding, junk_scale):
    h1 = _randn(seed, t, b, c, scale=scale, dtype=dtype).requires_grad_()
    h2 = _randn(seed + 1, t, b, c, scale=scale, dtype=dtype).requires_grad_()
    mask = _mask(seed, b, t, all_false_row=all_padding)

    value = _check_pair(lambda x, y: hidden_pair(x, y, mask), h1, h2)
    value.backward()
    assert torch.isfinite(h1.grad).all() and torch.isfinite(h2.grad).all()

    # padding: extra time steps and one extra, fully padded sentence, arbitrary finite values
    junk = _randn(seed + 2, 2, t + extra_t, b + 1, c, scale=junk_scale, dtype=dtype)
    junk[:, :t, :b] = torch.stack([h1.detach(), h2.detach()])
    big_mask = torch.zeros(b + 1, t + extra_t, dtype=torch.bool)
    big_mask[:b, :t] = mask
    padded = hidden_pair(junk[0], junk[1], big_mask)
    assert torch.allclose(padded, value, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=0)

    # L_HSR is the mean over layers, symmetric in the passes too
    layers = [(h1, h2, mask), (h2.detach() * 0.5, h1.detach(), mask)]
    swapped = [(y, x, m) for x, y, m in layers]
    total = hidden_layers(layers)
    assert torch.equal(total, hidden_layers(swapped)) and total.item() >= 0
    assert hidden_layers([(x, x, m) for x, _, m in layers]).item() == 0.0


# ----- attention -----

@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), heads=st.integers(1, 3), b=st.integers(1, 3),
       t=st.integers(1, 4), s=st.integers(1, 5), scale=SCALES, dtype=DTYPES,
       extra_s=st.integers(0, 3), extra_t=st.integers(0, 3), all_padding=st.booleans())
def test_attention_distance_properties(seed, heads, b, t, s, scale, dtype, extra_s, extra_t, all_padding):
    key_mask = _mask(seed + 5, b, s)  # every sentence keeps >= 1 real key, as in fairseq
    scores1 = _randn(seed, heads, b, t, s, scale=scale, dtype=dtype).requires_grad_()
    scores2 = _randn(seed + 1, heads, b, t, s, scale=scale, dtype=dtype).requires_grad_()
    to_probs = lambda x: x.masked_fill(~key_mask[None, :, None, :], float("-inf")).softmax(-1)  # noqa: E731
    a1, a2 = to_probs(scores1), to_probs(scores2)
    query_mask = _mask(seed + 6, b, t, all_false_row=all_padding)

    value = _check_pair(lambda x, y: attention_pair(x, y, query_mask), a1, a2)
    value.backward()
    assert torch.isfinite(scores1.grad).all() and torch.isfinite(scores2.grad).all()

    # padding: extra keys with probability exactly 0 in both passes, extra query positions
    # holding arbitrary distributions with query_mask False, one extra fully padded sentence
    def pad(probs, seed_):
        out = _attention(seed_, heads, b + 1, t + extra_t, s + extra_s,
                         torch.ones(b + 1, s + extra_s, dtype=torch.bool), 1e4, dtype)
        out[:, :b, :t, :] = 0.0
        out[:, :b, :t, :s] = probs.detach()
        return out
    big_mask = torch.zeros(b + 1, t + extra_t, dtype=torch.bool)
    big_mask[:b, :t] = query_mask
    padded = attention_pair(pad(a1, seed + 2), pad(a2, seed + 3), big_mask)
    assert torch.allclose(padded, value, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=0)

    # L_MHAR is the mean over modules, symmetric in the passes too
    modules = [(a1.detach(), a2.detach(), query_mask), (a2.detach(), a2.detach().flip(0), query_mask)]
    total = attention_modules(modules)
    assert torch.equal(total, attention_modules([(y, x, m) for x, y, m in modules]))
    assert torch.isfinite(total) and total.item() >= 0
    assert attention_modules([(x, x, m) for x, _, m in modules]).item() == 0.0


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), b=st.integers(1, 3), c=st.integers(1, 4), heads=st.integers(1, 3),
       vocab=st.integers(1, 5), scale=SCALES)
def test_one_token_sequences(seed, b, c, heads, vocab, scale):
    """T = S = 1: one real position per sentence. Attention over a single key is the
    distribution [1], so the attention term is exactly 0 whatever the scores."""
    one = torch.ones(b, 1, dtype=torch.bool)
    h1, h2 = _randn(seed, 1, b, c, scale=scale), _randn(seed + 1, 1, b, c, scale=scale)
    assert torch.isfinite(_check_pair(lambda x, y: hidden_pair(x, y, one), h1, h2))
    a1 = _attention(seed, heads, b, 1, 1, one, scale, torch.float32)
    a2 = _attention(seed + 1, heads, b, 1, 1, one, scale, torch.float32)
    assert attention_pair(a1, a2, one).item() == 0.0
    lp1 = _randn(seed, b, vocab, scale=scale).log_softmax(-1)
    lp2 = _randn(seed + 1, b, vocab, scale=scale).log_softmax(-1)
    assert torch.isfinite(_check_pair(lambda x, y: output_pair(x, y, one[:, 0]), lp1, lp2))
