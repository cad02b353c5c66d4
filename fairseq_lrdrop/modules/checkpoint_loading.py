"""Checkpoint loading for stock fairseq on torch >= 2.6: every checkpoint fairseq writes loads,
on every rank, and no checkpoint runs code.

A fairseq checkpoint could run code in two ways, and the plugin closes both when imported:

1. Unpickling. torch >= 2.6 loads with weights_only=True, which rejects what fairseq stores
   besides tensors (an argparse.Namespace, numpy arrays and scalars). fairseq unpickles in
   exactly two places: `checkpoint_utils` (the file: rank 0, or every rank with
   --load-checkpoint-on-all-dp-ranks) and `distributed.utils.broadcast_object` (rank 0's
   loaded state as the other ranks receive it; also FSDP and --zero-sharding os state). In
   each of those two modules the name `torch` is bound to a stand-in whose `load` passes a
   restricted unpickler to that one call: it resolves only the globals torch's weights_only
   loader allows plus CHECKPOINT_GLOBALS (data types; see README "Checkpoints"), applies a
   pickled state only to instances of listed data types (never to a class or function), and
   takes no persistent record but torch's storages. Nothing else in the process changes: no
   global allow-list, no torch.load replaced for a while.
2. eval() of config strings. While building a model or task from a checkpoint's config,
   fairseq evaluates some strings with the builtin eval() (`utils.eval_str_list` on
   `adaptive_softmax_cutoff`, `eval_str_dict` on `*_xformers_att_config`, fconv layer specs,
   ...). In the modules listed in CONFIG_EVAL_MODULES the builtin is shadowed by
   `literal_value`: plain literals evaluate as before, anything else is refused.

A user who trusts a legacy file that needs more lists its path in
FAIRSEQ_LRDROP_TRUSTED_CHECKPOINTS (full unpickling for that file, and for its state as rank
0 broadcasts it).
"""
import _compat_pickle
import argparse
import ast
import contextvars
import functools
import importlib
import os
import pickle
import types
import zipfile
from typing import Any, Callable, Dict

import numpy
import torch

from fairseq_lrdrop.errors import UsageError

TRUSTED_CHECKPOINTS_ENV = "FAIRSEQ_LRDROP_TRUSTED_CHECKPOINTS"

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
except ImportError:  # numpy < 2
    from numpy.core import multiarray as _multiarray


class _Refused(pickle.UnpicklingError):
    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


def _plain_dtype(*args):
    """numpy.dtype, for numbers and booleans only (an object dtype would unpickle objects)."""
    dtype = numpy.dtype(*args)
    if dtype.kind not in "biufc" or dtype.fields is not None or dtype.subdtype is not None:
        raise _Refused(f"a numpy array or scalar of dtype {dtype}")
    return dtype


class _NdarrayName:
    """Stands for the global numpy.ndarray, which pickles name only as the first argument of
    numpy's array reconstructor: the real class, called directly, would make object arrays."""


def _plain_array(subtype, shape, dtype):
    """numpy's array reconstructor, for plain ndarrays only (not subclasses)."""
    if subtype is not _NdarrayName:
        raise _Refused(f"a numpy array of type {subtype!r}")
    return _multiarray._reconstruct(numpy.ndarray, shape, dtype)


def _plain_scalar(dtype, data):
    """numpy's scalar reconstructor, for a plain dtype and its raw bytes only."""
    if not isinstance(dtype, numpy.dtype) or not isinstance(data, bytes):
        raise _Refused(f"a numpy scalar made from {type(data).__name__}")
    return _multiarray.scalar(dtype, data)


def _numpy_globals() -> Dict[str, Any]:
    names = {"numpy.ndarray": _NdarrayName, "numpy.dtype": _plain_dtype}
    # numpy >= 2 writes numpy._core.multiarray.*, numpy < 2 wrote numpy.core.multiarray.*
    for core in ("numpy._core", "numpy.core"):
        names[f"{core}.multiarray.scalar"] = _plain_scalar
        names[f"{core}.multiarray._reconstruct"] = _plain_array
    return names


