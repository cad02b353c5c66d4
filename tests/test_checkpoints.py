"""Checkpoints on the paths users walk: several ranks start from --restore-file and resume, a
real --eval-bleu run's checkpoints generate and resume, checkpoints written under numpy 1 and
in torch's legacy format load, and no checkpoint runs code (neither by unpickling nor through
the config strings fairseq evaluates)."""
import argparse
import ast
import io
import os
import pickle
import signal
import subprocess
import threading
import types
from pathlib import Path

import pytest
import torch
from conftest import BIN, HANG_GUARD_S, ONE_THREAD, REPO, TINY_MODEL, USER_DIR, run_cli, train_inner
from test_distributed import _free_port

import fairseq_lrdrop  # noqa: F401  (installs the checked loading, as --user-dir does)
from fairseq_lrdrop.modules import checkpoint_loading

LRDROP = ["--criterion", "lr_drop_label_smoothed_cross_entropy", "--label-smoothing", "0.1",
          "--hidden-reg-weight", "1", "--attn-reg-weight", "1", "--output-reg-weight", "2",
          "--dropout", "0.1", "--attention-dropout", "0.1"]
COMMON = ["--user-dir", USER_DIR, "--arch", "lr_drop_transformer", *TINY_MODEL, *LRDROP,
          "--optimizer", "adam", "--lr", "0.002", "--cpu", "--seed", "1",
          "--log-format", "json", "--log-interval", "1", "--no-epoch-checkpoints"]


@pytest.fixture(scope="module")
def pretrained(data_bin, tmp_path_factory):
    """A checkpoint of a 2-update single-process run: the 'pretrained model' to start from."""
    save_dir = tmp_path_factory.mktemp("pretrained")
    run_cli("fairseq-train", data_bin, *COMMON, "--max-tokens", "600", "--max-update", "2",
            "--disable-validation", "--save-dir", save_dir)
    return save_dir / "checkpoint_last.pt"


# ---- 1. several ranks ---------------------------------------------------------------------

def _two_ranks(args, log_dir, kill_after=None, timeout=HANG_GUARD_S):
    """fairseq-train with 2 gloo ranks (one process each). With kill_after, SIGKILL both once
    rank 0 logs that many updates. Returns (exit codes, rank 0 log, rank 1 log)."""
    port = _free_port()
    dist = ["--distributed-world-size", "2", "--distributed-init-method", f"tcp://127.0.0.1:{port}",
            "--distributed-no-spawn", "--distributed-backend", "gloo", "--ddp-backend", "legacy_ddp"]
    rank1_log = open(log_dir / "rank1.log", "w")
    env = {**os.environ, **ONE_THREAD}
    procs = [subprocess.Popen([str(BIN / "fairseq-train"), *map(str, args), *dist, "--distributed-rank", str(rank)],
                              stdout=subprocess.PIPE if rank == 0 else rank1_log, stderr=subprocess.STDOUT,
                              text=True, env=env)
             for rank in range(2)]
    timer = threading.Timer(timeout, lambda: [p.kill() for p in procs])  # a hung rank fails, not hangs
    timer.start()
    lines = []
    try:
        for line in procs[0].stdout:
            lines.append(line)
            if kill_after is not None and "| train_inner | " in line and \
                    int(train_inner(line)[0]["num_updates"]) >= kill_after:
                for p in procs:
                    p.send_signal(signal.SIGKILL)
                break
        codes = [p.wait() for p in procs]
    finally:
        timer.cancel()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        procs[0].stdout.close()
        rank1_log.close()
    return codes, "".join(lines), (log_dir / "rank1.log").read_text()


