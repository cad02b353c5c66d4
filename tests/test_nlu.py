"""The DDTP encoder-only and decoder-only studies, offline: prepare-nlu.sh on tiny generated
index files, pretrain.sh (masked_lm), finetune.sh on both tasks, bench/nlu_study.sh's weight
choice on valid and bench/nlu_report.py's statistics, bench/lm_study.sh (lm.sh, language
modeling to early stopping, test perplexity); and the scripts' bad-input errors."""
import json
import math
import os
import statistics
import subprocess
import sys

import pytest
from conftest import HANG_GUARD_S
from scipy.stats import t as student_t
from scipy.stats import ttest_1samp, wilcoxon

from test_ddtp_scripts import _env, write_indexes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EX = os.path.join(ROOT, "examples", "ddtp")
sys.path.insert(0, EX)
sys.path.insert(0, os.path.join(ROOT, "bench"))
import nlu  # noqa: E402
import example_agreement  # noqa: E402
import nlu_report  # noqa: E402

TINY = dict(LAYERS=1, EMBED_DIM=16, FFN_DIM=32, HEADS=2, MAX_POSITIONS=64, MAX_UPDATE=3, WARMUP=1,
            MAX_TOKENS=512, MAX_EPOCH=1, BATCH_SIZE=4, THREADS=1)


def _bash(script, cwd, timeout=HANG_GUARD_S, **extra):
    return subprocess.run(["bash", script], cwd=str(cwd), env=_env(**extra), capture_output=True,
                          text=True, timeout=timeout)


def _prepare(work, **extra):
    return _bash(os.path.join(EX, "prepare-nlu.sh"), work, DDTP_INDEX_DIR=work / "idx", DATA_DIR=work / "data",
                 VALID_SIZE=6, TEST_SIZE=6, TRAIN_SIZES="10 all", LM_TRAIN_SIZES="20", SPM_VOCAB=60,
                 WORKERS=1, PRETRAIN_VALID_SIZE=2, **extra)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    work = tmp_path_factory.mktemp("nlu")
    write_indexes(str(work / "idx"))
    proc = _prepare(work)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return work, proc


def _lines(path):
    return path.read_text().splitlines()


def test_prepare_nlu_shares_one_dictionary_and_draws_train_subsets(prepared):
    work, proc = prepared
    data = work / "data"
    stats = json.loads((data / "bin/stats.json").read_text())
    raw_train = len(_lines(data / "raw/classification/train.label"))
    assert stats["classification-all"]["train"] == raw_train > 10 == stats["classification-10"]["train"]
    assert stats["classification-10"]["test"] == len(_lines(data / "raw/classification/test.label"))
    assert stats["pairs-all"]["valid"] == len(_lines(data / "raw/pairs/valid.label"))
    pretraining_dict = (data / "bin/pretraining/dict.txt").read_text()
    for name in ("classification-10", "classification-all", "pairs-10", "pairs-all"):
        assert (data / "bin" / name / "input0/dict.txt").read_text() == pretraining_dict
    assert (data / "bin/pairs-10/input1/dict.txt").read_text() == pretraining_dict
    assert (data / "bin/lm-en/dict.txt").read_text() == pretraining_dict == (data / "bin/lm-en-20/dict.txt").read_text()
    assert stats["lm-en-20"] == dict(stats["lm-en"], train=20) and stats["lm-en"]["train"] > 20
    assert (data / "bin/lm-en-20/valid.bin").read_bytes() == (data / "bin/lm-en/valid.bin").read_bytes()
    # one label dictionary per task, the same for every size; the sections of the index
    labels = [line.split()[0] for line in _lines(data / "bin/classification-all/label/dict.txt")]
    assert sorted(labels) == ["devel", "doc", "libs"]
    assert (data / "bin/classification-10/label/dict.txt").read_text() == (data / "bin/classification-all/label/dict.txt").read_text()
    assert sum(stats["classification-10"]["labels"]["train"].values()) == 10
    assert (data / "bin/pretraining/train.bin").stat().st_size > 0 and (data / "bin/spm.model").exists()
    again = _prepare(work)
    assert again.returncode == 0 and "NLU data cached" in again.stdout