# What fairseq writes into checkpoints besides tensors and plain containers (surveyed in README).
CHECKPOINT_GLOBALS: Dict[str, Any] = {"argparse.Namespace": argparse.Namespace, **_numpy_globals()}


def _broadcast_types():
    """What fairseq's loader adds before rank 0 broadcasts a loaded checkpoint: the config as
    an OmegaConf DictConfig (with its metadata and nodes) and placeholders for the tensors,
    which travel separately."""
    from fairseq.distributed.utils import _TensorPlaceholder
    from omegaconf import DictConfig, ListConfig, base, nodes

    return [DictConfig, ListConfig, base.ContainerMetadata, base.Metadata, _TensorPlaceholder,
            nodes.AnyNode, nodes.StringNode, nodes.IntegerNode, nodes.FloatNode, nodes.BooleanNode]


def _broadcast_globals() -> Dict[str, Any]:
    import typing
    from collections import defaultdict

    found = [*_broadcast_types(), defaultdict, dict, list, tuple, int, float, str, bool]
    names = {f"{cls.__module__}.{cls.__qualname__}": cls for cls in found}
    names["typing.Any"] = typing.Any
    return {**CHECKPOINT_GLOBALS, **names}


class _RestrictedUnpickler(pickle._Unpickler):
    """Python's own unpickler with three limits: globals only from `allowed`; BUILD (state
    applied to an object) only on instances of `buildable` types, never on a class or a
    function, and without dunder attributes; no persistent ids but torch's storages."""

    allowed: Dict[str, Any] = {}
    buildable: frozenset = frozenset()
    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module, name):
        # protocol 2 (torch's default) names builtins as Python 2 did: __builtin__.dict
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        found = self.allowed.get(f"{module}.{name}")
        if found is None:
            raise _Refused(f"the global {module}.{name}")
        return found

    def load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        kind = type(inst)
        if isinstance(inst, numpy.dtype):
            if state != numpy.dtype(inst.str).__reduce__()[2]:
                raise _Refused(f"numpy dtype flags {state!r}")
            inst.__setstate__(state)
        elif kind is torch.Tensor:  # the legacy format, as torch's weights_only loader does it
            inst.set_(*state)
        elif kind not in self.buildable:
            raise _Refused(f"to change {inst!r} while unpickling" if isinstance(inst, type) or callable(inst)
                           else f"to set the state of a {kind.__module__}.{kind.__qualname__}")
        elif getattr(inst, "__setstate__", None) is not None:
            inst.__setstate__(state)
        else:
            slots = None
            if isinstance(state, tuple) and len(state) == 2:
                state, slots = state
            if slots or not isinstance(state, dict) or any(str(k).startswith("__") for k in state):
                raise _Refused(f"attributes {sorted(map(str, state or {}))} set on a {kind.__qualname__}")
            inst.__dict__.update(state)

    dispatch[pickle.BUILD[0]] = load_build

    # torch.load assigns its persistent_load to the unpickler; only its storages may pass (a
    # legacy 'module' record makes torch compare and even write source files).
    @property
    def persistent_load(self):
        return self._persistent_load

    @persistent_load.setter
    def persistent_load(self, load):
        def checked(pid):
            if isinstance(pid, tuple) and pid and pid[0] in ("module", b"module"):
                raise _Refused("a legacy 'module' record")
            return load(pid)

        self._persistent_load = checked


@functools.lru_cache(maxsize=None)
def _restricted_pickle(kind: str):
    """A pickle module for torch.load(pickle_module=...): torch's own weights_only globals
    plus CHECKPOINT_GLOBALS (kind 'file') or the broadcast's extras (kind 'broadcast')."""
    from collections import Counter, OrderedDict

    from torch._weights_only_unpickler import _get_allowed_globals

    extra = CHECKPOINT_GLOBALS if kind == "file" else _broadcast_globals()
    buildable = {OrderedDict, Counter, argparse.Namespace, torch.nn.Parameter, numpy.ndarray}
    if kind == "broadcast":
        buildable.update(_broadcast_types())
    unpickler = type("Unpickler", (_RestrictedUnpickler,),
                     {"allowed": {**_get_allowed_globals(), **extra}, "buildable": frozenset(buildable)})
    return types.SimpleNamespace(
        __name__=f"fairseq_lrdrop_{kind}_pickle",
        Unpickler=unpickler,
        load=lambda file, **kwargs: unpickler(file, **kwargs).load(),
    )