@pytest.mark.parametrize("all_ranks", [False, True], ids=["rank0-loads", "every-rank-loads"])
def test_two_ranks_start_from_restore_file_then_are_killed_and_resume(data_bin, pretrained, tmp_path, all_ranks):
    """Before the fix, rank 1 failed to unpickle the broadcast state (DictConfig,
    _TensorPlaceholder) and rank 0 waited for it forever."""
    save_dir = tmp_path / "ck"
    run = [data_bin, *COMMON, "--train-subset", "valid", "--batch-size", "4", "--required-batch-size-multiple", "1",
           "--max-update", "6", "--save-interval-updates", "2", "--disable-validation", "--save-dir", save_dir]
    if all_ranks:
        run.append("--load-checkpoint-on-all-dp-ranks")
    start = ["--restore-file", pretrained, "--reset-optimizer", "--reset-dataloader", "--reset-meters"]

    codes, log0, log1 = _two_ranks(run + start, tmp_path, kill_after=3)
    assert codes == [-signal.SIGKILL] * 2, (codes, log0[-3000:], log1[-3000:])
    assert f"Loaded checkpoint {pretrained} (epoch 1 @ 0 updates)" in log0, log0[-3000:]
    assert "Traceback" not in log1, log1[-3000:]
    assert (save_dir / "checkpoint_1_2.pt").is_file()

    # the rerun (as examples/cnndm/train.sh reruns: no restore flags) resumes from update 2
    codes, log0, log1 = _two_ranks(run, tmp_path)
    assert codes == [0, 0], (codes, log0[-3000:], log1[-3000:])
    assert f"Loaded checkpoint {save_dir / 'checkpoint_last.pt'} (epoch 1 @ 2 updates)" in log0, log0[-3000:]
    assert [int(r["num_updates"]) for r in train_inner(log0)] == [3, 4, 5, 6]
    assert "Traceback" not in log0 + log1


# ---- 2. what fairseq's recipes write ------------------------------------------------------

def _unsafe_globals(path):
    """Globals in the file beyond torch's weights_only defaults."""
    return set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))


def test_eval_bleu_run_with_best_checkpoints_and_ema_generates_and_resumes(data_bin, tmp_path):
    """fairseq's translation recipe: --eval-bleu keeps numpy arrays in the checkpoint's
    validation metrics (refused before the fix: numpy._core.multiarray._reconstruct)."""
    save_dir = tmp_path / "ck"
    run = [data_bin, *COMMON, "--max-tokens", "600", "--save-interval-updates", "2",
           "--validate-interval-updates", "2", "--eval-bleu", "--eval-bleu-args", '{"beam": 1, "max_len_b": 8}',
           "--best-checkpoint-metric", "bleu", "--maximize-best-checkpoint-metric",
           "--keep-best-checkpoints", "2", "--ema-decay", "0.99", "--store-ema", "--save-dir", save_dir]
    run_cli("fairseq-train", *run, "--max-update", "2")
    written = sorted(save_dir.glob("*.pt"))
    assert {p.name for p in written} >= {"checkpoint_last.pt", "checkpoint_best.pt", "checkpoint_1_2.pt"}
    assert any(p.name.startswith("checkpoint.best_bleu_") for p in written)
    found = set().union(*map(_unsafe_globals, written))
    assert "numpy._core.multiarray._reconstruct" in found  # the --eval-bleu arrays are really there
    assert found <= {checkpoint_loading.global_name(g) for g in checkpoint_loading.CHECKPOINT_GLOBALS}, found

    proc = run_cli("fairseq-generate", data_bin, "--user-dir", USER_DIR, "--path", save_dir / "checkpoint_best.pt",
                   "--beam", "2", "--batch-size", "16", "--max-len-b", "8", "--cpu")
    assert "BLEU" in proc.stdout and "Traceback" not in proc.stderr

    proc = run_cli("fairseq-train", *run, "--max-update", "4")
    log = proc.stdout + proc.stderr
    assert f"Loaded checkpoint {save_dir / 'checkpoint_last.pt'} (epoch 1 @ 2 updates)" in log
    assert [int(r["num_updates"]) for r in train_inner(log)] == [3, 4]


class _Numpy1Pickler(pickle._Pickler):
    """Writes numpy's globals under their numpy < 2 names (numpy.core.multiarray.*), as
    checkpoints saved before numpy 2 name them."""

    def save_global(self, obj, name=None):
        module = getattr(obj, "__module__", "") or ""
        if module.startswith("numpy._core"):
            module = module.replace("numpy._core", "numpy.core")
            self.write(pickle.GLOBAL + f"{module}\n{obj.__name__}\n".encode())
            self.memoize(obj)
            return
        super().save_global(obj, name)


