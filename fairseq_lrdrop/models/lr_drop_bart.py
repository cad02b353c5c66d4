"""`lr_drop_bart`: fairseq's BART that returns layer states in training.

Parameter names are the stock ones: a stock `bart.large/model.pt` loads with --restore-file.
Architectures: lr_drop_bart_large, lr_drop_bart_base, lr_drop_mbart_large, ... (every stock one).
"""
from fairseq.models import register_model
from fairseq.models.bart import BARTModel

from .layer_states_model import LayerStatesModelMixin, mirror_architectures


@register_model("lr_drop_bart")
class LRDropBARTModel(LayerStatesModelMixin, BARTModel):
    pass


mirror_architectures(BARTModel, "bart", "lr_drop_bart")
