"""End-to-end smoke tests of the reproduction scripts in examples/wmt14 and examples/cnndm.

Nothing is downloaded: the tests write tiny WMT14-shaped raw files, a tiny but valid GPT-2
BPE vocabulary (encoder.json / vocab.bpe) and a BART-style dict.txt, then run every script
with a 2-layer, 32-dimensional model for a few updates on CPU. They check that the scripts
run through, print BLEU / ROUGE, write their files, skip finished steps on a rerun, and stop
with a one-line `error: ...` on bad input before doing anything slow.
The pipelines run MODE=lrdrop with the lr_drop_ archs of the plugin.
"""
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HANG_GUARD_S

REPO = Path(__file__).resolve().parents[1]
WMT = REPO / "examples" / "wmt14"
CNNDM = REPO / "examples" / "cnndm"
PLUGIN = REPO / "fairseq_lrdrop"

TINY = (
    "--encoder-layers 2 --decoder-layers 2 --encoder-embed-dim 32 --decoder-embed-dim 32 "
    "--encoder-ffn-embed-dim 64 --decoder-ffn-embed-dim 64 --encoder-attention-heads 2 "
    "--decoder-attention-heads 2 --num-workers 0"
)
TINY_BART = TINY + " --max-source-positions 128 --max-target-positions 128"


@pytest.fixture(scope="module")
def pipeline_env():
    env = dict(os.environ)
    env.update(
        PYTHON=sys.executable,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        NUM_GPUS="0",  # CPU, also on a machine with GPUs
        WORKERS="1",
        LOG_INTERVAL="1",
        OMP_NUM_THREADS="1",
        USER_DIR=str(PLUGIN),
    )
    return env, dict(mode="lrdrop", wmt_arch="base", bart_arch="lr_drop_bart_base")


def run(script, env, extra=None, check=True, timeout=HANG_GUARD_S):
    e = dict(env)
    e.update(extra or {})
    r = subprocess.run(["bash", str(script)], env=e, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{script} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


# ---------------------------------------------------------------------------------------
# tiny inputs
# ---------------------------------------------------------------------------------------
EN = "the a house cat dog small big red green walks sees eats quickly today old new garden city car".split()
DE = "das ein Haus Katze Hund klein groß rot grün läuft sieht isst schnell heute alt neu Garten Stadt Auto".split()


def _pairs(rng, n):
    out = []
    for _ in range(n):
        idx = [rng.randrange(len(EN)) for _ in range(rng.randint(3, 8))]
        e, d = " ".join(EN[i] for i in idx) + ".", " ".join(DE[i] for i in idx) + "."
        if rng.random() < 0.3:  # hyphenated compounds, for the compound splitting
            e, d = e.replace(" ", "-", 1), d.replace(" ", "-", 1)
        out.append((e.capitalize(), d.capitalize()))
    return out


def _write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def write_wmt14_raw(root, n_test=6):
    """The extracted-archive layout examples/wmt14/prepare.sh expects for PAIR=en-de."""
    rng = random.Random(0)
    for c in ("training/europarl-v7.de-en", "commoncrawl.de-en", "training/news-commentary-v9.de-en",
              "dev/newstest2013"):
        p = _pairs(rng, 20)
        _write(root / f"{c}.en", [a for a, _ in p])
        _write(root / f"{c}.de", [b for _, b in p])
    p = _pairs(rng, n_test)
    for side, lang, k in (("src", "en", 0), ("ref", "de", 1)):
        body = ['<srcset setid="newstest2014" srclang="any">', '<doc sysid="ref" docid="1" origlang="en">']
        body += [f'<seg id="{i + 1}">{x[k]}</seg>' for i, x in enumerate(p)] + ["</doc>", "</srcset>"]
        _write(root / f"test-full/newstest2014-deen-{side}.{lang}.sgm", body)
    return [b for _, b in p]


def _byte_symbols():
    """GPT-2's byte-level alphabet: printable Latin-1 bytes stand for themselves, the other
    bytes (space, control characters...) are shifted to code points 256 + n, in byte order."""
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1)) | set(range(ord("®"), ord("ÿ") + 1))
    symbols, shifted = [], 0
    for b in range(256):
        if b in keep:
            symbols.append(chr(b))
        else:
            symbols.append(chr(256 + shifted))
            shifted += 1
    return symbols


