#!/usr/bin/env python3
"""Tables of the DDTP fine-tuning study (bench/nlu_study.sh): per task and train-set size,
test accuracy of baseline, R-Drop and LR-Drop over seeds (mean, sample standard deviation,
every seed), its difference to the baseline with Welch's t-test (scipy), the paired
differences by seed (baseline vs R-Drop, baseline vs LR-Drop, R-Drop vs LR-Drop: mean, sd, and
the paired t-test's p, with the number of such comparisons in the report for a Bonferroni
reading), and training time; plus the valid accuracies that chose R-Drop's and LR-Drop's
weights.

Inputs:  --run-dir (default runs/ddtp-nlu): <task>-<size>-<mode>...-seed<k>/result.json (and
         diagnose-test.json beside it, bench/diagnose.py's entropies: its columns then show
         the mean over seeds, "-" where any seed of the row lacks one),
         <task>-<size>-{rdrop,lrdrop}-choice.txt (the chosen weights, then every candidate's
         "weights=valid accuracy"), <task>-<size>-pretrained/diagnose-test.json (optional:
         the pre-trained model's entropies before fine-tuning, bench/minilm_study.sh)
Outputs: RUN_DIR/report.md (printed too), RUN_DIR/report.json, and with --plot FILE a strip
         plot of test accuracy per seed (matplotlib)
"""
import argparse
import glob
import json
import os
import statistics
import sys

from scipy.stats import ttest_ind, ttest_rel

MODES = ("baseline", "rdrop", "lrdrop")
NAMES = {"baseline": "baseline", "rdrop": "R-Drop", "lrdrop": "LR-Drop"}


def mode_name(mode):
    """"LR-Drop", or "LR-Drop (0,0.01,1)" for a variant row ("lrdrop 0,0.01,1": runs with
    other weights than the ones chosen on valid)."""
    name, _, weights = mode.partition(" ")
    return "%s (%s)" % (NAMES[name], weights) if weights else NAMES[name]


def weight_values(weights):
    """"0.001,0.001,0.5" -> (0.001, 0.001, 0.5), so that "1" and "1.0" are the same weights."""
    return tuple(float(w) for w in weights.split(","))


def load_results(run_dir):
    """Every <run>-seed<k>/result.json, with its run's diagnose-test.json as "diagnosis"
    (None when absent)."""
    results = []
    for path in sorted(glob.glob(os.path.join(run_dir, "*-seed*", "result.json"))):
        with open(path) as fh:
            result = json.load(fh)
        diagnosis = os.path.join(os.path.dirname(path), "diagnose-test.json")
        result["diagnosis"] = None
        if os.path.exists(diagnosis):
            with open(diagnosis) as fh:
                result["diagnosis"] = json.load(fh)
        results.append(result)
    return results


def load_pretrained(run_dir):
    """{"<task>-<size>": bench/diagnose.py's measures of the pre-trained model before fine-tuning}."""
    pretrained = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "*-pretrained", "diagnose-test.json"))):
        with open(path) as fh:
            pretrained[os.path.basename(os.path.dirname(path))[: -len("-pretrained")]] = json.load(fh)
    return pretrained


def load(run_dir):
    results = load_results(run_dir)
    choices = {}   # {"<task>-<size>": {...}} for LR-Drop; {"<task>-<size>-rdrop": {...}} for R-Drop
    for mode in ("lrdrop", "rdrop"):
        for path in glob.glob(os.path.join(run_dir, "*-%s-choice.txt" % mode)):
            key = os.path.basename(path)[: -len("-%s-choice.txt" % mode)]
            with open(path) as fh:
                fields = fh.read().split()
            choices[key + ("-rdrop" if mode == "rdrop" else "")] = {
                "weights": fields[0], "valid": dict(f.split("=") for f in fields[1:])}
    return results, choices


def summarize(values):
    """mean and sample standard deviation (0 for a single value)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def compare(mode_values, baseline_values):
    """Difference of means and Welch's t-test p-value (None when either side has < 2 seeds)."""
    diff = statistics.mean(mode_values) - statistics.mean(baseline_values)
    if len(mode_values) < 2 or len(baseline_values) < 2:
        return diff, None
    return diff, float(ttest_ind(mode_values, baseline_values, equal_var=False).pvalue)


