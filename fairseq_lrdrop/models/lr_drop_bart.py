"""`lr_drop_bart`: fairseq's BART that returns layer states in training.

Parameter names are the stock ones: a stock `bart.large/model.pt` loads with --restore-file.
"""
from fairseq.models import register_model, register_model_architecture
from fairseq.models.bart import BARTModel
from fairseq.models.bart.model import bart_base_architecture, bart_large_architecture

from .layer_states_model import LayerStatesModelMixin


@register_model("lr_drop_bart")
class LRDropBARTModel(LayerStatesModelMixin, BARTModel):
    pass


register_model_architecture("lr_drop_bart", "lr_drop_bart_large")(bart_large_architecture)
register_model_architecture("lr_drop_bart", "lr_drop_bart_base")(bart_base_architecture)
