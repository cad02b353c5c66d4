#!/usr/bin/env python3
"""Which test examples the study's classifiers disagree on: the test set as a sample, beside
the seeds.

bench/nlu_report.py pairs the modes by seed, so its p-values measure the training randomness
(dropout, head initialisation, batch order) on one fixed test set. Fine-tuning a pre-trained
encoder can move so few predictions that a difference consistent over seeds still rests on a
handful of examples; this report counts them and tests the difference over examples.

    python bench/example_agreement.py --run-dir runs/minilm/classification

Inputs:  --run-dir (bench/minilm_study.sh's or nlu_study.sh's RUN_DIR):
         <run>-seed<k>/result.json and checkpoint_best.pt
Outputs: <run>-seed<k>/correct-<subset>.json (1/0 per example in id order; reused on a rerun),
         RUN_DIR/agreement.md (printed too) and RUN_DIR/agreement.json. Per task and size, for
         each pair of modes (modes paired by seed): every seed's discordant examples (right in
         the first mode and wrong in the second, and the reverse), the per-example difference of
         seed-mean correctness (points) with a one-sample t-test and a Wilcoxon signed-rank test
         over test examples, and how many examples every run gets right or every run gets wrong.
"""
import argparse
import glob
import itertools
import json
import os
import sys
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch
from scipy.stats import ttest_1samp, wilcoxon

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from nlu_report import MODES, mode_name  # noqa: E402


def compare_correct(first: Sequence[Sequence[int]], second: Sequence[Sequence[int]]) -> dict:
    """first, second: seeds x examples of 1 (right) / 0 (wrong), row k of each from seed k.
    discordant[k] = (right only in first, right only in second) for seed k; difference = mean
    over examples of (first's seed-mean correctness - second's), in points, tested over the
    examples (t-test on all, Wilcoxon on those that differ; p = 1 where none differ)."""
    a, b = np.asarray(first, dtype=np.int64), np.asarray(second, dtype=np.int64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError("both modes need the same seeds x examples, got %s and %s" % (a.shape, b.shape))
    per_example = a.mean(0) - b.mean(0)
    differing = per_example[per_example != 0]
    return {"discordant": [[int((x & (1 - y)).sum()), int(((1 - x) & y).sum())] for x, y in zip(a, b)],
            "difference": 100 * float(per_example.mean()),
            "examples_differing": int(differing.size),
            "t_p": float(ttest_1samp(per_example, 0).pvalue) if differing.size else 1.0,
            "wilcoxon_p": float(wilcoxon(differing).pvalue) if differing.size else 1.0}


def score_examples(checkpoint: str, subset: str) -> List[int]:
    """1/0 per example of the subset, in id order: the classifier's argmax against the label
    (eval mode, the data the checkpoint was trained on)."""
    from diagnose import eval_batches

    model, cfg, task, batches = eval_batches(checkpoint, None, subset, max_tokens=4000)
    dataset = task.dataset(subset)
    head = cfg.criterion.classification_head_name
    right = {}
    with torch.no_grad():
        for sample in batches:
            logits, _ = model(**sample["net_input"], features_only=True, classification_head_name=head)
            hits = logits.argmax(-1).eq(sample["target"].view(-1))
            right.update(zip(sample["id"].tolist(), hits.int().tolist()))
    if len(right) != len(dataset):
        raise SystemExit("error: %s: %d of %d %s examples scored (inputs longer than the model's positions?)"
                         % (checkpoint, len(right), len(dataset), subset))
    return [right[i] for i in sorted(right)]


def load_runs(run_dir: str, subset: str) -> Dict[str, Dict[str, dict]]:
    """{"<task>-<size>": {"<mode> <weights>": {seed: correctness}}}, computing what is missing."""
    groups: Dict[str, Dict[str, dict]] = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "*-seed*", "result.json"))):
        run = os.path.dirname(path)
        with open(path) as fh:
            result = json.load(fh)
        cached = os.path.join(run, "correct-%s.json" % subset)
        if not os.path.exists(cached):
            checkpoint = os.path.join(run, "checkpoint_best.pt")
            if not os.path.exists(checkpoint):
                raise SystemExit("error: %s missing and no %s cached: rerun the study's run, or drop the run" % (checkpoint, cached))
            correct = score_examples(checkpoint, subset)
            with open(cached + ".tmp", "w") as fh:
                json.dump(correct, fh)
            os.replace(cached + ".tmp", cached)
        with open(cached) as fh:
            correct = json.load(fh)
        key = "%s-%s" % (result["task"], result["size"])
        mode = "%s %s" % (result["mode"], result["weights"])
        groups.setdefault(key, {}).setdefault(mode, {})[result["seed"]] = correct
    return groups


def report(groups: Dict[str, Dict[str, dict]]) -> dict:
    table = {}
    for key, modes in sorted(groups.items()):
        names = sorted(modes, key=lambda m: (MODES.index(m.split()[0]), m))
        every = np.array([c for m in names for c in modes[m].values()])
        table[key] = {"runs": len(every), "examples": every.shape[1],
                      "right_in_every_run": int(every.all(0).sum()), "wrong_in_every_run": int((~every.any(0)).sum()),
                      "pairs": []}
        for second, first in itertools.combinations(names, 2):   # later mode - earlier mode
            seeds = sorted(set(modes[first]) & set(modes[second]))
            if not seeds:
                continue
            result = compare_correct([modes[first][s] for s in seeds], [modes[second][s] for s in seeds])
            table[key]["pairs"].append({"first": first, "second": second, "seeds": seeds, **result})
    return table


def mode_label(mode: str) -> str:
    """"baseline" for "baseline 0,0,0", nlu_report's "R-Drop (0,0,0.5)" for "rdrop 0,0,0.5"."""
    return mode_name("baseline" if mode.startswith("baseline") else mode)


def markdown(table: dict) -> str:
    lines = []
    for key, cell in table.items():
        lines += ["%s: %d runs, %d test examples; %d right in every run, %d wrong in every run." % (
                      key, cell["runs"], cell["examples"], cell["right_in_every_run"], cell["wrong_in_every_run"]), "",
                  "| difference | discordant per seed (right only in the first, only in the second) | "
                  "examples differing | mean (points) | t over examples p | Wilcoxon p |",
                  "|---|---|---:|---:|---:|---:|"]
        for pair in cell["pairs"]:
            lines.append("| %s - %s | %s | %d | %+.2f | %.3f | %.3f |" % (
                mode_label(pair["first"]), mode_label(pair["second"]),
                " ".join("%d/%d" % tuple(d) for d in pair["discordant"]), pair["examples_differing"],
                pair["difference"], pair["t_p"], pair["wilcoxon_p"]))
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--subset", default="test")
    args = parser.parse_args(argv)
    if not glob.glob(os.path.join(args.run_dir, "*-seed*", "result.json")):
        raise SystemExit("error: --run-dir %s holds no <run>-seed<k>/result.json (a study's RUN_DIR)" % args.run_dir)
    torch.set_num_threads(1)
    table = report(load_runs(args.run_dir, args.subset))
    text = markdown(table)
    with open(os.path.join(args.run_dir, "agreement.md"), "w") as fh:
        fh.write(text)
    with open(os.path.join(args.run_dir, "agreement.json"), "w") as fh:
        json.dump(table, fh, indent=1)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
