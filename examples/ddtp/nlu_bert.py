#!/usr/bin/env python3
"""Binarize the DDTP sentence_prediction tasks (ddtp.py's raw splits, as prepare-nlu.sh keeps
them under DATA_DIR/raw) with the WordPiece vocabulary of a BERT-family model imported by
`python -m fairseq_lrdrop.import_bert`, for fine-tuning that model (bench/minilm_study.sh).

The train subsets are nlu.py's (the same seeded draw, so a size holds the same examples as in
the sentencepiece data), the label dictionaries are nlu.py's (DATA_DIR/bin/<task>-<size>/label/
dict.txt), the text goes through fairseq's `--bpe bert` (fairseq_lrdrop.bert_encode) and
`fairseq-preprocess --srcdict IMPORTED/dict.txt`.

Inputs:  --raw DIR (classification/, pairs/ of ddtp.py), --label-bin DIR (nlu.py's bin/),
         --imported DIR (import_bert's output: dict.txt, vocab.txt)
Outputs (--out DIR, built in DIR.tmp and renamed when complete): <task>-<size>/input0/
         [input1/] label/, stats.json (example counts per split, as nlu.py's)
Options: --tasks (classification), --train-sizes (1000), --subset-seed (1),
         --max-pieces (126: word pieces kept per input, so that <s> x </s> fits 128 positions),
         --bpe-cased (for a cased model), --workers (1).
"""
import argparse
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nlu import SPLITS, TASK_COLUMNS, preprocess, read_lines, train_subset, write_lines  # noqa: E402

from fairseq_lrdrop.bert_encode import bert_bpe, encode_lines  # noqa: E402


def encode(bpe, rows, max_pieces):
    """Each row's word pieces, space-joined, cut after max_pieces."""
    return [" ".join(pieces.split()[:max_pieces]) for pieces in encode_lines(bpe, rows)]


def build_task(bpe, args, tmp, task, size, stats):
    """<task>-<size>/ with one fairseq-preprocess per column."""
    columns = TASK_COLUMNS[task]
    rows = {split: list(zip(*(read_lines(os.path.join(args.raw, task, "%s.%s" % (split, c)))
                              for c in columns + ("label",))))
            for split in SPLITS}
    chosen = dict(rows, train=train_subset(rows["train"], size, args.subset_seed))
    name = "%s-%s" % (task, size)
    labels = os.path.join(args.label_bin, name, "label", "dict.txt")
    if not os.path.isfile(labels):
        raise SystemExit("error: %s missing: run examples/ddtp/prepare-nlu.sh with %s in TRAIN_SIZES" % (labels, size))
    for index, column in enumerate(columns + ("label",)):
        prefixes = {}
        for split in SPLITS:
            values = [r[index] for r in chosen[split]]
            prefixes[split] = os.path.join(tmp, "text", "%s.%s.%s" % (name, split, column))
            write_lines(prefixes[split], values if column == "label" else encode(bpe, values, args.max_pieces))
        srcdict = labels if column == "label" else os.path.join(args.imported, "dict.txt")
        preprocess(os.path.join(tmp, name, column), prefixes, srcdict, args.workers)
    stats[name] = {split: len(chosen[split]) for split in SPLITS}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--raw", required=True)
    parser.add_argument("--label-bin", required=True)
    parser.add_argument("--imported", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--tasks", nargs="+", default=["classification"], choices=sorted(TASK_COLUMNS))
    parser.add_argument("--train-sizes", nargs="+", default=["1000"])
    parser.add_argument("--subset-seed", type=int, default=1)
    parser.add_argument("--max-pieces", type=int, default=126)
    parser.add_argument("--bpe-cased", action="store_true")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    vocab = os.path.join(args.imported, "vocab.txt")
    if not os.path.isfile(vocab):
        raise SystemExit("error: %s missing: --imported must be a fairseq_lrdrop.import_bert output" % vocab)
    bpe = bert_bpe(vocab, args.bpe_cased)
    tmp = args.out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.join(tmp, "text"))
    stats = {}
    for task in args.tasks:
        for size in args.train_sizes:
            build_task(bpe, args, tmp, task, size, stats)
    shutil.rmtree(os.path.join(tmp, "text"))
    with open(os.path.join(tmp, "stats.json"), "w") as fh:
        json.dump(stats, fh, indent=1, sort_keys=True)
        fh.write("\n")
    shutil.rmtree(args.out, ignore_errors=True)
    os.replace(tmp, args.out)
    print(json.dumps(stats, sort_keys=True))


if __name__ == "__main__":
    main()
