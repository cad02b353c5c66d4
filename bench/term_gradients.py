"""How large each LR-Drop term's gradient is next to the cross-entropy's, on a trained model.

    python bench/term_gradients.py --checkpoint runs/ablation-translation/lrdrop-seed1/checkpoint40.pt \\
        --data-bin data/ddtp-quality-4k/bin/translation-en-de --weights 0.1,0.1,5

For each of the first --batches training batches (the training batch size, train mode, one
forward over [x; x]), the gradient over all parameters of:
  ce          label-smoothed cross-entropy of both passes (what training optimises)
  hidden_reg  alpha * L_HSR,  attn_reg  beta * L_MHAR,  output_reg  gamma * L_OR
and reports, averaged over the batches: each gradient's norm, its ratio to the CE gradient's
norm, its cosine with the CE gradient, and the term's value per target token. A term whose
gradient is many times the CE's steers training by itself; a cosine near -1 means it pulls
against the CE. Prints a table; --json writes the numbers.
"""
import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def flat_grad(value: torch.Tensor, params) -> torch.Tensor:
    grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])


def measure(checkpoint: str, data_bin: str, weights, batches: int, max_tokens: int, seed: int,
            label_smoothing: float, hidden_state_point: str, attn_distance: str) -> dict:
    from fairseq import checkpoint_utils, utils

    import fairseq_lrdrop  # noqa: F401  (archs, checkpoint loading)
    from fairseq_lrdrop.criterions.lr_drop_label_smoothed_cross_entropy import (
        LRDropLabelSmoothedCrossEntropyCriterion,
    )

    (model,), _, task = checkpoint_utils.load_model_ensemble_and_task([checkpoint], arg_overrides={"data": data_bin})
    # every term on (weight 1): the reported gradients are scaled by the given weights
    criterion = LRDropLabelSmoothedCrossEntropyCriterion(
        task, sentence_avg=False, label_smoothing=label_smoothing, hidden_reg_weight=1.0, attn_reg_weight=1.0,
        output_reg_weight=1.0, hidden_state_point=hidden_state_point, attn_distance=attn_distance,
        no_fused_output_head=True)  # unfused: each term keeps its own graph
    task.load_dataset("train")
    iterator = task.get_batch_iterator(
        dataset=task.dataset("train"), max_tokens=max_tokens, ignore_invalid_inputs=True, seed=seed,
        max_positions=utils.resolve_max_positions(task.max_positions(), model.max_positions()),
        required_batch_size_multiple=1).next_epoch_itr(shuffle=True)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    names = ("hidden_reg", "attn_reg", "output_reg")
    scale = dict(zip(names, weights))
    sums = {key: 0.0 for key in ["ce_norm"] + [f"{n}_{k}" for n in names for k in ("norm", "ratio", "cosine", "per_token")]}
    sums["ce_per_token"] = 0.0
    count = 0
    for index, sample in enumerate(iterator):
        if index == batches:
            break
        torch.manual_seed(seed + index)
        _, ce, _, terms, _, _ = criterion.two_pass_losses(model, sample)
        tokens = float(sample["ntokens"])
        ce_grad = flat_grad(ce, params)
        ce_norm = float(ce_grad.norm())
        sums["ce_norm"] += ce_norm
        sums["ce_per_token"] += float(ce) / 2 / tokens  # per pass, as fairseq logs it
        for name in names:
            grad = flat_grad(terms[name], params) * scale[name]
            norm = float(grad.norm())
            sums[f"{name}_norm"] += norm
            sums[f"{name}_ratio"] += norm / ce_norm
            sums[f"{name}_cosine"] += float(torch.nn.functional.cosine_similarity(grad, ce_grad, dim=0))
            sums[f"{name}_per_token"] += float(terms[name]) * scale[name] / tokens
        count += 1
    if count == 0:
        raise ValueError("no training batch")
    return {"checkpoint": checkpoint, "weights": list(weights), "batches": count,
            **{key: value / count for key, value in sums.items()}}


def main():
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a checkpoint of an lr_drop_* architecture")
    parser.add_argument("--data-bin", required=True)
    parser.add_argument("--weights", default="0.1,0.1,5", help="alpha,beta,gamma the gradients are scaled by")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--hidden-state-point", default="layer_output", choices=("layer_output", "ffn_output"))
    parser.add_argument("--attn-distance", default="skl", choices=("skl", "mse"))
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()
    for flag, path in (("--checkpoint", args.checkpoint), ("--data-bin", args.data_bin)):
        if not Path(path).exists():
            parser.error(f"{flag} {path} does not exist")
    try:
        weights = tuple(float(w) for w in args.weights.split(","))
    except ValueError:
        weights = ()
    if len(weights) != 3 or any(w < 0 for w in weights):
        parser.error(f"--weights takes alpha,beta,gamma, three numbers >= 0 (got {args.weights!r})")
    if args.batches < 1:
        parser.error("--batches must be >= 1")
    result = measure(args.checkpoint, args.data_bin, weights, args.batches, args.max_tokens, args.seed,
                     args.label_smoothing, args.hidden_state_point, args.attn_distance)
    print(f"{args.checkpoint}: CE per token {result['ce_per_token']:.3f}, |grad CE| {result['ce_norm']:.3f}")
    print("| term (weighted) | per token | |grad| | |grad| / |grad CE| | cosine with grad CE |")
    print("|---|---:|---:|---:|---:|")
    for name in ("hidden_reg", "attn_reg", "output_reg"):
        print(f"| {name} | {result[f'{name}_per_token']:.4f} | {result[f'{name}_norm']:.3f} "
              f"| {result[f'{name}_ratio']:.3f} | {result[f'{name}_cosine']:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