def test_train_subset_is_seeded_ordered_and_all_means_every_row():
    rows = list(range(100))
    first = nlu.train_subset(rows, "10", 1)
    assert first == nlu.train_subset(rows, "10", 1) == sorted(first) and len(set(first)) == 10
    assert first != nlu.train_subset(rows, "10", 2)
    assert nlu.train_subset(rows, "all", 1) == rows == nlu.train_subset(rows, "500", 1)


def test_study_chooses_lr_drop_weights_on_valid_and_reports_every_seed(prepared):
    work, _ = prepared
    run_dir = work / "study"
    proc = _bash(os.path.join(ROOT, "bench/nlu_study.sh"), work, timeout=HANG_GUARD_S, DDTP_INDEX_DIR=work / "idx",
                 DATA_DIR=work / "data", VALID_SIZE=6, TEST_SIZE=6, TRAIN_SIZES="10 all", SPM_VOCAB=60,
                 PRETRAIN_VALID_SIZE=2, WORKERS=1, RUN_DIR=run_dir, TASKS="classification", SIZES="10", SEEDS="1 2",
                 WEIGHT_GRID="0.1,0.1,1 1,1,1", **TINY)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    grid = {t: json.loads((run_dir / f"classification-10-lrdrop-{t}-seed1/result.json").read_text())
            for t in ("0.1,0.1,1", "1,1,1")}
    best = max(grid, key=lambda t: (grid[t]["valid_accuracy"], t == "0.1,0.1,1"))
    assert (run_dir / "classification-10-lrdrop-choice.txt").read_text().split()[0] == best
    second = json.loads((run_dir / f"classification-10-lrdrop-{best}-seed2/result.json").read_text())
    assert second["weights"] == best and second["seed"] == 2 and second["test_examples"] > 0
    report = json.loads((run_dir / "report.json").read_text())["table"]["classification-10"]
    for mode in ("baseline", "rdrop"):
        runs = [json.loads((run_dir / f"classification-10-{mode}-seed{s}/result.json").read_text()) for s in (1, 2)]
        assert report[mode]["test"] == [r["test_accuracy"] for r in runs]
        assert report[mode]["test_mean"] == pytest.approx(statistics.mean(r["test_accuracy"] for r in runs))
        assert runs[0]["weights"] == ("0,0,0" if mode == "baseline" else "0,0,1.0")
        assert 0 <= runs[0]["test_accuracy"] <= 100 and runs[0]["epochs"] == 1
    assert report["lrdrop"]["weights"] == best and report["lrdrop"]["seeds"] == [1, 2]
    # bench/diagnose.py ran on every best checkpoint: the classifier's entropies, no EOS measures
    diagnoses = [json.loads((run_dir / f"classification-10-baseline-seed{s}/diagnose-test.json").read_text()) for s in (1, 2)]
    for diagnosis in diagnoses:
        assert 0 < diagnosis["output_entropy"] <= math.log(3)  # three sections in the tiny index
        assert diagnosis["attention_entropy"]["encoder_self"] > 0 and diagnosis["eos_prob_at_end"] is None
    assert report["baseline"]["output_entropy"] == pytest.approx(statistics.mean(d["output_entropy"] for d in diagnoses))
    assert "| classification-10 | LR-Drop | %s |" % best in (run_dir / "report.md").read_text()
    # bench/example_agreement.py scores every run's best checkpoint on test, example by example:
    # each run's share of right examples is its result.json accuracy, and each seed's discordant
    # counts differ by exactly the two runs' difference in right examples
    assert example_agreement.main(["--run-dir", str(run_dir)]) == 0
    agreement = json.loads((run_dir / "agreement.json").read_text())["classification-10"]
    accuracy = {}
    for result_path in run_dir.glob("classification-10-*-seed*/result.json"):
        result = json.loads(result_path.read_text())
        right = json.loads((result_path.parent / "correct-test.json").read_text())
        assert len(right) == result["test_examples"] and set(right) <= {0, 1}
        assert 100 * sum(right) / len(right) == pytest.approx(result["test_accuracy"], abs=0.01)
        accuracy["%s %s" % (result["mode"], result["weights"]), result["seed"]] = sum(right)
    assert agreement["runs"] == len(accuracy) == 7   # the unchosen grid entry's seed-1 run too
    chosen = ("lrdrop " + best, "rdrop 0,0,1.0", "baseline 0,0,0")
    assert {(pair["first"], pair["second"]) for pair in agreement["pairs"]} >= {
        (chosen[1], chosen[2]), (chosen[0], chosen[2]), (chosen[0], chosen[1])}
    for pair in agreement["pairs"]:
        for seed, (first_only, second_only) in zip(pair["seeds"], pair["discordant"]):
            assert first_only - second_only == accuracy[pair["first"], seed] - accuracy[pair["second"], seed]
    # a rerun trains nothing
    again = _bash(os.path.join(ROOT, "bench/nlu_study.sh"), work, timeout=HANG_GUARD_S, DDTP_INDEX_DIR=work / "idx",
                  DATA_DIR=work / "data", VALID_SIZE=6, TEST_SIZE=6, TRAIN_SIZES="10 all", SPM_VOCAB=60,
                  PRETRAIN_VALID_SIZE=2, WORKERS=1, RUN_DIR=run_dir, TASKS="classification", SIZES="10", SEEDS="1 2",
                  WEIGHT_GRID="0.1,0.1,1 1,1,1", **TINY)
    assert again.returncode == 0 and "pre-trained model cached" in again.stdout + again.stderr
    assert second == json.loads((run_dir / f"classification-10-lrdrop-{best}-seed2/result.json").read_text())


