"""Checkpoint loading for stock fairseq on torch >= 2.6: every checkpoint fairseq writes loads,
on every rank, and no checkpoint or model archive runs code or writes outside its place.

Importing the plugin closes four ways in:

1. Unpickling. torch >= 2.6 loads with weights_only=True, which rejects what fairseq stores
   besides tensors (an argparse.Namespace, numpy arrays and scalars). fairseq unpickles in
   exactly two places: `checkpoint_utils` (the file: rank 0, or every rank with
   --load-checkpoint-on-all-dp-ranks) and `distributed.utils.broadcast_object` (rank 0's
   loaded state as the other ranks receive it; also FSDP and --zero-sharding os state). In
   each of those two modules the name `torch` is bound to a stand-in whose `load` is torch's
   own weights-only loader, with fairseq's few data types added to torch's allow-list for the
   duration of that one call (CHECKPOINT_GLOBALS, and BROADCAST_GLOBALS on the broadcast),
   sparse tensors checked against their shapes, and numpy object arrays refused afterwards.
   torch's security fixes reach the plugin with each torch release.
2. eval() of config strings. fairseq evaluates some strings with the builtin eval(), some of
   them from a checkpoint's config (`utils.eval_str_list` on `adaptive_softmax_cutoff`, ctc's
   `wer_args` through fairseq-validate, fconv layer specs, ...). In EVERY fairseq module that
   calls eval() (EVAL_MODULES, checked against the installed fairseq by a test) the builtin is
   shadowed by `literal_value`: plain literals evaluate as before, anything else is refused.
3. Model archives. The hub's from_pretrained extracts a .tar.gz with `tarfile.extractall` and
   no filter; `fairseq.file_utils` gets a `tarfile` whose archives check every member with
   Python's 'data' extraction filter (PEP 706) and refuse links, before anything is written.
4. Sparse tensors: loaded under torch.sparse.check_sparse_tensor_invariants, so an index
   outside a tensor's shape is refused instead of reaching code that writes through it.

A user who trusts a legacy file that needs more lists its path in
FAIRSEQ_LRDROP_TRUSTED_CHECKPOINTS (full unpickling for that file, and for its state as rank
0 broadcasts it).
"""
import argparse
import ast
import contextvars
import functools
import importlib
import os
import pickle
import re
import tarfile
import threading
import traceback
import zipfile
from collections import defaultdict
from contextlib import contextmanager
from typing import Any, List, Sequence, Tuple

import numpy
import torch

from fairseq_lrdrop.errors import UsageError
from fairseq_lrdrop.modules.stand_in import ModuleWith

TRUSTED_CHECKPOINTS_ENV = "FAIRSEQ_LRDROP_TRUSTED_CHECKPOINTS"

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
except ImportError:  # numpy < 2
    from numpy.core import multiarray as _multiarray


