"""`lr_drop_transformer`: fairseq's Transformer that returns layer states in training.

Parameter names are the stock ones, so checkpoints move between `transformer` and
`lr_drop_transformer` both ways.
"""
from fairseq.models import register_model, register_model_architecture
from fairseq.models.transformer import TransformerModel
from fairseq.models.transformer import transformer_legacy as stock

from .layer_states_model import LayerStatesModelMixin


@register_model("lr_drop_transformer")
class LRDropTransformerModel(LayerStatesModelMixin, TransformerModel):
    pass


def _mirror(stock_arch):
    """Register lr_drop_<name> with exactly the hyperparameters of the stock <name>."""
    name = "lr_drop_" + stock_arch.__name__
    if stock_arch.__name__ == "base_architecture":
        name = "lr_drop_transformer"
    register_model_architecture("lr_drop_transformer", name)(stock_arch)


for _arch in (
    stock.base_architecture,
    stock.transformer_iwslt_de_en,
    stock.transformer_wmt_en_de,
    stock.transformer_vaswani_wmt_en_de_big,
    stock.transformer_vaswani_wmt_en_fr_big,
    stock.transformer_wmt_en_de_big,
):
    _mirror(_arch)
