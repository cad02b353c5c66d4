"""Score the fixed-budget runs of bench/ablation.sh at several stopping points, from the
checkpoints they kept of every epoch:

  best        the epoch of the lowest valid loss within the budget (what a fixed budget picks)
  patience K  the checkpoint `--patience K` would have kept: fairseq stops after K validations
              without a strictly lower valid loss, and its checkpoint_best is then the best
              epoch so far (the earlier studies used K = 3)
  epoch E     a given epoch (--epochs), to follow the measures through training
  loss <= L   the first epoch whose valid loss is at or below L (comparison at equal valid
              loss; default targets: the baseline's best valid loss, and the highest best valid
              loss among the other runs, which every one of them reaches)
  nll <= L    the same on the valid NLL, without label smoothing: the smoothing term of the
              loss rewards a flat output distribution, which the output term also produces, so
              runs at equal loss need not be at equal NLL

  best valid score  with --valid --select-on-valid-score: of the --epochs (and the best epoch),
              the one whose valid-split BLEU / ROUGE-L is highest (the earliest on a tie): a
              stopping rule on the generation score itself, which a valid loss need not follow;
              report.md then opens with one row per variant over its seeds (runs named
              <variant>-seed<k>): the chosen epochs, valid and test scores, and their means

Each distinct (run, epoch) is decoded once with examples/ddtp/evaluate.sh (test split) and
measured with bench/diagnose.py (length ratio, loops, entropies, P(EOS) at the reference end);
results are cached in <run>/eval-test-epoch<E>/. With --valid, the valid split is also decoded
at each run's best epoch (the score a choice between variants may use; test never is). A run
still training, or stopped by hand, is reported with the epochs it has and marked "not
complete". Writes <run-dir>/report.md and report.json.

    python bench/ablation_report.py --run-dir runs/ablation-translation \\
        --data-bin data/ddtp-quality-4k/bin/translation-en-de --task translation
"""
import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

Curve = List[Tuple[int, float]]  # (epoch, valid loss), in epoch order


def read_log(train_log: Path) -> Tuple[Curve, int, Dict[int, float]]:
    """(epoch, valid_loss) of every validation in a fairseq JSON log, the seconds spent
    training (each epoch's train_train_wall, summed) and each epoch's valid NLL (without label
    smoothing). A resumed run's log repeats epochs: the last record of an epoch wins."""
    valid, wall, nll = {}, {}, {}
    for line in train_log.read_text().splitlines():
        if not line.startswith('{"'):
            continue
        row = json.loads(line)
        if "valid_loss" in row:
            valid[int(row["epoch"])] = float(row["valid_loss"])
            nll[int(row["epoch"])] = float(row.get("valid_nll_loss", "nan"))
        if "train_train_wall" in row:
            wall[int(row["epoch"])] = float(row["train_train_wall"])
    return sorted(valid.items()), round(sum(wall.values())), nll


def best_epoch(curve: Curve) -> int:
    """The epoch of the lowest valid loss (the latest one on a tie, as fairseq's
    checkpoint_best, which is overwritten when the loss is <= the best so far)."""
    best = None
    for epoch, loss in curve:
        if best is None or loss <= best[1]:
            best = (epoch, loss)
    if best is None:
        raise ValueError("no validation in the log")
    return best[0]


def patience_stop(curve: Curve, patience: int) -> Tuple[int, int, bool]:
    """Where `--patience` would have stopped: (stop epoch, epoch of the checkpoint_best kept
    then, stopped). fairseq counts validations without a STRICTLY lower loss and stops when
    the count reaches `patience`; when the curve ends first, stopped is False and the stop
    epoch is the last one."""
    if patience < 1:
        raise ValueError(f"patience must be >= 1 (got {patience})")
    best_loss, best_at, since = None, None, 0
    for epoch, loss in curve:
        if best_loss is None or loss < best_loss:
            best_loss, since = loss, 0
        else:
            since += 1
        if best_at is None or loss <= best_loss:  # checkpoint_best is written on <=
            best_at = epoch
        if since >= patience:
            return epoch, best_at, True
    if best_at is None:
        raise ValueError("no validation in the log")
    return curve[-1][0], best_at, False


def first_epoch_at_or_below(curve: Curve, target: float) -> Optional[int]:
    """The first epoch whose valid loss is <= target (None if the run never gets there)."""
    return next((epoch for epoch, loss in curve if loss <= target), None)


