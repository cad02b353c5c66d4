"""End-to-end tests of the DDTP example scripts, offline: prepare.sh on tiny generated index
files (DDTP_INDEX_DIR), train.sh in every MODE for a few updates of a 2-layer tiny model,
evaluate.sh (BLEU / ROUGE); and the scripts' bad-input errors."""
import gzip
import json
import os
import random
import re
import subprocess
import sys

import pytest
from conftest import HANG_GUARD_S

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EX = os.path.join(ROOT, "examples", "ddtp")

EN_WORDS = ("tool library data file viewer editor fast small simple network music image "
            "text game server client audio video shared documentation plugin").split()
DE_WORDS = ("Werkzeug Bibliothek Daten Datei Betrachter Editor schnell klein einfach Netzwerk "
            "Musik Bild Text Spiel Server Client Audio Video gemeinsam Dokumentation "
            "Erweiterung").split()


def _env(**extra):
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHON"] = sys.executable
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _run(script, cwd, timeout=HANG_GUARD_S, **extra):
    return subprocess.run(["bash", os.path.join(EX, script)], cwd=str(cwd), env=_env(**extra),
                          capture_output=True, text=True, timeout=timeout)


def _sentence(rng, n):
    idx = [rng.randrange(len(EN_WORDS)) for _ in range(n)]
    return " ".join(EN_WORDS[i] for i in idx), " ".join(DE_WORDS[i] for i in idx)


SECTIONS = ("libs", "devel", "doc")


def write_indexes(directory, n_sources=30, seed=0):
    """Translation-en (plain), Translation-de (.gz) and Packages (plain, with a Section per
    source package, Architecture all for the -data binaries and amd64 for the others) for n_sources source packages with 1-2 binaries each: a few dozen
    descriptions."""
    rng = random.Random(seed)
    en, de, pk = [], [], []
    k = 0
    for s in range(n_sources):
        for b in range(1 + s % 2):
            k += 1
            pkg = "pkg%d" % s + ("-data" if b else "")
            md5 = "%032x" % k
            syn = _sentence(rng, rng.randint(3, 6))
            pars = [_sentence(rng, rng.randint(5, 10)) for _ in range(2)]
            body_en = "\n .\n".join(" " + p[0] for p in pars)
            body_de = "\n .\n".join(" " + p[1] for p in pars)
            en.append("Package: %s\nDescription-md5: %s\nDescription-en: %s\n%s\n"
                      % (pkg, md5, syn[0], body_en))
            de.append("Package: %s\nDescription-md5: %s\nDescription-de: %s\n%s\n"
                      % (pkg, md5, syn[1], body_de))
            pk.append("Package: %s\n%sVersion: 1.0-1\nArchitecture: %s\nSection: %s\nDescription-md5: %s\n"
                      % (pkg, "Source: pkg%d (1.0-1)\n" % s if b else "", "all" if b else "amd64",
                         SECTIONS[s % len(SECTIONS)], md5))
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "t_main_i18n_Translation-en"), "w") as fh:
        fh.write("\n".join(en))
    with gzip.open(os.path.join(directory, "t_main_i18n_Translation-de.gz"), "wt") as fh:
        fh.write("\n".join(de))
    with open(os.path.join(directory, "t_main_binary-amd64_Packages"), "w") as fh:
        fh.write("\n".join(pk))


TINY = dict(ENCODER_LAYERS=2, DECODER_LAYERS=2, EMBED_DIM=32, FFN_DIM=64, HEADS=2,
            MAX_TOKENS=500, MAX_UPDATE=3, WARMUP=2, LR=1e-3, LOG_INTERVAL=1, CPU=1,
            NUM_WORKERS=0)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    work = tmp_path_factory.mktemp("ddtp")
    write_indexes(str(work / "idx"))
    proc = _run("prepare.sh", work, DDTP_INDEX_DIR=work / "idx", DATA_DIR=work / "data",
                VALID_SIZE=8, TEST_SIZE=8, SPM_VOCAB=80, SUM_SPM_VOCAB=80, WORKERS=1)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return work, proc


