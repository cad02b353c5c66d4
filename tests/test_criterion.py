"""The criterion and the model variants in-process, on real fairseq models and batches."""
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import batch, build, criterion_cfg, perturb_second_pass

from fairseq_lrdrop.errors import UsageError
from fairseq_lrdrop.modules.layer_states import LayerStateRequest, layer_stacks, recording_layer_states

TERMS = ("hidden_reg", "attn_reg", "output_reg")


def _loss(criterion, model, sample, seed=123):
    torch.manual_seed(seed)  # the same dropout masks for every criterion compared
    return criterion(model, sample)


@pytest.mark.parametrize("extra", [
    [],
    ["--share-decoder-input-output-embed", "--report-accuracy"],
    ["--ignore-prefix-size", "1", "--sentence-avg", "--report-accuracy"],
])
def test_all_weights_zero_equals_stock_label_smoothed_cross_entropy(data_bin, extra):
    """Plain training through the plugin (the fused head, one pass) gives stock's loss, logged
    values and gradients on the same dropout masks; validation is stock's code."""
    zero = ["--hidden-reg-weight", "0", "--attn-reg-weight", "0", "--output-reg-weight", "0"]
    task, model, lrdrop = build(data_bin, dropout=0.1, extra=[*zero, *extra])
    stock_fields = {"ignore_prefix_size": int("--ignore-prefix-size" in extra),
                    "sentence_avg": "--sentence-avg" in extra, "report_accuracy": "--report-accuracy" in extra}
    stock = task.build_criterion(criterion_cfg("label_smoothed_cross_entropy", **stock_fields))
    sample = batch(task, "train", size=8)
    model.train()
    results = []
    for criterion in (lrdrop, stock):
        model.zero_grad()
        loss, size, log = _loss(criterion, model, sample)
        loss.backward()
        results.append((loss.detach(), size, log, [p.grad.clone() for p in model.parameters()]))
    (loss, size, log, grads), (ref_loss, ref_size, ref_log, ref_grads) = results
    assert size == ref_size == (8 if "--sentence-avg" in extra else sample["ntokens"])
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log["loss"], ref_log["loss"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log["nll_loss"], ref_log["nll_loss"], rtol=1e-5, atol=1e-5)
    assert float(loss) > 0 and not any(term in log for term in TERMS)
    if "--report-accuracy" in extra:
        assert (log["n_correct"], log["total"]) == (ref_log["n_correct"], ref_log["total"])
        assert log["total"] == sample["target"][:, stock_fields["ignore_prefix_size"]:].ne(task.target_dictionary.pad()).sum()
    for mine, theirs in zip(grads, ref_grads):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6)
    model.eval()
    assert torch.equal(lrdrop(model, sample)[0], stock(model, sample)[0])


def test_output_term_only_is_r_drop(data_bin):
    """gamma only: fairseq's own R-Drop criterion gives the same loss and gradients on the same
    dropout masks, and so does R-Drop's formula written out independently."""
    gamma = 3.0
    task, model, lrdrop = build(data_bin, dropout=0.2, extra=[
        "--hidden-reg-weight", "0", "--attn-reg-weight", "0", "--output-reg-weight", str(gamma)])
    rdrop = task.build_criterion(criterion_cfg("label_smoothed_cross_entropy_with_rdrop", rdrop_alpha=gamma))
    sample = batch(task, size=6)
    model.train()

    loss, _, log = _loss(lrdrop, model, sample)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ref_loss, _, ref_log = _loss(rdrop, model, {**sample, "net_input": dict(sample["net_input"])})
    ref_loss.backward()
    assert torch.allclose(loss, ref_loss, rtol=1e-5)
    assert torch.allclose(log["output_reg"], torch.as_tensor(ref_log["rdrop_kl_loss"]), rtol=1e-4)
    for mine, ref in zip(grads, (p.grad for p in model.parameters())):
        assert torch.allclose(mine, ref, rtol=1e-4, atol=1e-6)  # k_proj biases: 0 up to noise
    # the logged loss is per pass (stock scale), R-Drop's own log line is doubled
    assert math.isclose(float(log["loss"]), (float(ref_log["loss"]) - gamma * ref_log["rdrop_kl_loss"]) / 2, rel_tol=1e-4)

    # independent formula: CE of both passes + gamma * symmetric KL over real target tokens
    torch.manual_seed(123)
    net_input = {k: torch.cat([v, v]) for k, v in sample["net_input"].items()}
    lprobs = model.get_normalized_probs(model(**net_input), log_probs=True)
    target = torch.cat([sample["target"]] * 2)
    real = target.ne(task.target_dictionary.pad())
    eps, vocab = 0.1, lprobs.size(-1)
    nll = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    smooth = -lprobs.sum(-1)
    eps_i = eps / (vocab - 1)
    ce = ((1 - eps - eps_i) * nll + eps_i * smooth)[real].sum()
    p, q = lprobs.chunk(2)
    kl = 0.5 * (F.kl_div(q, p, log_target=True, reduction="none").sum(-1)
                + F.kl_div(p, q, log_target=True, reduction="none").sum(-1))
    assert torch.allclose(loss, ce + gamma * kl[real[: len(p)]].sum(), rtol=1e-5)


