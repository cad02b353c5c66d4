"""--attn-reg-maps: the attention term's modes that hold no T x S map for backward (blockwise,
checkpoint) give the gradients of the path that keeps the maps (keep), to float32 rounding,
in all four families, with padded keys, causal masks, fully masked query rows, cross-attention,
attention dropout and the averaged weights fairseq asks of the alignment layer."""
import pytest
import torch
import torch.nn.functional as F

from fairseq_lrdrop import losses
from fairseq_lrdrop.criterions.layer_consistency import LayerConsistency
from fairseq_lrdrop.modules.layer_states import ATTENTION_MAP_MODES, LayerStateRequest

from conftest import USER_DIR

VOCAB = 40
ENCODER = ["--encoder-layers", "2", "--encoder-embed-dim", "16", "--encoder-ffn-embed-dim", "32",
           "--encoder-attention-heads", "2"]
DECODER = ["--decoder-layers", "2", "--decoder-embed-dim", "16", "--decoder-ffn-embed-dim", "32",
           "--decoder-attention-heads", "2"]
TRANSLATION = ["--task", "translation", "-s", "src", "-t", "tgt"]
FAMILIES = {  # arch: (task and model flags, dictionary files)
    "lr_drop_transformer": (TRANSLATION + ENCODER + DECODER, ("dict.src.txt", "dict.tgt.txt")),
    "lr_drop_bart_base": (TRANSLATION + ENCODER + DECODER, ("dict.src.txt", "dict.tgt.txt")),
    "lr_drop_roberta": (["--task", "masked_lm", "--max-positions", "32"] + ENCODER, ("dict.txt",)),
    "lr_drop_transformer_lm": (["--task", "language_modeling"] + DECODER, ("dict.txt",)),
}


def _model(tmp_path, arch, *extra, criterion=False):
    """The model in training mode and the source dictionary (and the criterion, if asked)."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    flags, dictionaries = FAMILIES[arch]
    for name in dictionaries:
        (tmp_path / name).write_text("".join(f"w{i} 1\n" for i in range(VOCAB - 4)))
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [str(tmp_path), "--user-dir", USER_DIR, "--cpu", "--arch", arch,
                                                *flags, "--dropout", "0.1", "--attention-dropout", "0.2", *extra])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(0)
    model = task.build_model(cfg.model).train()
    return (model, task.source_dictionary) + ((task.build_criterion(cfg.criterion),) if criterion else ())


def _batch(arch, pad, eos):
    """[x; x] with pads: left-padded sources, left-padded decoder inputs (their leading pads are
    query rows whose keys are all masked under the causal mask), right-padded LM/RoBERTa input."""
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(4, VOCAB, (3, 9), generator=g)
    lengths = torch.tensor([9, 6, 4])
    left = tokens.masked_fill(torch.arange(9).flip(0)[None] >= lengths[:, None], pad)
    right = tokens.masked_fill(torch.arange(9)[None] >= lengths[:, None], pad)
    if arch in ("lr_drop_roberta", "lr_drop_transformer_lm"):
        net_input = {"src_tokens": right}
    else:
        prev = torch.cat([left[:, 2:], torch.full((3, 2), eos)], 1)  # 9 positions, 2 more pads on the left
        net_input = {"src_tokens": left, "src_lengths": lengths, "prev_output_tokens": prev[:, :7]}
    return net_input, {k: torch.cat([v, v]) for k, v in net_input.items()}


def _loss_and_grads(model, net_input, doubled, pad, mode, distance, attn_weight=1.0):
    """alpha * L_HSR + beta * L_MHAR + a fixed projection of the model output (so the gradient
    also flows through the attended values and the dropout), and every parameter's gradient."""
    consistency = LayerConsistency("test", hidden_reg_weight=0.5, attn_reg_weight=1.0, attn_distance=distance,
                                   attn_reg_maps=mode)
    request = consistency.request(model)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)  # the same dropout masks in every mode
    output, extra = model(**doubled, layer_states=request)
    output = output[0] if isinstance(output, tuple) else output
    terms = consistency.terms(extra["layer_states"], net_input, pad)
    weights = torch.linspace(-1, 1, output.numel(), dtype=output.dtype).view_as(output)
    loss = 0.5 * terms["hidden_reg"] + attn_weight * terms["attn_reg"] + (output * weights).sum()
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return terms["attn_reg"].detach(), grads, extra["layer_states"]


@pytest.mark.parametrize("arch, distance", [(arch, "skl") for arch in sorted(FAMILIES)]
                         + [("lr_drop_transformer_lm", "mse")])
