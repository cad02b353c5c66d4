#!/usr/bin/env python3
"""Binarize one GLUE task from the tsv files you already have, for fairseq's sentence_prediction
task (the layout of fairseq's RoBERTa GLUE recipe: input0/, input1/ for pair tasks, label/).

Inputs:  GLUE_DIR/<TASK>/train.tsv and dev.tsv (MNLI: dev_matched.tsv), as the GLUE download
         script writes them; the BPE: GPT-2 (--encoder-json, --vocab-bpe: roberta's
         encoder.json and vocab.bpe) or sentencepiece (--spm-model); --dict: the pre-trained
         model's dict.txt (roberta.base/dict.txt). Without --dict the dictionary is built from
         the training text, which only suits a model trained from scratch.
Outputs: OUT/input0, OUT/input1 (pair tasks), OUT/label: fairseq-preprocess output with train
         and valid (= GLUE dev) splits; STS-B's label/{train,valid}.label hold the scores.
         Written to OUT.tmp and renamed at the end: no half-written OUT.

Usage: python examples/glue/prepare.py --glue-dir glue_data --task RTE --out RTE-bin \\
           --encoder-json encoder.json --vocab-bpe vocab.bpe --dict dict.txt
Knobs: --workers (fairseq-preprocess workers, default 1).
"""
import argparse
import csv
import os
import shutil
import sys
from pathlib import Path

# task -> (dev file, first-sentence column, second-sentence column or None, label column).
# Columns are named by the GLUE header; CoLA's files have no header (index 3: sentence, 1: label).
TASKS = {
    "CoLA": ("dev.tsv", 3, None, 1),
    "SST-2": ("dev.tsv", "sentence", None, "label"),
    "MRPC": ("dev.tsv", "#1 String", "#2 String", "Quality"),
    "QQP": ("dev.tsv", "question1", "question2", "is_duplicate"),
    "STS-B": ("dev.tsv", "sentence1", "sentence2", "score"),
    "MNLI": ("dev_matched.tsv", "sentence1", "sentence2", "gold_label"),
    "QNLI": ("dev.tsv", "question", "sentence", "label"),
    "RTE": ("dev.tsv", "sentence1", "sentence2", "label"),
}
REGRESSION = {"STS-B"}


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def read_examples(path: Path, task: str):
    """[(sentence1, sentence2 or None, label)] from a GLUE tsv; rows with a missing field
    (QQP has a few) are skipped and counted."""
    _, first, second, label = TASKS[task]
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if isinstance(first, str):
        header, rows = rows[0], rows[1:]
        missing = [name for name in (first, second, label) if name is not None and name not in header]
        if missing:
            fail(f"{path}: no column {missing[0]!r} in the header (is it the GLUE {task} file?)")
        first, label = header.index(first), header.index(label)
        second = header.index(second) if second is not None else None
    examples, skipped = [], 0
    for row in rows:
        columns = [first, label] + ([second] if second is not None else [])
        if len(row) <= max(columns) or any(not row[c].strip() for c in columns):
            skipped += 1
            continue
        examples.append((row[first], row[second] if second is not None else None, row[label].strip()))
    if skipped:
        print(f"{path}: skipped {skipped} malformed rows", file=sys.stderr)
    if not examples:
        fail(f"{path}: no examples read")
    return examples


def make_encoder(args):
    if args.spm_model:
        import sentencepiece

        model = sentencepiece.SentencePieceProcessor(model_file=str(args.spm_model))
        return lambda text: " ".join(model.encode(text, out_type=str))
    from fairseq.data.encoders.gpt2_bpe_utils import get_encoder

    encoder = get_encoder(str(args.encoder_json), str(args.vocab_bpe))
    return lambda text: " ".join(map(str, encoder.encode(text.strip())))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--glue-dir", type=Path, required=True)
    parser.add_argument("--task", required=True, choices=sorted(TASKS))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--encoder-json", type=Path)
    parser.add_argument("--vocab-bpe", type=Path)
    parser.add_argument("--spm-model", type=Path)
    parser.add_argument("--dict", type=Path, help="the pre-trained model's dict.txt")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()

    # every input checked before anything is written
    splits = {"train": args.glue_dir / args.task / "train.tsv", "valid": args.glue_dir / args.task / TASKS[args.task][0]}
    for path in splits.values():
        if not path.is_file():
            fail(f"--glue-dir: {path} not found (GLUE_DIR/<TASK>/ as the GLUE download script writes it)")
    if bool(args.spm_model) == bool(args.encoder_json or args.vocab_bpe):
        fail("choose one BPE: --spm-model FILE (sentencepiece), or --encoder-json FILE --vocab-bpe FILE (GPT-2)")
    for flag, path in (("--spm-model", args.spm_model), ("--encoder-json", args.encoder_json),
                       ("--vocab-bpe", args.vocab_bpe), ("--dict", args.dict)):
        if path is not None and not path.is_file():
            fail(f"{flag}: {path} not found")
    if not args.spm_model and not (args.encoder_json and args.vocab_bpe):
        fail("GPT-2 BPE needs both --encoder-json and --vocab-bpe (roberta's encoder.json and vocab.bpe)")
    if args.out.exists():
        fail(f"--out: {args.out} exists; remove it or choose another directory")

    examples = {split: read_examples(path, args.task) for split, path in splits.items()}
    encode = make_encoder(args)
    tmp = args.out.with_name(args.out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    text = tmp / "text"
    text.mkdir(parents=True)
    pair = TASKS[args.task][2] is not None
    for split, rows in examples.items():
        for column, name in ((0, "input0"), (1, "input1"), (2, "label")):
            if column == 1 and not pair:
                continue
            with open(text / f"{split}.{name}", "w", encoding="utf-8") as f:
                for row in rows:
                    f.write((row[2] if column == 2 else encode(row[column])) + "\n")

    from fairseq import options
    from fairseq_cli.preprocess import main as fairseq_preprocess

    def preprocess(name, *extra):  # fairseq-preprocess, in this process (one fairseq import)
        argv = ["--only-source", "--trainpref", text / f"train.{name}", "--validpref", text / f"valid.{name}",
                "--destdir", tmp / name, "--workers", args.workers, *extra]
        try:
            fairseq_preprocess(options.get_preprocessing_parser().parse_args(list(map(str, argv))))
        except Exception as error:
            shutil.rmtree(tmp, ignore_errors=True)
            fail(f"fairseq-preprocess failed on {name}: {error}")

    for name in ("input0", "input1") if pair else ("input0",):
        preprocess(name, *(["--srcdict", args.dict] if args.dict else []))
    if args.task in REGRESSION:
        (tmp / "label").mkdir()
        for split in examples:
            shutil.copy(text / f"{split}.label", tmp / "label" / f"{split}.label")
    else:
        preprocess("label")
    shutil.rmtree(text)
    os.replace(tmp, args.out)
    counts = ", ".join(f"{split} {len(rows)}" for split, rows in examples.items())
    print(f"{args.task}: {counts} examples -> {args.out}")


if __name__ == "__main__":
    main()