def test_pair_task_fine_tunes_with_lr_drop_and_scores_the_test_split(prepared, tmp_path):
    work, _ = prepared
    pre = _bash(os.path.join(EX, "pretrain.sh"), work, DATA_DIR=work / "data", SAVE_DIR=tmp_path / "pre", **TINY)
    assert pre.returncode == 0, pre.stdout + pre.stderr
    proc = _bash(os.path.join(EX, "finetune.sh"), work, DATA_DIR=work / "data", TASK="pairs", SIZE="all",
                 MODE="lrdrop", PRETRAINED=tmp_path / "pre/checkpoint_last.pt", SAVE_DIR=tmp_path / "ft", **TINY)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((tmp_path / "ft/result.json").read_text())
    assert result["test_examples"] == len(_lines(work / "data/raw/pairs/test.label"))
    assert result["weights"] == "0.01,0.01,1.0" and result["task"] == "pairs"
    log = (tmp_path / "ft/train.out").read_text()
    assert '"train_hidden_reg"' in log and '"train_attn_reg"' in log and "--restore-file" in (tmp_path / "ft/command.txt").read_text()
    assert "Loaded checkpoint" in log and "pre/checkpoint_last.pt" in log
    # PRETRAINED=none: the same recipe from a random start, in a run directory of its own
    scratch = _bash(os.path.join(EX, "finetune.sh"), work, DATA_DIR=work / "data", TASK="classification", SIZE="10",
                    MODE="baseline", PRETRAINED="none", SEED=7, **TINY)
    assert scratch.returncode == 0, scratch.stdout + scratch.stderr
    scratch_dir = work / "runs/ddtp-nlu-scratch/classification-10-baseline-seed7"
    assert json.loads((scratch_dir / "result.json").read_text())["mode"] == "baseline"
    assert "--restore-file" not in (scratch_dir / "command.txt").read_text()
    assert "No existing checkpoint found" in (scratch_dir / "train.out").read_text()
    missing = _bash(os.path.join(EX, "finetune.sh"), work, DATA_DIR=work / "data", TASK="pairs", SIZE="all",
                    PRETRAINED=tmp_path / "absent.pt", SAVE_DIR=tmp_path / "absent", **TINY)
    errors = [line for line in missing.stderr.splitlines() if line.startswith("error:")]
    assert missing.returncode != 0 and len(errors) == 1 and "absent.pt missing" in errors[0] and "PRETRAINED=none" in errors[0]
    assert not (tmp_path / "absent").exists()


