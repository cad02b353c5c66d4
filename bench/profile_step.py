"""Where LR-Drop's step spends more than two baseline steps: torch.profiler, op by op.

    python bench/profile_step.py --preset wmt --json bench/profile-wmt-cpu.json
    python bench/profile_step.py --preset small

Builds the baseline and LR-Drop configurations of bench/speed.py (same model, batch and
weights), runs WARMUP steps of each, times STEPS more (median wall, no profiler), then profiles
one step of each. For every operator (and input shape with --shapes) it prints the self time
in LR-Drop's step minus twice that in the baseline's, largest first: two passes make 2x the
baseline the floor, so what is left is what LR-Drop adds. Self times under the profiler run slower than bench/speed.py's step times;
read the table for where time goes, and bench/speed.py for how much.
"""
import argparse
import json
import logging
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed  # noqa: E402


def op_times(name, preset, warmup, steps, with_shapes):
    """({op key: (self ms, calls)}, median wall seconds of the timed steps) for one configuration."""
    config = speed.Config(name, preset, torch.device("cpu"), torch.float32)
    for _ in range(warmup):
        config.step()
    walls = []
    for _ in range(steps):
        start = time.perf_counter()
        config.step()
        walls.append(time.perf_counter() - start)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=with_shapes) as prof:
        config.step()
    ops = {}
    for event in prof.key_averages(group_by_input_shape=with_shapes):
        key = f"{event.key} {event.input_shapes}" if with_shapes else event.key
        ops[key] = (event.self_cpu_time_total / 1e3, event.count)
    return ops, statistics.median(walls)


def main():
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(speed.PRESETS), default="small")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="timed steps (without the profiler)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--shapes", action="store_true", help="one row per operator and input shape")
    parser.add_argument("--top", type=int, default=20, help="rows to print")
    parser.add_argument("--json", default=None, help="write every row here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    baseline, baseline_wall = op_times("baseline", args.preset, args.warmup, args.steps, args.shapes)
    lrdrop, lrdrop_wall = op_times("lrdrop", args.preset, args.warmup, args.steps, args.shapes)
    rows = []
    for key in set(baseline) | set(lrdrop):
        (base_ms, base_calls), (lr_ms, lr_calls) = baseline.get(key, (0.0, 0)), lrdrop.get(key, (0.0, 0))
        rows.append({"op": key, "excess_ms": lr_ms - 2 * base_ms, "baseline_ms": base_ms,
                     "baseline_calls": base_calls, "lrdrop_ms": lr_ms, "lrdrop_calls": lr_calls})
    rows.sort(key=lambda row: row["excess_ms"], reverse=True)
    totals = {name: sum(ms for ms, _ in ops.values()) for name, ops in (("baseline", baseline), ("lrdrop", lrdrop))}

    print(f"preset {args.preset}, cpu, {torch.get_num_threads()} threads; median step wall of {args.steps} "
          f"steps without the profiler: baseline {baseline_wall:.2f} s, lrdrop {lrdrop_wall:.2f} s (ratio "
          f"{lrdrop_wall / baseline_wall:.3f}); profiled step, summed self time: baseline "
          f"{totals['baseline']:.0f} ms, lrdrop {totals['lrdrop']:.0f} ms")
    print(f"{'excess ms':>10} {'baseline ms (calls)':>20} {'lrdrop ms (calls)':>20}  op  [excess = lrdrop - 2 x baseline]")
    # the largest excesses, then the five most negative (where LR-Drop does less than 2x)
    shown = rows if len(rows) <= args.top + 5 else rows[:args.top] + [None] + rows[-5:]
    for row in shown:
        if row is None:
            print(f"{'...':>10}")
            continue
        print(f"{row['excess_ms']:10.1f} {row['baseline_ms']:12.1f} ({row['baseline_calls']:5d}) "
              f"{row['lrdrop_ms']:12.1f} ({row['lrdrop_calls']:5d})  {row['op'][:110]}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "preset": args.preset, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "steps": args.steps,
            "median_step_s": {"baseline": baseline_wall, "lrdrop": lrdrop_wall}, "self_ms": totals,
            "rows": rows}, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
