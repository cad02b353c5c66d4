"""The fused output head against the unfused formulas written with autograd: the same values
and gradients (features and weight), in float32 and float64, with padding, label smoothing,
blocks that do not divide the rows, and without the output term."""
import pytest
import torch

from fairseq_lrdrop.output_head import fused_output_losses, pairs_per_block

PAD = 1


def unfused(features, weight, target, epsilon, output_weight):
    """Logits, log-softmax over the whole 2N x V, fairseq's label-smoothed loss, R-Drop's SKL."""
    lprobs = torch.log_softmax((features @ weight.t()).to(torch.promote_types(features.dtype, torch.float32)), -1)
    both = torch.cat([target, target])
    real = both.ne(PAD)
    nll = -lprobs.gather(1, both.clamp_min(0).unsqueeze(1)).squeeze(1)
    smooth = -lprobs.sum(1)
    eps_i = epsilon / (lprobs.size(1) - 1)
    ce = torch.where(real, (1 - epsilon - eps_i) * nll + eps_i * smooth, 0.0).sum()
    log_p, log_q = lprobs.chunk(2)
    skl = 0.5 * ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(1)
    skl = torch.where(target.ne(PAD), skl, 0.0).sum()
    correct = (lprobs.argmax(1) == both)[real].sum()
    return ce + output_weight * skl, ce, torch.where(real, nll, 0.0).sum(), skl, correct


@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
@pytest.mark.parametrize("output_weight,block", [(5.0, 3), (5.0, None), (0.0, 4)])
def test_fused_head_equals_the_unfused_losses_and_gradients(dtype, tolerance, output_weight, block):
    torch.manual_seed(0)
    pairs, channels, vocabulary = 11, 6, 13
    features = torch.randn(2 * pairs, channels, dtype=dtype, requires_grad=True)
    weight = torch.randn(vocabulary, channels, dtype=dtype, requires_grad=True)
    target = torch.randint(2, vocabulary, (pairs,))
    target[[2, 7, 10]] = PAD
    fused = fused_output_losses(features, weight, target, PAD, 0.1, output_weight, count_correct=True, block=block)
    reference = unfused(features, weight, target, 0.1, output_weight)
    for name, mine, theirs in zip(("loss", "ce", "nll", "skl"), fused[:4], reference[:4]):
        assert mine.dtype == dtype
        if name == "skl" and not output_weight:
            assert mine == 0  # not computed when it has no weight
            continue
        torch.testing.assert_close(mine, theirs.detach(), rtol=tolerance, atol=tolerance)
    assert int(fused.n_correct) == int(reference[4])
    scale = torch.tensor(3.0, dtype=dtype)  # an incoming gradient, as fp16 loss scaling gives
    mine = torch.autograd.grad(fused.loss * scale, (features, weight))
    theirs = torch.autograd.grad(reference[0] * scale, (features, weight))
    for a, b in zip(mine, theirs):
        torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance)
    # padded rows get no gradient, in either pass
    assert mine[0][[2, 7, 10, pairs + 2, pairs + 7, pairs + 10]].abs().max() == 0


def test_fused_head_keeps_half_precision_inputs_in_their_dtype_and_computes_in_float32():
    torch.manual_seed(1)
    features = torch.randn(8, 4, dtype=torch.float32)
    weight = torch.randn(9, 4, dtype=torch.float32)
    target = torch.randint(2, 9, (4,))
    half_f = features.to(torch.bfloat16).requires_grad_()
    half_w = weight.to(torch.bfloat16).requires_grad_()
    fused = fused_output_losses(half_f, half_w, target, PAD, 0.1, 5.0)
    reference = unfused(half_f.detach().float(), half_w.detach().float(), target, 0.1, 5.0)
    assert fused.loss.dtype == torch.float32
    torch.testing.assert_close(fused.loss, reference[0], rtol=1e-5, atol=1e-5)
    grad_f, grad_w = torch.autograd.grad(fused.loss, (half_f, half_w))
    assert grad_f.dtype == grad_w.dtype == torch.bfloat16


