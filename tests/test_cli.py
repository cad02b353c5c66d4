"""End to end through the real command-line tools: preprocess -> train -> generate."""
import re

import pytest
import torch
from conftest import TINY_MODEL, USER_DIR, run_cli

TRAIN = ["--optimizer", "adam", "--lr", "0.002", "--max-tokens", "600", "--cpu",
         "--no-epoch-checkpoints", "--log-format", "simple", "--log-interval", "1", "--seed", "1"]
LRDROP = ["--criterion", "lr_drop_label_smoothed_cross_entropy", "--label-smoothing", "0.1",
          "--hidden-reg-weight", "1", "--attn-reg-weight", "1", "--output-reg-weight", "2"]


def train(data_bin, save_dir, arch, *extra, updates=6, user_dir=True, check=True):
    args = [data_bin, "--arch", arch, *TINY_MODEL, *TRAIN, "--max-update", updates,
            "--save-dir", save_dir, *extra]
    if user_dir:
        args = ["--user-dir", USER_DIR, *args]
    return run_cli("fairseq-train", *args, check=check)


def generate(data_bin, checkpoint, *extra):
    proc = run_cli("fairseq-generate", data_bin, "--user-dir", USER_DIR, "--path", checkpoint,
                   "--beam", "2", "--batch-size", "16", "--max-len-b", "12", "--cpu", *extra)
    return proc.stdout + proc.stderr


@pytest.mark.parametrize("arch, extra", [
    ("lr_drop_transformer", []),
    ("lr_drop_bart_base", ["--share-all-embeddings"]),
])
def test_train_then_generate_prints_bleu(data_bin, tmp_path, arch, extra):
    proc = train(data_bin, tmp_path, arch, *LRDROP, *extra)
    log = proc.stdout + proc.stderr
    # every term is logged per token, loss on the stock scale
    last = [line for line in log.splitlines() if "| train |" in line][-1]
    for key in ("loss", "nll_loss", "ppl", "hidden_reg", "attn_reg", "output_reg"):
        assert re.search(rf"\b{key} [0-9.]+", last), (key, last)
    assert float(re.search(r"\bhidden_reg ([0-9.]+)", last).group(1)) > 0
    out = generate(data_bin, tmp_path / "checkpoint_best.pt")
    assert re.search(r"BLEU4? = [0-9.]+", out), out[-2000:]
    assert re.search(r"^H-[0-9]+\t", out, re.M)


def _weights(path):
    state = torch.load(path, map_location="cpu", weights_only=False)
    return state["model"]


def test_checkpoints_move_between_stock_and_lr_drop_architectures(data_bin, tmp_path):
    # stock -> LR-Drop: a stock checkpoint (like bart.large) restores into the LR-Drop variant
    train(data_bin, tmp_path / "stock", "transformer", "--criterion", "label_smoothed_cross_entropy",
          "--label-smoothing", "0.1", updates=3, user_dir=False)
    stock_ckpt = tmp_path / "stock" / "checkpoint_last.pt"
    proc = train(data_bin, tmp_path / "lrdrop", "lr_drop_transformer", *LRDROP,
                 "--restore-file", stock_ckpt, "--reset-optimizer", "--reset-dataloader",
                 "--reset-meters", "--lr-scheduler", "fixed", "--lr", "0", updates=1)
    assert "Loaded checkpoint" in proc.stdout + proc.stderr
    moved = _weights(tmp_path / "lrdrop" / "checkpoint_last.pt")
    original = _weights(stock_ckpt)
    assert moved.keys() == original.keys()
    assert all(torch.equal(moved[k], original[k]) for k in original)  # lr 0: the stock weights

    # LR-Drop -> stock
    lrdrop_ckpt = tmp_path / "lrdrop_trained"
    train(data_bin, lrdrop_ckpt, "lr_drop_transformer", *LRDROP, updates=3)
    proc = train(data_bin, tmp_path / "back", "transformer", "--criterion", "label_smoothed_cross_entropy",
                 "--restore-file", lrdrop_ckpt / "checkpoint_last.pt", "--reset-optimizer",
                 "--reset-dataloader", "--reset-meters", "--lr-scheduler", "fixed", "--lr", "0",
                 updates=1)  # the plugin only for torch>=2.6 loading: the arch is stock
    assert "Loaded checkpoint" in proc.stdout + proc.stderr
    back = _weights(tmp_path / "back" / "checkpoint_last.pt")
    trained = _weights(lrdrop_ckpt / "checkpoint_last.pt")
    assert all(torch.equal(back[k], trained[k]) for k in trained)
    # and both generate the same translations with the same weights
    stock_out = generate(data_bin, tmp_path / "back" / "checkpoint_last.pt")
    lrdrop_out = generate(data_bin, lrdrop_ckpt / "checkpoint_last.pt")
    hyps = lambda text: sorted(l for l in text.splitlines() if l.startswith("H-"))  # noqa: E731
    assert hyps(stock_out) == hyps(lrdrop_out) and hyps(stock_out)