def test_modes_without_maps_give_the_gradients_of_the_kept_maps(tmp_path, arch, distance):
    model, dictionary = _model(tmp_path, arch)
    net_input, doubled = _batch(arch, dictionary.pad(), dictionary.eos())
    # the weight makes the attention term's gradient as large as the others' (at initialization
    # the passes' maps differ by about 1e-5)
    attn_weight = 1 / _loss_and_grads(model, net_input, doubled, dictionary.pad(), "keep", distance)[0].item()
    term, grads, states = _loss_and_grads(model, net_input, doubled, dictionary.pad(), "keep", distance, attn_weight)
    recorded = {name: len(layers) for name, layers in states.attention.items() if layers}
    expected = {"lr_drop_roberta": {"encoder_self": 2}, "lr_drop_transformer_lm": {"decoder_self": 2}}
    assert recorded == expected.get(arch, {"encoder_self": 2, "decoder_self": 2, "decoder_cross": 2})
    assert term > 0 and len(grads) == sum(1 for _ in model.parameters())
    worst = {"blockwise": 0.0, "checkpoint": 0.0}
    for mode in ("blockwise", "checkpoint"):
        other_term, other_grads, other_states = _loss_and_grads(model, net_input, doubled, dictionary.pad(), mode,
                                                                distance, attn_weight)
        # no maps held; one H x B x T row distance per recorded module
        assert not any(other_states.attention.values())
        assert {name: len(layers) for name, layers in other_states.attention_rows.items() if layers} == recorded
        torch.testing.assert_close(other_term, term, rtol=1e-5, atol=0)
        assert other_grads.keys() == grads.keys()
        largest = max(grad.abs().max() for grad in grads.values())
        for name, grad in grads.items():
            # float32 rounding: relative to the parameter's largest gradient entry; k_proj.bias's
            # gradient is 0 in exact arithmetic (softmax ignores a constant added to a row), so
            # it holds rounding noise only, and every scale is at least 1% of the model's largest
            scale = torch.maximum(grad.abs().max(), 0.01 * largest)
            difference = ((other_grads[name] - grad).abs().max() / scale).item()
            # checkpoint reruns the same ops: bitwise. blockwise: float32 rounding, where the term's
            # gradient comes from p - q of maps that differ by ~1e-3 relative at initialization,
            # so float32's 1e-7 becomes up to ~1e-4 of it (measured: at most 1.6e-5)
            if mode == "checkpoint":
                assert torch.equal(other_grads[name], grad), name
            assert difference < 1e-4, (mode, name, difference)
            worst[mode] = max(worst[mode], difference)
    print(f"{arch} {distance}: largest gradient difference relative to the parameter's largest entry {worst}")
    assert not any(m._forward_hooks or m._forward_pre_hooks or "forward" in vars(m) for m in model.modules())


def _plain_attention(q, k, v, bias, padding, keep, dropout_p, heads, distance):
    """Reference by autograd: fairseq's explicit path (scores, masks, softmax, dropout, values)
    and the distance of the two passes' rows from the full maps."""
    scores = torch.bmm(q, k.transpose(1, 2))
    if bias is not None:
        scores = scores + bias
    if padding is not None:
        scores = scores.masked_fill(padding, float("-inf"))
    all_masked = torch.isneginf(scores).all(-1, keepdim=True)
    probs = torch.softmax(scores.masked_fill(all_masked, 0.0), -1).masked_fill(all_masked, 0.0)
    dropped = probs * (keep.float() / (1 - dropout_p)) if keep is not None else probs
    head_probs = probs.view(-1, heads, *probs.shape[1:]).transpose(0, 1)  # H x 2B x T x S
    return torch.bmm(dropped, v), losses.attention_row_distances(head_probs, distance), head_probs.mean(0)


@pytest.mark.parametrize("distance, causal, items_per_block", [
    ("skl", True, 1), ("mse", True, 1), ("skl", False, 1), ("skl", True, 2), ("mse", False, 2)])