@pytest.mark.parametrize("arch", ["lr_drop_transformer", "lr_drop_bart_base"])
def test_terms_vanish_without_dropout_and_are_positive_with_it(data_bin, arch):
    extra = ["--share-all-embeddings"] if "bart" in arch else []
    for dropout in (0.0, 0.3):
        task, model, criterion = build(data_bin, arch=arch, dropout=dropout, extra=extra)
        model.train()
        _, _, log = _loss(criterion, model, batch(task))
        for term in TERMS:
            value = float(log[term])
            if dropout == 0:
                assert abs(value) < 1e-4, (term, value)
            else:
                assert value > 1e-3, (term, value)


def test_gradients_reach_every_parameter(data_bin):
    task, model, criterion = build(data_bin, dropout=0.2)
    model.train()
    loss, _, _ = _loss(criterion, model, batch(task))
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name
    # each regularization term alone also reaches the encoder
    for flags in (["--hidden-reg-weight", "1", "--attn-reg-weight", "0"],
                  ["--hidden-reg-weight", "0", "--attn-reg-weight", "1"]):
        task, model, criterion = build(data_bin, dropout=0.2, extra=flags + ["--output-reg-weight", "0", "--label-smoothing", "0"])
        model.train()
        sample = batch(task)
        torch.manual_seed(5)
        net_input = {k: torch.cat([v, v]) for k, v in sample["net_input"].items()}
        request = criterion.layer_state_request(model)
        out = model(**net_input, layer_states=request)
        terms = criterion.consistency_terms(None, None, out[1]["layer_states"], sample["net_input"])
        (reg,) = terms.values()
        reg.backward()
        assert model.encoder.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", ["lr_drop_transformer", "lr_drop_bart_base"])
def test_padding_changes_no_loss_term(data_bin, arch):
    """Encoder-decoder families (the decoder-only and encoder-only ones: test_families.py)."""
    extra = ["--share-all-embeddings"] if "bart" in arch else []
    task, model, criterion = build(data_bin, arch=arch, dropout=0.0, extra=["--report-accuracy", *extra])
    perturb_second_pass(model.encoder.embed_tokens, model.decoder.embed_tokens)
    model.train()
    sample = batch(task, size=4)
    pad = task.source_dictionary.pad()
    extra = 3
    padded = {
        **sample,
        "net_input": {
            "src_tokens": F.pad(sample["net_input"]["src_tokens"], (extra, 0), value=pad),  # left-padded
            "src_lengths": sample["net_input"]["src_lengths"],
            "prev_output_tokens": F.pad(sample["net_input"]["prev_output_tokens"], (0, extra), value=pad),
        },
        "target": F.pad(sample["target"], (0, extra), value=pad),
    }
    loss, _, log = _loss(criterion, model, sample)
    padded_loss, _, padded_log = _loss(criterion, model, padded)
    assert torch.allclose(loss, padded_loss, rtol=1e-4)
    for key in ("loss", "nll_loss", *TERMS):
        assert float(log[key]) > 0
        assert math.isclose(float(log[key]), float(padded_log[key]), rel_tol=1e-4), key
    assert log["n_correct"] == padded_log["n_correct"] and log["total"] == padded_log["total"]


