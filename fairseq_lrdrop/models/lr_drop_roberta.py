"""`lr_drop_roberta`: fairseq's RoBERTa (encoder-only) that returns layer states in training.

Parameter names are the stock ones: a stock `roberta.base/model.pt` loads with --restore-file,
and a fine-tuned checkpoint loads into stock `roberta`. Architectures: lr_drop_roberta_base,
lr_drop_roberta_large, lr_drop_roberta_prenorm, lr_drop_xlm, lr_drop_roberta.
"""
from fairseq.models import register_model
from fairseq.models.roberta import RobertaModel

from .layer_states_model import LayerStatesModelMixin, mirror_architectures


@register_model("lr_drop_roberta")
class LRDropRobertaModel(LayerStatesModelMixin, RobertaModel):
    pass


mirror_architectures(RobertaModel, "roberta", "lr_drop_roberta")
