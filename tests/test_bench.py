"""bench/speed.py and bench/plot.py run and report what they measured (timings are not asserted)."""
import json
import subprocess
import sys

from conftest import REPO, bench_module


def test_speed_benchmark_reports_every_configuration(tmp_path):
    out = tmp_path / "speed.json"
    proc = subprocess.run([sys.executable, REPO / "bench" / "speed.py", "--preset", "tiny", "--steps", "2",
                           "--warmup", "1", "--cpu", "--generation-repeats", "2", "--json", out],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["rows"]) == {"baseline", "rdrop", "lrdrop"}
    for row in result["rows"].values():
        assert row["step_ms"] > 0 and row["tokens_per_s"] > 0 and row["peak_mib"] >= 0
    assert set(result["ratios"]) == {"lrdrop/rdrop step", "lrdrop/rdrop memory", "lrdrop/baseline step",
                                     "lrdrop/baseline memory",
                                     "generation speed lrdrop_arch/stock_arch"}
    assert "lrdrop/rdrop step" in proc.stdout

    png = tmp_path / "speed.png"
    subprocess.run([sys.executable, REPO / "bench" / "plot.py", "speed", out, "--out", png], check=True)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # two runs side by side (before / after a change), and a label count that does not fit
    pair = tmp_path / "pair.png"
    subprocess.run([sys.executable, REPO / "bench" / "plot.py", "speed", out, out, "--labels", "before,after",
                    "--out", pair], check=True)
    width = lambda path: int.from_bytes(path.read_bytes()[16:20], "big")  # the PNG header's IHDR width
    assert pair.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and width(pair) > width(png)  # wider: bars in groups
    bad = subprocess.run([sys.executable, REPO / "bench" / "plot.py", "speed", out, out, "--labels", "one",
                          "--out", tmp_path / "bad.png"], capture_output=True, text=True)
    assert bad.returncode != 0 and "--labels names 1 runs for 2 JSON files" in bad.stderr
    assert not (tmp_path / "bad.png").exists()


