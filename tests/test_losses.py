"""The pure loss functions, checked against independent formulas (no fairseq needed)."""
import pytest
import torch
import torch.nn.functional as F

from fairseq_lrdrop import losses
from fairseq_lrdrop.losses import (
    attention_distance,
    hidden_state_distance,
    output_consistency,
    symmetric_kl,
)
from pairs import attention_modules, attention_pair, hidden_layers, hidden_pair, output_pair


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _attention(heads, batch, queries, keys, key_mask=None, seed=0, dtype=torch.float32):
    scores = torch.randn(heads, batch, queries, keys, generator=_gen(seed), dtype=dtype)
    if key_mask is not None:  # B x S, True at real keys
        scores = scores.masked_fill(~key_mask[None, :, None, :], float("-inf"))
    return scores.softmax(-1)


def test_symmetric_kl_matches_torch_kl_div():
    log_p = torch.randn(5, 11, generator=_gen(1)).log_softmax(-1)
    log_q = torch.randn(5, 11, generator=_gen(2)).log_softmax(-1)
    expected = 0.5 * (
        F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1)  # KL(p || q)
        + F.kl_div(log_p, log_q, log_target=True, reduction="none").sum(-1)  # KL(q || p)
    )
    assert torch.allclose(symmetric_kl(log_p, log_q), expected, atol=1e-6)
    assert (expected > 0).all()


def test_output_consistency_sums_real_tokens_only():
    lp1 = torch.randn(6, 9, generator=_gen(3)).log_softmax(-1)
    lp2 = torch.randn(6, 9, generator=_gen(4)).log_softmax(-1)
    mask = torch.tensor([True, True, False, True, False, True])
    per_token = 0.5 * ((lp1.exp() * (lp1 - lp2)).sum(-1) + (lp2.exp() * (lp2 - lp1)).sum(-1))
    assert torch.allclose(output_pair(lp1, lp2, mask), per_token[mask].sum(), atol=1e-6)
    assert output_pair(lp1, lp1, mask).item() == 0.0


def test_hidden_state_distance_is_masked_mean_squared_error():
    h1 = torch.randn(4, 3, 8, generator=_gen(5))  # T x B x C
    h2 = torch.randn(4, 3, 8, generator=_gen(6))
    mask = torch.tensor([[True, True, True, False], [True, True, False, False], [True] * 4])  # B x T
    expected = sum(
        ((h1[t, b] - h2[t, b]) ** 2).mean() for b in range(3) for t in range(4) if mask[b, t]
    )
    assert torch.allclose(hidden_pair(h1, h2, mask), expected, atol=1e-6)
    assert hidden_pair(h1, h1, mask).item() == 0.0


def test_attention_distance_averages_heads_and_sums_queries():
    key_mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    a1 = _attention(3, 2, 4, 5, key_mask, seed=7)
    a2 = _attention(3, 2, 4, 5, key_mask, seed=8)
    query_mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    expected = 0.0
    for b in range(2):
        for t in range(4):
            if query_mask[b, t]:
                keys = key_mask[b]
                p, q = a1[:, b, t, keys], a2[:, b, t, keys]  # H x S_real
                skl = 0.5 * ((p * (p / q).log()).sum(-1) + (q * (q / p).log()).sum(-1))
                expected += skl.mean()
    value = attention_pair(a1, a2, query_mask)
    assert torch.isfinite(value)
    assert torch.allclose(value, torch.as_tensor(expected), atol=1e-5)


def test_consistency_terms_average_over_layers_and_modules():
    mask = torch.ones(2, 3, dtype=torch.bool)
    layers = [(torch.randn(3, 2, 4, generator=_gen(i)), torch.randn(3, 2, 4, generator=_gen(i + 10)), mask)
              for i in range(3)]
    expected = sum(hidden_pair(*layer) for layer in layers) / 3
    assert torch.allclose(hidden_layers(layers), expected)
    modules = [(_attention(2, 2, 3, 3, seed=i), _attention(2, 2, 3, 3, seed=i + 20), mask) for i in range(2)]
    expected = sum(attention_pair(*m) for m in modules) / 2
    assert torch.allclose(attention_modules(modules), expected)