def stopping_points(curve: Curve, patiences: Sequence[int], targets: Dict[str, Tuple[str, float]],
                    epochs: Sequence[int] = (), nll_curve: Curve = ()) -> Dict[str, Optional[int]]:
    """Point name -> epoch to score (None: not reached). targets: name -> ("loss" or "nll",
    value), reached on the valid loss curve or on the valid NLL curve."""
    trained = {epoch for epoch, _ in curve}
    points = {"best": best_epoch(curve)}
    for epoch in epochs:
        points[f"epoch {epoch}"] = epoch if epoch in trained else None
    for patience in patiences:
        stop, kept, stopped = patience_stop(curve, patience)
        points[f"patience {patience}"] = kept if stopped else None
    for name, (metric, target) in targets.items():
        points[name] = first_epoch_at_or_below(curve if metric == "loss" else nll_curve, target)
    return points


def best_scoring_epoch(scores: Dict[int, float]) -> int:
    """The epoch with the highest valid score; the earliest of equal scores."""
    if not scores:
        raise ValueError("no valid score")
    return min(scores, key=lambda epoch: (-scores[epoch], epoch))


def equal_loss_targets(curves: Dict[str, Curve], explicit: Sequence[float],
                       metric: str = "loss") -> Dict[str, Tuple[str, float]]:
    """The valid losses (metric "loss", label-smoothed, what fairseq's early stopping and
    checkpoint_best use; or "nll") at which runs are compared: the explicit ones, else the
    baseline's best (if a baseline run exists) and the highest best among the other runs."""
    if explicit:
        return {f"{metric} <= {t:.3f}": (metric, t) for t in explicit}
    targets = {}
    bests = {name: min(loss for _, loss in curve) for name, curve in curves.items() if curve}
    baselines = [loss for name, loss in bests.items() if name.startswith("baseline-")]
    others = [loss for name, loss in bests.items() if not name.startswith("baseline-")]
    if baselines:
        targets[f"{metric} <= {max(baselines):.3f} (baseline best)"] = (metric, max(baselines))
    if others:
        targets[f"{metric} <= {max(others):.3f} (common)"] = (metric, max(others))
    return targets


def score_of(score_txt: Path) -> float:
    text = score_txt.read_text()
    match = re.search(r"BLEU = ([0-9.]+)", text) or re.search(r"ROUGE-L = ([0-9.]+)", text)
    if match is None:
        raise ValueError(f"{score_txt}: no BLEU or ROUGE-L line")
    return float(match.group(1))


def evaluate(run: Path, epoch: int, task: str, data_bin: str, python: str, subset: str = "test") -> dict:
    """Decode `subset` with checkpoint<epoch>.pt; on test also diagnose it (cached)."""
    out = run / f"eval-{subset}-epoch{epoch}"
    result_file = out / "result.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    checkpoint = run / f"checkpoint{epoch}.pt"
    if not checkpoint.exists():
        raise FileNotFoundError(f"{checkpoint} missing (train with bench/ablation.sh, which keeps every epoch)")
    env = {**os.environ, "TASK": task, "DATA_BIN": data_bin, "SUBSET": subset, "SAVE_DIR": str(run),
           "CHECKPOINT": str(checkpoint), "OUT_DIR": str(out), "N_EXAMPLES": "0"}
    with open(run / f"eval-{subset}-epoch{epoch}.out", "w") as log:
        subprocess.run(["bash", str(REPO / "examples/ddtp/evaluate.sh")], env=env, stdout=log,
                       stderr=subprocess.STDOUT, check=True)
        result = {"score": score_of(out / "score.txt")}
        if subset == "test":
            subprocess.run([python, str(HERE / "diagnose.py"), "--checkpoint", str(checkpoint), "--data-bin", data_bin,
                            "--subset", subset, "--hyp", str(out / "hyp.txt"), "--ref", str(out / "ref.txt"),
                            "--json", str(out / "diagnose.json")], stdout=log, stderr=subprocess.STDOUT, check=True)
            result.update(json.loads((out / "diagnose.json").read_text()))
    result_file.write_text(json.dumps(result, indent=1) + "\n")
    return result


