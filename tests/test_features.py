"""fairseq's training options that touch the forward or the loss: each keeps LR-Drop's exact
values and gradients, or is refused at start with one line (README, "fairseq features")."""
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_MODEL, USER_DIR, batch, build, criterion_cfg, run_cli

from fairseq_lrdrop.errors import UsageError

TERMS = ("hidden_reg", "attn_reg", "output_reg")
ZERO = ["--hidden-reg-weight", "0", "--attn-reg-weight", "0", "--output-reg-weight", "0"]


def _run(criterion, model, sample, seed=11):
    model.zero_grad()
    torch.manual_seed(seed)
    loss, size, log = criterion(model, sample)
    loss.backward()
    return loss.detach(), size, log, torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def _rdrop_formula(model, sample, gamma, prefix, pad, eps=0.1, seed=11):
    """R-Drop written out: label-smoothed CE of both passes + gamma * symmetric KL per token,
    summed over real target tokens after the ignored prefix."""
    torch.manual_seed(seed)
    net_input = {k: torch.cat([v, v]) for k, v in sample["net_input"].items()}
    lprobs = model.get_normalized_probs(model(**net_input), log_probs=True)[:, prefix:]
    target = torch.cat([sample["target"]] * 2)[:, prefix:]
    real = target.ne(pad)
    nll = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    eps_i = eps / (lprobs.size(-1) - 1)
    ce = ((1 - eps - eps_i) * nll + eps_i * -lprobs.sum(-1))[real].sum()
    p, q = lprobs.chunk(2)
    kl = 0.5 * (F.kl_div(q, p, log_target=True, reduction="none").sum(-1)
                + F.kl_div(p, q, log_target=True, reduction="none").sum(-1))
    return ce + gamma * kl[real[: len(p)]].sum()


CRITERION_FLAGS = {
    "sentence-avg": (["--sentence-avg"], {"sentence_avg": True}),
    "ignore-prefix-size": (["--ignore-prefix-size", "1"], {"ignore_prefix_size": 1}),
    "report-accuracy": (["--report-accuracy"], {"report_accuracy": True}),
    "share-decoder-input-output-embed": (["--share-decoder-input-output-embed"], {}),
    "share-all-embeddings": (["--share-all-embeddings"], {}),
    # fairseq's multilingual task: every target starts with a language token, left out of the
    # loss (and of the output term) with --ignore-prefix-size 1
    "translation_multi_simple_epoch": (["--task", "translation_multi_simple_epoch", "--lang-pairs", "en-de",
                                        "--langs", "en,de", "--encoder-langtok", "src", "--decoder-langtok",
                                        "--ignore-prefix-size", "1"], {"ignore_prefix_size": 1}),
}