def test_prepare_outputs(prepared):
    work, proc = prepared
    data = work / "data"
    for split in ("train", "valid", "test"):
        en = (data / "raw/translation" / (split + ".en")).read_text().splitlines()
        de = (data / "raw/translation" / (split + ".de")).read_text().splitlines()
        assert len(en) == len(de) > 0
        assert (data / "raw/summarization" / (split + ".src")).stat().st_size > 0
    for name in ("translation-en-de", "summarization"):
        assert (data / "bin" / name / "spm.model").exists()
        ext = "en" if name.startswith("translation") else "src"
        assert (data / "bin" / name / ("test.raw." + ext)).exists()
    assert (data / "bin/translation-en-de/train.en-de.en.bin").exists()
    assert (data / "bin/summarization/train.src-tgt.src.bin").exists()
    assert "pairs: train" in proc.stdout and str(data / "bin") in proc.stdout
    # a rerun reuses every step
    again = _run("prepare.sh", work, DDTP_INDEX_DIR=work / "idx", DATA_DIR=data,
                 VALID_SIZE=8, TEST_SIZE=8, SPM_VOCAB=80, SUM_SPM_VOCAB=80, WORKERS=1)
    assert again.returncode == 0, again.stderr
    assert "binarized data cached" in again.stdout
    assert "training sentencepiece" not in again.stdout
    # changed index files invalidate the cached steps
    de = work / "idx" / "t_main_i18n_Translation-de.gz"
    os.utime(str(de), (1, 1))
    third = _run("prepare.sh", work, DDTP_INDEX_DIR=work / "idx", DATA_DIR=data, TASKS="translation",
                 VALID_SIZE=8, TEST_SIZE=8, SPM_VOCAB=80, SUM_SPM_VOCAB=80, WORKERS=1)
    assert third.returncode == 0, third.stderr
    assert "training sentencepiece" in third.stdout and "raw splits cached" not in third.stdout


MODES = ["baseline", "rdrop", "lrdrop"]


@pytest.mark.parametrize("mode", MODES)
def test_train_and_evaluate_translation(prepared, mode):
    work, _ = prepared
    save = work / ("run-" + mode)
    arch = "lr_drop_transformer"
    proc = _run("train.sh", work, MODE=mode, TASK="translation", DATA_DIR=work / "data",
                SAVE_DIR=save, ARCH=arch, **TINY)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (save / "checkpoint_best.pt").exists()
    log = (save / "train.log").read_text()
    assert '"num_updates": "3"' in log
    if mode == "lrdrop":
        assert "hidden_reg" in log or "output_reg" in log
    if mode != "baseline" and mode != MODES[-1]:
        return  # decode once per task flavour: keeps the file short
    ev = _run("evaluate.sh", work, TASK="translation", DATA_DIR=work / "data", SAVE_DIR=save,
              BEAM=2, CPU=1)
    assert ev.returncode == 0, ev.stdout[-3000:] + ev.stderr[-3000:]
    m = re.search(r"^BLEU = (\d+\.\d+)$", ev.stdout, re.M)
    assert m, ev.stdout
    assert "signature: nrefs:1" in ev.stdout
    hyp = save / "eval-test-checkpoint_best" / "hyp.txt"
    ref = save / "eval-test-checkpoint_best" / "ref.txt"
    assert len(hyp.read_text().splitlines()) == len(ref.read_text().splitlines()) > 0
    assert str(hyp) in ev.stdout


def test_train_and_evaluate_summarization(prepared):
    work, _ = prepared
    save = work / "run-sum"
    mode = "lrdrop"
    arch = "lr_drop_transformer"
    proc = _run("train.sh", work, MODE=mode, TASK="summarization", DATA_DIR=work / "data",
                SAVE_DIR=save, ARCH=arch, **TINY)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ev = _run("evaluate.sh", work, TASK="summarization", DATA_DIR=work / "data",
              SAVE_DIR=save, BEAM=2, CPU=1, MAX_LEN_B=8)
    assert ev.returncode == 0, ev.stdout[-3000:] + ev.stderr[-3000:]
    assert re.search(r"ROUGE-1 = \d+\.\d+ ROUGE-2 = \d+\.\d+ ROUGE-L = \d+\.\d+", ev.stdout), ev.stdout


# ------------------------------------------------------------------ bad input
def _one_line_error(proc, *needles):
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_train_missing_data_dir(tmp_path):
    proc = _run("train.sh", tmp_path, MODE="baseline", DATA_DIR=tmp_path / "nodata",
                MAX_UPDATE=1, timeout=HANG_GUARD_S)
    _one_line_error(proc, str(tmp_path / "nodata" / "bin" / "translation-en-de"), "prepare.sh")