LM_TINY = dict(LAYERS=1, EMBED_DIM=16, FFN_DIM=32, HEADS=2, TOKENS_PER_SAMPLE=16, MAX_TOKENS=64, WARMUP=2,
               MAX_EPOCH=4, PATIENCE=1, THREADS=1)


def _lm_study(work, run_dir, **extra):
    return _bash(os.path.join(ROOT, "bench/lm_study.sh"), work, DDTP_INDEX_DIR=work / "idx", DATA_DIR=work / "data",
                 VALID_SIZE=6, TEST_SIZE=6, TRAIN_SIZES="10 all", LM_TRAIN_SIZES="20", SPM_VOCAB=60, WORKERS=1,
                 PRETRAIN_VALID_SIZE=2, RUN_DIR=run_dir, SIZES="20", SEEDS="1", **LM_TINY, **extra)


def test_lm_study_trains_every_mode_and_scores_test_perplexity_as_stock_validation(prepared):
    work, _ = prepared
    run_dir = work / "lm"
    proc = _lm_study(work, run_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = {m: json.loads((run_dir / f"20-{m}-seed1/result.json").read_text()) for m in ("baseline", "rdrop", "lrdrop")}
    commands = {m: (run_dir / f"20-{m}-seed1/command.txt").read_text() for m in results}
    assert "--arch transformer_lm --criterion cross_entropy" in commands["baseline"]
    assert "--arch transformer_lm --criterion lr_drop_label_smoothed_cross_entropy" in commands["rdrop"]
    assert "--arch lr_drop_transformer_lm" in commands["lrdrop"] and "--label-smoothing 0" in commands["lrdrop"]
    assert [results[m]["weights"] for m in results] == ["0,0,0", "0,0,1.0", "0.1,0.1,1.0"]
    for mode, result in results.items():
        out = (run_dir / f"20-{mode}-seed1/train.out").read_text()
        valid = [json.loads(line.split("| valid | ", 1)[1]) for line in out.splitlines() if "| valid | " in line]
        losses = [float(v["valid_loss"]) for v in valid]
        # early stopping: the run ends at MAX_EPOCH or PATIENCE epochs after its best
        assert result["epochs"] == len(valid) and losses[result["best_epoch"] - 1] == min(losses)
        assert result["epochs"] == 4 or result["epochs"] == result["best_epoch"] + 1
        assert result["valid_ppl"] == pytest.approx(2 ** min(losses), rel=2e-3)
        # the test perplexity of fairseq-eval-lm is the stock single-pass loss of fairseq-validate
        # (which needs --required-batch-size-multiple 1: with the default 8 it leaves blocks out)
        check = subprocess.run([sys.executable, "-m", "fairseq_cli.validate", str(work / "data/bin/lm-en-20"),
                                "--task", "language_modeling", "--tokens-per-sample", "16", "--sample-break-mode", "none",
                                "--user-dir", os.path.join(ROOT, "fairseq_lrdrop"), "--path",
                                str(run_dir / f"20-{mode}-seed1/checkpoint_best.pt"), "--valid-subset", "test",
                                "--max-tokens", "64", "--required-batch-size-multiple", "1", "--cpu", "--num-workers", "0",
                                "--log-format", "json"],
                               env=_env(), capture_output=True, text=True, timeout=HANG_GUARD_S)
        assert check.returncode == 0, check.stderr
        logged = [line for line in (check.stdout + check.stderr).splitlines() if "| test | " in line]
        test_loss = float(json.loads(logged[-1].split("| test | ", 1)[1])["test_loss"])
        assert result["test_ppl"] == pytest.approx(2 ** test_loss, rel=2e-3)
        if mode != "baseline":
            assert '"train_output_reg"' in out
    assert '"train_hidden_reg"' in (run_dir / "20-lrdrop-seed1/train.out").read_text()
    table = json.loads((run_dir / "report.json").read_text())["table"]["20"]
    assert table["lrdrop"]["diff"] == pytest.approx(results["lrdrop"]["test_ppl"] - results["baseline"]["test_ppl"])
    assert table["rdrop"]["test"] == [results["rdrop"]["test_ppl"]]
    # bench/diagnose.py ran on every run's best checkpoint; the report carries its entropies
    for mode in results:
        diagnosis = json.loads((run_dir / f"20-{mode}-seed1/diagnose-test.json").read_text())
        attention = diagnosis["attention_entropy"]
        assert attention["encoder_self"] is None and attention["decoder_cross"] is None
        vocabulary = len(_lines(work / "data/bin/lm-en-20/dict.txt")) + 4  # with <s>, <pad>, </s>, <unk>
        assert 0 < attention["decoder_self"] < math.log(16) and 0 < diagnosis["output_entropy"] < math.log(vocabulary)
        assert table[mode]["self_attention_entropy"] == attention["decoder_self"]
        assert table[mode]["output_entropy"] == diagnosis["output_entropy"]
    assert "| %.3f | %.3f |" % (table["lrdrop"]["self_attention_entropy"], table["lrdrop"]["output_entropy"]) \
        in (run_dir / "report.md").read_text()
    # a rerun trains nothing; with DIAGNOSE=0 it diagnoses nothing either, and the row shows "-"
    (run_dir / "20-baseline-seed1/diagnose-test.json").unlink()
    again = _lm_study(work, run_dir, DIAGNOSE="0")
    assert again.returncode == 0 and "NLU data cached" in again.stdout + again.stderr
    assert json.loads((run_dir / "20-lrdrop-seed1/result.json").read_text()) == results["lrdrop"]
    assert not (run_dir / "20-baseline-seed1/diagnose-test.json").exists()
    table = json.loads((run_dir / "report.json").read_text())["table"]["20"]
    assert table["baseline"]["self_attention_entropy"] is None and table["lrdrop"]["self_attention_entropy"] is not None


def test_report_statistics_match_welchs_formula(tmp_path):
    values = {"baseline": [60.0, 62.0, 61.0], "rdrop": [63.0, 64.5, 62.5]}
    for mode, accs in values.items():
        for seed, acc in enumerate(accs, 1):
            d = tmp_path / f"classification-1000-{mode}-seed{seed}"
            d.mkdir()
            (d / "result.json").write_text(json.dumps(dict(
                task="classification", size="1000", mode=mode, seed=seed, weights="0,0,1", epochs=3,
                valid_accuracy=acc + 1, test_accuracy=acc, test_examples=100, train_seconds=10 * (2 if mode == "rdrop" else 1))))
            if (mode, seed) != ("baseline", 3):  # bench/diagnose.py's entropies, one run without
                (d / "diagnose-test.json").write_text(json.dumps(dict(
                    attention_entropy=dict(encoder_self=acc / 20, decoder_self=None, decoder_cross=None),
                    output_entropy=acc / 100, eos_prob_at_end=None, eos_prob_inside=None)))
    assert nlu_report.main(["--run-dir", str(tmp_path), "--plot", str(tmp_path / "plot.png")]) == 0
    table = json.loads((tmp_path / "report.json").read_text())["table"]["classification-1000"]
    row = table["rdrop"]
    assert row["self_attention_entropy"] == pytest.approx(statistics.mean(values["rdrop"]) / 20)
    assert row["output_entropy"] == pytest.approx(statistics.mean(values["rdrop"]) / 100)
    assert table["baseline"]["self_attention_entropy"] is None is table["baseline"]["output_entropy"]
    report = (tmp_path / "report.md").read_text()
    assert "| 2.00x | %.3f | %.3f |" % (row["self_attention_entropy"], row["output_entropy"]) in report
    assert "|  | - | - |" in report  # the baseline row: no time ratio, no complete diagnosis
    a, b = values["rdrop"], values["baseline"]
    va, vb = statistics.variance(a) / 3, statistics.variance(b) / 3
    t = (statistics.mean(a) - statistics.mean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 2)
    assert row["diff"] == pytest.approx(2.3333333)
    assert row["p_welch"] == pytest.approx(2 * student_t.sf(abs(t), df))
    assert row["test_std"] == pytest.approx(math.sqrt(((63 - 63.3333) ** 2 + (64.5 - 63.3333) ** 2 + (62.5 - 63.3333) ** 2) / 2), rel=1e-4)
    assert row["time_ratio"] == pytest.approx(2.0)
    # paired by seed: differences 3, 2.5, 1.5 -> mean 2.333, and the paired t-test's p
    diffs = [x - y for x, y in zip(a, b)]
    t_paired = statistics.mean(diffs) / (statistics.stdev(diffs) / math.sqrt(3))
    pair = row["paired_vs_baseline"]
    assert pair["seeds"] == [1, 2, 3] and pair["diff_mean"] == pytest.approx(2.3333333)
    assert pair["p"] == pytest.approx(2 * student_t.sf(abs(t_paired), 2))
    assert "| classification-1000 | R-Drop - baseline | 3 | +2.33 ± %.2f | %.3f |" % (statistics.stdev(diffs), pair["p"]) in report
    assert "1 paired t-tests in this table, so p < 0.0500" in report
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_example_agreement_counts_discordant_examples_and_tests_over_examples(tmp_path):
    first = [[1, 1, 0, 1, 0, 1], [1, 0, 0, 1, 1, 1]]   # seeds x examples, 1 = right
    second = [[1, 0, 0, 1, 0, 0], [1, 0, 1, 1, 0, 1]]
    result = example_agreement.compare_correct(first, second)
    assert result["discordant"] == [[2, 0], [1, 1]]
    per_example = [0, 0.5, -0.5, 0, 0.5, 0.5]   # seed-mean correctness, first - second
    assert result["difference"] == pytest.approx(100 * sum(per_example) / 6)
    assert result["examples_differing"] == 4
    assert result["t_p"] == pytest.approx(ttest_1samp(per_example, 0).pvalue)
    assert result["wilcoxon_p"] == pytest.approx(wilcoxon([0.5, -0.5, 0.5, 0.5]).pvalue)
    same = example_agreement.compare_correct(first, first)
    assert same["examples_differing"] == 0 and same["t_p"] == same["wilcoxon_p"] == 1.0
    with pytest.raises(ValueError, match="same seeds x examples"):
        example_agreement.compare_correct(first, second[:1])
    with pytest.raises(SystemExit, match="--run-dir .* holds no"):
        example_agreement.main(["--run-dir", str(tmp_path)])


def test_bad_input_is_one_line_before_work(tmp_path):
    cases = [
        (os.path.join(EX, "finetune.sh"), dict(TASK="sentiment"), "TASK=sentiment"),
        (os.path.join(EX, "finetune.sh"), dict(DATA_DIR=tmp_path / "none"), "prepare-nlu.sh"),
        (os.path.join(EX, "pretrain.sh"), dict(DATA_DIR=tmp_path / "none"), "prepare-nlu.sh"),
        (os.path.join(ROOT, "bench/nlu_study.sh"), dict(WEIGHT_GRID="0.1;0.1"), "WEIGHT_GRID"),
        (os.path.join(EX, "prepare-nlu.sh"), dict(TRAIN_SIZES="ten", DATA_DIR=tmp_path / "d"), "TRAIN_SIZES"),
        (os.path.join(EX, "prepare-nlu.sh"), dict(LM_TRAIN_SIZES="all", DATA_DIR=tmp_path / "d"), "LM_TRAIN_SIZES"),
        (os.path.join(EX, "lm.sh"), dict(MODE="gpt"), "MODE=gpt"),
        (os.path.join(EX, "lm.sh"), dict(DATA_DIR=tmp_path / "none"), "prepare-nlu.sh"),
        (os.path.join(ROOT, "bench/lm_study.sh"), dict(LRDROP_WEIGHTS="0.1,0.1"), "LRDROP_WEIGHTS"),
        (os.path.join(ROOT, "bench/lm_study.sh"), dict(DIAGNOSE="yes"), "DIAGNOSE must be 0 or 1"),
        (os.path.join(ROOT, "bench/nlu_study.sh"), dict(DIAGNOSE="2"), "DIAGNOSE must be 0 or 1"),
    ]
    for script, env, needle in cases:
        proc = _bash(script, tmp_path, RUN_DIR=tmp_path / "runs", **env)
        assert proc.returncode != 0
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and needle in errors[0], proc.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "d").exists()


