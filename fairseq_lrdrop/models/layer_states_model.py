"""The model side of LR-Drop, shared by the Transformer and BART variants."""
from typing import Optional

from fairseq_lrdrop.modules.layer_states import LayerStateRequest, recording_layer_states


class LayerStatesModelMixin:
    """Mix into a fairseq encoder-decoder model (before the model class):

        forward(..., layer_states=LayerStateRequest(...))

    returns the usual (logits, extra) with extra["layer_states"] (a LayerStates) added, in
    training only. Without the argument, or in eval mode, the stock forward runs unchanged:
    nothing is recorded and the fused attention path is kept.
    """

    returns_layer_states = True

    def forward(self, *args, layer_states: Optional[LayerStateRequest] = None, **kwargs):
        if layer_states is None or not self.training:
            return super().forward(*args, **kwargs)
        with recording_layer_states(self.encoder.layers, self.decoder.layers, layer_states) as states:
            logits, extra = super().forward(*args, **kwargs)
        extra["layer_states"] = states
        return logits, extra
