from .lr_drop_label_smoothed_cross_entropy import (  # noqa: F401
    LRDropLabelSmoothedCrossEntropyConfig,
    LRDropLabelSmoothedCrossEntropyCriterion,
)
from .lr_drop_sentence_prediction import (  # noqa: F401
    LRDropSentencePredictionConfig,
    LRDropSentencePredictionCriterion,
)
