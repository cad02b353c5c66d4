"""fairseq-fixed 0.12.3.1 on numpy 2: two data modules call `np.compat.long`, which numpy 2
removed, so stock `fairseq-train --task language_modeling` fails in TokenBlockDataset before
the first update (and LanguagePairDataset's vectorised token counts would fail the same way).

In exactly those modules the name `np` is bound to numpy plus `compat.long`, which numpy 1.x
defined as Python's int. Nothing else in the process changes; with numpy 1.x nothing is done.
"""
import importlib
import types

import numpy

from fairseq_lrdrop.modules.stand_in import ModuleWith

# fairseq modules that call np.compat.long (fairseq-fixed 0.12.3.1)
NUMPY_COMPAT_MODULES = ("fairseq.data.token_block_dataset", "fairseq.data.language_pair_dataset")


def install_numpy_compat():
    """Idempotent; called when the plugin is imported."""
    if hasattr(numpy, "compat"):
        return
    for name in NUMPY_COMPAT_MODULES:
        module = importlib.import_module(name)
        if module.np is numpy:
            module.np = ModuleWith(numpy, compat=types.SimpleNamespace(long=int))  # numpy 1.x's np.compat.long