@pytest.mark.parametrize("features_dtype", [torch.float32, torch.bfloat16])
def test_fused_head_computes_in_float32_under_autocast(features_dtype):
    """fairseq's --amp runs the criterion under autocast. The head's arithmetic runs with
    autocast off: float32 logits and sums, the float32 result of the same inputs. Features
    come in float32 or, as an autocast model gives them, in bfloat16. Tolerance: 2e-5
    (float32 rounding; bfloat16 would be off by ~1e-2); the bfloat16 features' gradient is
    the float32 one rounded to bfloat16 (relative 2^-8)."""
    torch.manual_seed(4)
    pairs, channels, vocabulary = 9, 8, 21
    features = torch.randn(2 * pairs, channels).to(features_dtype).requires_grad_()
    weight = torch.randn(vocabulary, channels, requires_grad=True)
    target = torch.randint(2, vocabulary, (pairs,))
    target[[1, 5]] = PAD
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = fused_output_losses(features, weight, target, PAD, 0.1, 5.0, count_correct=True, block=4)
        grads = torch.autograd.grad(fused.loss * 2.0, (features, weight))
    wide = features.detach().float().requires_grad_()
    reference = unfused(wide, weight, target, 0.1, 5.0)
    ref_grads = torch.autograd.grad(reference[0] * 2.0, (wide, weight))
    for mine, theirs in zip(fused[:4], reference[:4]):
        assert mine.dtype == torch.float32
        torch.testing.assert_close(mine, theirs.detach(), rtol=2e-5, atol=2e-5)
    assert int(fused.n_correct) == int(reference[4])
    assert grads[0].dtype == features_dtype and grads[1].dtype == torch.float32
    torch.testing.assert_close(grads[1], ref_grads[1], rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(grads[0], ref_grads[0].to(features_dtype), rtol=2e-5, atol=2e-5)


def test_criterion_under_autocast_bf16_matches_float32(data_bin):
    """The whole fused criterion under CPU autocast bfloat16 (the model's matrix products in
    bfloat16, the head in float32) against the float32 run on the same dropout masks: the loss
    and every logged value within 2% (measured: at most 0.23%), and the gradient within 5% of
    its norm (measured: 1.6%) with a cosine above 0.999 (measured: 0.99987)."""
    from conftest import batch, build

    task, model, criterion = build(data_bin, dropout=0.1, extra=["--hidden-reg-weight", "0.1",
                                                                  "--attn-reg-weight", "0.1"])
    model.train()
    sample = batch(task, "train", size=6)
    runs = []
    for autocast in (False, True):
        model.zero_grad()
        torch.manual_seed(5)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss, _, log = criterion(model, sample)
        loss.backward()
        runs.append((loss.detach(), log, torch.cat([p.grad.flatten() for p in model.parameters()])))
    (loss, log, grad), (amp_loss, amp_log, amp_grad) = runs
    assert amp_loss.dtype == torch.float32 and float(log["output_reg"]) > 0
    torch.testing.assert_close(amp_loss, loss, rtol=2e-2, atol=0)
    for key in ("loss", "nll_loss", "hidden_reg", "attn_reg", "output_reg"):
        assert float(amp_log[key]) == pytest.approx(float(log[key]), rel=2e-2), key
    assert (amp_grad - grad).norm() <= 0.05 * grad.norm()
    assert torch.nn.functional.cosine_similarity(amp_grad, grad, dim=0) > 0.999


@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
@pytest.mark.parametrize("block", [3, None])
def test_fused_head_serves_one_pass_as_stock_label_smoothed_cross_entropy(dtype, tolerance, block):
    """Plain training: N x C features, fairseq's own label_smoothed_nll_loss on the full
    log-softmax as the reference."""
    from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss

    torch.manual_seed(2)
    rows, channels, vocabulary = 10, 5, 17
    features = torch.randn(rows, channels, dtype=dtype, requires_grad=True)
    weight = torch.randn(vocabulary, channels, dtype=dtype, requires_grad=True)
    target = torch.randint(2, vocabulary, (rows,))
    target[[0, 9]] = PAD
    fused = fused_output_losses(features, weight, target, PAD, 0.1, 0.0, count_correct=True, block=block)
    lprobs = torch.log_softmax(features @ weight.t(), -1)
    ce, nll = label_smoothed_nll_loss(lprobs, target, 0.1, ignore_index=PAD)
    torch.testing.assert_close(fused.loss, ce.detach(), rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(fused.nll, nll.detach(), rtol=tolerance, atol=tolerance)
    real = target.ne(PAD)
    assert int(fused.n_correct) == int((lprobs.argmax(1) == target)[real].sum())
    mine = torch.autograd.grad(fused.loss * 2.0, (features, weight))
    theirs = torch.autograd.grad(ce * 2.0, (features, weight))
    for a, b in zip(mine, theirs):
        torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance)


def test_blocks_split_the_rows_evenly_within_the_size_rule():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert pairs_per_block(576, 128, 4000, cpu, passes=1) == 288  # 2^21 // 4000 = 524: 2 blocks
    assert pairs_per_block(576, 128, 4000, cpu, passes=2) == 192  # 262 a block at most: 3 blocks
    assert pairs_per_block(4096, 512, 32000, gpu) == 64  # Liger's rule: 65 at most, 64 blocks
    for pairs in (1, 7, 100, 1000, 5000):
        for device, largest in ((cpu, 2**21 // (2 * 3000)), (gpu, max(1, min(pairs, pairs * 64 // 3000)))):
            block = pairs_per_block(pairs, 64, 3000, device)
            blocks = -(-pairs // block)
            assert 1 <= block <= largest and blocks == -(-pairs // largest)  # no more blocks than the rule needs
            assert block * (blocks - 1) < pairs  # and none of them empty


def test_fused_head_rejects_shapes_that_do_not_fit():
    with pytest.raises(ValueError, match="do not fit"):
        fused_output_losses(torch.randn(6, 4), torch.randn(9, 4), torch.zeros(4, dtype=torch.long), PAD, 0.1, 1.0)
    with pytest.raises(ValueError, match="one pass .* takes output_weight 0"):
        fused_output_losses(torch.randn(4, 4), torch.randn(9, 4), torch.zeros(4, dtype=torch.long), PAD, 0.1, 1.0)


def test_criterion_uses_the_fused_head_for_the_transformer_and_falls_back_with_a_reason(data_bin, caplog):
    """lr_drop_transformer's decoder is served by the fused head; a decoder whose output layer
    is overridden is not: the criterion then takes the unfused path (the same result as
    --no-fused-output-head) and says why, once."""
    from conftest import batch, build, criterion_cfg

    from fairseq_lrdrop.criterions.lr_drop_label_smoothed_cross_entropy import fused_head_unsupported

    task, model, fused = build(data_bin, extra=["--hidden-reg-weight", "0.5", "--attn-reg-weight", "0.5"])
    assert fused.fused_output_head and fused_head_unsupported(model) is None
    hook = model.decoder.output_projection.register_forward_pre_hook(lambda module, args: None)
    assert fused_head_unsupported(model) == "the output projection has forward hooks"
    hook.remove()
    decoder = model.decoder
    decoder.__class__ = type("ScaledOutputDecoder", (type(decoder),),
                             {"output_layer": lambda self, features: 0.5 * self.output_projection(features)})
    assert fused_head_unsupported(model) == "LRDropTransformerModel overrides output_layer"
    unfused = task.build_criterion(criterion_cfg("lr_drop_label_smoothed_cross_entropy", hidden_reg_weight=0.5,
                                                 attn_reg_weight=0.5, no_fused_output_head=True))
    model.train()
    sample = batch(task, size=4)
    losses = []
    for criterion in (fused, fused, unfused):
        torch.manual_seed(3)
        losses.append(criterion(model, sample)[0])
    assert torch.equal(losses[0], losses[2]) and torch.equal(losses[1], losses[2])
    notes = [r.getMessage() for r in caplog.records if "fused output head off" in r.getMessage()]
    assert notes == ["fused output head off (LRDropTransformerModel overrides output_layer): "
                     "the logits are computed in full"]
