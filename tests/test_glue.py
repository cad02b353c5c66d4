"""examples/glue offline: GLUE-format tsv lines written here, a sentencepiece model trained
here, then prepare.py -> train.sh (LR-Drop, from scratch, two updates) -> evaluate.py."""
import json
import os
import random
import subprocess
import sys

import pytest
from conftest import EN, ONE_THREAD, REPO

GLUE = REPO / "examples" / "glue"
TINY = ("--encoder-layers 2 --encoder-embed-dim 32 --encoder-ffn-embed-dim 64 "
        "--encoder-attention-heads 4 --max-positions 64")


def write_task(glue_dir, task, header, row, count, seed):
    rng = random.Random(seed)
    (glue_dir / task).mkdir(parents=True, exist_ok=True)
    for split, n in (("train", count), ("dev", count // 4)):
        lines = [header] + [row(rng) for _ in range(n)]
        (glue_dir / task / f"{split}.tsv").write_text("".join("\t".join(map(str, line)) + "\n" for line in lines))


def sentence(rng):
    return " ".join(rng.choice(EN) for _ in range(rng.randint(3, 8)))


@pytest.fixture(scope="module")
def glue(tmp_path_factory):
    import sentencepiece

    root = tmp_path_factory.mktemp("glue")
    glue_dir = root / "glue_data"

    def rte(rng):
        first = sentence(rng)
        entailed = rng.random() < 0.5
        return [rng.randint(0, 10**6), first, first if entailed else sentence(rng),
                "entailment" if entailed else "not_entailment"]

    def sts(rng):
        first, second = sentence(rng), sentence(rng)
        return [0, "main-captions", "MSRvid", 2012, 0, "none", "none", first, second, round(rng.uniform(0, 5), 2)]

    write_task(glue_dir, "RTE", ["index", "sentence1", "sentence2", "label"], rte, 160, 0)
    write_task(glue_dir, "STS-B", ["index", "genre", "filename", "year", "old_index", "source1", "source2",
                                   "sentence1", "sentence2", "score"], sts, 40, 1)
    text = root / "spm.txt"
    text.write_text("\n".join(" ".join(EN) for _ in range(50)) + "\n")
    sentencepiece.SentencePieceTrainer.train(input=str(text), model_prefix=str(root / "spm"), vocab_size=30,
                                             minloglevel=2)
    return root, glue_dir, root / "spm.model"


def run(command, **env):
    return subprocess.run(list(map(str, command)), capture_output=True, text=True,
                          env={**os.environ, **ONE_THREAD, **env})


def prepare(glue_dir, task, out, *extra):
    return run([sys.executable, GLUE / "prepare.py", "--glue-dir", glue_dir, "--task", task, "--out", out, *extra])


def test_rte_prepares_trains_with_lr_drop_and_evaluates(glue, tmp_path):
    root, glue_dir, spm = glue
    data = tmp_path / "RTE-bin"
    proc = prepare(glue_dir, "RTE", data, "--spm-model", spm)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "RTE: train 160, valid 40 examples" in proc.stdout
    assert sorted(p.name for p in data.iterdir()) == ["input0", "input1", "label"]
    labels = (data / "label" / "dict.txt").read_text().split()
    assert {"entailment", "not_entailment"} <= set(labels)

    save = tmp_path / "run"
    proc = run(["bash", GLUE / "train.sh"], TASK="RTE", DATA_BIN=data, ROBERTA_PATH="none", MODE="lrdrop",
               SAVE_DIR=save, MAX_UPDATE="3", WARMUP="1", CPU="1", EXTRA_ARGS=TINY + " --log-interval 1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = (save / "train.log").read_text()
    assert '"train_hidden_reg"' in log and '"train_attn_reg"' in log and '"train_output_reg"' in log
    assert '"valid_accuracy"' in log
    assert "--criterion lr_drop_sentence_prediction" in (save / "command.txt").read_text()

    proc = run([sys.executable, GLUE / "evaluate.py", "--checkpoint", save / "checkpoint_best.pt",
                "--data-bin", data, "--task", "RTE", "--cpu"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["examples"] == 40 and 0 <= result["accuracy"] <= 100
    # the same figure fairseq logged for the best checkpoint's validation
    best = [json.loads(line.split("| valid | ", 1)[1]) for line in log.splitlines() if "| valid | " in line]
    assert any(abs(float(v["valid_accuracy"]) - result["accuracy"]) < 0.05 for v in best)


def test_sts_b_keeps_scores_and_bad_input_is_one_line(glue, tmp_path):
    root, glue_dir, spm = glue
    proc = prepare(glue_dir, "STS-B", tmp_path / "STS-B-bin", "--spm-model", spm)
    assert proc.returncode == 0, proc.stderr[-2000:]
    scores = (tmp_path / "STS-B-bin" / "label" / "valid.label").read_text().split()
    expected = [line.split("\t")[-1] for line in (glue_dir / "STS-B" / "dev.tsv").read_text().splitlines()[1:]]
    assert scores == expected and len(scores) == 10

    missing = prepare(glue_dir, "MNLI", tmp_path / "MNLI-bin", "--spm-model", spm)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert missing.stderr.strip() == f"error: --glue-dir: {glue_dir / 'MNLI' / 'train.tsv'} not found (GLUE_DIR/<TASK>/ as the GLUE download script writes it)"
    no_bpe = prepare(glue_dir, "RTE", tmp_path / "x")
    assert no_bpe.returncode == 2 and no_bpe.stderr.startswith("error: choose one BPE")
    assert not (tmp_path / "MNLI-bin").exists() and not (tmp_path / "x").exists()
    bad_mode = run(["bash", GLUE / "train.sh"], TASK="RTE", DATA_BIN=tmp_path / "STS-B-bin", ROBERTA_PATH="none",
                   MODE="lr-drop", SAVE_DIR=tmp_path / "bad")
    assert bad_mode.returncode == 2 and bad_mode.stderr.strip() == "error: MODE=lr-drop: choose baseline, rdrop or lrdrop"
    assert not (tmp_path / "bad").exists()