def test_curves_from_fairseq_json_logs(tmp_path):
    log = tmp_path / "train.log"
    lines = ["{'_name': None}"]  # the config dump fairseq writes first
    for update in (50, 100):
        lines.append(json.dumps({"epoch": 1, "loss": "5.1", "hidden_reg": "0.2", "attn_reg": "0.05",
                                 "output_reg": "0.1", "num_updates": str(update)}))
    lines.append(json.dumps({"epoch": 1, "valid_loss": "4.9", "valid_num_updates": "100"}))
    lines.append(json.dumps({"epoch": 1, "train_loss": "5.0", "train_num_updates": "100"}))
    log.write_text("\n".join(lines) + "\n")
    png = tmp_path / "curves.png"
    proc = subprocess.run([sys.executable, REPO / "bench" / "plot.py", "curves", f"lrdrop={log}", "--out", png],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert png.stat().st_size > 1000
    bad = subprocess.run([sys.executable, REPO / "bench" / "plot.py", "curves", f"x={tmp_path / 'nope.log'}",
                          "--out", png], capture_output=True, text=True)
    assert bad.returncode != 0 and bad.stderr.startswith("error: expected NAME=LOG")


def test_term_benchmark_times_both_versions_of_every_term(tmp_path):
    out = tmp_path / "terms.json"
    proc = subprocess.run([sys.executable, REPO / "bench" / "terms.py", "--shapes", "tiny", "--repeats", "2",
                           "--json", out], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["ms"]) == {"output", "hidden", "attention"}
    for row in result["ms"].values():
        assert row["plain"] > 0 and row["losses.py"] > 0
        assert row["value_rel_diff"] < 1e-5 and row["grad_max_diff"] < 1e-6
    assert "attention" in proc.stdout


def test_curves_keep_the_history_of_a_resumed_run(tmp_path):
    """A resumed run appends to the same --log-file, restarting from its last checkpoint: its
    records replace the older ones from that update on, the rest of the history stays."""
    plot = bench_module("plot")
    records = [{"loss": "5", "num_updates": "50"}, {"loss": "4", "num_updates": "100"},
               {"valid_loss": "4.5", "valid_num_updates": "100"}, {"loss": "3.9", "num_updates": "150"},
               # killed after update 150; resumed from the checkpoint at update 100
               {"loss": "3.8", "num_updates": "120"}, {"loss": "3.5", "num_updates": "170"},
               {"valid_loss": "3.7", "valid_num_updates": "170"}]
    log = tmp_path / "train.log"
    log.write_text("".join(json.dumps({"epoch": 1, **r}) + "\n" for r in records))
    train, valid = plot.read_log(log)
    assert [r["num_updates"] for r in train] == [50, 100, 120, 170]
    assert [r["loss"] for r in train] == [5, 4, 3.8, 3.5]
    assert [r["valid_num_updates"] for r in valid] == [100, 170]


def test_step_profile_lists_what_lrdrop_adds_over_two_baseline_steps(tmp_path):
    out = tmp_path / "profile.json"
    proc = subprocess.run([sys.executable, REPO / "bench" / "profile_step.py", "--preset", "tiny", "--warmup", "1",
                           "--threads", "1", "--json", out], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = {row["op"]: row for row in result["rows"]}
    for row in rows.values():
        assert row["excess_ms"] == row["lrdrop_ms"] - 2 * row["baseline_ms"]
    # the consistency terms run only in LR-Drop's step; the model's matmuls in both
    for op in ("_FusedHead", "_SymmetricKLFromProbs", "_SquaredDistance"):  # the fused output head
        assert rows[op]["lrdrop_calls"] >= 1 and rows[op]["baseline_calls"] == 0
    assert rows["aten::mm"]["baseline_calls"] >= 1 and rows["aten::mm"]["lrdrop_calls"] >= 1
    excess = [row["excess_ms"] for row in result["rows"]]
    assert excess == sorted(excess, reverse=True)
    assert result["median_step_s"]["baseline"] > 0 and result["median_step_s"]["lrdrop"] > 0
    assert "excess ms" in proc.stdout


def test_speed_benchmark_runs_a_subset_of_configurations(tmp_path):
    out = tmp_path / "speed.json"
    proc = subprocess.run([sys.executable, REPO / "bench" / "speed.py", "--preset", "tiny", "--steps", "2",
                           "--warmup", "1", "--cpu", "--configs", "baseline,lrdrop,lrdrop_unfused", "--generation-repeats", "2",
                           "--checkpoint-activations", "--json", out],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "preset tiny --checkpoint-activations" in proc.stdout
    result = json.loads(out.read_text())
    assert result["checkpoint_activations"] is True
    assert set(result["rows"]) == {"baseline", "lrdrop", "lrdrop_unfused"}
    assert set(result["ratios"]) == {"lrdrop/baseline step", "lrdrop/baseline memory", "lrdrop/lrdrop_unfused step",
                                     "lrdrop/lrdrop_unfused memory", "generation speed lrdrop_arch/stock_arch"}
    assert result["ratios"]["lrdrop/baseline step"] == (
        result["rows"]["lrdrop"]["step_ms"] / result["rows"]["baseline"]["step_ms"])
    bad = subprocess.run([sys.executable, REPO / "bench" / "speed.py", "--configs", "baseline,rdorp"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--configs: unknown configuration rdorp" in bad.stderr


def test_diagnosis_text_measures_and_entropy():
    import math

    import torch

    diagnose = bench_module("diagnose")
    loops = ["documentation de la documentation de la documentation", "sehr sehr sehr gut", "a b a b"]
    clean = ["der hund sieht die katze", "sehr sehr gut", "de la maison de la ville", ""]
    assert all(diagnose.has_loop(h.split()) for h in loops)
    assert not any(diagnose.has_loop(h.split()) for h in clean)
    measures = diagnose.text_measures(loops + clean, ["x y z"] * 7)
    assert measures["loop_share"] == 3 / 7
    assert measures["length_ratio"] == sum(len(h.split()) for h in loops + clean) / 21
    uniform, one_hot = torch.full((2, 4), 0.25), torch.tensor([[0.0, 1.0, 0.0]])
    assert torch.allclose(diagnose.row_entropy(uniform), torch.full((2,), math.log(4), dtype=torch.float64))
    assert diagnose.row_entropy(one_hot).item() == 0.0
    bad = subprocess.run([sys.executable, REPO / "bench" / "diagnose.py", "--checkpoint", REPO / "README.md",
                          "--data-bin", REPO, "--hyp", REPO / "README.md"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--hyp and --ref go together" in bad.stderr


def _report_module():
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import ablation_report
    finally:
        sys.path.pop(0)
    return ablation_report


def test_patience_simulation_follows_fairseqs_rule():
    """--patience K stops after K validations without a strictly lower loss; checkpoint_best is
    rewritten on a tie (<=), so the kept epoch is the latest of equal losses."""
    report = _report_module()
    curve = [(1, 9.0), (2, 8.0), (3, 8.5), (4, 8.0), (5, 8.2), (6, 7.5), (7, 7.6), (8, 7.7), (9, 7.8), (10, 7.0)]
    # patience 3: epochs 3, 4 (a tie is no improvement), 5 -> stop at 5 keeping epoch 4 (the tie)
    assert report.patience_stop(curve, 3) == (5, 4, True)
    assert report.patience_stop(curve, 2) == (4, 4, True)
    assert report.patience_stop(curve[:9], 3) == (5, 4, True)
    assert report.patience_stop(curve[5:], 3) == (9, 6, True)  # 7, 8, 9 no better than 6
    assert report.patience_stop(curve, 4) == (10, 10, False)  # the curve ends first
    assert report.best_scoring_epoch({10: 14.7, 20: 15.8, 30: 17.8, 40: 17.8}) == 30  # earliest of a tie
    assert report.best_scoring_epoch({5: 1.0}) == 5
    assert report.best_epoch(curve) == 10 and report.best_epoch(curve[:5]) == 4
    assert report.first_epoch_at_or_below(curve, 7.6) == 6
    assert report.first_epoch_at_or_below(curve, 6.0) is None
    nll = [(epoch, loss - 1 + 0.1 * epoch) for epoch, loss in curve]  # 8.1, 7.2, 7.8, ...: 7.2 at epoch 2
    points = report.stopping_points(curve, [3, 5], {"loss <= 7.6": ("loss", 7.6), "nll <= 7.2": ("nll", 7.2)},
                                    [5, 20], nll)
    assert points == {"best": 10, "epoch 5": 5, "epoch 20": None, "patience 3": 4, "patience 5": None,
                      "loss <= 7.6": 6, "nll <= 7.2": 2}


def test_equal_loss_targets_use_the_baseline_best_and_the_common_loss():
    report = _report_module()
    curves = {"baseline-seed1": [(1, 6.0), (2, 5.7), (3, 5.9)],
              "rdrop-seed1": [(1, 6.1), (2, 5.4)], "lrdrop-seed1": [(1, 6.2), (2, 5.5), (3, 5.6)]}
    assert report.equal_loss_targets(curves, []) == {"loss <= 5.700 (baseline best)": ("loss", 5.7),
                                                     "loss <= 5.500 (common)": ("loss", 5.5)}
    assert report.equal_loss_targets(curves, [5.45], "nll") == {"nll <= 5.450": ("nll", 5.45)}


def test_report_reads_valid_losses_and_training_time_of_a_resumed_log(tmp_path):
    report = _report_module()
    log = tmp_path / "train.log"
    rows = ["{'_name': None}",
            {"epoch": 1, "train_loss": "7.0", "train_train_wall": "40"},
            {"epoch": 1, "valid_loss": "6.5", "valid_nll_loss": "6.0"},
            {"epoch": 2, "train_loss": "6.0", "train_train_wall": "41"},
            {"epoch": 2, "valid_loss": "6.0", "valid_nll_loss": "5.5"},
            # resumed from epoch 1's checkpoint: epoch 2 runs again
            {"epoch": 2, "train_loss": "6.1", "train_train_wall": "39"},
            {"epoch": 2, "valid_loss": "6.1", "valid_nll_loss": "5.6"}]
    log.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    assert report.read_log(log) == ([(1, 6.5), (2, 6.1)], 79, {1: 6.0, 2: 5.6})


def test_variant_selection_groups_seeds_and_averages_the_chosen_scores():
    report = _report_module()
    summary = [{"run": "rdrop-seed2", "complete": True, "valid_scores": {"20": 14.0, "30": 15.5}},
               {"run": "rdrop-seed1", "complete": False, "valid_scores": {"20": 13.0, "30": 12.0}},
               {"run": "baseline-seed1", "complete": True, "valid_scores": {"14": 14.0, "40": 17.4}}]
    rows = [{"run": run, "point": point, "epoch": epoch, "result": {"score": score}}
            for run, point, epoch, score in [("rdrop-seed2", "best", 30, 16.0), ("rdrop-seed2", "best valid score", 30, 16.0),
                                             ("rdrop-seed1", "best", 30, 11.0), ("rdrop-seed1", "best valid score", 20, 12.0),
                                             ("baseline-seed1", "best", 14, 14.7), ("baseline-seed1", "best valid score", 40, 18.7)]]
    rows.append({"run": "rdrop-seed1", "point": "patience 10", "epoch": None, "result": None})
    selection = {v["variant"]: v for v in report.variant_selection(summary, rows)}
    assert sorted(selection) == ["baseline", "rdrop"]
    rdrop = selection["rdrop"]
    assert [(x["seed"], x["epoch"], x["valid"], x["test"], x["test_at_best_loss"]) for x in rdrop["seeds"]] == \
        [(1, 20, 13.0, 12.0, 11.0), (2, 30, 15.5, 16.0, 16.0)]
    assert (rdrop["mean_valid"], rdrop["mean_test"], rdrop["mean_test_at_best_loss"]) == (14.25, 14.0, 13.5)
    table = report.selection_table([rdrop, selection["baseline"]], "test ROUGE-L").splitlines()
    assert table[2] == "| rdrop | 1 / 2 | 20 (not complete) / 30 | 13.00 / 15.50 | 12.00 / 16.00 | 14.25 | 14.00 | 13.50 |"
    assert table[3] == "| baseline | 1 | 40 | 17.40 | 18.70 | 17.40 | 18.70 | 14.70 |"


def test_output_head_benchmark_times_stock_and_fused_heads():
    proc = subprocess.run([sys.executable, REPO / "bench" / "output_head.py", "--shapes", "small", "--passes", "2",
                           "--repeats", "1", "--threads", "1", "--blocks", "100"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("small: 576 rows x 2 pass(es), C 128, V 4000, 1 threads")
    assert [line.split("  ")[0].strip() for line in lines[1:]] == ["stock", "fused (192 a block)", "fused (100 a block)"]
    assert lines[1].endswith("(1.000 x stock)")
