"""Make fairseq's checkpoint loading work on torch >= 2.6 without giving up its protection.

torch.load now defaults to weights_only=True, which rejects the argparse.Namespace (and a few
numpy scalars) that fairseq checkpoints hold. Importing the plugin wraps fairseq's one loading
function, `checkpoint_utils.load_checkpoint_to_cpu` (used by fairseq-train's --restore-file,
fairseq-generate, fairseq-interactive, hub loading...), so that it loads with weights_only=True
plus an allow-list of exactly those types. Everything else in the process keeps torch's
defaults. A checkpoint that needs any other global (e.g. a pickle that would run code) is
refused with one line; a user who trusts such a file lists it in FAIRSEQ_LRDROP_TRUSTED_CHECKPOINTS.
"""
import argparse
import contextlib
import functools
import os
import pickle
import re

import numpy
import torch

from fairseq_lrdrop.errors import UsageError

TRUSTED_CHECKPOINTS_ENV = "FAIRSEQ_LRDROP_TRUSTED_CHECKPOINTS"


def _numpy_scalar_types():
    # fairseq stores numpy scalars (e.g. best/val loss); pickle names them by these globals.
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    dtype_classes = [type(numpy.dtype(name)) for name in ("float64", "float32", "int64", "int32", "bool")]
    return [scalar, numpy.dtype, *dtype_classes]


# Exactly what fairseq checkpoints hold beyond tensors and plain containers.
CHECKPOINT_GLOBALS = [argparse.Namespace, *_numpy_scalar_types()]


def trusted_checkpoints():
    """Real paths listed (os.pathsep-separated) in FAIRSEQ_LRDROP_TRUSTED_CHECKPOINTS."""
    listed = os.environ.get(TRUSTED_CHECKPOINTS_ENV, "")
    return {os.path.realpath(p) for p in listed.split(os.pathsep) if p}


@contextlib.contextmanager
def _torch_load_checked(path, weights_only: bool):
    """For the duration of one fairseq load: torch.load with weights_only pinned (fairseq passes
    none) and the allow-list, and its failures turned into one-line errors naming the file."""
    original = torch.load

    def load(*args, **kwargs):
        try:
            with torch.serialization.safe_globals(CHECKPOINT_GLOBALS):
                return original(*args, **{**kwargs, "weights_only": weights_only})
        except pickle.UnpicklingError as error:
            raise (_refused(path, error) if "GLOBAL" in str(error) else _unreadable(path, error)) from None
        except (EOFError, OSError, RuntimeError) as error:
            raise _unreadable(path, error) from None

    torch.load = load
    try:
        yield
    finally:
        torch.load = original


def _refused(path, error):
    found = re.search(r"GLOBAL ([\w.]+)", str(error))
    what = f"the global {found.group(1)}" if found else "an object outside the allowed types"
    return UsageError(
        f"refused to load checkpoint {path}: it needs {what}, which fairseq checkpoints never "
        f"contain, so unpickling it could run arbitrary code. If you trust this file, add its "
        f"path to {TRUSTED_CHECKPOINTS_ENV} to load it with full unpickling"
    )


def _unreadable(path, error):
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return UsageError(
        f"checkpoint {path} cannot be read ({reason}): it is truncated or not a fairseq "
        f"checkpoint; use another one (e.g. checkpoint_last.pt) or re-save it"
    )


def _is_trusted(path) -> bool:
    return os.path.realpath(str(path)) in trusted_checkpoints()


def load_checkpoint_file(path):
    """The raw checkpoint dict, loaded the way the plugin loads every fairseq checkpoint (for
    tools that rewrite checkpoints, e.g. examples/average_checkpoints.py)."""
    with _torch_load_checked(path, weights_only=not _is_trusted(path)):
        return torch.load(path, map_location="cpu")


def safe_load_checkpoint_to_cpu(load_checkpoint_to_cpu):
    """Wrap fairseq's load_checkpoint_to_cpu(path, arg_overrides=None, load_on_all_ranks=False)."""

    @functools.wraps(load_checkpoint_to_cpu)
    def wrapper(path, *args, **kwargs):
        with _torch_load_checked(path, weights_only=not _is_trusted(path)):
            return load_checkpoint_to_cpu(path, *args, **kwargs)

    wrapper.lrdrop_safe_loading = True
    return wrapper


def install_safe_checkpoint_loading():
    """Idempotent: wrap fairseq.checkpoint_utils.load_checkpoint_to_cpu once."""
    from fairseq import checkpoint_utils

    if not getattr(checkpoint_utils.load_checkpoint_to_cpu, "lrdrop_safe_loading", False):
        checkpoint_utils.load_checkpoint_to_cpu = safe_load_checkpoint_to_cpu(
            checkpoint_utils.load_checkpoint_to_cpu
        )