def _checkpoint_state(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def test_numpy1_names_legacy_format_load_and_object_arrays_are_refused(pretrained, tmp_path):
    import numpy

    from fairseq import checkpoint_utils

    state = _checkpoint_state(pretrained)
    state["extra_state"]["metrics_like"] = {"bleu_counts": numpy.array([3.0, 2.0, 1.0]), "best": numpy.float64(1.5),
                                            "n": numpy.int64(7)}
    numpy1 = tmp_path / "numpy1.pt"
    torch.save(state, numpy1, pickle_module=types.SimpleNamespace(Pickler=_Numpy1Pickler, __name__="numpy1"))
    found = _unsafe_globals(numpy1)
    assert {"numpy.core.multiarray._reconstruct", "numpy.core.multiarray.scalar"} <= found, found
    assert not any(name.startswith("numpy._core") for name in found)
    loaded = checkpoint_utils.load_checkpoint_to_cpu(str(numpy1))["extra_state"]["metrics_like"]
    assert loaded["bleu_counts"].tolist() == [3.0, 2.0, 1.0] and loaded["best"] == 1.5 and loaded["n"] == 7

    # torch's pre-1.6 format, which published fairseq checkpoints (bart.large, roberta.base,
    # wmt19) were saved in
    legacy = tmp_path / "legacy.pt"
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    restored = checkpoint_utils.load_checkpoint_to_cpu(str(legacy))
    assert all(torch.equal(restored["model"][k], state["model"][k]) for k in state["model"])

    # an object array as numpy pickles it: torch refuses to set the object dtype's state
    state["extra_state"]["objects"] = numpy.array([{"a": 1}], dtype=object)
    objects = tmp_path / "objects.pt"
    torch.save(state, objects)
    with pytest.raises(SystemExit, match=rf"refused to load checkpoint {objects}: it needs what torch's weights-only "
                                         rf"loader refuses \(Can only build .*ObjectDType"):
        checkpoint_utils.load_checkpoint_to_cpu(str(objects))


def test_allow_list_grows_by_the_data_types_only_during_a_fairseq_load(pretrained):
    """torch's allow-list is process-wide. The plugin adds fairseq's data types for the one
    load (and takes them away after), never replaces torch.load, keeps entries a user added,
    and a plain torch.load that runs meanwhile (here: nested, at the file's first read) sees
    torch's list plus exactly those data types: code-running globals stay refused."""
    import numpy

    from fairseq import checkpoint_utils

    original_load = torch.load
    torch_own = torch.serialization.get_safe_globals()  # torch registers a few itself
    user_entry = numpy.random.RandomState  # something a user registered for their own files
    torch.serialization.add_safe_globals([user_entry])
    before = set(map(checkpoint_loading.global_name, torch.serialization.get_safe_globals()))
    added = set(map(checkpoint_loading.global_name, checkpoint_loading.CHECKPOINT_GLOBALS))
    evil = io.BytesIO()
    torch.save({"x": _RunsCode("/nonexistent")}, evil)
    seen = []

    class SpyFile:
        """A checkpoint file that, at its first read, records the allow-list and does a plain
        weights_only torch.load of a code-running pickle."""

        def __init__(self, path):
            self._file = open(path, "rb")
            self.name = str(path)

        def __getattr__(self, name):
            return getattr(self._file, name)

        def read(self, *args):
            if not seen:
                seen.append(set(map(checkpoint_loading.global_name, torch.serialization.get_safe_globals())))
                evil.seek(0)
                with pytest.raises(pickle.UnpicklingError, match="posix.system"):
                    torch.load(evil, weights_only=True)
            return self._file.read(*args)

    try:
        spy = SpyFile(pretrained)
        state = checkpoint_utils.torch.load(spy, map_location="cpu")
        spy.close()
        assert seen == [before | added]
        assert set(map(checkpoint_loading.global_name, torch.serialization.get_safe_globals())) == before
        assert user_entry in torch.serialization.get_safe_globals()
        assert "model" in state and torch.load is original_load
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(torch_own)


class _RunsCode:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        import os
        return (os.system, (self.command,))


# ---- 3. no code through configuration strings ---------------------------------------------

MARKER_CODE = "__import__('pathlib').Path({marker!r}).touch()"


def _with_config(pretrained, tmp_path, name, **fields):
    """The pretrained checkpoint with cfg.model fields replaced."""
    state = _checkpoint_state(pretrained)
    for key, value in fields.items():  # cfg.model is an argparse.Namespace for fairseq's legacy models
        setattr(state["cfg"]["model"], key, value)
    path = tmp_path / f"{name}.pt"
    torch.save(state, path)
    return path


@pytest.mark.parametrize("field", ["encoder_xformers_att_config", "decoder_xformers_att_config",
                                   "adaptive_softmax_cutoff"])
def test_config_expression_in_a_checkpoint_is_refused_and_never_runs(data_bin, pretrained, tmp_path, field):
    from fairseq import checkpoint_utils

    marker = tmp_path / "code-ran"
    path = _with_config(pretrained, tmp_path, field, **{field: MARKER_CODE.format(marker=str(marker))})
    message = "refused to evaluate the configuration value \"__import__('pathlib')"
    with pytest.raises(SystemExit, match=message.replace("(", r"\(").replace(")", r"\)")):
        checkpoint_utils.load_model_ensemble_and_task([str(path)], arg_overrides={"data": str(data_bin)})
    assert not marker.exists()

    if field == "adaptive_softmax_cutoff":  # the command-line tool and the hub interface too
        proc = run_cli("fairseq-generate", data_bin, "--user-dir", USER_DIR, "--path", path, "--cpu", check=False)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr
        assert "fairseq_lrdrop: error: refused to evaluate the configuration value" in proc.stderr
        from fairseq_lrdrop.models import LRDropTransformerModel

        with pytest.raises(SystemExit, match="refused to evaluate"):
            LRDropTransformerModel.from_pretrained(str(tmp_path), checkpoint_file=path.name,
                                                   data_name_or_path=str(data_bin))
        assert not marker.exists()


def test_fconv_layer_specs_evaluate_as_literals_and_expressions_are_refused(data_bin, pretrained, tmp_path):
    """fconv calls the builtin eval() on its layer specs: the published defaults (lists joined
    with + and repeated with *) still build; an expression is refused."""
    from fairseq import checkpoint_utils

    fconv = {"_name": "fconv", "arch": "fconv", "encoder_embed_dim": 16, "decoder_embed_dim": 16,
             "decoder_out_embed_dim": 16, "encoder_layers": "[(16, 3)] * 2 + [(16, 3)]",
             "decoder_layers": "[(16, 3)] * 2", "decoder_attention": "True", "dropout": 0.1,
             "max_source_positions": 64, "max_target_positions": 64, "share_input_output_embed": False,
             "encoder_embed_path": None, "decoder_embed_path": None}
    state = _checkpoint_state(pretrained)
    state["cfg"]["model"] = argparse.Namespace(**fconv)
    state["model"] = {}
    good = tmp_path / "fconv.pt"
    torch.save(state, good)
    with pytest.raises(RuntimeError, match="Missing key"):  # built, then the (emptied) weights
        checkpoint_utils.load_model_ensemble_and_task([str(good)], arg_overrides={"data": str(data_bin)})

    marker = tmp_path / "code-ran"
    state["cfg"]["model"].encoder_layers = MARKER_CODE.format(marker=str(marker))
    bad = tmp_path / "fconv-bad.pt"
    torch.save(state, bad)
    with pytest.raises(SystemExit, match="refused to evaluate the configuration value"):
        checkpoint_utils.load_model_ensemble_and_task([str(bad)], arg_overrides={"data": str(data_bin)})
    assert not marker.exists()


def test_literal_value_matches_eval_on_literals_and_refuses_the_rest():
    from fairseq import options, utils

    for text in ["[(512, 3)] * 9 + [(1024, 3)] * 4 + [(2048, 1)] * 2", "10000,50000", "(0.9, 0.98)",
                 "{'attention': 'scaled_dot_product'}", "True", "0", "None", "-1.5e-3", "'a' * 3"]:
        assert checkpoint_loading.literal_value(text) == eval(text), text
    assert utils.eval_str_list("10000,50000", type=int) == [10000, 50000]
    assert options.eval_bool("False") is False and options.eval_bool(None) is False
    assert utils.eval_bool(True) is False  # as with the builtin: a non-string is fairseq's default
    for text in ["__import__('os').getcwd()", "open('/etc/passwd').read()", "[x for x in range(3)]",
                 "().__class__.__bases__", "[0] * 10 ** 12", "[0] * 10000000", "lambda: 0",
                 "b'x' * (10000 * 10000)", "'x' * 1000 * 1000 * 1000", "(0,) * 900000 + (0,) * 900000"]:
        with pytest.raises(SystemExit, match="refused to evaluate the configuration value"):
            checkpoint_loading.literal_value(text)


def _eval_calls(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [node for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("eval", "exec")]


def test_every_eval_in_fairseq_is_guarded():
    """Scan the installed fairseq (without its examples/) for calls of the builtin eval() or
    exec(): every module that makes one is in EVAL_MODULES and has the builtin shadowed."""
    import importlib

    import fairseq
    import fairseq_cli

    found = set()
    for package in (fairseq, fairseq_cli):
        root = Path(package.__file__).parent
        for path in root.rglob("*.py"):
            relative = path.relative_to(root.parent)
            if relative.parts[1] == "examples" or not _eval_calls(path):
                continue
            found.add(".".join(relative.with_suffix("").parts))
    assert "fairseq.criterions.ctc" in found and len(found) >= 20  # the scan sees them
    assert found == set(checkpoint_loading.EVAL_MODULES), (found ^ set(checkpoint_loading.EVAL_MODULES))
    for name in found:
        assert importlib.import_module(name).eval is checkpoint_loading.literal_value, name


def test_fairseq_validate_refuses_code_in_a_checkpoints_criterion_config(data_bin, pretrained, tmp_path):
    """fairseq-validate builds the criterion from the checkpoint's saved config; ctc evaluates
    its wer_args with eval()."""
    marker = tmp_path / "code-ran"
    state = _checkpoint_state(pretrained)
    state["cfg"]["criterion"] = {"_name": "ctc", "zero_infinity": False, "sentence_avg": True,
                                 "post_process": "letter", "wer_kenlm_model": None, "wer_lexicon": None,
                                 "wer_lm_weight": 2.0, "wer_word_score": -1.0,
                                 "wer_args": MARKER_CODE.format(marker=str(marker))}
    path = tmp_path / "ctc.pt"
    torch.save(state, path)
    proc = run_cli("fairseq-validate", data_bin, "--user-dir", USER_DIR, "--task", "translation", "--path", path, "--cpu",
                   "--valid-subset", "valid", "--max-tokens", "600", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "fairseq_lrdrop: error: refused to evaluate the configuration value \"__import__('pathlib')" in proc.stderr
    assert not marker.exists()


# ---- 4. torch's weights-only loader on crafted files --------------------------------------

def _text(value: str) -> bytes:
    """A BINUNICODE pickle opcode."""
    import struct

    data = value.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _file_with_pickle(path: Path, payload: bytes) -> Path:
    """A checkpoint in torch's zip format whose pickle is `payload`."""
    import zipfile

    torch.save({}, path)
    with zipfile.ZipFile(path) as archive:
        records = [(info, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w") as archive:
        for info, data in records:
            archive.writestr(info, payload if info.filename.endswith("/data.pkl") else data)
    return path


def _load_refused(path: Path) -> str:
    """The one-line message of loading `path` as fairseq loads checkpoints."""
    from fairseq import checkpoint_utils

    with pytest.raises(SystemExit) as error:
        checkpoint_utils.load_checkpoint_to_cpu(str(path))
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"fairseq_lrdrop: error: refused to load checkpoint {path}: ")
    assert checkpoint_loading.TRUSTED_CHECKPOINTS_ENV in message
    return message


def test_object_arrays_are_refused_however_they_are_built(tmp_path):
    """numpy's reconstructor with the object dtype left without its state (no BUILD), and
    ndarray called directly: torch's loader makes both; the plugin refuses the result."""
    import numpy

    pickled = pickle.dumps({"a": numpy.array([1, 2], dtype=object)}, protocol=2)
    dtype_state = pickled[pickled.index(b"O8"):]
    dtype_state = dtype_state[dtype_state.index(b"(K\x03"):dtype_state.index(b"b") + 1]
    no_build = _file_with_pickle(tmp_path / "no-build.pt", pickled.replace(dtype_state, b"", 1))
    assert torch.load(no_build, weights_only=False)["a"].dtype == object  # the file is well formed
    assert "it needs a numpy array of Python objects" in _load_refused(no_build)

    direct = b"\x80\x02}" + _text("a") + b"cnumpy\nndarray\nK\x03\x85" + _text("O") + b"\x86Rs."
    assert "it needs a numpy array of Python objects" in _load_refused(_file_with_pickle(tmp_path / "d.pt", direct))


def test_setitem_on_a_non_dict_and_text_persistent_ids_are_refused_in_one_line(tmp_path):
    bytearray_setitem = b"\x80\x02c__builtin__\nbytearray\nK\x03\x85RK\x00KAs."
    message = _load_refused(_file_with_pickle(tmp_path / "setitem.pt", bytearray_setitem))
    assert "Can only SETITEM for dict" in message
    message = _load_refused(_file_with_pickle(tmp_path / "persid.pt", b"\x80\x02P0\n."))
    assert "Unsupported operand 80" in message  # PERSID ('P'), the text persistent id


def test_tensor_state_loads_as_torchs_own_weights_only_loader_gives_it(tmp_path):
    """torch's _rebuild_from_type_v2 restores a tensor's Python attributes (setting
    __class__): the plugin loads such a tensor exactly as torch.load(weights_only=True)."""
    tensor = torch.arange(3.0)
    tensor.note = 7
    path = tmp_path / "attr.pt"
    torch.save({"model": {"w": tensor, "p": torch.nn.Parameter(torch.ones(2), requires_grad=False)}}, path)
    ours = checkpoint_loading.load_checkpoint_file(path)["model"]
    torchs = torch.load(path, weights_only=True)["model"]
    assert ours["w"].note == torchs["w"].note == 7 and torch.equal(ours["w"], torchs["w"])
    assert type(ours["p"]) is type(torchs["p"]) is torch.nn.Parameter and not ours["p"].requires_grad


def _legacy_tar_checkpoint(path: Path) -> Path:
    """torch's legacy tar format, whose 'storages' member is a FIFO (unpacking it would block)."""
    import tarfile

    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        for name in ("sys_info", "pickle", "tensors"):
            data = pickle.dumps({}, protocol=2)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        fifo = tarfile.TarInfo("storages")
        fifo.type = tarfile.FIFOTYPE
        archive.addfile(fifo)
    return path


def test_torchs_legacy_tar_format_is_refused_before_any_member_is_read(tmp_path):
    path = _legacy_tar_checkpoint(tmp_path / "tar.pt")
    code = (f"import fairseq_lrdrop; from fairseq import checkpoint_utils; "
            f"checkpoint_utils.load_checkpoint_to_cpu({str(path)!r})")
    # a hang guard only: the refusal comes before the FIFO is opened
    proc = subprocess.run([str(BIN / "python"), "-c", code], capture_output=True, text=True, timeout=HANG_GUARD_S,
                          env={**os.environ, **ONE_THREAD})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"refused to load checkpoint {path}: it needs torch's legacy tar format" in proc.stderr


def test_sparse_tensor_with_an_index_outside_its_shape_is_refused(tmp_path):
    """Loaded, it would let examples/average_checkpoints.py write outside the tensor."""
    bad = torch.sparse_coo_tensor(torch.tensor([[10 ** 6]]), torch.tensor([1.0]), (4,), check_invariants=False)
    path = tmp_path / "sparse.pt"
    torch.save({"model": {"w": bad}}, path)
    message = _load_refused(path)
    assert "it needs a sparse tensor whose indices lie outside its shape" in message and "1000000" in message
    proc = subprocess.run([str(BIN / "python"), str(REPO / "examples" / "average_checkpoints.py"), "--inputs", str(path),
                           str(path), "--output", str(tmp_path / "avg.pt")], capture_output=True, text=True,
                          timeout=HANG_GUARD_S, env={**os.environ, **ONE_THREAD})
    assert proc.returncode == 1 and "refused to load checkpoint" in proc.stderr, (proc.returncode, proc.stderr[-2000:])
    assert not (tmp_path / "avg.pt").exists()
    good = torch.sparse_coo_tensor(torch.tensor([[1, 3]]), torch.tensor([1.0, 2.0]), (4,))
    torch.save({"model": {"w": good}}, path)
    assert torch.equal(checkpoint_loading.load_checkpoint_file(path)["model"]["w"].to_dense(), good.to_dense())


def test_trust_variable_takes_relative_paths(tmp_path, monkeypatch):
    evil = tmp_path / "evil.pt"
    marker = tmp_path / "code-ran"
    torch.save({"x": _RunsCode(f"touch {marker}")}, evil)
    monkeypatch.chdir(tmp_path)
    message = _load_refused(evil)
    assert "it needs the global posix.system" in message and not marker.exists()
    monkeypatch.setenv(checkpoint_loading.TRUSTED_CHECKPOINTS_ENV, "./evil.pt")
    checkpoint_loading.load_checkpoint_file("evil.pt")  # the user trusts it: full unpickling
    assert marker.exists()


# ---- 5. model archives ----------------------------------------------------------------------

def _archive(path: Path, *members) -> Path:
    """A .tar.gz with `members`: (name, kind, target) with kind file / symlink / fifo."""
    import tarfile

    with tarfile.open(path, "w:gz") as archive:
        for name, kind, target in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                data = target.encode()
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
                continue
            info.type = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE}[kind]
            info.linkname = target or ""
            archive.addfile(info)
    return path


@pytest.mark.parametrize("member,reason", [
    (("model/../../escaped.py", "file", "print('planted')"), "outside the destination"),
    (("/tmp/absolute-escape.py", "file", "x"), "absolute path"),
    (("model/sacremoses.py", "symlink", "../../sacremoses.py"), "is a link"),
    (("model/inside-link", "symlink", "model.pt"), "is a link"),
    (("model/hard", "hardlink", "model/model.pt"), "is a link"),
    (("model/pipe", "fifo", None), "special file"),
])
def test_model_archive_with_an_unsafe_member_is_refused_before_anything_is_written(tmp_path, member, reason):
    from fairseq import file_utils

    from fairseq_lrdrop.models import LRDropTransformerModel

    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    archive = _archive(work / "model.tar.gz", ("model/model.pt", "file", "weights"), member)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(SystemExit, match=rf"fairseq_lrdrop: error: refused to extract the model archive .*model.tar.gz: .*{reason}"):
        file_utils.load_archive_file(str(archive))
    with pytest.raises(SystemExit, match="refused to extract the model archive"):
        LRDropTransformerModel.from_pretrained(str(archive))
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert not Path("/tmp/absolute-escape.py").exists()


def test_plain_model_archive_extracts_as_before(tmp_path):
    from fairseq import file_utils

    archive = _archive(tmp_path / "model.tar.gz", ("model/model.pt", "file", "weights"), ("model/dict.txt", "file", "a 1\n"))
    folder = Path(file_utils.load_archive_file(str(archive)))
    assert sorted(p.name for p in folder.iterdir()) == ["dict.txt", "model.pt"]
    assert (folder / "model.pt").read_text() == "weights"