def test_eval_is_one_stock_pass(data_bin):
    from fairseq.models.transformer import TransformerModel

    task, model, criterion = build(data_bin, dropout=0.3)
    stock = TransformerModel.build_model(model.args if hasattr(model, "args") else model.cfg, task)
    stock.load_state_dict(model.state_dict())
    model.eval(), stock.eval()
    sample = batch(task)

    calls = []
    model.register_forward_pre_hook(lambda m, args, kwargs: calls.append(kwargs), with_kwargs=True)
    attention_calls = {id(model): [], id(stock): []}
    for net in (model, stock):
        for name, module in net.named_modules():
            if type(module).__name__ == "MultiheadAttention":
                module.register_forward_pre_hook(
                    lambda m, a, kw, name=name, calls=attention_calls[id(net)]: calls.append(
                        (name, {k: v for k, v in kw.items() if not torch.is_tensor(v)})),
                    with_kwargs=True)
    with torch.no_grad():
        loss, _, log = criterion(model, sample)
        stock_logits, stock_extra = stock(**sample["net_input"])
        logits, extra = model(**sample["net_input"])
    assert len(calls) == 2 and all("layer_states" not in c for c in calls)
    assert calls[0]["src_tokens"].size(0) == sample["target"].size(0)  # no [x; x]
    # exactly the stock attention calls: fused self-attention, no per-head maps requested
    assert attention_calls[id(model)] == attention_calls[id(stock)] * 2  # criterion + direct call
    assert torch.equal(logits, stock_logits) and "layer_states" not in extra
    ref = task.build_criterion(criterion_cfg("label_smoothed_cross_entropy"))
    with torch.no_grad():
        ref_loss, _, _ = ref(stock, sample)
    assert torch.equal(loss, ref_loss) and not any(t in log for t in TERMS)


def test_training_forward_returns_every_layer(data_bin):
    task, model, criterion = build(data_bin, arch="lr_drop_bart_base", extra=["--share-all-embeddings"])
    model.train()
    sample = batch(task, size=3)
    request = LayerStateRequest(encoder_layers=(0, 1), decoder_layers=(0, 1),
                                attention_modules=("encoder_self", "decoder_self", "decoder_cross"))
    logits, extra = model(**sample["net_input"], layer_states=request)
    states = extra["layer_states"]
    bsz, src_len = sample["net_input"]["src_tokens"].shape
    tgt_len = sample["target"].size(1)
    assert sorted(states.encoder_hidden) == [0, 1] and sorted(states.decoder_hidden) == [0, 1]
    assert states.encoder_hidden[1].shape == (src_len, bsz, 32)
    assert states.attention["encoder_self"][0].shape == (4, bsz, src_len, src_len)
    assert states.attention["decoder_self"][1].shape == (4, bsz, tgt_len, tgt_len)
    cross = states.attention["decoder_cross"][1]
    assert cross.shape == (4, bsz, tgt_len, src_len) and cross.dtype == torch.float32
    assert torch.allclose(cross.sum(-1), torch.ones(4, bsz, tgt_len), atol=1e-5)
    # the decoder's own alignment output is still the head-averaged cross attention
    assert torch.allclose(extra["attn"][0], cross.mean(0), atol=1e-6)
    # hooks are gone afterwards: no MultiheadAttention keeps a hook
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_only_chosen_layers_and_modules_are_recorded(data_bin):
    task, model, criterion = build(data_bin, dropout=0.2, extra=[
        "--reg-encoder-layers", "1", "--reg-decoder-layers", "none", "--attn-reg-modules", "encoder_self"])
    model.train()
    request = criterion.layer_state_request(model)
    assert request == LayerStateRequest(encoder_layers=(1,), decoder_layers=(), hidden_states=True,
                                        attention_modules=("encoder_self",), attention_maps="blockwise")
    _, _, log = _loss(criterion, model, batch(task))
    assert float(log["hidden_reg"]) > 0 and float(log["attn_reg"]) > 0