def _write_results(run_dir, task, size, accuracies):
    """A result.json per {(mode, weights): [accuracy of seed 1, 2, ...]} entry and seed, as
    examples/ddtp/finetune.sh writes them (valid accuracy = test accuracy)."""
    for (mode, weights), accs in accuracies.items():
        for seed, acc in enumerate(accs, 1):
            d = run_dir / f"{task}-{size}-{mode}-{weights}-seed{seed}"
            d.mkdir()
            (d / "result.json").write_text(json.dumps(dict(
                task=task, size=size, mode=mode, seed=seed, weights=weights, epochs=3,
                valid_accuracy=acc, test_accuracy=acc, test_examples=100, train_seconds=10)))


def test_report_shows_ablation_runs_as_variant_rows_paired_with_the_chosen_weights(tmp_path):
    """LR-Drop runs with other weights than the valid choice (an attention-only or hidden-only
    ablation over every seed) get their own rows, paired with the chosen LR-Drop by seed; a
    grid's single first-seed run does not."""
    accuracies = {("baseline", "0,0,0"): [70.0, 71.0, 72.0], ("lrdrop", "0.01,0.01,1"): [71.0, 73.0, 72.5],
                  ("lrdrop", "0,0.01,1"): [72.0, 73.5, 74.0], ("lrdrop", "0.001,0.001,1"): [69.0]}
    _write_results(tmp_path, "architecture", "1000", accuracies)
    (tmp_path / "architecture-1000-lrdrop-choice.txt").write_text("0.01,0.01,1 0.001,0.001,1=69.0 0.01,0.01,1=71.0\n")
    assert nlu_report.main(["--run-dir", str(tmp_path)]) == 0
    table = json.loads((tmp_path / "report.json").read_text())["table"]["architecture-1000"]
    assert list(table) == ["baseline", "lrdrop", "lrdrop 0,0.01,1"]
    variant = table["lrdrop 0,0.01,1"]
    assert variant["test"] == [72.0, 73.5, 74.0] and variant["paired_vs_lrdrop"]["diff_mean"] == pytest.approx(1.0)
    assert variant["paired_vs_baseline"]["diff_mean"] == pytest.approx(2.1666667)
    report = (tmp_path / "report.md").read_text()
    assert "| architecture-1000 | LR-Drop (0,0.01,1) - LR-Drop | 3 | +1.00 ± " in report
    assert "3 paired t-tests in this table" in report   # LR-Drop - baseline, the variant against both


