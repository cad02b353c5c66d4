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
from conftest import BIN, ONE_THREAD, TINY_MODEL, USER_DIR, run_cli, train_inner
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

def _two_ranks(args, log_dir, kill_after=None, timeout=180):
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
    assert found <= set(checkpoint_loading.CHECKPOINT_GLOBALS), found

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

    # an object array unpickles arbitrary objects: refused, like any other global
    state["extra_state"]["objects"] = numpy.array([{"a": 1}], dtype=object)
    objects = tmp_path / "objects.pt"
    torch.save(state, objects)
    with pytest.raises(SystemExit, match=rf"refused to load checkpoint {objects}: it needs a numpy array or "
                                         rf"scalar of dtype object, which fairseq checkpoints never contain"):
        checkpoint_utils.load_checkpoint_to_cpu(str(objects))


def test_loading_changes_nothing_process_wide(pretrained):
    """The allow-list travels with the one load: torch.load is never replaced and torch's global
    safe-globals list stays as torch set it, so a plain torch.load that runs while a fairseq load is in
    progress (another thread, or nested) keeps torch's defaults."""
    from fairseq import checkpoint_utils

    original_load = torch.load
    torch_own = set(torch.serialization.get_safe_globals())  # torch registers a few itself
    seen = []

    class SpyFile:
        """A checkpoint file that, at its first read, does a plain weights_only torch.load."""

        def __init__(self, path):
            self._file = open(path, "rb")
            self.name = str(path)

        def __getattr__(self, name):
            return getattr(self._file, name)

        def read(self, *args):
            if not seen:
                seen.append((torch.load is original_load, set(torch.serialization.get_safe_globals())))
                with pytest.raises(pickle.UnpicklingError, match="argparse.Namespace"):
                    torch.load(str(pretrained), weights_only=True)  # a Namespace inside: torch refuses
            return self._file.read(*args)

    spy = SpyFile(pretrained)
    state = checkpoint_utils.torch.load(spy, map_location="cpu")
    spy.close()
    assert seen == [(True, torch_own)]
    assert "model" in state and torch.load is original_load


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
                 "().__class__.__bases__", "[0] * 10 ** 12", "[0] * 10000000", "lambda: 0"]:
        with pytest.raises(SystemExit, match="refused to evaluate the configuration value"):
            checkpoint_loading.literal_value(text)


def _eval_calls(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [node for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "eval"]


def test_every_eval_in_fairseq_is_guarded_or_not_reachable_from_a_checkpoint():
    """Scan the installed fairseq (without its examples/) for calls of the builtin eval()."""
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
    covered = set(checkpoint_loading.CONFIG_EVAL_MODULES) | set(checkpoint_loading.CONFIG_EVAL_NOT_FROM_CHECKPOINTS)
    assert found == covered, (found - covered, covered - found)
    import importlib

    for name in checkpoint_loading.CONFIG_EVAL_MODULES:
        assert importlib.import_module(name).eval is checkpoint_loading.literal_value, name


# ---- the restricted unpickler itself, on hand-written pickles ---------------------------

def _text(value: str) -> bytes:
    """A BINUNICODE pickle opcode."""
    import struct

    data = value.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _refused(payload: bytes, kind="file", persistent_load=None):
    unpickler = checkpoint_loading._restricted_pickle(kind).Unpickler(io.BytesIO(payload))
    if persistent_load is not None:
        unpickler.persistent_load = persistent_load
    with pytest.raises(checkpoint_loading._Refused) as error:
        unpickler.load()
    return error.value.what


def test_state_cannot_be_set_on_classes_functions_or_unexpected_objects():
    """BUILD applies a pickled state to the object under it. On an allowed function or class
    that would change it for the whole process (e.g. the defaults of torch's tensor rebuild
    function, so that every later torch.load fails); it is refused, as are dunder attributes
    and a legacy 'module' record (which makes torch compare, even write, source files)."""
    import torch._utils

    defaults = torch._utils._rebuild_tensor_v2.__defaults__
    # GLOBAL torch._utils._rebuild_tensor_v2; state (None, {'__defaults__': ()}); BUILD
    payload = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nN}" + _text("__defaults__") + b")s\x86b."
    assert "to change <function _rebuild_tensor_v2" in _refused(payload)
    assert torch._utils._rebuild_tensor_v2.__defaults__ == defaults
    class_payload = b"\x80\x02cargparse\nNamespace\n}" + _text("dump_patches") + b"\x88sb."
    assert "to change <class 'argparse.Namespace'>" in _refused(class_payload)
    assert not hasattr(argparse.Namespace, "dump_patches")
    # an instance of an allowed class: plain attributes yes, dunder ones no
    ok = b"\x80\x02cargparse\nNamespace\n)\x81}" + _text("lr") + b"G?\xb9\x99\x99\x99\x99\x99\x9asb."
    assert checkpoint_loading._restricted_pickle("file").load(io.BytesIO(ok)) == argparse.Namespace(lr=0.1)
    dunder = b"\x80\x02cargparse\nNamespace\n)\x81}" + _text("__class__") + b"cargparse\nNamespace\nsb."
    assert "attributes ['__class__']" in _refused(dunder)
    # BINPERSID ('module', Namespace, 'src', 'text'): refused before torch's handler runs
    calls = []
    module_record = b"\x80\x02(" + _text("module") + b"cargparse\nNamespace\n" + _text("a") + _text("b") + b"tQ."
    assert "legacy 'module' record" in _refused(module_record, persistent_load=calls.append)
    assert calls == []


def test_numpy_reconstructors_make_plain_arrays_and_scalars_only():
    """numpy.ndarray is named in pickles only as the reconstructor's first argument: called
    directly it would make an object array. A dtype's state must be its canonical one (other
    flags make numpy misread the data), and a scalar comes from raw bytes only."""
    import numpy

    loads = lambda payload: checkpoint_loading._restricted_pickle("file").load(io.BytesIO(payload))  # noqa: E731
    good = pickle.dumps({"a": numpy.array([1.5, 2.5]), "s": numpy.float64(3.0)}, protocol=2)
    loaded = loads(good)
    assert loaded["a"].tolist() == [1.5, 2.5] and loaded["s"] == 3.0
    # REDUCE numpy.ndarray((3,), 'O')
    direct = b"\x80\x02cnumpy\nndarray\nK\x03\x85" + _text("O") + b"\x86R."
    with pytest.raises(TypeError):  # the stand-in class takes no arguments: no array is made
        loads(direct)
    canonical = b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t"
    assert good.count(canonical) == 1  # one float64 dtype, memoized for the scalar
    flagged = good.replace(canonical, canonical[:-3] + b"K\x04t", 1)
    assert "numpy dtype flags" in _refused(flagged)
    # scalar(dtype float64, <an ndarray>) instead of raw bytes
    array_scalar = (b"\x80\x02cnumpy._core.multiarray\nscalar\ncnumpy\ndtype\n" + _text("f8") + b"\x89\x88\x87R"
                    + b"cnumpy._core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85C\x01b\x87R\x86R.")
    assert "numpy scalar made from ndarray" in _refused(array_scalar)
