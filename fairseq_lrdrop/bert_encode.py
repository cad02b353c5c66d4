"""Tokenize raw text into WordPiece tokens for fairseq-preprocess, with fairseq's `--bpe bert`.

    python -m fairseq_lrdrop.bert_encode --bpe-vocab-file OUT_DIR/vocab.txt [--bpe-cased] < text > pieces

One output line per input line: the word pieces joined by spaces, as fairseq's BertBPE
(transformers' BertTokenizer on this vocabulary) writes them, so that
`fairseq-preprocess --srcdict OUT_DIR/dict.txt` binarizes exactly the ids the original
Hugging Face tokenizer gives (fairseq_lrdrop.import_bert prints these flags).
"""
import argparse
import sys
from typing import Iterable, Iterator, List, Optional

from fairseq_lrdrop.errors import UsageError


def bert_bpe(vocab_file: str, cased: bool):
    """fairseq's BertBPE for this vocabulary (what --bpe bert builds)."""
    from fairseq.data.encoders.hf_bert_bpe import BertBPE, BertBPEConfig

    return BertBPE(BertBPEConfig(bpe_cased=cased, bpe_vocab_file=vocab_file))


def encode_lines(bpe, lines: Iterable[str]) -> Iterator[str]:
    """Each line's word pieces, space-joined (an empty line stays empty)."""
    for line in lines:
        yield bpe.encode(line.rstrip("\n"))


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fairseq_lrdrop.bert_encode", description=__doc__.split("\n")[0])
    parser.add_argument("--bpe-vocab-file", required=True, help="vocab.txt written by fairseq_lrdrop.import_bert")
    parser.add_argument("--bpe-cased", action="store_true", help="keep case (a cased model)")
    args = parser.parse_args(argv)
    try:
        open(args.bpe_vocab_file, encoding="utf-8").close()
    except OSError as error:
        raise UsageError(f"--bpe-vocab-file {args.bpe_vocab_file} cannot be read ({error.strerror}): "
                         f"pass the vocab.txt of an imported model directory") from None
    bpe = bert_bpe(args.bpe_vocab_file, args.bpe_cased)
    for pieces in encode_lines(bpe, sys.stdin):
        sys.stdout.write(pieces + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
