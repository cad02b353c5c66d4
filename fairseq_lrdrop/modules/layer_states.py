"""Record every layer's output and per-head attention probabilities during ONE forward.

The mechanism is the same for every fairseq encoder-decoder Transformer (Transformer, BART):
hooks are attached to the stock layers for the duration of a training forward and removed
right after, so parameter names, checkpoints and the inference path stay exactly stock.

Attention: fairseq's layers call MultiheadAttention with need_weights=False, and its fused
path (F.multi_head_attention_forward) cannot return per-head probabilities. While recording,
a pre-hook asks for head weights and routes the call to fairseq's explicit path; a forward
hook keeps the float32 probabilities (H x B x T x S, computed before attention dropout) and
hands the caller exactly what it asked for.
"""
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Tuple

from torch import Tensor, nn

ATTENTION_MODULES = ("encoder_self", "decoder_self", "decoder_cross")


@dataclass(frozen=True)
class LayerStateRequest:
    """What a criterion asks the model to return from a training forward."""

    encoder_layers: Tuple[int, ...] = ()  # indices of the layers to record
    decoder_layers: Tuple[int, ...] = ()
    hidden_states: bool = True
    attention_modules: Tuple[str, ...] = ()  # a subset of ATTENTION_MODULES


@dataclass
class LayerStates:
    """Filled during the forward: layer index -> tensor.

    A layer skipped by LayerDrop is simply absent (both passes of [x; x] skip it together).
    """

    encoder_hidden: Dict[int, Tensor] = field(default_factory=dict)  # T x B x C
    decoder_hidden: Dict[int, Tensor] = field(default_factory=dict)  # T x B x C
    attention: Dict[str, Dict[int, Tensor]] = field(
        default_factory=lambda: {name: {} for name in ATTENTION_MODULES}
    )  # module name -> layer -> H x B x T x S


def _keep_layer_output(store: Dict[int, Tensor], index: int):
    def hook(module, args, output):
        # encoder layers return x (or (x, fc_result)), decoder layers (x, attn, state)
        store[index] = output[0] if isinstance(output, tuple) else output

    return hook


def _hook_head_probs(attention: nn.Module, store: Dict[int, Tensor], index: int) -> List:
    asked = {}

    def before(module, args, kwargs):
        asked["weights"] = kwargs.get("need_weights", True)
        asked["head_weights"] = kwargs.get("need_head_weights", False)
        if kwargs.get("incremental_state") is not None:
            raise RuntimeError("layer states are recorded in full-sequence training only")
        # static_kv=True sends the call down fairseq's explicit attention path (the fused one
        # averages heads); without incremental state it changes nothing else.
        return args, {**kwargs, "need_head_weights": True, "static_kv": True}

    def after(module, args, kwargs, output):
        out, head_probs = output
        store[index] = head_probs
        if asked["head_weights"]:
            return out, head_probs
        return out, head_probs.mean(0) if asked["weights"] else None

    return [
        attention.register_forward_pre_hook(before, with_kwargs=True),
        attention.register_forward_hook(after, with_kwargs=True),
    ]


@contextmanager
def recording_layer_states(
    encoder_layers: nn.ModuleList, decoder_layers: nn.ModuleList, request: LayerStateRequest
) -> Iterator[LayerStates]:
    """Within the block, forwards through these layers fill the yielded LayerStates."""
    states = LayerStates()
    sides = (  # layers, indices, hidden-state store, (attention module name, layer attribute)
        (encoder_layers, request.encoder_layers, states.encoder_hidden, (("encoder_self", "self_attn"),)),
        (decoder_layers, request.decoder_layers, states.decoder_hidden,
         (("decoder_self", "self_attn"), ("decoder_cross", "encoder_attn"))),
    )
    handles = []
    try:
        for layers, indices, hidden, attention_modules in sides:
            for index in indices:
                layer = layers[index]
                if request.hidden_states:
                    handles.append(layer.register_forward_hook(_keep_layer_output(hidden, index)))
                for name, attribute in attention_modules:
                    module = getattr(layer, attribute, None)  # decoders without cross-attention: None
                    if name in request.attention_modules and module is not None:
                        handles += _hook_head_probs(module, states.attention[name], index)
        yield states
    finally:
        for handle in handles:
            handle.remove()
