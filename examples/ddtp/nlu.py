#!/usr/bin/env python3
"""Binarize the DDTP classification, architecture, pair and pre-training text (ddtp.py's
`classification`, `architecture`, `pairs` and `pretraining` outputs) for fairseq, with one sentencepiece vocabulary and one
fairseq dictionary shared by pre-training (masked_lm, language_modeling) and fine-tuning
(sentence_prediction), as a pre-trained RoBERTa and its fine-tuning data share theirs.

Inputs:  --raw DIR holding classification/, architecture/, pairs/, pretraining/ (ddtp.py outputs)
Outputs (--out DIR, built in DIR.tmp and renamed when complete):
  spm.model, spm.vocab        sentencepiece (unigram) trained on pretraining/train.{en,de}
  pretraining/                masked_lm data: train = English + German descriptions, valid;
                              dict.txt is THE dictionary every other directory uses
  lm-en/                      language_modeling data: English descriptions only
                              (train/valid from pretraining/, test = classification test inputs)
  lm-en-<N>/                  the same with N train descriptions drawn (seeded), for each N of
                              --lm-train-sizes; valid and test whole
  {classification,architecture,pairs}-<N>/  sentence_prediction data (input0/, input1/, label/) with
                              N train examples drawn (seeded) from the task's train split, or
                              every train example for N = all; valid and test always whole
  stats.json                  example counts and label counts per directory
Options: --train-sizes (default: 1000 10000 all), --lm-train-sizes (default: none),
  --subset-seed (1), --vocab (8000),
  --spm-max-sentences (300000), --workers (2).
"""
import argparse
import collections
import json
import os
import random
import shutil
import subprocess
import sys

import sentencepiece as spm

SPLITS = ("train", "valid", "test")
TASK_COLUMNS = {"classification": ("input0",), "architecture": ("input0",), "pairs": ("input0", "input1")}


def read_lines(path):
    with open(path, encoding="utf-8") as fh:
        return [line.rstrip("\n") for line in fh]


def write_lines(path, lines):
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(line + "\n" for line in lines)


def train_subset(rows, size, seed):
    """size rows drawn without replacement (seeded; the same draw for every mode and seed of a
    study), in their original order; every row when size is 'all' or not smaller."""
    if size == "all" or int(size) >= len(rows):
        return list(rows)
    keep = sorted(random.Random(seed).sample(range(len(rows)), int(size)))
    return [rows[i] for i in keep]


def preprocess(destdir, prefixes, srcdict=None, workers=1, padding_factor=8):
    """fairseq-preprocess --only-source over {split: prefix}; fails with fairseq's log tail."""
    cmd = ["fairseq-preprocess", "--only-source", "--destdir", destdir, "--workers", str(workers),
           "--padding-factor", str(padding_factor)]
    for split, prefix in prefixes.items():
        cmd += ["--%spref" % split, prefix]
    if srcdict:
        cmd += ["--srcdict", srcdict]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        raise SystemExit("%s\nerror: fairseq-preprocess failed for %s" % (tail, destdir))