def test_blockwise_attention_matches_autograd_over_many_blocks(monkeypatch, distance, causal, items_per_block):
    """Blocks of 1 item x 32 query rows, or of 2 items x every row, so that the last block
    holds the batch's one remaining item (the block size is lowered), padded keys, a causal
    bias (with left pads: rows whose keys are all masked) or none (with an item all pads),
    dropout and the head mean: outputs and the gradients of q, k, v equal plain autograd's
    over the full maps."""
    heads, batch, tgt_len, src_len, dim = 2, 3, 70, 70 if causal else 50, 4
    monkeypatch.setattr(losses, "_CPU_ATTENTION_BLOCK", 64 if items_per_block == 1 else 2 * heads * tgt_len * src_len)
    blocks = losses._attention_blocks(batch, heads, tgt_len, src_len, torch.device("cpu"))
    assert (blocks[-1][0].start, blocks[-1][0].stop) == (2, 3)   # the batch's last item, not past it
    assert {b.stop - b.start for b, _ in blocks} == ({1, 2} if items_per_block == 2 else {1})
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2 * batch * heads, n, dim, generator=g, requires_grad=True)
               for n in (tgt_len, src_len, src_len))
    bias = torch.full((tgt_len, src_len), float("-inf")).triu(1) if causal else None
    key_pads = torch.zeros(2 * batch, src_len, dtype=torch.bool)
    key_pads[1, :5] = key_pads[batch + 1, :5] = True  # left pads: rows 0..4 of item 1 see no key (causal)
    if not causal:
        key_pads[2] = key_pads[batch + 2] = True  # item 2: no key at all
    padding = key_pads.repeat_interleave(heads, 0).unsqueeze(1)
    torch.manual_seed(3)
    attended, rows, mean = losses.attention_with_row_distances(q, k, v, bias, padding, 0.3, heads, distance,
                                                               head_mean=True)
    torch.manual_seed(3)
    keep = losses.dropout_keep_mask((2 * batch * heads, tgt_len, src_len), 0.3, torch.float32, q.device)
    assert keep.float().mean().item() == pytest.approx(0.7, abs=0.01)
    expected = _plain_attention(q, k, v, bias, padding, keep, 0.3, heads, distance)
    assert rows.shape == (heads, batch, tgt_len)
    assert (rows[:, 1, :5] if causal else rows[:, 2]).abs().max() == 0
    assert rows.max() > 0 and torch.isfinite(rows).all()
    w = [torch.randn(t.shape, generator=g) for t in expected]
    grads = torch.autograd.grad([(a * b).sum() for a, b in zip((attended, rows, mean), w)], (q, k, v))
    expected_grads = torch.autograd.grad([(a * b).sum() for a, b in zip(expected, w)], (q, k, v))
    for got, want in zip((attended, rows, mean, *grads), (*expected, *expected_grads)):
        assert got.shape == want.shape and (got - want).abs().max() <= 1e-5 * want.abs().max()


def test_the_keep_mask_is_the_one_dropout_draws():
    """The blockwise path draws the attention dropout mask from the same random numbers as
    F.dropout, so a model trains the same in every mode."""
    torch.manual_seed(11)
    expected = F.dropout(torch.ones(6, 50, 30), 0.1, True).ne(0)
    torch.manual_seed(11)
    assert torch.equal(losses.dropout_keep_mask((6, 50, 30), 0.1, torch.float32, torch.device("cpu")), expected)


def test_the_flag_reaches_the_request(tmp_path):
    """--attn-reg-maps through fairseq's parser to the translation criterion (which names its
    arguments) and through LayerConsistency.from_config (what the sentence-prediction criterion
    uses) to the request the model gets."""
    from fairseq_lrdrop.criterions.layer_consistency import LayerConsistencyConfig

    flags = ["--criterion", "lr_drop_label_smoothed_cross_entropy", "--attn-reg-weight", "1"]
    for extra, mode in (([], "blockwise"), (["--attn-reg-maps", "keep"], "keep"),
                        (["--attn-reg-maps", "checkpoint", "--attn-distance", "mse"], "checkpoint")):
        model, _, built = _model(tmp_path, "lr_drop_transformer", *flags, *extra, criterion=True)
        request = built.layer_state_request(model)
        assert request.attention_maps == mode
        assert request.attention_distance == ("mse" if "mse" in extra else "skl")
        config = LayerConsistencyConfig(attn_reg_weight=1.0, attn_reg_maps=mode)
        assert LayerConsistency.from_config(config, "test").request(model).attention_maps == mode


def test_request_carries_the_mode_and_the_flag_refuses_others():
    from fairseq_lrdrop.errors import UsageError

    assert ATTENTION_MAP_MODES == ("blockwise", "checkpoint", "keep")
    assert LayerStateRequest().attention_maps == "keep"
    with pytest.raises(UsageError, match="--attn-reg-maps: choose from blockwise|checkpoint|keep"):
        LayerConsistency("test", attn_reg_maps="sometimes")