def write_gpt2_bpe(bpe_dir, bart_dir):
    """A tiny valid GPT-2 BPE: the 256 byte symbols plus a few merges, and a BART-style
    dict.txt ("<token id> <count>" per line) covering every id."""
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("Ġ", "a"), ("i", "n"), ("Ġ", "c"), ("a", "t")]
    vocab = _byte_symbols() + ["".join(m) for m in merges]
    bpe_dir.mkdir(parents=True, exist_ok=True)
    bart_dir.mkdir(parents=True, exist_ok=True)
    (bpe_dir / "encoder.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
    (bpe_dir / "vocab.bpe").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    _write(bart_dir / "dict.txt", [f"{i} {1000 - i}" for i in range(len(vocab))])


def write_cnndm_raw(root):
    rng = random.Random(1)
    words = "the cat sat on a mat in the sun and the dog ran to the park".split()
    for split, n in (("train", 24), ("val", 6), ("test", 5)):
        src, tgt = [], []
        for _ in range(n):
            s = " ".join(rng.choice(words) for _ in range(rng.randint(8, 14))).capitalize() + "."
            src.append(f"{s} {s.lower()} It was a day.")
            tgt.append(s)
        _write(root / f"{split}.source", src)
        _write(root / f"{split}.target", tgt)


# ---------------------------------------------------------------------------------------
# full pipelines
# ---------------------------------------------------------------------------------------
def test_wmt14_pipeline(pipeline_env, tmp_path):
    env, cfg = pipeline_env
    raw, out, ck = tmp_path / "raw", tmp_path / "out", tmp_path / "ck"
    refs = write_wmt14_raw(raw)
    knobs = dict(RAW_DIR=str(raw), OUT_DIR=str(out), SPM_VOCAB="60", PAIR="en-de")
    r = run(WMT / "prepare.sh", env, knobs)
    data = out / "data-bin"
    assert f"binarized data: {data}" in r.stdout
    for f in ("dict.en.txt", "dict.de.txt", "train.en-de.en.bin", "valid.en-de.de.idx", "test.en-de.de.bin",
              "test.raw.de", "spm.model", ".done"):
        assert (data / f).is_file(), f
    assert (data / "dict.en.txt").read_bytes() == (data / "dict.de.txt").read_bytes()  # joined
    assert (data / "test.raw.de").read_text(encoding="utf-8").splitlines() == refs  # raw, unnormalised
    assert "@-@" in (out / "tmp" / "train.tok.de").read_text(encoding="utf-8")  # Moses -a
    r = run(WMT / "prepare.sh", env, knobs)  # rerun: everything skipped
    assert "skip: all steps done" in r.stderr

    train = dict(DATA_BIN=str(data), SAVE_DIR=str(ck), MODE=cfg["mode"], ARCH=cfg["wmt_arch"],
                 MAX_UPDATE="4", SAVE_INTERVAL_UPDATES="2", MAX_TOKENS="128", TOKENS_PER_UPDATE="256",
                 LR="1e-3", WARMUP="2", EXTRA_ARGS=TINY)
    r = run(WMT / "train.sh", env, train)
    assert "effective batch: 1 worker(s) x 128 tokens x update_freq 2 = 256 tokens/update" in r.stdout
    assert f"checkpoints written to: {ck}" in r.stdout
    for f in ("checkpoint_last.pt", "checkpoint_1_2.pt", "checkpoint_1_4.pt", "train.log"):
        assert (ck / f).is_file(), f
    if cfg["mode"] == "lrdrop":
        assert "hidden_reg" in r.stdout and "attn_reg" in r.stdout

    ev = dict(DATA_BIN=str(data), SAVE_DIR=str(ck), AVG_LAST="2", MAX_LEN_B="8")
    r = run(WMT / "evaluate.sh", env, ev)
    res = ck / "eval_test_checkpoint.avg2"
    assert "tokenized BLEU (Moses tok + compound split, tokenize=none) = " in r.stdout
    assert "sacreBLEU (detokenized) = " in r.stdout and "sacreBLEU signature: nrefs:1|" in r.stdout
    assert f"outputs written to: {res}" in r.stdout
    assert (ck / "checkpoint.avg2.pt").is_file()
    assert (ck / "checkpoint.avg2.pt.inputs").read_text().split() == [str(ck / "checkpoint_1_4.pt"),
                                                                      str(ck / "checkpoint_1_2.pt")]
    for f in ("generate-test.txt", "hyp.detok", "hyp.atat", "ref.atat", "bleu.txt", "bleu.json"):
        assert (res / f).is_file(), f
    assert len((res / "hyp.detok").read_text(encoding="utf-8").splitlines()) == len(refs)
    ref_atat = (res / "ref.atat").read_text(encoding="utf-8")
    assert "##AT##-##AT##" in ref_atat
    scores = json.loads((res / "bleu.json").read_text())
    assert scores["num_sentences"] == len(refs) and "tok:13a" in scores["sacrebleu_signature"]
    r = run(WMT / "evaluate.sh", env, ev)  # rerun: averaging and generation skipped
    assert "skip: averaging" in r.stderr and "skip: generation" in r.stderr
    # other decoding settings generate again (before: the beam-4 output was rescored)
    r = run(WMT / "evaluate.sh", env, dict(ev, BEAM="1"))
    assert "skip: averaging" in r.stderr and "skip: generation" not in r.stderr
    assert "--beam 1 " in (res / "generate-test.txt.cmd").read_text()
    r = run(WMT / "evaluate.sh", env, dict(ev, BEAM="1"))
    assert "skip: generation" in r.stderr

    # R-Drop's posted WMT14 recipe: its settings reach fairseq-train, the effective batch is
    # 8 GPUs x 4096 x 16 on one worker too (the tiny dims of EXTRA_ARGS replace the big model's)
    paper = tmp_path / "paper"
    r = run(WMT / "train.sh", env, dict(DATA_BIN=str(data), SAVE_DIR=str(paper), RECIPE="rdrop-paper", MODE="rdrop",
                                        MAX_UPDATE="1", EXTRA_ARGS=TINY))
    assert "recipe=rdrop-paper mode=rdrop arch=lr_drop_transformer_vaswani_wmt_en_de_big" in r.stdout
    assert "1 worker(s) x 4096 tokens x update_freq 128 = 524288 tokens/update" in r.stdout
    command = (paper / "train.log").read_text().splitlines()[0]
    for flags in ("--criterion label_smoothed_cross_entropy_with_rdrop --label-smoothing 0.1 --rdrop-alpha 5.0",
                  "--lr 1e-3 --lr-scheduler inverse_sqrt --warmup-updates 6000 --warmup-init-lr 1e-07",
                  "--dropout 0.1 --attention-dropout 0.1 --activation-dropout 0.1",
                  "--max-tokens 4096 --update-freq 128 --max-update 1", "--adam-betas (0.9, 0.98)"):
        assert flags in command, (flags, command)


def test_cnndm_pipeline(pipeline_env, tmp_path):
    env, cfg = pipeline_env
    raw, bpe, bart, out = tmp_path / "raw", tmp_path / "gpt2_bpe", tmp_path / "bart.large", tmp_path / "out"
    write_cnndm_raw(raw)
    write_gpt2_bpe(bpe, bart)
    r = run(CNNDM / "prepare.sh", env, dict(RAW_DIR=str(raw), BPE_DIR=str(bpe), BART_DIR=str(bart), OUT_DIR=str(out)))
    data = out / "data-bin"
    assert f"binarized data: {data}" in r.stdout
    for f in ("dict.source.txt", "dict.target.txt", "train.source-target.source.bin", "valid.source-target.target.idx",
              "test.source-target.source.bin", "test.raw.target", "encoder.json", "vocab.bpe"):
        assert (data / f).is_file(), f
    assert (data / "dict.source.txt").read_bytes() == (bart / "dict.txt").read_bytes()
    for s in ("train", "val", "test"):
        n = len((raw / f"{s}.source").read_text().splitlines())
        assert len((out / "bpe" / f"{s}.bpe.source").read_text().splitlines()) == n

    common = dict(DATA_BIN=str(data), ARCH=cfg["bart_arch"], MAX_TOKENS="256", TOKENS_PER_UPDATE="256",
                  LR="1e-3", WARMUP="1", EXTRA_ARGS=TINY_BART)
    # a "pretrained" model: 1 update from scratch, then fine-tune from it with --restore-file
    r = run(CNNDM / "train.sh", env, dict(common, SAVE_DIR=str(tmp_path / "pre"), MODE="baseline",
                                          RESTORE_FILE="", MAX_UPDATE="1"))
    assert "training from scratch" in r.stdout
    (tmp_path / "pre" / "checkpoint_last.pt").rename(bart / "model.pt")
    ck = tmp_path / "ck"
    r = run(CNNDM / "train.sh", env, dict(common, SAVE_DIR=str(ck), MODE=cfg["mode"], BART_DIR=str(bart),
                                          MAX_UPDATE="2"))
    assert f"fine-tuning from {bart / 'model.pt'}" in r.stdout
    assert "effective batch: 1 worker(s) x 256 tokens x update_freq 1 = 256 tokens/update" in r.stdout
    assert f"Loaded checkpoint {bart / 'model.pt'}" in r.stdout
    assert (ck / "checkpoint_best.pt").is_file() and (ck / "checkpoint_last.pt").is_file()

    ev = dict(DATA_BIN=str(data), SAVE_DIR=str(ck), MIN_LEN="2", MAX_LEN_B="10", BEAM="2")
    r = run(CNNDM / "evaluate.sh", env, ev)
    res = ck / "eval_test_checkpoint_best"
    assert "ROUGE-1/2/L F1 = " in r.stdout
    assert f"outputs written to: {res}" in r.stdout
    for f in ("generate-test.txt", "test.hypo", "test.target", "test.hypo.tokenized", "test.target.tokenized",
              "rouge.txt", "rouge.json"):
        assert (res / f).is_file(), f
    assert (res / "test.target").read_bytes() == (raw / "test.target").read_bytes()
    assert len((res / "test.hypo").read_text(encoding="utf-8").splitlines()) == 5
    assert set(json.loads((res / "rouge.json").read_text())) >= {"rouge1", "rouge2", "rougeLsum"}
    r = run(CNNDM / "evaluate.sh", env, ev)
    assert "skip: generation" in r.stderr
    r = run(CNNDM / "evaluate.sh", env, dict(ev, NO_REPEAT_NGRAM="2"))  # another setting: generated again
    assert "skip: generation" not in r.stderr
    assert "--no-repeat-ngram-size 2 " in (res / "generate-test.txt.cmd").read_text()


# ---------------------------------------------------------------------------------------
# bad input: non-zero exit, one line "error: ...", before anything slow
# ---------------------------------------------------------------------------------------
def _fake_bin(d, src, tgt, joined=True):
    d.mkdir(parents=True, exist_ok=True)
    (d / f"dict.{src}.txt").write_text("a 1\nb 1\n")
    (d / f"dict.{tgt}.txt").write_text("a 1\nb 1\n" if joined else "c 1\n")
    for split in ("train", "valid", "test"):
        for lang in (src, tgt):
            (d / f"{split}.{src}-{tgt}.{lang}.idx").write_text("x")
    return d


def _bad_cases(tmp):
    empty = tmp / "empty"
    empty.mkdir()
    partial = tmp / "partial_raw"
    (partial / "training").mkdir(parents=True)
    (partial / "training" / "europarl-v7.de-en.en").write_text("a\n")
    bart_no_model = tmp / "bart"
    bart_no_model.mkdir()
    wmt_split = _fake_bin(tmp / "wmt_split", "en", "de", joined=False)
    wmt_ok = _fake_bin(tmp / "wmt_ok", "en", "de")
    cnn_split = _fake_bin(tmp / "cnn_split", "source", "target", joined=False)
    cnn_ok = _fake_bin(tmp / "cnn_ok", "source", "target")
    return [
        # (script, knobs, words the one-line error must contain)
        (WMT / "train.sh", dict(MODE="dropout"), ["MODE", "baseline", "lrdrop"]),
        (WMT / "train.sh", dict(RECIPE="paper"), ["RECIPE", "rdrop-paper"]),
        (WMT / "train.sh", dict(RECIPE="rdrop-paper", PAIR="en-fr"), ["RECIPE=rdrop-paper", "PAIR=en-de"]),
        (CNNDM / "train.sh", dict(MODE="x"), ["MODE"]),
        (WMT / "prepare.sh", dict(PAIR="en-xx"), ["PAIR"]),
        (WMT / "prepare.sh", dict(RAW_DIR=str(empty), OUT_DIR=str(tmp / "o1")), ["missing raw file", "europarl"]),
        (WMT / "prepare.sh", dict(RAW_DIR=str(partial), OUT_DIR=str(tmp / "o2")), ["missing raw file", ".de"]),
        (CNNDM / "prepare.sh", dict(RAW_DIR=str(empty), OUT_DIR=str(tmp / "o3")), ["missing raw file", "train.source"]),
        (WMT / "train.sh", dict(DATA_BIN=str(empty), MODE="baseline"), ["lacks dict.en.txt", "prepare.sh"]),
        (CNNDM / "train.sh", dict(DATA_BIN=str(empty), RESTORE_FILE="", MODE="baseline"), ["lacks dict.source.txt"]),
        (WMT / "train.sh", dict(DATA_BIN=str(wmt_split), MODE="baseline"), ["--share-all-embeddings", "--joined-dictionary"]),
        (CNNDM / "train.sh", dict(DATA_BIN=str(cnn_split), MODE="baseline"), ["--share-all-embeddings", "--srcdict"]),
        (CNNDM / "train.sh", dict(DATA_BIN=str(cnn_ok), BART_DIR=str(bart_no_model), SAVE_DIR=str(tmp / "s1"),
                                       MODE="baseline"),
         ["model.pt not found", "bart.large.tar.gz", "RESTORE_FILE="]),
        (WMT / "evaluate.sh", dict(DATA_BIN=str(wmt_ok)), ["test.raw.de", "prepare.sh"]),
        (CNNDM / "evaluate.sh", dict(DATA_BIN=str(cnn_ok)), ["test.raw.target"]),
        (CNNDM / "train.sh", dict(DATA_BIN=str(cnn_ok), USER_DIR=str(empty)), ["USER_DIR", "__init__.py"]),
    ]


def test_bad_input_fails_fast_with_one_line(pipeline_env, tmp_path):
    env, _ = pipeline_env
    for script, knobs, words in _bad_cases(tmp_path):
        r = run(script, env, knobs, check=False, timeout=HANG_GUARD_S)
        lines = r.stderr.strip().splitlines()
        what = f"{script.parent.name}/{script.name} {knobs}: rc={r.returncode} stderr={r.stderr!r}"
        assert r.returncode != 0, what
        assert len(lines) == 1 and lines[0].startswith("error: "), what
        for w in words:
            assert w in lines[0], f"{w!r} missing: {what}"


def test_evaluate_missing_checkpoints(pipeline_env, tmp_path):
    env, _ = pipeline_env
    wmt = _fake_bin(tmp_path / "wmt", "en", "de")
    (wmt / "test.raw.de").write_text("x\n")
    cnn = _fake_bin(tmp_path / "cnn", "source", "target")
    (cnn / "test.raw.target").write_text("x\n")
    for f in ("encoder.json", "vocab.bpe"):
        (cnn / f).write_text("x")
    empty = tmp_path / "ck"
    empty.mkdir()
    cases = [
        (WMT / "evaluate.sh", dict(DATA_BIN=str(wmt), SAVE_DIR=str(empty)), "no checkpoints in SAVE_DIR"),
        (WMT / "evaluate.sh", dict(DATA_BIN=str(wmt), SAVE_DIR=str(tmp_path / "nodir")), "does not exist"),
        (WMT / "evaluate.sh", dict(DATA_BIN=str(wmt), CHECKPOINT=str(tmp_path / "x.pt")), "not found"),
        (CNNDM / "evaluate.sh", dict(DATA_BIN=str(cnn), SAVE_DIR=str(empty)), "checkpoint_best.pt not found"),
    ]
    for script, knobs, words in cases:
        r = run(script, env, knobs, check=False, timeout=HANG_GUARD_S)
        lines = r.stderr.strip().splitlines()
        assert r.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], r.stderr


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------
def test_compound_split_matches_the_perl_rule():
    sys.path.insert(0, str(REPO / "examples"))
    try:
        from compound_split import compound_split
    finally:
        sys.path.pop(0)
    # perl -ple 's{(\S)-(\S)}{$1 ##AT##-##AT## $2}g' gives exactly these
    assert compound_split("Café-Liebhaber") == "Café ##AT##-##AT## Liebhaber"
    assert compound_split("a-b-c - x- -y") == "a ##AT##-##AT## b-c - x- -y"
    assert compound_split("no hyphen") == "no hyphen"