def build(raw, out, train_sizes, subset_seed=1, vocab=8000, spm_max_sentences=300000, workers=1,
          lm_train_sizes=()):
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    enc = os.path.join(tmp, "encoded")
    os.makedirs(enc)
    pre = os.path.join(raw, "pretraining")
    spm.SentencePieceTrainer.train(
        input=[os.path.join(pre, "train.en"), os.path.join(pre, "train.de")],
        model_prefix=os.path.join(tmp, "spm"), vocab_size=vocab, model_type="unigram",
        character_coverage=1.0, input_sentence_size=spm_max_sentences,
        shuffle_input_sentence=True, hard_vocab_limit=False, num_threads=2,
        bos_id=-1, eos_id=-1, pad_id=-1, unk_id=0, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(tmp, "spm.model"))

    def encode(rows, name):
        path = os.path.join(enc, name)
        write_lines(path, [" ".join(p) for p in sp.encode(rows, out_type=str)])
        return path

    stats = {}
    text = {split: {lang: read_lines(os.path.join(pre, "%s.%s" % (split, lang)))
                    for lang in ("en", "de")} for split in ("train", "valid")}
    prefixes = {split: encode(text[split]["en"] + text[split]["de"], "pretraining." + split)
                for split in ("train", "valid")}
    preprocess(os.path.join(tmp, "pretraining"), prefixes, workers=workers)
    dictionary = os.path.join(tmp, "pretraining", "dict.txt")
    stats["pretraining"] = {split: len(text[split]["en"]) + len(text[split]["de"]) for split in text}

    cls_test = read_lines(os.path.join(raw, "classification", "test.input0"))
    lm = {split: encode(text[split]["en"], "lm-en." + split) for split in ("train", "valid")}
    lm["test"] = encode(cls_test, "lm-en.test")
    preprocess(os.path.join(tmp, "lm-en"), lm, dictionary, workers)
    stats["lm-en"] = {"train": len(text["train"]["en"]), "valid": len(text["valid"]["en"]),
                      "test": len(cls_test)}
    for size in lm_train_sizes:
        train = train_subset(text["train"]["en"], size, subset_seed)
        name = "lm-en-%s" % size
        preprocess(os.path.join(tmp, name), dict(lm, train=encode(train, name + ".train")), dictionary, workers)
        stats[name] = dict(stats["lm-en"], train=len(train))

    for task, columns in TASK_COLUMNS.items():
        rows = {split: list(zip(*(read_lines(os.path.join(raw, task, "%s.%s" % (split, c)))
                                  for c in columns + ("label",))))
                for split in SPLITS}
        # one label dictionary per task, from the whole train split, shared by every size
        label_dict_dir = os.path.join(tmp, task + "-labels")
        write_lines(os.path.join(enc, task + ".labels"), [r[-1] for r in rows["train"]])
        # padding factor 1: no made-up labels, so the dictionary's size is the number of classes
        preprocess(label_dict_dir, {"train": os.path.join(enc, task + ".labels")}, workers=workers,
                   padding_factor=1)
        for size in train_sizes:
            name = "%s-%s" % (task, size)
            chosen = dict(rows, train=train_subset(rows["train"], size, subset_seed))
            for index, column in enumerate(columns + ("label",)):
                prefixes = {}
                for split in SPLITS:
                    values = [r[index] for r in chosen[split]]
                    if column == "label":
                        prefixes[split] = os.path.join(enc, "%s.%s.%s" % (name, split, column))
                        write_lines(prefixes[split], values)
                    else:
                        prefixes[split] = encode(values, "%s.%s.%s" % (name, split, column))
                srcdict = os.path.join(label_dict_dir, "dict.txt") if column == "label" else dictionary
                preprocess(os.path.join(tmp, name, column), prefixes, srcdict, workers)
            stats[name] = {split: len(chosen[split]) for split in SPLITS}
            stats[name]["labels"] = {split: dict(sorted(collections.Counter(r[-1] for r in chosen[split]).items()))
                                     for split in SPLITS}
        shutil.rmtree(label_dict_dir)
    shutil.rmtree(enc)
    with open(os.path.join(tmp, "stats.json"), "w") as fh:
        json.dump(stats, fh, indent=1, sort_keys=True)
        fh.write("\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return stats


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--raw", required=True, help="directory with classification/, architecture/, pairs/, pretraining/")
    ap.add_argument("--out", required=True, help="output directory (replaced when complete)")
    ap.add_argument("--train-sizes", nargs="+", default=["1000", "10000", "all"])
    ap.add_argument("--lm-train-sizes", nargs="*", default=[],
                    help="train-set sizes of language_modeling subsets (lm-en-<N>/)")
    ap.add_argument("--subset-seed", type=int, default=1)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--spm-max-sentences", type=int, default=300000)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args(argv)
    for flag, sizes in (("--train-sizes", args.train_sizes), ("--lm-train-sizes", args.lm_train_sizes)):
        for size in sizes:
            if size != "all" and not (size.isdigit() and int(size) > 0):
                raise SystemExit("error: %s: %r is neither a positive count nor 'all'" % (flag, size))
    for task, columns in list(TASK_COLUMNS.items()) + [("pretraining", ())]:
        names = ["%s.%s" % (s, c) for s in SPLITS for c in columns + ("label",)] if columns else \
            ["%s.%s" % (s, lang) for s in ("train", "valid") for lang in ("en", "de")]
        for name in names:
            if not os.path.isfile(os.path.join(args.raw, task, name)):
                raise SystemExit("error: missing %s (run examples/ddtp/ddtp.py %s first)"
                                 % (os.path.join(args.raw, task, name), task))
    stats = build(args.raw, args.out, args.train_sizes, args.subset_seed, args.vocab,
                  args.spm_max_sentences, args.workers, args.lm_train_sizes)
    for name, counts in sorted(stats.items()):
        print("%s: %s" % (name, ", ".join("%s %d" % (s, counts[s]) for s in SPLITS if s in counts)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