def test_train_data_dir_without_expected_files(tmp_path):
    (tmp_path / "d" / "bin" / "translation-en-de").mkdir(parents=True)
    proc = _run("train.sh", tmp_path, MODE="baseline", DATA_DIR=tmp_path / "d",
                MAX_UPDATE=1, timeout=HANG_GUARD_S)
    _one_line_error(proc, "dict.en.txt", "prepare.sh")


def test_train_unknown_mode_and_task(tmp_path):
    _one_line_error(_run("train.sh", tmp_path, MODE="bogus", timeout=HANG_GUARD_S), "MODE", "bogus")
    _one_line_error(_run("train.sh", tmp_path, TASK="bogus", timeout=HANG_GUARD_S), "TASK", "bogus")


def test_evaluate_missing_checkpoint(tmp_path):
    proc = _run("evaluate.sh", tmp_path, SAVE_DIR=tmp_path / "run", timeout=HANG_GUARD_S)
    _one_line_error(proc, str(tmp_path / "run" / "checkpoint_best.pt"), "train.sh")


def test_prepare_missing_index_dir(tmp_path):
    proc = _run("prepare.sh", tmp_path, DDTP_INDEX_DIR=tmp_path / "none",
                DATA_DIR=tmp_path / "d", timeout=HANG_GUARD_S)
    _one_line_error(proc, "DDTP_INDEX_DIR", str(tmp_path / "none"))
    (tmp_path / "emptyidx").mkdir()
    proc = _run("prepare.sh", tmp_path, DDTP_INDEX_DIR=tmp_path / "emptyidx",
                DATA_DIR=tmp_path / "d", timeout=HANG_GUARD_S)
    _one_line_error(proc, "Translation-en")
    assert not (tmp_path / "d").exists()     # nothing written before the inputs check


def test_quality_study_script_runs_sweep_and_table(prepared, tmp_path):
    """bench/quality.sh end to end on the tiny data: the valid-split sweep picks weights,
    every mode trains, and the results table holds one test score per mode."""
    work, _ = prepared
    run_dir = tmp_path / "quality"
    proc = subprocess.run(
        ["bash", os.path.join(ROOT, "bench", "quality.sh")], cwd=str(work), capture_output=True, text=True,
        timeout=HANG_GUARD_S, env=_env(TASK="translation", SEEDS="1", SWEEP="1,1,1 0.5,0,1", RUN_DIR=run_dir,
                              DDTP_INDEX_DIR=work / "idx", DATA_DIR=work / "data", VALID_SIZE=8, TEST_SIZE=8,
                              SPM_VOCAB=80, SUM_SPM_VOCAB=80, WORKERS=1, BEAM=2, MAX_EPOCH=1, DIAGNOSE=0, **TINY))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sweep = (run_dir / "sweep.txt").read_text()
    assert sweep.count("valid=") == 2 and "chosen: " in sweep
    table = (run_dir / "results.md").read_text()
    for mode in ("baseline", "rdrop", "lrdrop"):
        assert re.search(rf"\| {mode} \|.*\| \d+\.\d\d \| \d+\.\d\d \| \d+ \|", table), table
        assert re.search(rf"\| {mode} \|.*( \| -){{5}} \|$", table, re.M), table  # DIAGNOSE=0: no columns


