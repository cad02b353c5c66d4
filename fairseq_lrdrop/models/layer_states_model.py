"""The model side of LR-Drop, shared by every family (Transformer, BART, RoBERTa, transformer_lm)."""
from typing import Optional

from fairseq.models import ARCH_CONFIG_REGISTRY, ARCH_MODEL_REGISTRY, register_model_architecture

from fairseq_lrdrop.modules.layer_states import LayerStateRequest, layer_stacks, recording_layer_states
from fairseq_lrdrop.output_head import OutputHeadRequest


class LayerStatesModelMixin:
    """Mix into a fairseq Transformer model (before the model class):

        forward(..., layer_states=LayerStateRequest(...))

    returns the usual (output, extra) with extra["layer_states"] (a LayerStates) added, in
    training only. Without the argument, or in eval mode, the stock forward runs unchanged:
    nothing is recorded and the fused attention path is kept.

        forward(..., output_head=OutputHeadRequest(...))

    runs the decoder with features_only=True and the fused output head on its features and
    the output projection: output is the features (B x T x C), extra["output_head"] the
    HeadLosses. The head runs here, inside the forward, because DistributedDataParallel only
    sees the parameters a forward uses: with --find-unused-parameters an untied projection used
    afterwards by the criterion is first marked unused, then gets a gradient, and DDP fails.
    """

    returns_layer_states = True
    runs_output_head = True

    def forward(self, *args, layer_states: Optional[LayerStateRequest] = None,
                output_head: Optional[OutputHeadRequest] = None, **kwargs):
        if output_head is not None:
            kwargs["features_only"] = True
        if layer_states is None or not self.training:
            output, extra = super().forward(*args, **kwargs)
        else:
            with recording_layer_states(layer_stacks(self), layer_states) as states:
                output, extra = super().forward(*args, **kwargs)
            extra["layer_states"] = states
        if output_head is not None:
            extra["output_head"] = output_head.losses(output, self.decoder.output_projection.weight)
        return output, extra


def mirror_architectures(stock_model: type, stock_name: str, model_name: str) -> None:
    """Register, for `model_name`, every architecture registered for `stock_model`, with the
    same hyperparameter function: stock `<arch>` becomes `lr_drop_<arch>`, and the stock
    model's own default architecture (`stock_name`) becomes `model_name`. (A model registered
    with a dataclass already has its default architecture, as the stock one does.)"""
    for arch, model in list(ARCH_MODEL_REGISTRY.items()):
        name = model_name if arch == stock_name else "lr_drop_" + arch
        if model is stock_model and name not in ARCH_MODEL_REGISTRY:
            register_model_architecture(model_name, name)(ARCH_CONFIG_REGISTRY[arch])