def table(rows: List[dict], metric: str) -> str:
    lines = [f"| run | point | epoch | valid loss | valid NLL | {metric} | length ratio | loops % "
             "| attention entropy enc / dec / cross | output entropy | P(EOS) at end / inside |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---|"]
    for row in rows:
        if row["epoch"] is None:
            lines.append(f"| {row['run']} | {row['point']} | not reached | | | | | | | | |")
            continue
        r = row["result"]
        attention = " / ".join("%.2f" % r["attention_entropy"][m] for m in ("encoder_self", "decoder_self", "decoder_cross"))
        lines.append(f"| {row['run']} | {row['point']} | {row['epoch']} | {row['valid_loss']:.3f} | {row['valid_nll']:.3f} | {r['score']:.2f} "
                     f"| {r['length_ratio']:.3f} | {100 * r['loop_share']:.1f} | {attention} "
                     f"| {r['output_entropy']:.2f} | {r['eos_prob_at_end']:.3f} / {r['eos_prob_inside']:.4f} |")
    return "\n".join(lines) + "\n"


def variant_selection(summary: List[dict], rows: List[dict]) -> List[dict]:
    """One entry per variant (run names <variant>-seed<k>), over its seeds: the epoch the valid
    score chose, that valid score, the test score there and at the best valid loss, and their
    means. Needs the 'best valid score' rows (--select-on-valid-score)."""
    test = {(row["run"], row["point"]): row["result"]["score"] for row in rows if row["result"] is not None}
    chosen = {row["run"]: row["epoch"] for row in rows if row["point"] == "best valid score"}
    variants: Dict[str, List[dict]] = {}
    for s in summary:
        if s["run"] not in chosen:
            continue
        variant, _, seed = s["run"].rpartition("-seed")
        variants.setdefault(variant, []).append({
            "seed": int(seed), "epoch": chosen[s["run"]], "complete": s["complete"],
            "valid": s["valid_scores"][str(chosen[s["run"]])],
            "test": test[(s["run"], "best valid score")], "test_at_best_loss": test[(s["run"], "best")]})
    out = []
    for variant, seeds in variants.items():
        seeds.sort(key=lambda x: x["seed"])
        mean = lambda key: sum(x[key] for x in seeds) / len(seeds)
        out.append({"variant": variant, "seeds": seeds, "mean_valid": mean("valid"), "mean_test": mean("test"),
                    "mean_test_at_best_loss": mean("test_at_best_loss")})
    return out


