from .lr_drop_label_smoothed_cross_entropy import (  # noqa: F401
    LRDropLabelSmoothedCrossEntropyConfig,
    LRDropLabelSmoothedCrossEntropyCriterion,
)
