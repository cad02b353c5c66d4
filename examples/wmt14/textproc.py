#!/usr/bin/env python3
"""Text steps of the WMT14 pipeline (examples/wmt14/prepare.sh, evaluate.sh).

Subcommands (every output is written to OUTPUT.tmp and renamed when complete):
  sgm    --input F.sgm --output F                 text of the <seg> elements, one per line
         (read as sacrebleu reads the wmt14/full test set: no entity unescaping)
  tok    --lang L [--aggressive] [--no-normalize] --input F --output F
         Moses punctuation normalisation + non-printing-character removal + Moses
         tokenisation (sacremoses; no XML escaping), like fairseq's prepare-wmt14 scripts.
  detok  --lang L --input F --output F            Moses detokenisation (sacremoses)
  clean  --src-in --tgt-in --src-out --tgt-out [--min 1 --max 250 --ratio 1.5]
         drop pairs with an empty side, more than MAX or fewer than MIN tokens, or a length
         ratio above RATIO (the rule of Moses' clean-corpus-n.perl)
  spm-train  --inputs F [F ...] --model-prefix P --vocab-size V [--model-type bpe]
         [--character-coverage 1.0] [--input-sentence-size N]   joint sentencepiece model
  spm-encode --model P.model --input F --output F  pieces separated by spaces
--workers N parallelises tok/detok/spm-encode over N processes (order preserved).
"""
import argparse
import html
import os
import re
import sys
from itertools import zip_longest
from multiprocessing import Pool

CHUNK = 2000