def test_padding_changes_nothing():
    """Extra padded positions (garbage values, mask False) and padded keys change no term."""
    h1, h2 = torch.randn(3, 2, 4, generator=_gen(11)), torch.randn(3, 2, 4, generator=_gen(12))
    mask = torch.ones(2, 3, dtype=torch.bool)
    padded = lambda h: torch.cat([h, 1e4 * torch.randn(2, 2, 4, generator=_gen(13))])  # noqa: E731
    padded_mask = torch.cat([mask, torch.zeros(2, 2, dtype=torch.bool)], dim=1)
    assert torch.allclose(hidden_pair(h1, h2, mask),
                          hidden_pair(padded(h1), padded(h2), padded_mask))

    a1, a2 = _attention(2, 2, 3, 3, seed=14), _attention(2, 2, 3, 3, seed=15)
    # two padded keys (probability 0) and two padded queries (anything, here uniform)
    pad_keys = lambda a: torch.cat([a, torch.zeros(2, 2, 3, 2)], dim=-1)  # noqa: E731
    pad_queries = lambda a: torch.cat([a, torch.full((2, 2, 2, 5), 0.2)], dim=2)  # noqa: E731
    a1p, a2p = pad_queries(pad_keys(a1)), pad_queries(pad_keys(a2))
    assert torch.allclose(attention_pair(a1, a2, mask), attention_pair(a1p, a2p, padded_mask))

    lp1, lp2 = torch.randn(4, 7, generator=_gen(16)).log_softmax(-1), torch.randn(4, 7, generator=_gen(17)).log_softmax(-1)
    tokens = torch.ones(4, dtype=torch.bool)
    garbage = torch.full((3, 7), -1e4)
    assert torch.allclose(output_pair(lp1, lp2, tokens),
                          output_pair(torch.cat([lp1, garbage]), torch.cat([lp2, garbage * 2]),
                                             torch.cat([tokens, torch.zeros(3, dtype=torch.bool)])))