def test_quality_study_with_fixed_weights_records_how_runs_stopped(prepared, tmp_path):
    """WEIGHTS skips the sweep; R-Drop through the plugin criterion (RDROP_IMPL=plugin);
    results.json says how many epochs each run trained and what stopped it."""
    work, _ = prepared
    run_dir = tmp_path / "quality"
    proc = subprocess.run(
        ["bash", os.path.join(ROOT, "bench", "quality.sh")], cwd=str(work), capture_output=True, text=True,
        timeout=HANG_GUARD_S, env=_env(TASK="translation", SEEDS="1", MODES="rdrop", WEIGHTS="1,1,2",
                              RDROP_IMPL="plugin", RUN_DIR=run_dir, DDTP_INDEX_DIR=work / "idx",
                              DATA_DIR=work / "data", VALID_SIZE=8, TEST_SIZE=8, SPM_VOCAB=80,
                              SUM_SPM_VOCAB=80, WORKERS=1, BEAM=2, MAX_EPOCH=2, **{**TINY, "MAX_UPDATE": 0}))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "no sweep" in proc.stdout and not (run_dir / "sweep.txt").exists()
    [row] = json.loads((run_dir / "results.json").read_text())
    assert row["mode"] == "rdrop" and row["weights"] == [1, 1, 2]
    assert row["epochs"] == 2 and row["stopped_by"] == "max epoch"
    assert row["best_valid_loss"] > 0 and row["fairseq_train_wall"] >= 0
    command = (run_dir / "rdrop-2-seed1" / "command.txt").read_text()
    assert "--criterion lr_drop_label_smoothed_cross_entropy" in command
    assert "--hidden-reg-weight 0 --attn-reg-weight 0 --output-reg-weight 2" in command
    assert "| rdrop | gamma 2 |" in (run_dir / "results.md").read_text()
    # bench/diagnose.py's measurements of the run, in results.json and the table
    diagnosis = row["diagnosis"]
    assert diagnosis["length_ratio"] > 0 and 0 <= diagnosis["loop_share"] <= 1
    assert set(diagnosis["attention_entropy"]) == {"encoder_self", "decoder_self", "decoder_cross"}
    assert all(value > 0 for value in diagnosis["attention_entropy"].values())
    assert diagnosis["output_entropy"] > 0 and 0 < diagnosis["eos_prob_at_end"] < 1
    line = [l for l in (run_dir / "results.md").read_text().splitlines() if l.startswith("| rdrop |")][0]
    assert re.search(r"\| \d+\.\d{3} \| \d+\.\d \| \d+\.\d\d / \d+\.\d\d / \d+\.\d\d \| \d+\.\d\d \| 0\.\d{3} \|$", line), line


def test_cpu_quality_wrapper_runs_a_task_and_prints_its_table(prepared):
    """bench/quality-cpu.sh passes its CPU settings and the caller's knobs to quality.sh and
    prints each task's results table."""
    work, _ = prepared
    proc = subprocess.run(
        ["bash", os.path.join(ROOT, "bench", "quality-cpu.sh")], cwd=str(work), capture_output=True, text=True,
        timeout=HANG_GUARD_S, env=_env(TASKS="translation", MODES="baseline", DDTP_INDEX_DIR=work / "idx",
                              VALID_SIZE=8, TEST_SIZE=8, SPM_VOCAB=80, WORKERS=1, BEAM=2, MAX_EPOCH=1, DIAGNOSE=0, **TINY))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "== translation" in proc.stdout and "| baseline | - |" in proc.stdout
    [row] = json.loads((work / "runs/quality-translation/results.json").read_text())
    assert row["mode"] == "baseline" and row["stopped_by"] == "max update"
    command = (work / "runs/quality-translation/baseline-seed1/command.txt").read_text()
    assert "--patience 3" in command and "--max-epoch 1 " in command  # wrapper default, caller knob


def test_converged_translation_study_script_runs_every_mode_seed_and_the_valid_choice(prepared):
    """bench/quality-converged-cpu.sh (TASK=translation): two lanes train seed 1 of every mode
    and triple and seed 2 of baseline and R-Drop; then the valid split picks the triple,
    LR-Drop seed 2 is trained with it, and the table holds every mode x seed."""
    work, _ = prepared
    proc = subprocess.run(
        ["bash", os.path.join(ROOT, "bench", "quality-converged-cpu.sh")], cwd=str(work),
        capture_output=True, text=True, timeout=HANG_GUARD_S,
        env=_env(SWEEP="1,1,2 0.5,0.5,2", DDTP_INDEX_DIR=work / "idx", VALID_SIZE=8, TEST_SIZE=8,
                 SPM_VOCAB=80, WORKERS=1, BEAM=2, MAX_EPOCH=1, DIAGNOSE=0, **TINY))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = work / "runs/quality-translation-4k"
    sweep = (run_dir / "sweep.txt").read_text()
    assert "alpha=1 beta=1 gamma=2 valid=" in sweep and "alpha=0.5 beta=0.5 gamma=2 valid=" in sweep
    chosen = sweep.split("chosen: ")[1].split()[0]
    rows = json.loads((run_dir / "results.json").read_text())
    assert sorted((r["mode"], r["seed"]) for r in rows) == [
        (mode, seed) for mode in ("baseline", "lrdrop", "rdrop") for seed in (1, 2)]
    assert all(r["weights"] == [float(w) if "." in w else int(w) for w in chosen.split(",")]
               for r in rows if r["mode"] == "lrdrop")
    for name in ("lrdrop-1-1-2-seed1", "lrdrop-0.5-0.5-2-seed1", "rdrop-2-seed2", "baseline-seed2",
                 f"lrdrop-{chosen.replace(',', '-')}-seed2"):
        command = (run_dir / name / "command.txt").read_text()
        assert "--patience 10" in command and "--max-epoch 1 " in command
        assert "data/ddtp-quality-4k" in command
    assert "| lrdrop |" in proc.stdout


