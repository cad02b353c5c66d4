#!/usr/bin/env python3
"""Table of the DDTP language-model study (bench/lm_study.sh): per train-set size, test
perplexity of baseline, R-Drop and LR-Drop over seeds (mean, sample standard deviation, every
seed), its difference to the baseline with Welch's t-test, the epoch each run stopped at, and
training time.

Inputs:  --run-dir (default runs/ddtp-lm): <size>-<mode>-seed<k>/result.json (examples/ddtp/lm.sh),
         and diagnose-test.json beside it (bench/diagnose.py: self-attention and output
         entropy, mean over seeds; "-" where any seed of the row lacks one)
Outputs: RUN_DIR/report.md (printed too), RUN_DIR/report.json
"""
import argparse
import json
import os
import sys

from nlu_report import MODES, NAMES, entropy_cells, load_results, mode_row


def study(results):
    """{size: {mode: {...}}}: test perplexity over seeds, compared with the baseline's, and the
    epochs each run stopped at."""
    groups = {}
    for r in results:
        groups.setdefault(r["size"], {}).setdefault(r["mode"], []).append(r)
    table = {}
    for size, modes in sorted(groups.items()):
        for mode in (m for m in MODES if m in modes):
            row = mode_row(modes[mode], modes.get("baseline", []), "test_ppl", "valid_ppl")
            runs = sorted(modes[mode], key=lambda r: r["seed"])
            row.update(best_epochs=[r["best_epoch"] for r in runs], epochs=[r["epochs"] for r in runs])
            table.setdefault(size, {})[mode] = row
    return table


def markdown(table):
    lines = ["| train descriptions | mode | weights (alpha,beta,gamma) | test perplexity, mean ± sd | per seed | "
             "Δ vs baseline | Welch p | valid perplexity (mean) | best epoch / epochs run | train time per run | time / baseline | "
             "self-attention entropy | output entropy |",
             "|---|---|---|---:|---|---:|---:|---:|---|---:|---:|---:|---:|"]
    for size, modes in table.items():
        for mode, row in modes.items():
            diff = "%+.2f" % row["diff"] if "diff" in row else ""
            p = "%.3f" % row["p_welch"] if row.get("p_welch") is not None else ""
            ratio = "%.2fx" % row["time_ratio"] if "time_ratio" in row else ""
            epochs = " ".join("%d/%d" % pair for pair in zip(row["best_epochs"], row["epochs"]))
            lines.append("| %s | %s | %s | %.2f ± %.2f | %s | %s | %s | %.2f | %s | %.0f s | %s | %s |" % (
                size, NAMES[mode], row["weights"], row["test_mean"], row["test_std"],
                " ".join("%.2f" % v for v in row["test"]), diff, p, row["valid_mean"], epochs,
                row["train_seconds_mean"], ratio, entropy_cells(row)))
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", default="runs/ddtp-lm")
    args = ap.parse_args(argv)
    results = load_results(args.run_dir)
    if not results:
        sys.exit("error: no */result.json under --run-dir %s (run bench/lm_study.sh)" % args.run_dir)
    table = study(results)
    text = markdown(table)
    with open(os.path.join(args.run_dir, "report.md"), "w") as fh:
        fh.write(text)
    with open(os.path.join(args.run_dir, "report.json"), "w") as fh:
        json.dump({"table": table}, fh, indent=1, sort_keys=True)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