def paired(runs, other_runs, key):
    """Paired by seed (the seeds both sides ran): {"seeds", "diff_mean", "diff_std", "p"} of
    runs - other_runs, p from the paired t-test (None below 2 pairs or with no spread)."""
    mine = {r["seed"]: r[key] for r in runs}
    theirs = {r["seed"]: r[key] for r in other_runs}
    seeds = sorted(set(mine) & set(theirs))
    if not seeds:
        return None
    diffs = [mine[s] - theirs[s] for s in seeds]
    mean, std = summarize(diffs)
    p = None
    if len(seeds) > 1 and std > 0:
        p = float(ttest_rel([mine[s] for s in seeds], [theirs[s] for s in seeds]).pvalue)
    return {"seeds": seeds, "diff_mean": mean, "diff_std": std, "p": p}


def entropy_means(runs):
    """Means over the runs of bench/diagnose.py's test-set entropies (nats): the model's one
    self-attention module (a classifier's encoder, a language model's decoder) and its output
    distribution; None unless every run has a diagnosis with that value."""
    def mean(values):
        return statistics.mean(values) if values and None not in values else None

    diagnoses = [r.get("diagnosis") for r in runs]
    if None in diagnoses:
        return {"self_attention_entropy": None, "output_entropy": None}
    attention = [[v for v in d["attention_entropy"].values() if v is not None] for d in diagnoses]
    return {"self_attention_entropy": mean([a[0] if len(a) == 1 else None for a in attention]),
            "output_entropy": mean([d["output_entropy"] for d in diagnoses])}


def mode_row(runs, base, test_key, valid_key):
    """One mode's row over its seeds: the test metric per seed, mean and sd, the valid mean,
    training time, the entropy means (entropy_means), and against the baseline's runs (base)
    the difference, Welch's p and the time ratio."""
    runs = sorted(runs, key=lambda r: r["seed"])
    test = [r[test_key] for r in runs]
    mean, std = summarize(test)
    row = {"weights": runs[0]["weights"], "seeds": [r["seed"] for r in runs], "test": test,
           "test_mean": mean, "test_std": std, "valid_mean": statistics.mean(r[valid_key] for r in runs),
           "train_seconds_mean": statistics.mean(r["train_seconds"] for r in runs), **entropy_means(runs)}
    if base and runs[0]["mode"] != "baseline":
        row["diff"], row["p_welch"] = compare(test, [r[test_key] for r in base])
        row["paired_vs_baseline"] = paired(runs, base, test_key)
        row["time_ratio"] = row["train_seconds_mean"] / statistics.mean(r["train_seconds"] for r in base)
    return row


def study(results, choices):
    """{(task, size): {mode: {...}}} over the runs that count: baseline, and R-Drop and LR-Drop
    with the weights chosen on valid (every run when no choice was recorded). R-Drop or LR-Drop
    runs with other weights (the grid's first-seed runs, an ablation such as attention-only, a
    candidate run over every seed) become variant rows "<mode> <weights>" where at least two
    seeds ran them. Besides each row against the baseline, rows are paired by seed: LR-Drop
    with R-Drop, a variant with its mode's chosen row, and every LR-Drop row with the R-Drop
    row of the same gamma (the layer terms on and off)."""
    groups = {}
    for r in results:
        key = "%s-%s" % (r["task"], r["size"])
        mode = r["mode"]
        choice = choices.get(key + ("-rdrop" if mode == "rdrop" else "")) if mode in ("rdrop", "lrdrop") else None
        if choice and weight_values(r["weights"]) != weight_values(choice["weights"]):
            mode = "%s %s" % (mode, r["weights"])
        groups.setdefault(key, {}).setdefault(mode, []).append(r)
    table = {}
    for key, modes in sorted(groups.items()):
        variants = sorted(m for m in modes if " " in m and len(modes[m]) > 1)
        rows = [m for m in MODES if m in modes] + variants
        table[key] = {mode: mode_row(modes[mode], modes.get("baseline", []), "test_accuracy", "valid_accuracy")
                      for mode in rows}
        pairs = [("lrdrop", "rdrop")] + [(variant, variant.split()[0]) for variant in variants]
        pairs += [(first, second) for first in rows if first.startswith("lrdrop") for second in rows
                  if second.startswith("rdrop")
                  and weight_values(table[key][first]["weights"])[2] == weight_values(table[key][second]["weights"])[2]]
        for first, second in pairs:
            if first in table[key] and second in table[key] and "paired_vs_" + second not in table[key][first]:
                table[key][first]["paired_vs_" + second] = paired(modes[first], modes[second], "test_accuracy")
    return table


def paired_comparisons(table):
    """[(task-size, "A - B", paired dict)] of every paired comparison the report makes."""
    return [(key, "%s - %s" % (mode_name(mode), mode_name(field[len("paired_vs_"):])), comparison)
            for key, modes in table.items() for mode, row in modes.items()
            for field, comparison in row.items() if field.startswith("paired_vs_") and comparison]