def test_gradcheck_float64():
    g = _gen(21)
    h1 = torch.randn(3, 2, 4, dtype=torch.float64, generator=g, requires_grad=True)
    h2 = torch.randn(3, 2, 4, dtype=torch.float64, generator=g, requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    assert torch.autograd.gradcheck(lambda a, b: hidden_layers([(a, b, mask)]), (h1, h2))

    s1 = torch.randn(2, 2, 3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    s2 = torch.randn(2, 2, 3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b: attention_modules([(a.softmax(-1), b.softmax(-1), mask)]), (s1, s2))

    z1 = torch.randn(5, 6, dtype=torch.float64, generator=g, requires_grad=True)
    z2 = torch.randn(5, 6, dtype=torch.float64, generator=g, requires_grad=True)
    tokens = torch.tensor([True, False, True, True, True])
    assert torch.autograd.gradcheck(
        lambda a, b: output_pair(a.log_softmax(-1), b.log_softmax(-1), tokens), (z1, z2))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_give_finite_float32_terms(dtype):
    mask = torch.ones(2, 3, dtype=torch.bool)
    h1 = (300 * torch.randn(3, 2, 8, generator=_gen(30))).to(dtype)  # squares overflow float16
    h2 = (300 * torch.randn(3, 2, 8, generator=_gen(31))).to(dtype)
    hidden = hidden_layers([(h1, h2, mask)])
    attn = attention_modules([(_attention(2, 2, 3, 3, seed=32).to(dtype),
                                   _attention(2, 2, 3, 3, seed=33).to(dtype), mask)])
    logits = (1e4 * torch.randn(6, 5, generator=_gen(34))).to(dtype)
    out = output_pair(logits.float().log_softmax(-1).to(dtype),
                             (-logits).float().log_softmax(-1).to(dtype), torch.ones(6, dtype=torch.bool))
    for value in (hidden, attn, out):
        assert value.dtype == torch.float32
        assert torch.isfinite(value) and value > 0


def test_attention_gradient_with_masked_keys_matches_plain_autograd():
    """The hand-written backward (probabilities with exact zeros) gives the gradient that
    autograd gives for the same divergence written over the real keys only."""
    key_mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    causal = torch.ones(3, 4, dtype=torch.bool).tril()  # query t sees keys <= t
    visible = key_mask[None, :, None, :] & causal[None, None]  # 1 x B x T x S
    scores = torch.randn(2, 4, 3, 4, dtype=torch.float64, generator=_gen(40), requires_grad=True)
    probs = scores.masked_fill(~visible.repeat(1, 2, 1, 1), float("-inf")).softmax(-1)
    query_mask = torch.tensor([[True, True, False], [True, True, True]])
    attention_distance(probs, query_mask).backward()
    ours = scores.grad.clone()

    scores.grad = None
    probs = scores.masked_fill(~visible.repeat(1, 2, 1, 1), float("-inf")).softmax(-1)
    p, q = probs.chunk(2, dim=1)
    safe_log = lambda x: x.masked_fill(~visible, 1.0).log()  # noqa: E731  (0 * log 0 := 0)
    log_ratio = safe_log(p) - safe_log(q)
    kl = 0.5 * ((p - q) * log_ratio).sum(-1).mean(0)
    kl.masked_select(query_mask).sum().backward()
    assert torch.allclose(ours, scores.grad, atol=1e-12)
    assert ours.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_gradients_keep_the_input_dtype(dtype):
    states = torch.randn(3, 4, 8, generator=_gen(41)).to(dtype).requires_grad_()
    lprobs = torch.randn(6, 5, generator=_gen(42)).log_softmax(-1).to(dtype).requires_grad_()
    mask = torch.ones(2, 3, dtype=torch.bool)
    (hidden_state_distance(states, mask) + output_consistency(lprobs, torch.ones(3, dtype=torch.bool))).backward()
    first, second = states.grad.chunk(2, dim=1)
    assert states.grad.dtype == dtype and lprobs.grad.dtype == dtype
    assert torch.equal(first, -second) and first.abs().sum() > 0
    expected = (2 / 8) * (states[:, :2] - states[:, 2:]).float()  # d/dh1 of the mean square
    assert torch.allclose(first.float(), expected, atol=1e-2)


def test_second_derivatives_are_refused_not_wrong():
    """The hand-written backward passes are first-order only: asking for a second derivative
    raises instead of silently dropping terms."""
    states = torch.randn(1, 2, 4, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(hidden_state_distance(states, torch.tensor([[True]])), states, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(grad[0, 0, 0], states)


def test_output_term_in_row_blocks_matches_plain_autograd(monkeypatch):
    """On CPU the output term runs over blocks of rows; with blocks of 3 rows (7 rows: a
    remainder block too) its value and gradient are those of the plain formula."""
    monkeypatch.setattr(losses, "_CPU_BLOCK_ELEMENTS", 3 * 11)
    logits = torch.randn(14, 11, dtype=torch.float64, generator=_gen(50), requires_grad=True)
    mask = torch.tensor([True, True, False, True, True, True, False])
    upstream = torch.rand(7, dtype=torch.float64, generator=_gen(51))  # varies per row
    ours = output_consistency(logits.log_softmax(-1), mask)
    (ours * 3).backward()
    ours_grad = logits.grad.clone()

    logits.grad = None
    log_p, log_q = logits.log_softmax(-1).chunk(2)
    plain = (0.5 * ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(-1))[mask].sum()
    (plain * 3).backward()
    assert torch.allclose(ours, plain, atol=1e-12) and ours > 0
    assert torch.allclose(ours_grad, logits.grad, atol=1e-12)
    assert len(list(losses._row_blocks(7, 11, torch.device("cpu")))) == 3
    # per-row upstream gradients reach the right rows of both halves
    lprobs = logits.detach().log_softmax(-1).requires_grad_()
    (losses._SymmetricKL.apply(lprobs) * upstream).sum().backward()
    lp = logits.detach().log_softmax(-1).requires_grad_()
    a, b = lp.chunk(2)
    (0.5 * ((a.exp() - b.exp()) * (a - b)).sum(-1) * upstream).sum().backward()
    assert torch.allclose(lprobs.grad, lp.grad, atol=1e-12)


def test_attention_squared_distance_sums_keys_averages_heads_and_ignores_padding():
    """--attn-distance mse: sum over keys of (A1 - A2)^2, mean over heads, summed over real
    queries; padded keys (probability 0 in both passes) and padded queries change nothing."""
    key_mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    a1 = _attention(3, 2, 4, 5, key_mask, seed=7)
    a2 = _attention(3, 2, 4, 5, key_mask, seed=8)
    query_mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    expected = sum(((a1[:, b, t] - a2[:, b, t]) ** 2).sum(-1).mean()
                   for b in range(2) for t in range(4) if query_mask[b, t])
    value = losses.attention_squared_distance(torch.cat([a1, a2], 1), query_mask)
    assert torch.allclose(value, torch.as_tensor(expected), atol=1e-6) and value > 0
    pad_keys = lambda a: torch.cat([a, torch.zeros(3, 2, 4, 3)], dim=-1)  # noqa: E731
    assert torch.allclose(value, losses.attention_squared_distance(torch.cat([pad_keys(a1), pad_keys(a2)], 1),
                                                                   query_mask), atol=1e-6)
    assert losses.ATTENTION_DISTANCES == {"skl": losses.attention_distance, "mse": losses.attention_squared_distance}
    modules = [(torch.cat([a1, a2], 1), query_mask), (torch.cat([a2, a1], 1), query_mask)]
    assert torch.allclose(losses.attention_consistency(modules, losses.attention_squared_distance), value)
