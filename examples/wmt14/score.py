#!/usr/bin/env python3
"""Score WMT14 output two ways (examples/wmt14/evaluate.sh).

(a) tokenized BLEU with compound splitting, the protocol of the published WMT14 En-De/En-Fr
    numbers (tensor2tensor get_ende_bleu.sh, fairseq compound_split_bleu.sh): the
    detokenized hypothesis and the raw reference are both Moses-tokenized (sacremoses,
    no -a, no escaping), hyphens inside words are split as " ##AT##-##AT## "
    (examples/compound_split.py), and BLEU is computed on that text with sacrebleu
    tokenize='none' (= multi-bleu.perl).
(b) sacreBLEU on the detokenized hypothesis against the raw reference (default 13a
    tokenizer), printed with its signature. Prefer (b) when comparing with other work.

Writes into --out-dir: hyp.tok, ref.tok, hyp.atat, ref.atat, bleu.txt (both scores).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from compound_split import compound_split  # noqa: E402
from textio import read_hypotheses_and_references, write_lines  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hyp", required=True, help="detokenized hypotheses, one per line, in test order")
    p.add_argument("--ref", required=True, help="raw reference, one per line")
    p.add_argument("--lang", required=True, help="target language (Moses tokenizer rules)")
    p.add_argument("--out-dir", required=True)
    args = p.parse_args(argv)

    import sacrebleu
    from sacrebleu.metrics import BLEU
    from sacremoses import MosesTokenizer

    hyps, refs = read_hypotheses_and_references(args.hyp, args.ref)
    os.makedirs(args.out_dir, exist_ok=True)

    tok = MosesTokenizer(lang=args.lang)

    def moses(line):
        return tok.tokenize(line, escape=False, return_str=True).strip()

    hyp_tok, ref_tok = [moses(x) for x in hyps], [moses(x) for x in refs]
    hyp_atat, ref_atat = [compound_split(x) for x in hyp_tok], [compound_split(x) for x in ref_tok]
    for name, lines in (("hyp.tok", hyp_tok), ("ref.tok", ref_tok), ("hyp.atat", hyp_atat), ("ref.atat", ref_atat)):
        write_lines(os.path.join(args.out_dir, name), lines)

    tok_bleu = BLEU(tokenize="none").corpus_score(hyp_atat, [ref_atat])
    metric = BLEU()
    detok_bleu = metric.corpus_score(hyps, [refs])
    sig = str(metric.get_signature())
    lines = [
        f"tokenized BLEU (Moses tok + compound split, tokenize=none) = {tok_bleu.score:.2f}  [{tok_bleu}]",
        f"sacreBLEU (detokenized) = {detok_bleu.score:.2f}  [{detok_bleu}]",
        f"sacreBLEU signature: {sig}",
    ]
    write_lines(os.path.join(args.out_dir, "bleu.txt"), lines)
    write_lines(os.path.join(args.out_dir, "bleu.json"), [json.dumps({
        "tokenized_bleu_compound_split": round(tok_bleu.score, 2),
        "sacrebleu": round(detok_bleu.score, 2),
        "sacrebleu_signature": sig,
        "sacrebleu_version": sacrebleu.__version__,
        "num_sentences": len(hyps),
    })])
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