def _numpy_globals() -> List[Any]:
    """numpy's array and scalar reconstructors under both module names (numpy >= 2 writes
    numpy._core.multiarray.*, numpy < 2 wrote numpy.core.multiarray.*), ndarray, dtype, and
    the classes of the plain dtypes (bool, int, uint, float, complex): torch applies a
    pickled state only to instances of listed classes, so an object or structured dtype
    never gets its state."""
    plain_dtypes = {type(numpy.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"}
    found: List[Any] = [numpy.ndarray, numpy.dtype, *sorted(plain_dtypes, key=lambda cls: cls.__name__)]
    for core in ("numpy._core", "numpy.core"):
        found += [(_multiarray._reconstruct, f"{core}.multiarray._reconstruct"),
                  (_multiarray.scalar, f"{core}.multiarray.scalar")]
    return found


# What fairseq writes into checkpoints besides tensors and plain containers (surveyed in README).
CHECKPOINT_GLOBALS: List[Any] = [argparse.Namespace, *_numpy_globals()]


@functools.lru_cache(maxsize=None)
def _broadcast_globals() -> Tuple[Any, ...]:
    """What fairseq's loader adds before rank 0 broadcasts a loaded checkpoint: the config as
    an OmegaConf DictConfig (with its metadata, nodes and the types they name) and
    placeholders for the tensors, which travel separately."""
    import typing

    from fairseq.distributed.utils import _TensorPlaceholder
    from omegaconf import DictConfig, ListConfig, base, nodes

    return (*CHECKPOINT_GLOBALS, DictConfig, ListConfig, base.ContainerMetadata, base.Metadata,
            _TensorPlaceholder, nodes.AnyNode, nodes.StringNode, nodes.IntegerNode, nodes.FloatNode,
            nodes.BooleanNode, defaultdict, dict, list, tuple, int, float, str, bool, (typing.Any, "typing.Any"))


def global_name(entry) -> str:
    """The name under which torch's allow-list resolves an entry (an object or (object, name))."""
    if isinstance(entry, tuple):
        return entry[1]
    return f"{entry.__module__}.{entry.__qualname__}"


# torch's allow-list is process-wide: loads through the plugin take turns, so that one load
# leaving its scope never removes an entry that another one still needs.
_ALLOW_LIST_LOCK = threading.RLock()


@contextmanager
def _allowed_globals(extra: Sequence[Any]):
    """torch's allow-list plus `extra` within the block (entries already there stay as they
    are), and sparse tensors checked against their shapes."""
    with _ALLOW_LIST_LOCK:
        present = {global_name(entry) for entry in torch.serialization.get_safe_globals()}
        missing = [entry for entry in extra if global_name(entry) not in present]
        with torch.serialization.safe_globals(missing), torch.sparse.check_sparse_tensor_invariants():
            yield


def _object_array_in(state) -> bool:
    """True if a numpy array holding Python objects is anywhere in the containers of `state`
    (torch's loader builds one from a dtype left without its state, or from ndarray called
    directly); fairseq only ever stores numbers in arrays."""
    seen, pending = set(), [state]
    while pending:
        item = pending.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, numpy.ndarray):
            if item.dtype.hasobject:
                return True
        elif isinstance(item, dict):
            pending += [*item.keys(), *item.values()]
        elif isinstance(item, (list, tuple, set, frozenset)):
            pending += item
        elif isinstance(item, argparse.Namespace):
            pending += vars(item).values()
    return False


def trusted_checkpoints():
    """Real paths listed (os.pathsep-separated, relative to the working directory or
    absolute) in FAIRSEQ_LRDROP_TRUSTED_CHECKPOINTS."""
    listed = os.environ.get(TRUSTED_CHECKPOINTS_ENV, "")
    return {os.path.realpath(p) for p in listed.split(os.pathsep) if p}


def _is_trusted(path) -> bool:
    return path is not None and os.path.realpath(str(path)) in trusted_checkpoints()


def _refusal(error: BaseException) -> str:
    """What torch's weights-only loader refused, in a few words."""
    text = str(error)
    found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (\S+) (?:was not|whose module)", text)
    if found:
        return f"the global {found.group(1)}"
    # torch's message: "... WeightsUnpickler error: <reason, on the same or a later line>\n\nCheck ..."
    found = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    reason = found.group(1) if found else (text.splitlines() or [type(error).__name__])[0]
    return f"what torch's weights-only loader refuses ({reason.strip().rstrip('.')})"


def _from_sparse_check(error: BaseException) -> bool:
    return any(frame.name == "_validate_loaded_sparse_tensors"
               for frame in traceback.extract_tb(error.__traceback__))


def _checked_load(source, what: str, extra: Sequence[Any], trusted: bool, args, kwargs):
    """torch.load(source, ...) with torch's weights-only loader and `extra` allowed (full
    unpickling when trusted); every failure becomes one line naming `what`."""
    kwargs = {k: v for k, v in kwargs.items() if k not in ("weights_only", "pickle_module")}

    def refused(needs: str):
        return UsageError(
            f"refused to load {what}: it needs {needs}, which fairseq checkpoints never "
            f"contain, so unpickling it could run arbitrary code or corrupt memory. If you trust "
            f"this file, add its path to {TRUSTED_CHECKPOINTS_ENV} to load it with full unpickling")

    try:
        with _allowed_globals(extra):
            state = torch.load(source, *args, weights_only=not trusted, **kwargs)
    except pickle.UnpicklingError as error:  # torch's weights-only loader said no
        raise refused(_refusal(error)) from None
    except RuntimeError as error:
        if "legacy .tar format" in str(error):
            raise refused("torch's legacy tar format (its members are unpacked as files)") from None
        if _from_sparse_check(error):
            raise refused(f"a sparse tensor whose indices lie outside its shape ({str(error).splitlines()[0]})") from None
        raise _unreadable(what, error) from None
    except (EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError, IndexError, TypeError,
            AttributeError, SystemError, MemoryError) as error:
        raise _unreadable(what, error) from None
    if not trusted and _object_array_in(state):
        raise refused("a numpy array of Python objects")
    return state


def _unreadable(what: str, error: BaseException) -> UsageError:
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return UsageError(f"{what} cannot be read ({reason}): it is truncated or not a fairseq checkpoint; "
                      f"use another one (e.g. checkpoint_last.pt) or re-save it")


def load_checkpoint_data(f, *args, **kwargs):
    """The `torch.load` of fairseq.checkpoint_utils: `f` is the open checkpoint file."""
    path = getattr(f, "name", f)
    return _checked_load(f, f"checkpoint {path}", CHECKPOINT_GLOBALS, _is_trusted(path), args, kwargs)


# The checkpoint that Trainer.load_checkpoint is loading in this context: the other ranks
# receive its state through broadcast_object, and it names that state in errors.
_loading_checkpoint: contextvars.ContextVar = contextvars.ContextVar("lrdrop_checkpoint", default=None)


def load_broadcast_data(buffer, *args, **kwargs):
    """The `torch.load` of fairseq.distributed.utils: an object rank 0 broadcast."""
    path = _loading_checkpoint.get()
    what = "the state rank 0 broadcast" + (f" (checkpoint {path})" if path else "")
    return _checked_load(buffer, what, _broadcast_globals(), _is_trusted(path), args, kwargs)


def load_checkpoint_file(path):
    """The raw checkpoint dict, loaded as the plugin loads every fairseq checkpoint (for tools
    that rewrite checkpoints, e.g. examples/average_checkpoints.py)."""
    with open(path, "rb") as f:
        return load_checkpoint_data(f, map_location="cpu")


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


# ---- model archives ---------------------------------------------------------------------

class CheckedTarFile(tarfile.TarFile):
    """A model archive as fairseq's hub extracts it: before anything is written, every member
    be a plain file or folder with a relative path (no links, which could redirect later
    members) and pass Python's 'data' extraction filter (PEP 706: nothing outside the folder,
    no device or FIFO); then the members are extracted with that filter."""

    def extractall(self, path=".", members=None, *, numeric_owner=False, filter=None):
        for member in self.getmembers() if members is None else members:
            try:
                if member.issym() or member.islnk():
                    raise tarfile.FilterError(f"{member.name!r} is a link")
                if os.path.isabs(member.name):  # the 'data' filter would strip the leading '/'
                    raise tarfile.AbsolutePathError(member)
                tarfile.data_filter(member, str(path))
            except tarfile.FilterError as error:
                raise UsageError(
                    f"refused to extract the model archive {self.name}: {error}; a fairseq model "
                    f"archive holds plain files in one folder. Unpack it yourself if you trust "
                    f"it and pass the folder instead") from None
        super().extractall(path, members, numeric_owner=numeric_owner, filter="data")


# ---- eval() of configuration strings ------------------------------------------------------

# Every fairseq module that calls the builtin eval() (fairseq-fixed 0.12.3.1, without
# fairseq/examples). Some evaluate a checkpoint's config (model and task options, and the
# criterion that fairseq-validate builds from the checkpoint's saved config), others the
# command line or data manifests; all are guarded, so no list of which is reachable from a
# checkpoint has to be right. tests/test_checkpoints.py scans the installed fairseq and fails
# on a module with an eval() call that is not here.
EVAL_MODULES = (
    "fairseq.utils",  # eval_str_list / eval_str_dict / eval_bool (also as fairseq.options.*)
    "fairseq.criterions.ctc",  # wer_args
    "fairseq.data.audio.raw_audio_dataset",
    "fairseq.data.codedataset",
    "fairseq.models.fconv",
    "fairseq.models.fconv_lm",
    "fairseq.models.fconv_self_att",
    "fairseq.models.hubert.hubert",
    "fairseq.models.lightconv_lm",
    "fairseq.models.speech_to_text.s2t_wav_transformer",
    "fairseq.models.transformer_lm",
    "fairseq.models.wav2vec.wav2vec",
    "fairseq.models.wav2vec.wav2vec2",
    "fairseq.optim.adafactor",
    "fairseq.optim.adam",
    "fairseq.optim.adamax",
    "fairseq.optim.cpu_adam",
    "fairseq.optim.fused_lamb",
    "fairseq_cli.eval_lm",  # --model-overrides
    "fairseq_cli.validate",
)

_MAX_ITEMS = 1_000_000  # a string, bytes or list longer than this is refused (memory, not code)


def _checked_size(value):
    if isinstance(value, (str, bytes, list, tuple)) and len(value) > _MAX_ITEMS:
        raise ValueError("too long")
    return value


def _literal(node: ast.AST):
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
        left, right = _literal(node.left), _literal(node.right)
        if isinstance(node.op, ast.Mult):
            sequence, count = (left, right) if isinstance(right, int) else (right, left)
            if isinstance(sequence, (str, bytes, list, tuple)) and len(sequence) * max(count, 0) > _MAX_ITEMS:
                raise ValueError("too long")  # before the product is made
            return _checked_size(left * right)
        return _checked_size(left + right)
    return _checked_size(ast.literal_eval(node))


def literal_value(source, *_globals_and_locals):
    """A stand-in for the builtin eval() that evaluates only plain literals: numbers,
    strings, lists, tuples, dicts, sets, True / False / None, and lists joined with + or
    repeated with * (fconv's "[(512, 3)] * 20"), none longer than a million items. Anything
    else is refused with one line."""
    if isinstance(source, bytes):
        source = source.decode()
    if not isinstance(source, str):
        raise TypeError("eval() arg 1 must be a string")  # as the builtin (eval_bool relies on it)
    try:
        return _literal(ast.parse(source.strip(), mode="eval").body)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError, OverflowError):
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
    from fairseq import checkpoint_utils, file_utils
    from fairseq.distributed import utils as distributed_utils
    from fairseq.trainer import Trainer

    for module, load in ((checkpoint_utils, load_checkpoint_data), (distributed_utils, load_broadcast_data)):
        if not isinstance(module.torch, ModuleWith):
            module.torch = ModuleWith(torch, load=load)
    if not isinstance(file_utils.tarfile, ModuleWith):
        file_utils.tarfile = ModuleWith(tarfile, open=CheckedTarFile.open)
    if not getattr(Trainer.load_checkpoint, "lrdrop_remembers_checkpoint", False):
        Trainer.load_checkpoint = _remembering_checkpoint(Trainer.load_checkpoint)
    for name in EVAL_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # an optional dependency is missing: fairseq cannot use it either
            continue
        module.eval = literal_value  # a module global shadows the builtin