def test_converged_summarization_study_with_one_triple_trains_both_seeds_in_the_lanes(prepared):
    """bench/quality-converged-cpu.sh, TASK=summarization: its own data and run directories;
    with a single triple there is nothing to choose, so lane 2 trains LR-Drop seed 2 and the
    last step only scores valid and writes the table (ROUGE)."""
    work, _ = prepared
    proc = subprocess.run(
        ["bash", os.path.join(ROOT, "bench", "quality-converged-cpu.sh")], cwd=str(work),
        capture_output=True, text=True, timeout=HANG_GUARD_S,
        env=_env(TASK="summarization", SWEEP="0.5,0.5,2", DDTP_INDEX_DIR=work / "idx", VALID_SIZE=8,
                 TEST_SIZE=8, SUM_SPM_VOCAB=80, WORKERS=1, BEAM=2, MAX_EPOCH=1, DIAGNOSE=0, **TINY))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = work / "runs/quality-summarization-3k"
    assert "chosen: 0.5,0.5,2" in (run_dir / "sweep.txt").read_text()
    rows = json.loads((run_dir / "results.json").read_text())
    assert sorted((r["mode"], r["seed"]) for r in rows) == [
        (mode, seed) for mode in ("baseline", "lrdrop", "rdrop") for seed in (1, 2)]
    assert all(0 <= r["score"] <= 100 for r in rows)
    for name in ("baseline-seed1", "rdrop-2-seed2", "lrdrop-0.5-0.5-2-seed2"):
        command = (run_dir / name / "command.txt").read_text()
        assert "data/ddtp-quality-sum-3k" in command and "--patience 10" in command
    # LR-Drop seed 2 was trained by lane 2 (its log ends after it), not by the last step
    trained = (run_dir / "lrdrop-0.5-0.5-2-seed2" / "trained").stat().st_mtime
    assert trained <= (run_dir / "lane2.log").stat().st_mtime
    assert "ROUGE" in (run_dir / "lrdrop-0.5-0.5-2-seed2" / "eval-test-checkpoint_best" / "score.txt").read_text()
    assert "| lrdrop | 0.5, 0.5, 2 |" in proc.stdout


