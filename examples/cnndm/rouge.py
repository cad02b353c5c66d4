#!/usr/bin/env python3
"""ROUGE for CNN/DailyMail summaries (examples/cnndm/evaluate.sh), with Google's rouge-score.

Reports F1 x 100 of ROUGE-1, ROUGE-2 and ROUGE-L, with Porter stemming. ROUGE-L is given
twice: "rougeLsum" (summary-level LCS over sentences, newline-separated), which is what
ROUGE-1.5.5 / files2rouge report as ROUGE-L for CNN/DM and what the BART / R-Drop papers
quote (R-Drop: 44.51 / 21.58 / 41.24), and "rougeL" (one LCS over the whole summary).
Sentences are split with a simple rule (after . ! ? followed by a space); numbers from this
script are close to, but not identical with, files2rouge's. For the exact protocol run
files2rouge on the files written here (see --out-dir):
    test.hypo, test.target                    one summary per line, as generated / raw
    test.hypo.tokenized, test.target.tokenized  PTB-style tokenised (nltk Treebank), lowercased:
        files2rouge test.hypo.tokenized test.target.tokenized
    (the BART README tokenises with Stanford CoreNLP's PTBTokenizer -preserveLines instead.)
Writes rouge.txt and rouge.json into --out-dir.
"""
import argparse
import json
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from textio import fail, read_hypotheses_and_references, write_lines  # noqa: E402

_SENT = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text):
    return "\n".join(s for s in _SENT.split(text.strip()) if s)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hyp", required=True, help="generated summaries, one per line, in test order")
    p.add_argument("--ref", required=True, help="reference summaries, one per line")
    p.add_argument("--out-dir", required=True)
    args = p.parse_args(argv)

    from nltk.tokenize import TreebankWordTokenizer
    from rouge_score import rouge_scorer

    hyps, refs = read_hypotheses_and_references(args.hyp, args.ref)
    if not hyps:
        fail(f"{args.hyp} is empty")
    os.makedirs(args.out_dir, exist_ok=True)

    tb = TreebankWordTokenizer()

    def ptb(line):
        # the Treebank tokenizer splits a final period only: tokenise sentence by sentence
        return " ".join(" ".join(tb.tokenize(s)) for s in _SENT.split(line.strip()) if s).lower()

    write_lines(os.path.join(args.out_dir, "test.hypo.tokenized"), [ptb(x) for x in hyps])
    write_lines(os.path.join(args.out_dir, "test.target.tokenized"), [ptb(x) for x in refs])

    types = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    scorer = rouge_scorer.RougeScorer(types, use_stemmer=True)
    sums = dict.fromkeys(types, 0.0)
    for h, r in zip(hyps, refs):
        s = scorer.score(split_sentences(r), split_sentences(h))  # (target, prediction)
        for t in types:
            sums[t] += s[t].fmeasure
    f1 = {t: round(100 * sums[t] / len(hyps), 2) for t in types}  # mean over summaries
    lines = [
        f"ROUGE-1/2/L F1 = {f1['rouge1']:.2f} / {f1['rouge2']:.2f} / {f1['rougeLsum']:.2f}"
        f"  (L = rougeLsum, summary-level; sentence-level rougeL = {f1['rougeL']:.2f};"
        f" rouge-score, stemmed, n = {len(hyps)})",
    ]
    write_lines(os.path.join(args.out_dir, "rouge.txt"), lines)
    write_lines(os.path.join(args.out_dir, "rouge.json"), [json.dumps({**f1, "num_summaries": len(hyps)})])
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