def test_stock_model_with_lr_drop_criterion_is_one_clear_error(data_bin, tmp_path):
    proc = train(data_bin, tmp_path, "transformer", *LRDROP, check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    (line,) = [l for l in proc.stderr.splitlines() if "fairseq_lrdrop: error" in l]
    assert "use --arch lr_drop_<stock arch name> (lr_drop_transformer, " in line
    assert not list(tmp_path.glob("*.pt"))


def test_negative_weight_is_rejected_before_work(data_bin, tmp_path):
    proc = train(data_bin, tmp_path, "lr_drop_transformer", *LRDROP, "--attn-reg-weight", "-0.5", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "fairseq_lrdrop: error: --attn-reg-weight must be a finite number >= 0 (got -0.5)" in proc.stderr
    assert not list(tmp_path.glob("*.pt"))


class _RunsCode:
    """Unpickling this runs a shell command: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_is_refused_and_its_code_does_not_run(data_bin, tmp_path):
    train(data_bin, tmp_path, "lr_drop_transformer", *LRDROP, updates=2)
    state = torch.load(tmp_path / "checkpoint_last.pt", weights_only=False)
    marker = tmp_path / "code-ran"
    state["extra_state"]["payload"] = _RunsCode(marker)
    evil = tmp_path / "evil.pt"
    torch.save(state, evil)

    proc = run_cli("fairseq-generate", data_bin, "--user-dir", USER_DIR, "--path", evil, "--cpu", check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert f"refused to load checkpoint {evil}: it needs the global posix.system" in proc.stderr
    assert not marker.exists()

    # the documented opt-in: a trusted file is fully unpickled (and here its code does run)
    proc = run_cli("fairseq-generate", data_bin, "--user-dir", USER_DIR, "--path", evil, "--cpu",
                   env={"FAIRSEQ_LRDROP_TRUSTED_CHECKPOINTS": str(evil)})
    assert marker.exists()

    # a truncated checkpoint: one line naming the file
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((tmp_path / "checkpoint_last.pt").read_bytes()[:4096])
    proc = run_cli("fairseq-generate", data_bin, "--user-dir", USER_DIR, "--path", truncated, "--cpu", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"checkpoint {truncated} cannot be read" in proc.stderr


def test_hydra_yaml_config_and_tensorboard(data_bin, tmp_path):
    """fairseq-hydra-train takes the criterion's options from YAML; each term reaches TensorBoard."""
    config = f"""# @package _global_
common: {{user_dir: {USER_DIR}, cpu: true, log_format: simple, log_interval: 1,
         tensorboard_logdir: {tmp_path / 'tb'}}}
task: {{_name: translation, data: {data_bin}}}
model: {{_name: lr_drop_transformer, encoder_layers: 2, decoder_layers: 2, encoder_embed_dim: 32,
        decoder_embed_dim: 32, encoder_ffn_embed_dim: 64, decoder_ffn_embed_dim: 64,
        encoder_attention_heads: 4, decoder_attention_heads: 4, dropout: 0.1}}
criterion: {{_name: lr_drop_label_smoothed_cross_entropy, label_smoothing: 0.1,
            hidden_reg_weight: 0.5, attn_reg_weight: 0.5, output_reg_weight: 2.0,
            attn_reg_modules: "encoder_self,decoder_cross", reg_decoder_layers: "1"}}
optimizer: {{_name: adam}}
lr_scheduler: {{_name: fixed}}
optimization: {{lr: [0.001], max_update: 3}}
dataset: {{max_tokens: 500}}
checkpoint: {{save_dir: {tmp_path / 'ckpt'}, no_epoch_checkpoints: true}}
"""
    (tmp_path / "lrdrop.yaml").write_text(config)
    proc = run_cli("fairseq-hydra-train", "--config-dir", tmp_path, "--config-name", "lrdrop",
                   f"hydra.run.dir={tmp_path / 'hydra'}")
    log = proc.stdout + proc.stderr
    assert "'attn_reg_modules': 'encoder_self,decoder_cross'" in log
    assert "'reg_decoder_layers': '1'" in log
    assert re.search(r"\[train\].* hidden_reg [0-9.]+ \| attn_reg [0-9.]+ \| output_reg [0-9.]+", log)
    events = b"".join(p.read_bytes() for p in (tmp_path / "tb" / "train").glob("events.out.tfevents.*"))
    for tag in (b"hidden_reg", b"attn_reg", b"output_reg", b"nll_loss"):
        assert tag in events
