#!/usr/bin/env python3
"""Compound splitting for tokenized BLEU, as in the AIAYN / Scaling-NMT evaluation.

Every hyphen between two non-space characters becomes the separate token "##AT##-##AT##":
"Café-Liebhaber" -> "Café ##AT##-##AT## Liebhaber". This is the same rule as the perl
one-liner `s{(\\S)-(\\S)}{$1 ##AT##-##AT## $2}g` used by tensor2tensor's get_ende_bleu.sh and
fairseq's scripts/compound_split_bleu.sh (matches are found left to right without overlap,
exactly as perl's /g does; "a-b-c" -> "a ##AT##-##AT## b-c" in both).
Apply it to BOTH the hypothesis and the reference before scoring with tokenize='none'.

Usage: python examples/compound_split.py < in.tok > out.atat
"""
import re
import sys

_SPLIT = re.compile(r"(\S)-(\S)")


def compound_split(line: str) -> str:
    return _SPLIT.sub(r"\1 ##AT##-##AT## \2", line)


def main():
    for line in sys.stdin:
        sys.stdout.write(compound_split(line.rstrip("\n")) + "\n")


if __name__ == "__main__":
    main()
