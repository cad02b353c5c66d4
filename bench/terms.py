"""Forward + backward time of each consistency term: fairseq_lrdrop.losses vs the same formula
written as plain autograd over the two halves of [x; x].

    python bench/terms.py --shapes small     # seconds
    python bench/terms.py --shapes wmt --json bench/terms-wmt-cpu.json

The plain versions are what one writes first: split the doubled tensor with chunk(), take
logs of clamped attention probabilities and exponentiate them back, let autograd keep its
temporaries. Both versions run interleaved on the same inputs; the median is reported. Their
values and gradients are compared first (the table shows the largest gradient difference).
"""
import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fairseq_lrdrop import losses  # noqa: E402

SHAPES = {  # sentences B, length T, model dim C, heads H, vocabulary V
    "tiny": dict(B=2, T=3, C=4, H=2, V=7),  # smoke tests only
    "small": dict(B=24, T=24, C=128, H=4, V=4000),
    "wmt": dict(B=128, T=32, C=512, H=8, V=32000),
}


def plain_symmetric_kl(log_p, log_q):
    return 0.5 * ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(-1)


def plain_output(lprobs, mask):
    log_p, log_q = lprobs.chunk(2)
    return torch.where(mask, plain_symmetric_kl(log_p, log_q), 0.0).sum()


def plain_hidden(states, mask):
    first, second = states.chunk(2, dim=1)
    return torch.where(mask.t(), (first - second).pow(2).mean(-1), 0.0).sum()


def plain_attention(probs, mask):
    p, q = probs.chunk(2, dim=1)
    tiny = torch.finfo(torch.float32).tiny
    kl = plain_symmetric_kl(p.clamp_min(tiny).log(), q.clamp_min(tiny).log()).mean(0)
    return torch.where(mask, kl, 0.0).sum()


def inputs(B, T, C, H, V):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2 * B * T, V, generator=g)
    states = torch.randn(T, 2 * B, C, generator=g)
    causal = torch.ones(T, T, dtype=torch.bool).triu(1)  # decoder self-attention: half zeros
    scores = torch.randn(H, 2 * B, T, T, generator=g).masked_fill(causal, float("-inf"))
    return {
        "output": (lambda: logits.log_softmax(-1), torch.ones(B * T, dtype=torch.bool), logits),
        "hidden": (lambda: states * 1.0, torch.ones(B, T, dtype=torch.bool), states),
        "attention": (lambda: scores.softmax(-1), torch.ones(B, T, dtype=torch.bool), scores),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", choices=sorted(SHAPES), default="small")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", default=None, help="write results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    versions = {
        "output": (plain_output, losses.output_consistency),
        "hidden": (plain_hidden, losses.hidden_state_distance),
        "attention": (plain_attention, losses.attention_distance),
    }
    rows = {}
    for term, (make, mask, leaf) in inputs(**SHAPES[args.shapes]).items():
        leaf.requires_grad_()
        results = []  # (value, gradient) of each version: they must agree
        for fn in versions[term]:
            value = fn(make(), mask)
            value.backward()
            results.append((value.item(), leaf.grad))
            leaf.grad = None
        (v1, g1), (v2, g2) = results
        agreement = {"value_rel_diff": abs(v1 - v2) / max(abs(v1), 1e-30),
                     "grad_max_diff": (g1 - g2).abs().max().item()}
        times = {"plain": [], "losses.py": []}
        for _ in range(args.repeats + 1):  # the first round warms up
            for name, fn in zip(times, versions[term]):
                start = time.perf_counter()
                fn(make(), mask).backward()
                times[name].append(time.perf_counter() - start)
                leaf.grad = None
        rows[term] = {name: 1000 * statistics.median(t[1:]) for name, t in times.items()}
        rows[term].update(agreement)
    print(f"shapes {args.shapes} {SHAPES[args.shapes]}, cpu ({platform.machine()}, "
          f"{torch.get_num_threads()} threads); forward + backward ms, including making the input")
    print(f"{'term':10s} {'plain':>9s} {'losses.py':>10s} {'ratio':>6s}  {'max |grad diff|':>15s}")
    for term, row in rows.items():
        print(f"{term:10s} {row['plain']:9.1f} {row['losses.py']:10.1f} {row['losses.py'] / row['plain']:6.2f}"
              f"  {row['grad_max_diff']:15.2e}")
    if args.json:
        Path(args.json).write_text(json.dumps({"shapes": args.shapes, **SHAPES[args.shapes],
                                               "threads": torch.get_num_threads(),
                                               "torch": torch.__version__, "ms": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