@pytest.mark.parametrize("name", list(CRITERION_FLAGS))
def test_option_keeps_stock_values_r_drop_formula_and_finite_terms(data_bin, name):
    """(a) all weights 0 (one pass through the fused output head): loss, sample_size, logged
    accuracy and gradient equal stock label_smoothed_cross_entropy with the same option, to
    float32 rounding; (b) the output term alone equals R-Drop
    written out (prefix and padding left out, sample_size as stock); (c) all three terms on:
    finite and positive."""
    flags, fields = CRITERION_FLAGS[name]
    task, model, plain = build(data_bin, dropout=0.2, extra=[*flags, *ZERO])
    model.train()
    sample = batch(task, size=6)
    if name == "translation_multi_simple_epoch":
        language = task.target_dictionary.index("__de__")
        assert sample["target"][:, 0].eq(language).all()
    stock = task.build_criterion(criterion_cfg("label_smoothed_cross_entropy", **fields))
    loss, size, log, gradient = _run(plain, model, sample)
    ref_loss, ref_size, ref_log, ref_gradient = _run(stock, model, sample)
    assert size == ref_size == (sample["nsentences"] if name == "sentence-avg" else sample["ntokens"])
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(gradient, ref_gradient, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(log["nll_loss"], ref_log["nll_loss"], rtol=1e-5, atol=1e-4)
    if name == "report-accuracy":
        assert log["n_correct"] == ref_log["n_correct"] and log["total"] == ref_log["total"] > 0

    gamma = 2.0
    rdrop = task.build_criterion(criterion_cfg("lr_drop_label_smoothed_cross_entropy", **fields, hidden_reg_weight=0.0,
                                            attn_reg_weight=0.0, output_reg_weight=gamma))
    loss, size, _, _ = _run(rdrop, model, sample)
    formula = _rdrop_formula(model, sample, gamma, fields.get("ignore_prefix_size", 0), task.target_dictionary.pad())
    assert size == ref_size
    assert torch.allclose(loss, formula.detach(), rtol=1e-5), (loss, formula)

    every_term = dict(hidden_reg_weight=1.0, attn_reg_weight=1.0, output_reg_weight=gamma,
                      attn_reg_modules="encoder_self,decoder_self,decoder_cross",
                      reg_encoder_layers="all", reg_decoder_layers="all")
    lrdrop = task.build_criterion(criterion_cfg("lr_drop_label_smoothed_cross_entropy", **fields, **every_term))
    loss, _, log, gradient = _run(lrdrop, model, sample)
    assert torch.isfinite(loss) and torch.isfinite(gradient).all()
    assert all(math.isfinite(float(log[t])) and float(log[t]) > 0 for t in TERMS)

    # (d) the fused output head (the default, used above) against the unfused path: the same
    # loss, logged values and gradient, to float32 rounding (the logits are summed in blocks)
    unfused = task.build_criterion(criterion_cfg("lr_drop_label_smoothed_cross_entropy", **fields, **every_term,
                                                 no_fused_output_head=True))
    ref_loss, _, ref_log, ref_gradient = _run(unfused, model, sample)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(gradient, ref_gradient, rtol=1e-4, atol=1e-5)
    for key in ("nll_loss", "n_correct", "total", *TERMS):
        if key in ref_log:
            assert float(log[key]) == pytest.approx(float(ref_log[key]), rel=1e-5, abs=1e-5), key


def test_layerdrop_skips_the_same_layers_in_both_passes(data_bin):
    """--encoder-layerdrop / --decoder-layerdrop: fairseq draws which layers to skip once per
    forward, and the [x; x] forward is one forward, so both passes skip the same layers; the
    terms average over the regularized layers that ran."""
    layers = ["--encoder-layers", "4", "--decoder-layers", "4"]
    task, model, criterion = build(data_bin, dropout=0.1, extra=[*layers, "--encoder-layerdrop", "0.5",
                                                                 "--decoder-layerdrop", "0.5"])
    model.train()
    sample = batch(task, size=4)
    ran = {}
    for side in ("encoder", "decoder"):
        stack = getattr(model, side).layers  # a LayerDropModuleList: iterating it drops layers
        for index in range(len(stack)):
            stack[index].register_forward_hook(
                lambda module, args, output, key=(side, index): ran.setdefault(key, []).append(args[0].size(1)))
    dropped_any = False
    for seed in range(6):
        ran.clear()
        torch.manual_seed(seed)
        net_input = {k: torch.cat([v, v]) for k, v in sample["net_input"].items()}
        states = model(**net_input, layer_states=criterion.layer_state_request(model))[1]["layer_states"]
        for side, recorded in (("encoder", states.encoder_hidden), ("decoder", states.decoder_hidden)):
            ran_here = sorted(index for s, index in ran if s == side)
            assert sorted(recorded) == ran_here  # exactly the layers that ran ...
            assert sorted(states.attention_rows[f"{side}_self"]) == ran_here  # --attn-reg-maps blockwise
            dropped_any |= len(ran_here) < 4
        assert all(sizes == [2 * sample["nsentences"]] for sizes in ran.values())  # ... once, on [x; x]
        torch.manual_seed(seed)
        loss, _, log = criterion(model, sample)
        assert torch.isfinite(loss) and float(log["hidden_reg"]) > 0
    assert dropped_any  # p = 0.5 over 8 layers and 6 seeds: some layer was skipped


def test_quant_noise_with_the_attention_term_is_refused(data_bin, tmp_path):
    quant = ["--quant-noise-pq", "0.1", "--quant-noise-pq-block-size", "8"]
    task, model, criterion = build(data_bin, extra=quant)
    model.train()
    with pytest.raises(UsageError, match="--quant-noise-pq > 0 with --attn-reg-weight > 0: recording attention"):
        criterion(model, batch(task))
    # without the attention term the stock attention path is kept: it trains
    task, model, criterion = build(data_bin, extra=[*quant, "--attn-reg-weight", "0"])
    model.train()
    _, _, log = criterion(model, batch(task))
    assert float(log["hidden_reg"]) > 0 and "attn_reg" not in log
    # and fairseq-train says it in one line before any update
    proc = run_cli("fairseq-train", data_bin, "--user-dir", USER_DIR, "--arch", "lr_drop_transformer", *TINY_MODEL,
                   "--criterion", "lr_drop_label_smoothed_cross_entropy", "--label-smoothing", "0.1", *quant,
                   "--optimizer", "adam", "--lr", "0.001", "--max-tokens", "500", "--cpu", "--max-update", "2",
                   "--save-dir", tmp_path, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "fairseq_lrdrop: error: --quant-noise-pq > 0 with --attn-reg-weight > 0" in proc.stderr
    assert not list(tmp_path.glob("*.pt"))


def test_fully_sharded_wrapper_is_refused(data_bin):
    """fairscale is not installed here, so fairseq cannot build FSDP; the check walks the
    wrapper chain by class name, as fairseq's FullyShardedDataParallel would appear."""

    class FullyShardedDataParallel(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, *args, **kwargs):
            return self.module(*args, **kwargs)

    task, model, criterion = build(data_bin)
    wrapped = FullyShardedDataParallel(model)
    wrapped.train()
    with pytest.raises(UsageError, match="--ddp-backend fully_sharded is not supported"):
        criterion(wrapped, batch(task))


def test_adaptive_softmax_is_refused(data_bin):
    """fairseq's adaptive softmax computes its full log-probabilities in place (no backward):
    stock label_smoothed_cross_entropy fails on it with an autograd error; the plugin says why."""
    task, model, criterion = build(data_bin, extra=["--adaptive-softmax-cutoff", "20"])
    model.train()
    stock = task.build_criterion(criterion_cfg("label_smoothed_cross_entropy"))
    loss, _, _ = stock(model, batch(task))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    for weights in ([], ZERO):
        task, model, criterion = build(data_bin, extra=["--adaptive-softmax-cutoff", "20", *weights])
        model.train()
        with pytest.raises(UsageError, match="--adaptive-softmax-cutoff: fairseq's adaptive softmax trains only"):
            criterion(model, batch(task))
    model.eval()  # validation of such a model still runs (stock single pass)
    loss, _, _ = criterion(model, batch(task))
    assert torch.isfinite(loss)
