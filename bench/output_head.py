"""The output layer alone: stock (projection, log-softmax over the whole batch, fairseq's
label_smoothed_nll_loss, autograd backward) against the fused head, forward + backward.

    python bench/output_head.py --shapes small            # one pass, V = 4000
    python bench/output_head.py --shapes wmt --passes 2   # the [x; x] forward with the output term

Rows, channels and vocabulary are those of bench/speed.py's presets (every padded position
counts as a row, a quarter of them padding). Calls are interleaved round-robin and the median
is printed; `--blocks` adds fused runs with fixed row pairs per block next to the default rule.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fairseq_lrdrop.losses import output_consistency  # noqa: E402
from fairseq_lrdrop.output_head import fused_output_losses, pairs_per_block  # noqa: E402

SHAPES = {"small": (576, 128, 4000), "wmt": (4096, 512, 32000)}  # rows of one pass, C, V
PAD, EPSILON, OUTPUT_WEIGHT = 1, 0.1, 5.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", choices=sorted(SHAPES), default="small")
    parser.add_argument("--passes", type=int, choices=(1, 2), default=1)
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds (after 2 untimed)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--blocks", type=int, nargs="*", default=[], help="fixed row pairs per block to add")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss

    rows, channels, vocabulary = SHAPES[args.shapes]
    torch.manual_seed(0)
    weight = (0.05 * torch.randn(vocabulary, channels)).requires_grad_()
    features = torch.randn(args.passes * rows, channels, requires_grad=True)
    target = torch.randint(4, vocabulary, (rows,))
    target[::4] = PAD
    output_weight = OUTPUT_WEIGHT if args.passes == 2 else 0.0

    def stock():
        lprobs = torch.log_softmax(features @ weight.t(), -1)
        both = target.repeat(args.passes)
        loss, _ = label_smoothed_nll_loss(lprobs, both, EPSILON, ignore_index=PAD)
        if output_weight:
            loss = loss + output_weight * output_consistency(lprobs, target.ne(PAD))
        loss.backward()

    def fused(block):
        return lambda: fused_output_losses(features, weight, target, PAD, EPSILON, output_weight,
                                           block=block).loss.backward()

    default = pairs_per_block(rows, channels, vocabulary, features.device, passes=args.passes)
    cases = {"stock": stock, f"fused ({default} a block)": fused(None)}
    cases.update({f"fused ({block} a block)": fused(block) for block in args.blocks})
    times = {name: [] for name in cases}
    for round_ in range(args.repeats + 2):
        for name, run in cases.items():
            weight.grad = features.grad = None
            start = time.perf_counter()
            run()
            if round_ >= 2:
                times[name].append(time.perf_counter() - start)
    print(f"{args.shapes}: {rows} rows x {args.passes} pass(es), C {channels}, V {vocabulary}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    reference = statistics.median(times["stock"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:24s} {1000 * median:9.2f} ms  ({median / reference:.3f} x stock)")


if __name__ == "__main__":
    main()
