"""`lr_drop_transformer`: fairseq's Transformer that returns layer states in training.

Parameter names are the stock ones, so checkpoints move between `transformer` and
`lr_drop_transformer` both ways. Every stock `transformer*` architecture has an
`lr_drop_` twin (lr_drop_transformer_wmt_en_de, lr_drop_transformer_vaswani_wmt_en_de_big...).
"""
from fairseq.models import register_model
from fairseq.models.transformer import TransformerModel

from .layer_states_model import LayerStatesModelMixin, mirror_architectures


@register_model("lr_drop_transformer")
class LRDropTransformerModel(LayerStatesModelMixin, TransformerModel):
    pass


mirror_architectures(TransformerModel, "transformer", "lr_drop_transformer")
