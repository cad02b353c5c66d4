"""`lr_drop_roberta`: fairseq's RoBERTa (encoder-only) that returns layer states in training.

Parameter names are the stock ones: a stock `roberta.base/model.pt` loads with --restore-file,
and a fine-tuned checkpoint loads into stock `roberta`. Architectures: lr_drop_roberta_base,
lr_drop_roberta_large, lr_drop_roberta_prenorm, lr_drop_xlm, lr_drop_roberta.

One option more than stock roberta: --layernorm-eps sets the epsilon of every LayerNorm
(fairseq builds them with a fixed 1e-5; BERT-family checkpoints imported with
fairseq_lrdrop.import_bert use 1e-12). It changes no parameter, so checkpoints stay
interchangeable with stock roberta.
"""
from fairseq.models import register_model
from fairseq.models.roberta import RobertaModel
from fairseq.utils import safe_getattr
from torch import nn

from .layer_states_model import LayerStatesModelMixin, mirror_architectures


def set_layernorm_eps(model: nn.Module, eps: float) -> None:
    """Set the epsilon of every LayerNorm in `model` (torch's, or apex's fused one, which
    fairseq uses on GPUs where apex is installed; both read .eps in forward)."""
    for module in model.modules():
        if isinstance(module, nn.LayerNorm) or type(module).__name__ == "FusedLayerNorm":
            module.eps = eps


@register_model("lr_drop_roberta")
class LRDropRobertaModel(LayerStatesModelMixin, RobertaModel):
    @staticmethod
    def add_args(parser):
        RobertaModel.add_args(parser)
        parser.add_argument("--layernorm-eps", type=float, metavar="EPS",
                            help="epsilon of every LayerNorm (default: fairseq's 1e-5; BERT uses 1e-12)")

    @classmethod
    def build_model(cls, args, task):
        model = super().build_model(args, task)
        eps = safe_getattr(args, "layernorm_eps", None)
        if eps is not None:
            set_layernorm_eps(model, eps)
        return model


mirror_architectures(RobertaModel, "roberta", "lr_drop_roberta")