def entropy_cells(row):
    """The two entropy columns of a row: "%.3f" or "-"."""
    return " | ".join("-" if row[key] is None else "%.3f" % row[key]
                      for key in ("self_attention_entropy", "output_entropy"))


def markdown(table, choices, pretrained=None):
    lines = ["| task, train size | mode | weights (alpha,beta,gamma) | test accuracy, mean ± sd | per seed | "
             "Δ vs baseline | Welch p | valid accuracy (mean) | train time per run | time / baseline | "
             "encoder self-attention entropy | class entropy |",
             "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for key, modes in table.items():
        for mode, row in modes.items():
            diff = "%+.2f" % row["diff"] if "diff" in row else ""
            p = "%.3f" % row["p_welch"] if row.get("p_welch") is not None else ""
            ratio = "%.2fx" % row["time_ratio"] if "time_ratio" in row else ""
            lines.append("| %s | %s | %s | %.2f ± %.2f | %s | %s | %s | %.2f | %.0f s | %s | %s |" % (
                key, mode_name(mode), row["weights"], row["test_mean"], row["test_std"],
                " ".join("%.1f" % v for v in row["test"]), diff, p, row["valid_mean"],
                row["train_seconds_mean"], ratio, entropy_cells(row)))
    comparisons = paired_comparisons(table)
    if comparisons:
        tested = sum(1 for _, _, c in comparisons if c["p"] is not None)
        lines += ["", "Paired by seed (test accuracy, points); %d paired t-tests in this table, so "
                  "p < %.4f is significant at 0.05 after Bonferroni:" % (tested, 0.05 / max(tested, 1)), "",
                  "| task, train size | difference | seeds | mean ± sd | paired t p |", "|---|---|---:|---:|---:|"]
        for key, name, c in comparisons:
            lines.append("| %s | %s | %d | %+.2f ± %.2f | %s |" % (
                key, name, len(c["seeds"]), c["diff_mean"], c["diff_std"], "" if c["p"] is None else "%.3f" % c["p"]))
    if pretrained:
        lines += ["", "Before fine-tuning (the pre-trained model with its new head, test split):", "",
                  "| task, train size | encoder self-attention entropy | class entropy |", "|---|---:|---:|"]
        for key, row in pretrained.items():
            lines.append("| %s | %s |" % (key, entropy_cells(row)))
    if choices:
        lines += ["", "Weights chosen on valid accuracy (first seed; R-Drop rows end in -rdrop):", "",
                  "| task, train size | valid accuracy per triple | chosen |", "|---|---|---|"]
        for key, choice in sorted(choices.items()):
            lines.append("| %s | %s | %s |" % (key, ", ".join("%s: %s" % kv for kv in choice["valid"].items()),
                                               choice["weights"]))
    return "\n".join(lines) + "\n"


def plot(table, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(table)
    width = max(4, 1.4 * max(len(table[key]) for key in keys))   # room for every mode's label
    fig, axes = plt.subplots(1, len(keys), figsize=(width * len(keys), 3.8), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for x, mode in enumerate(table[key]):
            row = table[key][mode]
            ax.scatter([x] * len(row["test"]), row["test"], alpha=0.7)
            ax.errorbar([x + 0.15], [row["test_mean"]], yerr=[row["test_std"]], fmt="o", color="black")
        ax.set_xticks(range(len(table[key])))
        ax.set_xticklabels([mode_name(m).replace(" (", "\n(") for m in table[key]], fontsize=8)
        ax.set_title(key)
        ax.set_ylabel("test accuracy (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", default="runs/ddtp-nlu")
    ap.add_argument("--plot", help="write a PNG strip plot of test accuracy per seed here")
    args = ap.parse_args(argv)
    results, choices = load(args.run_dir)
    if not results:
        sys.exit("error: no */result.json under --run-dir %s (run bench/nlu_study.sh)" % args.run_dir)
    table = study(results, choices)
    pretrained = {key: entropy_means([{"diagnosis": d}]) for key, d in load_pretrained(args.run_dir).items()}
    text = markdown(table, choices, pretrained)
    with open(os.path.join(args.run_dir, "report.md"), "w") as fh:
        fh.write(text)
    with open(os.path.join(args.run_dir, "report.json"), "w") as fh:
        json.dump({"table": table, "choices": choices, "pretrained": pretrained}, fh, indent=1, sort_keys=True)
    if args.plot:
        plot(table, args.plot)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
