"""`lr_drop_transformer_lm`: fairseq's decoder-only language model that returns layer states in
training (the decoder's layer outputs and self-attention maps).

Parameter names are the stock ones, so checkpoints move between `transformer_lm` and
`lr_drop_transformer_lm` both ways. Every stock `transformer_lm*` architecture has an
`lr_drop_` twin (lr_drop_transformer_lm_wiki103, lr_drop_transformer_lm_gpt2_small...).
"""
from fairseq.models import register_model
from fairseq.models.transformer_lm import TransformerLanguageModel, TransformerLanguageModelConfig

from .layer_states_model import LayerStatesModelMixin, mirror_architectures


@register_model("lr_drop_transformer_lm", dataclass=TransformerLanguageModelConfig)
class LRDropTransformerLanguageModel(LayerStatesModelMixin, TransformerLanguageModel):
    pass


mirror_architectures(TransformerLanguageModel, "transformer_lm", "lr_drop_transformer_lm")
