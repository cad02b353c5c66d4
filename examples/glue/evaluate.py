#!/usr/bin/env python3
"""Score a fine-tuned GLUE checkpoint on the dev split (the `valid` split of prepare.py's
output) with GLUE's metric for the task, computed by scikit-learn / scipy.

Inputs:  --checkpoint (from examples/glue/train.sh), --data-bin (prepare.py's output), --task
         (a GLUE task, or `other`: accuracy of any single-label classifier, e.g. the DDTP
         tasks of examples/ddtp/finetune.sh), --split (valid; test where the data has one)
Outputs: one JSON line on stdout: {"task", "checkpoint", "examples", and the task's metrics:
         accuracy; F1 (MRPC, QQP); MCC (CoLA); Pearson and Spearman (STS-B)}, metrics x 100.
Knobs:   --batch-size (default 32), --cpu (default: a GPU when torch sees one).
"""
import argparse
import json
import sys
from pathlib import Path

import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

REPO = Path(__file__).resolve().parents[2]
TASKS = ("CoLA", "SST-2", "MRPC", "QQP", "STS-B", "MNLI", "QNLI", "RTE", "other")


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def predictions(checkpoint: Path, data_bin: Path, batch_size: int, cpu: bool, split: str = "valid"):
    """(predictions, targets) over one split, in dataset order."""
    sys.path.insert(0, str(REPO))
    import fairseq_lrdrop  # noqa: F401  (the lr_drop_ models; checkpoint loading on torch >= 2.6)
    from fairseq import checkpoint_utils

    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(checkpoint)], arg_overrides={"data": str(data_bin)})
    model = models[0].eval()
    use_cuda = torch.cuda.is_available() and not cpu
    if use_cuda:
        model.cuda()
    task.load_dataset(split)
    dataset = task.dataset(split)
    head = cfg.criterion.get("classification_head_name", "sentence_classification_head")
    regression = cfg.task.regression_target
    predicted, gold = [], []
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            sample = dataset.collater([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            net_input = {k: (v.cuda() if use_cuda and torch.is_tensor(v) else v) for k, v in sample["net_input"].items()}
            logits, _ = model(**net_input, features_only=True, classification_head_name=head)
            predicted += (logits.view(-1) if regression else logits.argmax(-1)).float().cpu().tolist()
            gold += sample["target"].view(-1).float().tolist()
    if not regression:  # label ids back to the labels the tsv had ("1", "entailment", ...)
        labels = task.label_dictionary
        predicted = [labels[int(p) + labels.nspecial] for p in predicted]
        gold = [labels[int(g) + labels.nspecial] for g in gold]
    return predicted, gold


def scores(task: str, predicted, gold) -> dict:
    if task == "STS-B":
        return {"pearson": 100 * pearsonr(predicted, gold)[0], "spearman": 100 * spearmanr(predicted, gold)[0]}
    result = {"accuracy": 100 * accuracy_score(gold, predicted)}
    if task in ("MRPC", "QQP"):
        result["f1"] = 100 * f1_score(gold, predicted, pos_label="1")
    if task == "CoLA":
        result["mcc"] = 100 * matthews_corrcoef(gold, predicted)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data-bin", type=Path, required=True)
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--split", default="valid", help="valid (GLUE's dev) or test")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--cpu", action="store_true")
    args = parser.parse_args()
    if not args.checkpoint.is_file():
        fail(f"--checkpoint: {args.checkpoint} not found")
    if not (args.data_bin / "input0" / "dict.txt").is_file():
        fail(f"--data-bin: {args.data_bin}/input0/dict.txt not found (run examples/glue/prepare.py)")
    if not (args.data_bin / "input0" / f"{args.split}.idx").is_file():
        fail(f"--split: {args.data_bin}/input0/{args.split}.idx not found (the data has no {args.split} split)")
    predicted, gold = predictions(args.checkpoint, args.data_bin, args.batch_size, args.cpu, args.split)
    result = {"task": args.task, "split": args.split, "checkpoint": str(args.checkpoint), "examples": len(gold),
              **{k: round(v, 2) for k, v in scores(args.task, predicted, gold).items()}}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