@pytest.mark.parametrize("dtype, close", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
def test_half_precision_states_give_float32_terms(data_bin, dtype, close):
    """Terms from half-precision states and log-probabilities (as --fp16 / --bf16 models give
    them) are float32 and equal the terms of the same rounded values converted to float32
    first: to float32 rounding (1e-5), except L_HSR, whose h1 - h2 is taken in the states'
    dtype (exact for near-equal values; within the dtype's epsilon). Against the unrounded
    float32 states they differ only by the inputs' rounding (float16: 2e-3, bfloat16: 2e-2,
    relative; measured at most 4e-5 and 6e-4)."""
    task, model, criterion = build(data_bin, dropout=0.3, extra=["--attn-reg-maps", "keep"])  # reads the maps
    model.train()
    sample = batch(task)
    torch.manual_seed(0)
    net_input = {k: torch.cat([v, v]) for k, v in sample["net_input"].items()}
    out = model(**net_input, layer_states=criterion.layer_state_request(model))
    lprobs = model.get_normalized_probs(out, log_probs=True).view(-1, out[0].size(-1)).detach()
    target = torch.cat([sample["target"]] * 2).view(-1)
    states = out[1]["layer_states"]
    # what a half-precision model records in its dtype: hidden states and attention maps
    stores = [states.encoder_hidden, states.decoder_hidden, *states.attention.values()]
    float32 = [{key: value.detach() for key, value in store.items()} for store in stores]
    assert sum(map(len, float32)) > 0

    def terms_from(convert):
        for store, values in zip(stores, float32):
            store.update({key: convert(value) for key, value in values.items()})
        return criterion.consistency_terms(convert(lprobs), target, states, sample["net_input"])

    reference = terms_from(lambda x: x)
    half = terms_from(lambda x: x.to(dtype))
    rounded = terms_from(lambda x: x.to(dtype).float())
    assert set(half) == set(TERMS)
    for name in TERMS:
        assert half[name].dtype == torch.float32 and reference[name] > 0
        same = torch.finfo(dtype).eps if name == "hidden_reg" else 1e-5
        torch.testing.assert_close(half[name], rounded[name], rtol=same, atol=0, msg=name)
        torch.testing.assert_close(half[name], reference[name], rtol=close, atol=0, msg=name)
        if name != "attn_reg":  # (the attention rows may be reduced inside the modules, in float32)
            assert not torch.equal(rounded[name], reference[name]), name  # the inputs were rounded


def test_sample_is_not_modified(data_bin):
    task, model, criterion = build(data_bin, dropout=0.1)
    model.train()
    sample = batch(task)
    before = {k: v.clone() for k, v in sample["net_input"].items()}
    target = sample["target"].clone()
    criterion(model, sample)
    assert all(torch.equal(before[k], sample["net_input"][k]) for k in before)
    assert torch.equal(target, sample["target"])


@pytest.mark.parametrize("flags, message", [
    (["--hidden-reg-weight", "-1"], "--hidden-reg-weight must be a finite number >= 0"),
    (["--attn-reg-weight", "nan"], "--attn-reg-weight must be a finite number >= 0"),
    (["--output-reg-weight", "inf"], "--output-reg-weight must be a finite number >= 0"),
    (["--attn-reg-modules", "encoder_self,decoder_selff"], "--attn-reg-modules: unknown module 'decoder_selff'"),
    (["--reg-encoder-layers", "0,x"], "--reg-encoder-layers takes 'all', 'none'"),
])
def test_bad_flags_are_rejected_at_start(data_bin, flags, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        build(data_bin, extra=flags)


def test_layer_out_of_range_and_stock_model_are_rejected_before_training(data_bin):
    task, model, criterion = build(data_bin, extra=["--reg-decoder-layers", "0,2"])
    model.train()
    with pytest.raises(UsageError, match="--reg-decoder-layers: layer 2 is out of range, the model has 2 layers"):
        criterion(model, batch(task))
    task, model, criterion = build(data_bin, arch="transformer")
    model.train()
    with pytest.raises(UsageError, match=r"use --arch lr_drop_<stock arch name> \(lr_drop_transformer, "):
        criterion(model, batch(task))
    # the output term alone (R-Drop) needs no layer states: any model works, the fused head
    # running on the stock model's features after its forward (outside DDP), as unfused
    r_drop = ["--hidden-reg-weight", "0", "--attn-reg-weight", "0"]
    task, model, criterion = build(data_bin, arch="transformer", extra=r_drop)
    unfused = build(data_bin, arch="transformer", extra=[*r_drop, "--no-fused-output-head"])[2]
    model.train()
    (loss, _, log), (ref_loss, _, ref_log) = (_loss(c, model, batch(task)) for c in (criterion, unfused))
    assert float(log["output_reg"]) > 0
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log["output_reg"], ref_log["output_reg"], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("arch", ["lr_drop_transformer", "lr_drop_bart_base"])
def test_recording_layer_states_changes_no_output(data_bin, arch):
    """In training mode without dropout, the forward that records every layer (explicit
    attention path, head weights) computes what the stock fused forward computes."""
    extra = ["--share-all-embeddings"] if "bart" in arch else []
    task, model, _ = build(data_bin, arch=arch, dropout=0.0, extra=extra)
    model.train()
    sample = batch(task, size=4)
    request = LayerStateRequest(encoder_layers=(0, 1), decoder_layers=(0, 1),
                                attention_modules=("encoder_self", "decoder_self", "decoder_cross"))
    plain, _ = model(**sample["net_input"])
    recorded, extra_out = model(**sample["net_input"], layer_states=request)
    assert torch.allclose(plain, recorded, atol=1e-5), (plain - recorded).abs().max()
    # the recorded last decoder layer is what the decoder's inner_states hold
    assert torch.allclose(extra_out["layer_states"].decoder_hidden[1], extra_out["inner_states"][-1])


def _left_pad(tokens, pad, extra):
    """Right-padded rows -> left-padded rows with `extra` more pads in front of every row."""
    rows = [row[row.ne(pad)] for row in tokens]
    width = tokens.size(1) + extra
    return torch.stack([F.pad(row, (width - len(row), 0), value=pad) for row in rows])


def test_left_padded_target_gives_finite_terms_equal_to_right_padding(data_bin):
    """With --left-pad-target the leading decoder-input pads are queries whose every key is
    masked (causal mask + padding). fairseq's explicit attention path gives them NaN (the
    fused path 0), which reached the loss through the next layer's values; now they get
    probability 0 and the loss, every term and the gradients equal right padding's."""
    task, model, criterion = build(data_bin, dropout=0.0, extra=["--report-accuracy"])
    perturb_second_pass(model.encoder.embed_tokens, model.decoder.embed_tokens)
    model.train()
    sample = batch(task, size=4)
    pad = task.target_dictionary.pad()
    left = {
        **sample,
        "net_input": {**sample["net_input"],
                      "prev_output_tokens": _left_pad(sample["net_input"]["prev_output_tokens"], pad, 2)},
        "target": _left_pad(sample["target"], pad, 2),
    }
    assert left["net_input"]["prev_output_tokens"][:, :2].eq(pad).all()

    grads = []
    for s in (sample, left):
        model.zero_grad()
        loss, _, log = _loss(criterion, model, s)
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
        if s is sample:
            right_loss, right_log = loss, log
    assert torch.isfinite(loss) and torch.isfinite(grads[1]).all()
    assert torch.allclose(loss, right_loss, rtol=1e-4)
    for key in ("loss", "nll_loss", *TERMS):
        assert float(right_log[key]) > 0
        assert math.isclose(float(log[key]), float(right_log[key]), rel_tol=1e-4), key
    assert torch.allclose(grads[0], grads[1], rtol=1e-3, atol=1e-6)


def test_fully_masked_query_rows_match_the_fused_path(data_bin):
    """The recorded path's output for a query with every key masked is the fused path's:
    out_proj(0) = out_proj.bias, not NaN, and its recorded probabilities are 0."""
    task, model, _ = build(data_bin, dropout=0.0)
    model.train()
    attention = model.decoder.layers[0].self_attn
    x = torch.randn(5, 2, attention.embed_dim)
    key_padding_mask = torch.tensor([[True, True, False, False, False], [False] * 5])
    future = torch.triu(torch.full((5, 5), float("-inf")), 1)
    fused, _ = attention(x, x, x, key_padding_mask=key_padding_mask, attn_mask=future, need_weights=False)
    request = LayerStateRequest(decoder_layers=(0,), hidden_states=False, attention_modules=("decoder_self",))
    with recording_layer_states(layer_stacks(model), request) as states:
        recorded, _ = attention(x, x, x, key_padding_mask=key_padding_mask, attn_mask=future, need_weights=False)
    probs = states.attention["decoder_self"][0]  # H x B x T x S
    assert torch.isfinite(recorded).all()
    assert torch.allclose(recorded, fused, atol=1e-5), (recorded - fused).abs().max()
    assert torch.equal(recorded[:2, 0], attention.out_proj.bias.expand(2, -1))
    assert probs[:, 0, :2].abs().sum() == 0 and torch.allclose(probs[:, 0, 2:].sum(-1), torch.ones(4, 3))


def test_a_layer_named_twice_counts_once(data_bin):
    task, model, criterion = build(data_bin, extra=["--reg-decoder-layers", "1,0,1", "--reg-encoder-layers", "0,0"])
    model.train()
    request = criterion.layer_state_request(model)
    assert request.decoder_layers == (0, 1) and request.encoder_layers == (0,)
    _, _, log = criterion(model, batch(task))
    assert all(math.isfinite(float(log[name])) and float(log[name]) > 0 for name in TERMS)


def test_unreduced_training_loss_is_refused_clearly(data_bin):
    task, model, criterion = build(data_bin)
    model.train()
    with pytest.raises(UsageError, match="reduce=False .* is not available in training with a consistency weight > 0"):
        criterion(model, batch(task), reduce=False)
    model.eval()  # validation is the stock single pass: unreduced losses as stock gives them
    loss, _, _ = criterion(model, batch(task), reduce=False)
    assert loss.numel() == batch(task)["target"].numel()  # one loss per target position


def _loss_and_gradient(data_bin, arch, extra, seed=7):
    extra = [*extra, "--share-all-embeddings"] if "bart" in arch else list(extra)
    task, model, criterion = build(data_bin, arch=arch, dropout=0.1, extra=extra)
    model.train()
    sample = batch(task, "train", size=8)
    torch.manual_seed(seed)
    loss, _, _ = criterion(model, sample)
    loss.backward()
    return loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize("arch, reading", [
    ("lr_drop_transformer", []), ("lr_drop_bart_base", []),
    ("lr_drop_transformer", ["--hidden-state-point", "ffn_output", "--attn-distance", "mse"]),
])
def test_activation_checkpointing_keeps_the_exact_loss_and_gradient(data_bin, arch, reading):
    """--checkpoint-activations (and --offload-activations) with all three terms on and every
    dropout at 0.1: the same loss and gradient as without. Before: fairseq's wrapper ran the
    first forward under no_grad, so the attention term had a value but no gradient (relative
    gradient difference 0.9% on a 3+3-layer model), and its recomputation took the fused
    attention path. Measured: difference 0.0 (bitwise) for both archs. The weights are 1 (not
    the defaults, 0.1) so that the attention term's share of the gradient is large enough for
    the last check."""
    reading = [*reading, "--hidden-reg-weight", "1", "--attn-reg-weight", "1"]
    loss, gradient = _loss_and_gradient(data_bin, arch, reading)
    for flags in (["--checkpoint-activations"], ["--checkpoint-activations", "--offload-activations"],
                  ["--min-params-to-wrap", "1"]):  # (FSDP wrapping size: no wrapping without FSDP)
        checkpointed_loss, checkpointed_gradient = _loss_and_gradient(data_bin, arch, [*reading, *flags])
        relative = ((checkpointed_gradient - gradient).norm() / gradient.norm()).item()
        print(f"{arch} {flags}: loss diff {(checkpointed_loss - loss).abs().item():.3g}, relative gradient diff {relative:.3g}")
        assert torch.allclose(checkpointed_loss, loss, rtol=1e-6)
        assert relative < 1e-6, relative
    # the attention term's gradient is large enough for that bound to see it lost (measured:
    # 0.96% of the gradient's norm for the transformer, 6.6e-5 for BART)
    _, no_attention = _loss_and_gradient(data_bin, arch, [*reading, "--attn-reg-weight", "0"])
    assert ((no_attention - gradient).norm() / gradient.norm()).item() > 1e-5


def test_ffn_output_reading_takes_each_feed_forward_block_output(data_bin):
    """--hidden-state-point ffn_output: L_HSR compares fc2(act(fc1(x))) of every layer (before
    dropout, residual and layer norm), captured here by independent hooks on fc2."""
    from fairseq_lrdrop.losses import hidden_state_consistency

    task, model, criterion = build(data_bin, dropout=0.2, extra=["--hidden-state-point", "ffn_output",
                                                                  "--attn-reg-weight", "0", "--output-reg-weight", "0"])
    model.train()
    sample = batch(task, size=4)
    captured = {}
    for side in ("encoder", "decoder"):
        for index in range(2):
            getattr(model, side).layers[index].fc2.register_forward_hook(
                lambda module, args, output, key=(side, index): captured.__setitem__(key, output))
    torch.manual_seed(5)
    _, _, log = criterion(model, sample)
    pad = task.source_dictionary.pad()
    source_mask = sample["net_input"]["src_tokens"].ne(pad)
    target_mask = sample["net_input"]["prev_output_tokens"].ne(pad)
    expected = hidden_state_consistency([(captured[("encoder", i)], source_mask) for i in range(2)]
                                        + [(captured[("decoder", i)], target_mask) for i in range(2)])
    assert captured[("encoder", 0)].shape[1] == 2 * sample["nsentences"]
    assert math.isclose(float(log["hidden_reg"]), float(expected), rel_tol=1e-6) and float(expected) > 0
    # not the layer outputs: the default reading gives another value on the same masks
    task, model, criterion = build(data_bin, dropout=0.2, extra=["--attn-reg-weight", "0", "--output-reg-weight", "0"])
    model.train()
    torch.manual_seed(5)
    _, _, default_log = criterion(model, sample)
    assert not math.isclose(float(default_log["hidden_reg"]), float(log["hidden_reg"]), rel_tol=1e-3)


def test_attn_distance_mse_reading_matches_its_formula(data_bin):
    from fairseq_lrdrop.losses import attention_squared_distance

    task, model, criterion = build(data_bin, dropout=0.2, extra=["--attn-distance", "mse", "--hidden-reg-weight", "0",
                                                                  "--output-reg-weight", "0",
                                                                  "--attn-reg-maps", "keep"])  # reads the maps
    model.train()
    sample = batch(task, size=4)
    request = criterion.layer_state_request(model)
    torch.manual_seed(5)
    net_input = {k: torch.cat([v, v]) for k, v in sample["net_input"].items()}
    states = model(**net_input, layer_states=request)[1]["layer_states"]
    pad = task.source_dictionary.pad()
    masks = {"encoder_self": sample["net_input"]["src_tokens"].ne(pad),
             "decoder_self": sample["net_input"]["prev_output_tokens"].ne(pad),
             "decoder_cross": sample["net_input"]["prev_output_tokens"].ne(pad)}
    values = [attention_squared_distance(probs, masks[name]) for name, layers in states.attention.items()
              for probs in layers.values()]
    assert len(values) == 6
    torch.manual_seed(5)
    _, _, log = criterion(model, sample)
    assert math.isclose(float(log["attn_reg"]), float(torch.stack(values).mean()), rel_tol=1e-6)


def test_unknown_reading_is_rejected(data_bin, capsys):
    for flags in (["--hidden-state-point", "ffn"], ["--attn-distance", "kl"]):
        with pytest.raises(SystemExit):
            build(data_bin, extra=flags)
        assert f"argument {flags[0]}: invalid choice: '{flags[1]}'" in capsys.readouterr().err
    from fairseq_lrdrop.criterions.lr_drop_label_smoothed_cross_entropy import LRDropLabelSmoothedCrossEntropyCriterion
    task, _, _ = build(data_bin)
    with pytest.raises(UsageError, match="--attn-distance: choose from mse|skl"):
        LRDropLabelSmoothedCrossEntropyCriterion(task, False, 0.1, attn_distance="kl")
