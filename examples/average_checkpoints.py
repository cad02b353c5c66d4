#!/usr/bin/env python3
"""Average the model parameters of several fairseq checkpoints.

The installed fairseq package does not ship the repository's scripts/ folder, so this
project carries its own implementation (written for this project, not copied).

Usage:
    python examples/average_checkpoints.py --inputs CKPT_DIR --num-update-checkpoints 5 \
        --output CKPT_DIR/checkpoint.avg5.pt
    python examples/average_checkpoints.py --inputs a.pt b.pt c.pt --output avg.pt

Selection when --inputs is ONE directory:
  --num-update-checkpoints N  the N checkpoint_<epoch>_<update>.pt files with the highest update
  --num-epoch-checkpoints N   the N checkpoint<epoch>.pt files with the highest epoch
  --auto N                    update checkpoints if any exist, else epoch checkpoints
  --upper-bound K             ignore checkpoints past update/epoch K
The output is the FIRST selected checkpoint (newest) with its 'model' entry replaced by the
element-wise mean of all selected 'model' state dicts (floating tensors averaged in float64
and cast back; integer tensors taken from the newest checkpoint). Written to a temporary file
and renamed, so an interrupted run never leaves a half-written output. Checkpoints are
loaded by fairseq's own loader, made safe by the plugin. The selected paths
are printed, one per line, and with --list-only nothing else is done.
"""
import argparse
import collections
import os
import re
import sys

import torch
from textio import fail

UPDATE_RE = re.compile(r"^checkpoint_(\d+)_(\d+)\.pt$")
EPOCH_RE = re.compile(r"^checkpoint(\d+)\.pt$")


def select(directory, kind, n, upper_bound=None):
    """Return the n newest checkpoints of the given kind ('update' or 'epoch'), newest first."""
    found = []
    for name in os.listdir(directory):
        if kind == "update":
            m = UPDATE_RE.match(name)
            key = int(m.group(2)) if m else None
        else:
            m = EPOCH_RE.match(name)
            key = int(m.group(1)) if m else None
        if key is None or (upper_bound is not None and key > upper_bound):
            continue
        found.append((key, os.path.join(directory, name)))
    found.sort(reverse=True)
    return [p for _, p in found[:n]]


def load(path):
    """The raw checkpoint, loaded as the plugin loads fairseq checkpoints on torch >= 2.6:
    weights_only=True plus fairseq's few extra types (fairseq_lrdrop/modules/checkpoint_loading.py)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from fairseq_lrdrop.modules.checkpoint_loading import load_checkpoint_file

    return load_checkpoint_file(path)


def average(paths):
    first = None
    sums = collections.OrderedDict()
    for i, path in enumerate(paths):
        state = load(path)
        if "model" not in state:
            fail(f"{path} has no 'model' entry: not a fairseq checkpoint")
        model = state["model"]
        if first is None:
            first = state
            keys = list(model.keys())
        elif list(model.keys()) != keys:
            missing = set(keys) ^ set(model.keys())
            fail(f"{path} has different parameters than {paths[0]} (e.g. {sorted(missing)[:3]}); "
                 "average checkpoints of one training run only")
        for k, t in model.items():
            if torch.is_floating_point(t):
                t64 = t.detach().to(torch.float64)
                if k in sums:
                    if sums[k].shape != t64.shape:
                        fail(f"shape mismatch for {k} in {path}")
                    sums[k].add_(t64)
                else:
                    sums[k] = t64.clone()
            elif i == 0:
                sums[k] = t.clone()  # newest checkpoint's integer buffers
        del state, model
    n = len(paths)
    averaged = collections.OrderedDict()
    for k in keys:
        ref = first["model"][k]
        averaged[k] = (sums[k] / n).to(ref.dtype) if torch.is_floating_point(ref) else sums[k]
    first["model"] = averaged
    return first


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inputs", nargs="+", required=True, help="checkpoint files, or one directory")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--num-update-checkpoints", type=int)
    g.add_argument("--num-epoch-checkpoints", type=int)
    g.add_argument("--auto", type=int, metavar="N")
    p.add_argument("--upper-bound", type=int, default=None)
    p.add_argument("--output", help="averaged checkpoint path")
    p.add_argument("--list-only", action="store_true", help="print the selection and exit")
    args = p.parse_args(argv)

    if len(args.inputs) == 1 and os.path.isdir(args.inputs[0]):
        d = args.inputs[0]
        if args.num_update_checkpoints:
            paths = select(d, "update", args.num_update_checkpoints, args.upper_bound)
        elif args.num_epoch_checkpoints:
            paths = select(d, "epoch", args.num_epoch_checkpoints, args.upper_bound)
        elif args.auto:
            paths = select(d, "update", args.auto, args.upper_bound) or select(
                d, "epoch", args.auto, args.upper_bound)
        else:
            fail("--inputs is a directory: give --num-update-checkpoints, --num-epoch-checkpoints or --auto")
        if not paths:
            fail(f"no checkpoint_<epoch>_<update>.pt or checkpoint<epoch>.pt files in {d}")
    else:
        if args.num_update_checkpoints or args.num_epoch_checkpoints or args.auto:
            fail("--num-*-checkpoints/--auto need --inputs to be a single directory")
        paths = args.inputs
        for path in paths:
            if not os.path.isfile(path):
                fail(f"checkpoint not found: {path}")

    for path in paths:
        print(path)
    if args.list_only:
        return 0
    if not args.output:
        fail("--output is required unless --list-only")

    state = average(paths)
    out_dir = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(out_dir, exist_ok=True)
    tmp = f"{args.output}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
        os.replace(tmp, args.output)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    print(f"averaged {len(paths)} checkpoints -> {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
