"""Plots for BENCHMARKS.md from fairseq's own outputs.

    python bench/plot.py curves NAME=train.log [NAME=train.log ...] --out curves.png
    python bench/plot.py speed bench/speed-small-cpu.json --out speed.png
    python bench/plot.py speed old.json new.json --labels "before,after" --out speed.png

`curves` reads logs written with `--log-format json` (stdout or --log-file) and draws, per
configuration, every logged training term (loss, hidden_reg, attn_reg, output_reg) against
updates, and the validation loss. `speed` draws step time and peak memory bars from the JSON
that bench/speed.py writes; given several, it groups the bars by configuration, one colour per
file (e.g. a run before a change next to one after it).
"""
import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TRAIN_TERMS = ("loss", "hidden_reg", "attn_reg", "output_reg")


def read_log(path):
    """(train_inner records, valid records) of a fairseq json log, values as floats.

    Reads both forms: console lines ("... | train_inner | {...}") and --log-file lines (bare
    JSON, where validation keys start with valid_ and epoch summaries with train_)."""
    train, valid = [], []
    for line in Path(path).read_text().splitlines():
        if "| train_inner | " in line or "| valid | " in line:
            tag, payload = ("train", line.split("| train_inner | ", 1)[-1]) if "| train_inner | " in line \
                else ("valid", line.split("| valid | ", 1)[1])
        elif line.startswith('{"'):
            payload = line
            tag = "valid" if '"valid_loss"' in line else "summary" if '"train_loss"' in line else "train"
        else:
            continue
        if tag == "summary":
            continue
        record = {k: float(v) for k, v in json.loads(payload).items() if _is_number(v)}
        if "rdrop_kl_loss" in record:  # fairseq's R-Drop criterion: the same per-token symmetric KL
            record.setdefault("output_reg", record["rdrop_kl_loss"])
        if tag == "train" and train and record.get("num_updates", 0) <= train[-1].get("num_updates", 0):
            # appended by a resumed run (or a fresh one): the newer records replace the older
            # ones from that update on
            start = record.get("num_updates", 0)
            train = [r for r in train if r.get("num_updates", 0) < start]
            valid = [r for r in valid if r.get("valid_num_updates", 0) < start]
        (train if tag == "train" else valid).append(record)
    if not train and not valid:
        sys.exit(f"error: {path} has no train_inner/valid json records; train with --log-format json")
    return train, valid


def _is_number(value):
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False


def plot_curves(runs, out):
    panels = [*TRAIN_TERMS, "valid_loss"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for color, (name, path) in enumerate(runs):
        train, valid = read_log(path)
        for ax, term in zip(axes, panels):
            records, x_key = (valid, "valid_num_updates") if term == "valid_loss" else (train, "num_updates")
            points = [(r[x_key], r[term]) for r in records if term in r and x_key in r]
            if points:
                ax.plot(*zip(*points), label=name, color=f"C{color}",
                        marker="." if term == "valid_loss" else None)
    for ax, term in zip(axes, panels):
        ax.set_title(term + (" (per token, base 2)" if term != "valid_loss" else ""), fontsize=9)
        ax.set_xlabel("updates")
        ax.grid(alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def plot_speed(paths, labels, out):
    results = [json.loads(Path(path).read_text()) for path in paths]
    names = list(dict.fromkeys(name for result in results for name in result["rows"]))
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(names) * len(results) ** 0.5 + 2), 3.4))
    width = 0.8 / len(results)
    for ax, key, title in ((axes[0], "step_ms", "median step time (ms)"),
                           (axes[1], "peak_mib", "peak memory (MiB)")):
        for index, (result, label) in enumerate(zip(results, labels)):
            shown = [n for n in names if n in result["rows"]]
            positions = [names.index(n) + (index - (len(results) - 1) / 2) * width for n in shown]
            colors = f"C{index}" if len(results) > 1 else ["#888888", "#4c72b0", "#dd8452", "#55a868", "#8172b3"]
            bars = ax.bar(positions, [result["rows"][n][key] for n in shown], width=width, label=label, color=colors)
            ax.bar_label(bars, fmt="%.0f", fontsize=7)
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.margins(y=0.15)
        ax.set_title(title, fontsize=9)
    if len(results) > 1:
        axes[0].legend(fontsize=8)
    first = results[0]
    fig.suptitle(f"{first['preset']} preset, {first['device']} ({first['machine']}), {first['dtype']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    curves = sub.add_parser("curves", help="training curves from fairseq json logs")
    curves.add_argument("runs", nargs="+", metavar="NAME=LOG")
    curves.add_argument("--out", required=True)
    speed = sub.add_parser("speed", help="bars from bench/speed.py JSON (several: side by side)")
    speed.add_argument("json", nargs="+")
    speed.add_argument("--labels", default=None, help="comma-separated, one per JSON (default: the file names)")
    speed.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.command == "curves":
        runs = []
        for spec in args.runs:
            name, sep, path = spec.partition("=")
            if not sep or not Path(path).is_file():
                sys.exit(f"error: expected NAME=LOG with an existing log file, got {spec!r}")
            runs.append((name, path))
        plot_curves(runs, args.out)
    else:
        missing = [path for path in args.json if not Path(path).is_file()]
        if missing:
            sys.exit(f"error: {missing[0]} does not exist; run bench/speed.py --json {missing[0]} first")
        labels = args.labels.split(",") if args.labels else [Path(path).stem for path in args.json]
        if len(labels) != len(args.json):
            sys.exit(f"error: --labels names {len(labels)} runs for {len(args.json)} JSON files; give one label per file")
        plot_speed(args.json, labels, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