def fail(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


class AtomicWriter:
    """Write to PATH.tmp.PID, rename to PATH on success, delete the temporary on failure."""

    def __init__(self, path):
        self.path = path
        self.tmp = f"{path}.tmp.{os.getpid()}"

    def __enter__(self):
        self.f = open(self.tmp, "w", encoding="utf-8", newline="\n")
        return self.f

    def __exit__(self, exc_type, exc, tb):
        self.f.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        elif os.path.exists(self.tmp):
            os.remove(self.tmp)
        return False


def read_lines(path):
    if not os.path.isfile(path):
        fail(f"input file not found: {path}")
    with open(path, encoding="utf-8", errors="replace", newline="\n") as f:
        for line in f:
            yield line.rstrip("\n").rstrip("\r")


# --- worker state (initialised once per process) ---------------------------------------
_W = {}


def _init_tok(lang, aggressive, normalize):
    from sacremoses import MosesPunctNormalizer, MosesTokenizer

    _W["norm"] = MosesPunctNormalizer(lang=lang, post_remove_control_chars=True) if normalize else None
    _W["tok"] = MosesTokenizer(lang=lang)
    _W["aggressive"] = aggressive


def _tok(line):
    if _W["norm"] is not None:
        line = _W["norm"].normalize(line)
    return _W["tok"].tokenize(line, aggressive_dash_splits=_W["aggressive"], escape=False,
                              return_str=True).strip()


def _init_detok(lang):
    from sacremoses import MosesDetokenizer

    _W["detok"] = MosesDetokenizer(lang=lang)


def _detok(line):
    return _W["detok"].detokenize(line.split(), return_str=True, unescape=False)


def _init_spm(model):
    import sentencepiece as spm

    _W["spm"] = spm.SentencePieceProcessor(model_file=model)


def _spm(line):
    return " ".join(_W["spm"].encode(line, out_type=str))


def _map(fn, init, initargs, lines, workers):
    if workers <= 1:
        init(*initargs)
        for line in lines:
            yield fn(line)
    else:
        with Pool(workers, initializer=init, initargs=initargs) as pool:
            yield from pool.imap(fn, lines, chunksize=CHUNK)


def cmd_map(args, fn, init, initargs):
    with AtomicWriter(args.output) as out:
        n = 0
        for res in _map(fn, init, initargs, read_lines(args.input), args.workers):
            out.write(res + "\n")
            n += 1
    print(f"{args.cmd}: {n} lines -> {args.output}", file=sys.stderr)


# as sacrebleu reads WMT's (fake) SGML: greedy segment body, whitespace collapsed, no unescaping
SEG_RE = re.compile(r"<seg[^>]*>(.*)</seg>")


def cmd_sgm(args):
    n = 0
    with AtomicWriter(args.output) as out:
        for line in read_lines(args.input):
            m = SEG_RE.search(line)
            if m:
                text = re.sub(r"\s+", " ", m.group(1).strip())
                if args.unescape:
                    text = html.unescape(text)
                out.write(text + "\n")
                n += 1
    if n == 0:
        fail(f"no <seg> elements in {args.input}")
    print(f"sgm: {n} segments -> {args.output}", file=sys.stderr)


def cmd_clean(args):
    kept = total = 0
    with AtomicWriter(args.src_out) as fs, AtomicWriter(args.tgt_out) as ft:
        for s, t in zip_longest(read_lines(args.src_in), read_lines(args.tgt_in)):
            if s is None or t is None:
                fail(f"{args.src_in} and {args.tgt_in} have different line counts")
            total += 1
            s, t = " ".join(s.split()), " ".join(t.split())
            ns, nt = len(s.split()), len(t.split())
            if ns < args.min or nt < args.min or ns > args.max or nt > args.max:
                continue
            if ns / nt > args.ratio or nt / ns > args.ratio:
                continue
            fs.write(s + "\n")
            ft.write(t + "\n")
            kept += 1
    if kept == 0:
        fail(f"cleaning kept no sentence pair of {total} ({args.src_in})")
    print(f"clean: kept {kept} of {total} pairs -> {args.src_out}, {args.tgt_out}", file=sys.stderr)


def cmd_spm_train(args):
    import sentencepiece as spm

    for f in args.inputs:
        if not os.path.isfile(f):
            fail(f"input file not found: {f}")
    prefix_tmp = f"{args.model_prefix}.tmp.{os.getpid()}"
    spm.SentencePieceTrainer.train(
        input=",".join(args.inputs),
        model_prefix=prefix_tmp,
        vocab_size=args.vocab_size,
        model_type=args.model_type,
        character_coverage=args.character_coverage,
        input_sentence_size=args.input_sentence_size,
        shuffle_input_sentence=True,
        # fairseq adds its own specials; keep only <unk> in the piece vocabulary
        bos_id=-1, eos_id=-1, pad_id=-1, unk_id=0,
        hard_vocab_limit=False,  # small corpora: accept a smaller vocabulary instead of failing
        num_threads=args.workers,
        minloglevel=1,
    )
    for ext in ("vocab", "model"):  # model last: its presence marks completion
        os.replace(f"{prefix_tmp}.{ext}", f"{args.model_prefix}.{ext}")
    print(f"spm-train: {args.model_prefix}.model", file=sys.stderr)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    def io(sp):
        sp.add_argument("--input", required=True)
        sp.add_argument("--output", required=True)
        sp.add_argument("--workers", type=int, default=1)

    sp = sub.add_parser("sgm")
    sp.add_argument("--input", required=True)
    sp.add_argument("--output", required=True)
    sp.add_argument("--unescape", action="store_true", help="unescape XML entities")
    sp = sub.add_parser("tok")
    io(sp)
    sp.add_argument("--lang", required=True)
    sp.add_argument("--aggressive", action="store_true", help="Moses -a: split hyphens as @-@")
    sp.add_argument("--no-normalize", action="store_true")
    sp = sub.add_parser("detok")
    io(sp)
    sp.add_argument("--lang", required=True)
    sp = sub.add_parser("clean")
    for a in ("--src-in", "--tgt-in", "--src-out", "--tgt-out"):
        sp.add_argument(a, required=True)
    sp.add_argument("--min", type=int, default=1)
    sp.add_argument("--max", type=int, default=250)
    sp.add_argument("--ratio", type=float, default=1.5)
    sp = sub.add_parser("spm-train")
    sp.add_argument("--inputs", nargs="+", required=True)
    sp.add_argument("--model-prefix", required=True)
    sp.add_argument("--vocab-size", type=int, required=True)
    sp.add_argument("--model-type", default="bpe")
    sp.add_argument("--character-coverage", type=float, default=1.0)
    sp.add_argument("--input-sentence-size", type=int, default=10_000_000)
    sp.add_argument("--workers", type=int, default=1)
    sp = sub.add_parser("spm-encode")
    io(sp)
    sp.add_argument("--model", required=True)

    args = p.parse_args(argv)
    if args.cmd == "sgm":
        cmd_sgm(args)
    elif args.cmd == "tok":
        cmd_map(args, _tok, _init_tok, (args.lang, args.aggressive, not args.no_normalize))
    elif args.cmd == "detok":
        cmd_map(args, _detok, _init_detok, (args.lang,))
    elif args.cmd == "clean":
        cmd_clean(args)
    elif args.cmd == "spm-train":
        cmd_spm_train(args)
    elif args.cmd == "spm-encode":
        if not os.path.isfile(args.model):
            fail(f"sentencepiece model not found: {args.model}")
        cmd_map(args, _spm, _init_spm, (args.model,))
    return 0


if __name__ == "__main__":
    sys.exit(main())