def test_report_pairs_each_lr_drop_row_with_the_r_drop_row_of_its_gamma(tmp_path):
    """R-Drop runs with another gamma than the valid choice get a variant row too, paired with
    the chosen R-Drop; every LR-Drop row (chosen or not) is paired with the R-Drop row of the
    same gamma, so that a choice of another gamma does not hide what the layer terms do; "1"
    and "1.0" are the same weights."""
    accuracies = {("baseline", "0,0,0"): [80.0, 81.0, 82.0], ("rdrop", "0,0,0.5"): [81.0, 82.0, 83.5],
                  ("rdrop", "0,0,1"): [80.5, 81.0, 82.5], ("lrdrop", "0.001,0.001,1.0"): [82.0, 80.0, 83.0],
                  ("lrdrop", "0.001,0.001,0.5"): [81.5, 82.0, 83.0]}
    _write_results(tmp_path, "architecture", "10000", accuracies)
    (tmp_path / "architecture-10000-lrdrop-choice.txt").write_text(
        "0.001,0.001,1 0.001,0.001,0.5=81.5 0.001,0.001,1=82.0\n")
    (tmp_path / "architecture-10000-rdrop-choice.txt").write_text("0,0,0.5 0,0,0.5=81.0 0,0,1=80.5\n")
    assert nlu_report.main(["--run-dir", str(tmp_path)]) == 0
    table = json.loads((tmp_path / "report.json").read_text())["table"]["architecture-10000"]
    assert set(table) == {"baseline", "rdrop", "lrdrop", "lrdrop 0.001,0.001,0.5", "rdrop 0,0,1"}
    assert table["lrdrop"]["test"] == [82.0, 80.0, 83.0] and table["rdrop"]["weights"] == "0,0,0.5"

    def diff(first, second):
        return statistics.mean(a - b for a, b in zip(accuracies[first], accuracies[second]))

    pairs = {row: {field[len("paired_vs_"):]: cell["diff_mean"] for field, cell in cells.items()
                   if field.startswith("paired_vs_")} for row, cells in table.items()}
    assert pairs == {
        "baseline": {},
        "rdrop": {"baseline": pytest.approx(diff(("rdrop", "0,0,0.5"), ("baseline", "0,0,0")))},
        "lrdrop": {"baseline": pytest.approx(diff(("lrdrop", "0.001,0.001,1.0"), ("baseline", "0,0,0"))),
                   "rdrop": pytest.approx(diff(("lrdrop", "0.001,0.001,1.0"), ("rdrop", "0,0,0.5"))),
                   "rdrop 0,0,1": pytest.approx(diff(("lrdrop", "0.001,0.001,1.0"), ("rdrop", "0,0,1")))},
        "lrdrop 0.001,0.001,0.5": {
            "baseline": pytest.approx(diff(("lrdrop", "0.001,0.001,0.5"), ("baseline", "0,0,0"))),
            "lrdrop": pytest.approx(diff(("lrdrop", "0.001,0.001,0.5"), ("lrdrop", "0.001,0.001,1.0"))),
            "rdrop": pytest.approx(diff(("lrdrop", "0.001,0.001,0.5"), ("rdrop", "0,0,0.5")))},
        "rdrop 0,0,1": {"baseline": pytest.approx(diff(("rdrop", "0,0,1"), ("baseline", "0,0,0"))),
                        "rdrop": pytest.approx(diff(("rdrop", "0,0,1"), ("rdrop", "0,0,0.5")))}}
    report = (tmp_path / "report.md").read_text()
    assert "| architecture-10000 | LR-Drop - R-Drop (0,0,1) | 3 | %+.2f ± " % diff(
        ("lrdrop", "0.001,0.001,1.0"), ("rdrop", "0,0,1")) in report
    assert "| architecture-10000 | LR-Drop (0.001,0.001,0.5) - R-Drop | 3 |" in report
    assert "9 paired t-tests in this table" in report