def trusted_checkpoints():
    """Real paths listed (os.pathsep-separated) in FAIRSEQ_LRDROP_TRUSTED_CHECKPOINTS."""
    listed = os.environ.get(TRUSTED_CHECKPOINTS_ENV, "")
    return {os.path.realpath(p) for p in listed.split(os.pathsep) if p}


def _is_trusted(path) -> bool:
    return path is not None and os.path.realpath(str(path)) in trusted_checkpoints()


def _checked_load(source, what: str, kind: str, trusted: bool, args, kwargs):
    """torch.load(source, ...) with the restricted unpickler (full unpickling when trusted);
    failures become one line naming `what`."""
    kwargs = {k: v for k, v in kwargs.items() if k not in ("weights_only", "pickle_module")}
    pickle_module = pickle if trusted else _restricted_pickle(kind)
    try:
        return torch.load(source, *args, weights_only=False, pickle_module=pickle_module, **kwargs)
    except _Refused as error:
        raise UsageError(
            f"refused to load {what}: it needs {error.what}, which fairseq checkpoints never "
            f"contain, so unpickling it could run arbitrary code. If you trust this file, add "
            f"its path to {TRUSTED_CHECKPOINTS_ENV} to load it with full unpickling"
        ) from None
    except (pickle.UnpicklingError, EOFError, OSError, RuntimeError, zipfile.BadZipFile, ValueError,
            KeyError, IndexError, TypeError, AttributeError, SystemError, MemoryError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UsageError(
            f"{what} cannot be read ({reason}): it is truncated or not a fairseq checkpoint; "
            f"use another one (e.g. checkpoint_last.pt) or re-save it"
        ) from None


def load_checkpoint_data(f, *args, **kwargs):
    """The `torch.load` of fairseq.checkpoint_utils: `f` is the open checkpoint file."""
    path = getattr(f, "name", f)
    return _checked_load(f, f"checkpoint {path}", "file", _is_trusted(path), args, kwargs)


# The checkpoint that Trainer.load_checkpoint is loading in this context: the other ranks
# receive its state through broadcast_object, and it names that state in errors.
_loading_checkpoint: contextvars.ContextVar = contextvars.ContextVar("lrdrop_checkpoint", default=None)


def load_broadcast_data(buffer, *args, **kwargs):
    """The `torch.load` of fairseq.distributed.utils: an object rank 0 broadcast."""
    path = _loading_checkpoint.get()
    what = "the state rank 0 broadcast" + (f" (checkpoint {path})" if path else "")
    return _checked_load(buffer, what, "broadcast", _is_trusted(path), args, kwargs)


def load_checkpoint_file(path):
    """The raw checkpoint dict, loaded as the plugin loads every fairseq checkpoint (for tools
    that rewrite checkpoints, e.g. examples/average_checkpoints.py)."""
    with open(path, "rb") as f:
        return load_checkpoint_data(f, map_location="cpu")


class _TorchWithCheckedLoad(types.ModuleType):
    """Stands for `torch` inside one fairseq module: every attribute is torch's, except
    `load`."""

    def __init__(self, load: Callable):
        super().__init__("torch")
        self.load = load

    def __getattr__(self, name):
        return getattr(torch, name)


def _remembering_checkpoint(load_checkpoint):
    """Wrap Trainer.load_checkpoint(filename, ...) to set _loading_checkpoint meanwhile."""

    @functools.wraps(load_checkpoint)
    def wrapper(self, filename, *args, **kwargs):
        token = _loading_checkpoint.set(filename)
        try:
            return load_checkpoint(self, filename, *args, **kwargs)
        finally:
            _loading_checkpoint.reset(token)

    wrapper.lrdrop_remembers_checkpoint = True
    return wrapper


# ---- eval() of configuration strings ------------------------------------------------------

# fairseq modules that call the builtin eval() on configuration values that a checkpoint's
# cfg can set (model, task and dataset options built by fairseq-generate, --restore-file, the
# hub). tests/test_checkpoints.py scans the installed fairseq for every eval() call and checks
# that each module is here or in CONFIG_EVAL_NOT_FROM_CHECKPOINTS.
CONFIG_EVAL_MODULES = (
    "fairseq.utils",  # eval_str_list / eval_str_dict / eval_bool (also as fairseq.options.*)
    "fairseq.models.fconv",
    "fairseq.models.fconv_lm",
    "fairseq.models.fconv_self_att",
    "fairseq.models.lightconv_lm",
    "fairseq.models.transformer_lm",
    "fairseq.models.wav2vec.wav2vec",
    "fairseq.models.wav2vec.wav2vec2",
    "fairseq.models.hubert.hubert",
    "fairseq.models.speech_to_text.s2t_wav_transformer",
    "fairseq.data.audio.raw_audio_dataset",
)
# eval() calls on values that come from the user's command line or data files, never from a
# checkpoint's config (fairseq builds optimizers and criterions from the current run's flags).
CONFIG_EVAL_NOT_FROM_CHECKPOINTS = {
    "fairseq.optim.adam": "--adam-betas of the current run",
    "fairseq.optim.cpu_adam": "--adam-betas of the current run",
    "fairseq.optim.adamax": "--adamax-betas of the current run",
    "fairseq.optim.adafactor": "--adafactor-eps of the current run",
    "fairseq.optim.fused_lamb": "--lamb-betas of the current run",
    "fairseq.criterions.ctc": "--wer-args of the current run's criterion",
    "fairseq.data.codedataset": "lines of a speech data manifest",
    "fairseq_cli.validate": "--model-overrides on the command line",
    "fairseq_cli.eval_lm": "--model-overrides on the command line",
}

_MAX_ITEMS = 1_000_000  # a repeated list longer than this is refused (memory, not code)


def _literal(node: ast.AST):
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
        left, right = _literal(node.left), _literal(node.right)
        if isinstance(node.op, ast.Mult):
            sequence, count = (left, right) if isinstance(right, int) else (right, left)
            if isinstance(sequence, (list, tuple, str)) and len(sequence) * max(count, 0) > _MAX_ITEMS:
                raise ValueError("too long")
            return left * right
        return left + right
    return ast.literal_eval(node)


def literal_value(source, *_globals_and_locals):
    """A stand-in for the builtin eval() that evaluates only plain literals: numbers,
    strings, lists, tuples, dicts, sets, True / False / None, and lists joined with + or
    repeated with * (fconv's "[(512, 3)] * 20"). Anything else is refused with one line."""
    if isinstance(source, bytes):
        source = source.decode()
    if not isinstance(source, str):
        raise TypeError("eval() arg 1 must be a string")  # as the builtin (eval_bool relies on it)
    try:
        return _literal(ast.parse(source.strip(), mode="eval").body)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        shown = source if len(source) <= 80 else source[:77] + "..."
        raise UsageError(
            f"refused to evaluate the configuration value {shown!r}: fairseq evaluates it with "
            f"eval(), and with the plugin loaded only plain literals are evaluated (numbers, "
            f"strings, lists, tuples, dicts, True/False/None; lists joined with + or repeated "
            f"with *), so that a checkpoint's config cannot run code; write it as a literal"
        ) from None


# ---- installation -------------------------------------------------------------------------

def install_safe_checkpoint_loading():
    """Idempotent; called when the plugin is imported."""
    from fairseq import checkpoint_utils
    from fairseq.distributed import utils as distributed_utils
    from fairseq.trainer import Trainer

    for module, load in ((checkpoint_utils, load_checkpoint_data), (distributed_utils, load_broadcast_data)):
        if not isinstance(module.torch, _TorchWithCheckedLoad):
            module.torch = _TorchWithCheckedLoad(load)
    if not getattr(Trainer.load_checkpoint, "lrdrop_remembers_checkpoint", False):
        Trainer.load_checkpoint = _remembering_checkpoint(Trainer.load_checkpoint)
    for name in CONFIG_EVAL_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # an optional dependency is missing: fairseq cannot use it either
            continue
        module.eval = literal_value  # a module global shadows the builtin