def test_ablation_trains_each_variant_for_the_budget_and_reports_every_stopping_point(prepared, tmp_path):
    """bench/ablation.sh trains each named variant for exactly BUDGET_EPOCHS epochs with the
    criterion flags of its variant and keeps every epoch's checkpoint; bench/ablation_report.py
    scores each run at its best epoch, at the simulated patience stop and at equal valid loss;
    bench/term_gradients.py measures each term's gradient on one of the checkpoints."""
    work, _ = prepared
    run_dir = tmp_path / "ablation"
    env = _env(VARIANTS="baseline attention_mse", BUDGET_EPOCHS=2, WEIGHTS="0.5,1,2", RUN_DIR=run_dir,
               DDTP_INDEX_DIR=work / "idx", VALID_SIZE=8, TEST_SIZE=8, SPM_VOCAB=80, WORKERS=1, BEAM=2,
               **{**TINY, "MAX_UPDATE": 0})
    proc = subprocess.run(["bash", os.path.join(ROOT, "bench", "ablation.sh")], cwd=str(work), env=env,
                          capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name, flags in (("baseline", "--criterion label_smoothed_cross_entropy "),
                        ("attention_mse", "--hidden-reg-weight 0.5 --attn-reg-weight 1 --output-reg-weight 2 ")):
        command = (run_dir / f"{name}-seed1" / "command.txt").read_text()
        assert flags in command and "--patience -1" in command and "--max-epoch 2 " in command
        assert sorted(p.name for p in (run_dir / f"{name}-seed1").glob("checkpoint[0-9]*.pt")) == [
            "checkpoint1.pt", "checkpoint2.pt"]
    assert "--attn-distance mse" in (run_dir / "attention_mse-seed1" / "command.txt").read_text()
    # a rerun trains nothing again
    again = subprocess.run(["bash", os.path.join(ROOT, "bench", "ablation.sh")], cwd=str(work), env=env,
                           capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert again.returncode == 0 and again.stdout.count(": trained") == 2, again.stdout

    data_bin = str(work / "data/ddtp-quality-4k/bin/translation-en-de")
    report = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "ablation_report.py"), "--run-dir", str(run_dir),
                             "--data-bin", data_bin, "--patience", "1", "--valid", "--epochs", "1", "2",
                             "--select-on-valid-score"],
                            cwd=str(work), env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    result = json.loads((run_dir / "report.json").read_text())
    curves = {}
    for run in ("baseline-seed1", "attention_mse-seed1"):
        rows = [json.loads(l) for l in (run_dir / run / "train.log").read_text().splitlines() if '"valid_loss"' in l]
        by_epoch = {int(r["epoch"]): float(r["valid_loss"]) for r in rows}  # fairseq repeats log lines
        curves[run] = [by_epoch[epoch] for epoch in (1, 2)]
    loss_targets = {value for metric, value in result["targets"].values() if metric == "loss"}
    assert loss_targets == {min(curves["baseline-seed1"]), min(curves["attention_mse-seed1"])}
    assert sorted(metric for metric, _ in result["targets"].values()) == ["loss", "loss", "nll", "nll"]
    for row in result["rows"]:
        losses = curves[row["run"]]
        if row["point"] == "best":
            assert row["epoch"] == max(e for e in (1, 2) if losses[e - 1] == min(losses))
        if row["epoch"] is not None:
            assert row["valid_loss"] == losses[row["epoch"] - 1]
            assert row["result"]["length_ratio"] > 0 and 0 <= row["result"]["score"] <= 100
            assert (run_dir / row["run"] / f"eval-test-epoch{row['epoch']}" / "hyp.txt").exists()
    assert [s["complete"] for s in result["runs"]] == [True, True]
    for summary in result["runs"]:  # --valid: the valid split decoded at the best epoch
        score_txt = run_dir / summary["run"] / f"eval-valid-epoch{summary['best_epoch']}" / "score.txt"
        assert f"BLEU = {summary['valid_score_at_best']:.2f}" in score_txt.read_text()
        # --select-on-valid-score: valid decoded at every listed epoch, the highest one chosen
        scores = {int(e): s for e, s in summary["valid_scores"].items()}
        assert sorted(scores) == [1, 2]
        for epoch, score in scores.items():
            valid_txt = (run_dir / summary["run"] / f"eval-valid-epoch{epoch}" / "score.txt").read_text()
            assert f"BLEU = {score:.2f}" in valid_txt
        (chosen,) = [r["epoch"] for r in result["rows"] if r["run"] == summary["run"] and r["point"] == "best valid score"]
        assert scores[chosen] == max(scores.values()) and chosen == min(e for e in scores if scores[e] == max(scores.values()))
    assert "| attention_mse-seed1 | best |" in (run_dir / "report.md").read_text()

    sys.path.insert(0, os.path.join(ROOT, "bench"))
    try:
        import term_gradients
    finally:
        sys.path.pop(0)
    checkpoint = str(run_dir / "attention_mse-seed1" / "checkpoint2.pt")
    first = term_gradients.measure(checkpoint, data_bin, (1.0, 1.0, 1.0), 1, 500, 1, 0.1, "layer_output", "mse")
    second = term_gradients.measure(checkpoint, data_bin, (2.0, 0.0, 1.0), 1, 500, 1, 0.1, "layer_output", "mse")
    assert first["ce_norm"] > 0 and first["ce_norm"] == pytest.approx(second["ce_norm"])  # same dropout draws
    assert second["hidden_reg_norm"] == pytest.approx(2 * first["hidden_reg_norm"], rel=1e-5)
    assert second["attn_reg_norm"] == 0 and first["attn_reg_norm"] > 0
    assert -1 <= first["output_reg_cosine"] <= 1


def test_ablation_rejects_an_unknown_variant_before_writing(tmp_path):
    proc = subprocess.run(["bash", os.path.join(ROOT, "bench", "ablation.sh")], cwd=str(tmp_path),
                          env=_env(VARIANTS="rdrop hidden_twice", RUN_DIR=tmp_path / "r"), capture_output=True, text=True)
    _one_line_error(proc, "hidden_twice", "VARIANTS")
    assert not (tmp_path / "r").exists()