def test_average_checkpoints(tmp_path):
    import argparse

    import torch

    paths = []
    for i, upd in enumerate((10, 20, 30)):
        state = {"args": argparse.Namespace(arch="x"), "extra_state": {"step": upd},
                 "model": {"w": torch.full((2, 2), float(i), dtype=torch.float16), "n": torch.tensor([upd])}}
        p = tmp_path / f"checkpoint_1_{upd}.pt"
        torch.save(state, p)
        paths.append(p)
    (tmp_path / "checkpoint_last.pt").write_bytes(paths[-1].read_bytes())
    out = tmp_path / "avg.pt"
    r = subprocess.run([sys.executable, str(REPO / "examples" / "average_checkpoints.py"), "--inputs", str(tmp_path),
                        "--num-update-checkpoints", "2", "--output", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(paths[2]), str(paths[1])]  # newest first
    avg = torch.load(out, weights_only=False)
    assert avg["model"]["w"].dtype == torch.float16 and torch.all(avg["model"]["w"] == 1.5)
    assert avg["model"]["n"].item() == 30 and avg["extra_state"] == {"step": 30}
    r = subprocess.run([sys.executable, str(REPO / "examples" / "average_checkpoints.py"), "--inputs", str(tmp_path),
                        "--num-epoch-checkpoints", "2", "--output", str(out)], capture_output=True, text=True)
    assert r.returncode != 0 and r.stderr.strip().startswith("error: no checkpoint")