def selection_table(selection: List[dict], metric: str) -> str:
    lines = [f"| variant | seed | epoch chosen by valid score | valid score there | {metric} there "
             f"| mean valid | mean {metric} | mean {metric} at the best valid loss |",
             "|---|---|---|---|---|---:|---:|---:|"]
    for v in selection:
        per_seed = lambda fmt: " / ".join(fmt(x) for x in v["seeds"])
        lines.append(f"| {v['variant']} | {per_seed(lambda x: str(x['seed']))} "
                     f"| {per_seed(lambda x: str(x['epoch']) + ('' if x['complete'] else ' (not complete)'))} "
                     f"| {per_seed(lambda x: '%.2f' % x['valid'])} | {per_seed(lambda x: '%.2f' % x['test'])} "
                     f"| {v['mean_valid']:.2f} | {v['mean_test']:.2f} | {v['mean_test_at_best_loss']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", required=True, help="bench/ablation.sh's RUN_DIR")
    parser.add_argument("--data-bin", required=True, help="the binarized data the runs trained on")
    parser.add_argument("--task", default="translation", choices=("translation", "summarization"))
    parser.add_argument("--patience", type=int, nargs="*", default=[3, 10], help="patience values to simulate")
    parser.add_argument("--equal-loss", type=float, nargs="*", default=[],
                        help="valid losses to compare at (default: see the module docstring)")
    parser.add_argument("--equal-nll", type=float, nargs="*", default=[],
                        help="valid NLLs (no label smoothing) to compare at (default: as for the loss)")
    parser.add_argument("--epochs", type=int, nargs="*", default=[],
                        help="also score these epochs (e.g. every 20th, to follow a measure through training)")
    parser.add_argument("--valid", action="store_true",
                        help="also score the valid split at each run's best epoch (what choices may use)")
    parser.add_argument("--select-on-valid-score", action="store_true",
                        help="with --valid: also decode valid at every --epochs epoch and add the point "
                             "'best valid score' (the epoch with the highest valid BLEU / ROUGE-L)")
    parser.add_argument("--runs", nargs="*", help="run directory names to report (default: every trained run)")
    parser.add_argument("--python", default=sys.executable, help="interpreter for bench/diagnose.py")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        parser.error(f"--run-dir {run_dir} does not exist (train with bench/ablation.sh first)")
    if not Path(args.data_bin).is_dir():
        parser.error(f"--data-bin {args.data_bin} does not exist")
    if args.select_on_valid_score and not (args.valid and args.epochs):
        parser.error("--select-on-valid-score needs --valid and --epochs (the epochs to choose from)")
    if any(p < 1 for p in args.patience):
        parser.error("--patience values must be >= 1")
    # every run with a validated epoch; one still training (or stopped early by hand) is
    # reported with the epochs it has, and marked as not complete
    logs = {p.parent: read_log(p) for p in sorted(run_dir.glob("*/train.log"))}
    runs = [run for run, (curve, _, _) in logs.items() if curve]
    if args.runs:
        wanted = set(args.runs)
        runs = [r for r in runs if r.name in wanted]
        missing = wanted - {r.name for r in runs}
        if missing:
            parser.error(f"--runs: {sorted(missing)[0]} is not a run with a validated epoch in {run_dir}")
    if not runs:
        parser.error(f"no run with a validated epoch in {run_dir} (train with bench/ablation.sh)")

    curves = {run.name: logs[run][0] for run in runs}
    nll_curves = {run.name: sorted(logs[run][2].items()) for run in runs}
    metric = "test sacreBLEU" if args.task == "translation" else "test ROUGE-L"
    targets = {**equal_loss_targets(curves, args.equal_loss),
               **equal_loss_targets(nll_curves, args.equal_nll, "nll")}
    rows, summary = [], []
    for run in runs:
        curve = curves[run.name]
        losses = dict(curve)
        points = stopping_points(curve, args.patience, targets, args.epochs, nll_curves[run.name])
        valid = evaluate(run, points["best"], args.task, args.data_bin, args.python, "valid") if args.valid else None
        valid_scores = {points["best"]: valid["score"]} if valid else {}
        if args.select_on_valid_score:
            for epoch in args.epochs:
                if epoch in losses:
                    valid_scores[epoch] = evaluate(run, epoch, args.task, args.data_bin, args.python, "valid")["score"]
            points["best valid score"] = best_scoring_epoch(valid_scores)
        summary.append({"run": run.name, "epochs": curve[-1][0], "complete": (run / "trained").exists(),
                        "best_epoch": points["best"], "best_valid_loss": losses[points["best"]],
                        "valid_score_at_best": valid["score"] if valid else None,
                        "valid_scores": {str(e): valid_scores[e] for e in sorted(valid_scores)},
                        "train_seconds": logs[run][1]})
        for point, epoch in points.items():
            result = evaluate(run, epoch, args.task, args.data_bin, args.python) if epoch is not None else None
            rows.append({"run": run.name, "point": point, "epoch": epoch, "valid_loss": losses.get(epoch),
                         "valid_nll": logs[run][2].get(epoch), "result": result})
            print(f"{run.name} {point}: epoch {epoch}" + (f" score {result['score']:.2f}" if result else ""), flush=True)
    valid_metric = metric.replace("test", "valid")
    runs_table = [f"| run | epochs trained | best epoch | best valid loss | {valid_metric} at best | training time (s) |",
                  "|---|---:|---:|---:|---:|---:|"]
    runs_table += [f"| {s['run']} | {s['epochs']}{'' if s['complete'] else ' (not complete)'} | {s['best_epoch']} "
                   f"| {s['best_valid_loss']:.3f} | {'-' if s['valid_score_at_best'] is None else '%.2f' % s['valid_score_at_best']} "
                   f"| {s['train_seconds']} |" for s in summary]
    text = "\n".join(runs_table) + "\n\n" + table(rows, metric)
    selection = variant_selection(summary, rows) if args.select_on_valid_score else []
    if selection:  # seeds listed in seed order, separated by " / "
        text = selection_table(selection, metric) + "\n" + text
    (run_dir / "report.md").write_text(text)
    (run_dir / "report.json").write_text(json.dumps({"targets": targets, "runs": summary, "rows": rows,
                                                     "selection": selection}, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
