"""fairseq-lrdrop: Layer-wise Regularized Dropout (LR-Drop) and R-Drop for stock fairseq.

Use it as `--user-dir fairseq_lrdrop`. Importing the package registers the criterions
`lr_drop_label_smoothed_cross_entropy` and `lr_drop_sentence_prediction`, the models
`lr_drop_transformer`, `lr_drop_bart`, `lr_drop_roberta`, `lr_drop_transformer_lm` and their
architectures, makes fairseq's checkpoint loading work on torch >= 2.6 (see
modules/checkpoint_loading.py), its language-modeling data on numpy 2 (modules/numpy_compat.py)
and its exit after a stop inside an epoch on Python < 3.14 (modules/background_loader_exit.py).
The loss mathematics (`fairseq_lrdrop.losses`) needs only torch.
"""
import importlib.util

__version__ = "0.2.0"

if importlib.util.find_spec("fairseq") is not None:
    from . import criterions, models  # noqa: F401  (registration)
    from .modules.background_loader_exit import install_background_loader_exit
    from .modules.checkpoint_loading import install_safe_checkpoint_loading
    from .modules.numpy_compat import install_numpy_compat

    install_safe_checkpoint_loading()
    install_numpy_compat()
    install_background_loader_exit()
