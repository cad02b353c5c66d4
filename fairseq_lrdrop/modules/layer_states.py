"""Record every layer's output and per-head attention probabilities during ONE forward.

The mechanism is the same for every fairseq Transformer family: encoder-decoder (Transformer,
BART), encoder-only (RoBERTa) and decoder-only (transformer_lm). `layer_stacks` finds a
model's stacks of layers; hooks are attached to the stock layers for the duration of a
training forward and removed right after, so parameter names, checkpoints and the inference
path stay exactly stock.

Attention: fairseq's layers call MultiheadAttention with need_weights=False, and its fused
path (F.multi_head_attention_forward) cannot return per-head probabilities. While recording,
a pre-hook routes the call to fairseq's explicit path and stops it at the masked scores; a
forward hook finishes the attention (softmax, dropout, values, out_proj), keeps the float32
probabilities (H x B x T x S, before attention dropout) and hands the caller exactly what it
asked for.
"""
import functools
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

logger = logging.getLogger(__name__)

ATTENTION_MODULES = ("encoder_self", "decoder_self", "decoder_cross")
# attention module name -> (stack, attribute of the stack's layers)
ATTENTION_MODULE_PLACES = {
    "encoder_self": ("encoder", "self_attn"),
    "decoder_self": ("decoder", "self_attn"),
    "decoder_cross": ("decoder", "encoder_attn"),
}
# Where a layer's hidden state is taken: the layer's output (after the residual and, for
# post-norm layers, the layer norm), or its feed-forward block's output fc2(act(fc1(x))),
# before dropout, the residual and the layer norm.
HIDDEN_STATE_POINTS = ("layer_output", "ffn_output")


@dataclass(frozen=True)
class LayerStateRequest:
    """What a criterion asks the model to return from a training forward."""

    encoder_layers: Tuple[int, ...] = ()  # indices of the layers to record
    decoder_layers: Tuple[int, ...] = ()
    hidden_states: bool = True
    attention_modules: Tuple[str, ...] = ()  # a subset of ATTENTION_MODULES
    hidden_state_point: str = "layer_output"  # one of HIDDEN_STATE_POINTS


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


def _finish_attention(module: nn.Module, scores: Tensor, values: Tensor) -> Tuple[Tensor, Tensor]:
    """The rest of fairseq's explicit attention path from the masked scores on:
    softmax in float32, attention dropout, the weighted sum of the values, out_proj.

    scores: (B*H) x T x S with -inf at masked keys; values: (B*H) x S x D.
    Returns the module output (T x B x C) and the probabilities (H x B x T x S, float32, before
    dropout). A query whose keys are all masked (the leading pads of a left-padded target in
    decoder self-attention) gets probabilities 0, and so the output out_proj(0), as torch's
    fused path gives it, instead of softmax's NaN row, which would spread to every position of
    the next layer through the values.
    """
    if values.size(0) != scores.size(0):
        raise RuntimeError("layer states are recorded for full batches only (no shared encoder states)")
    all_masked = torch.isneginf(scores).all(dim=-1, keepdim=True)
    probs = torch.softmax(scores.masked_fill(all_masked, 0.0), dim=-1, dtype=torch.float32)
    probs = probs.masked_fill(all_masked, 0.0)
    attended = torch.bmm(module.dropout_module(probs.type_as(scores)), values)
    batch_heads, tgt_len, _ = attended.shape
    bsz = batch_heads // module.num_heads
    out = module.out_proj(attended.transpose(0, 1).reshape(tgt_len, bsz, module.embed_dim))
    return out, probs.view(bsz, module.num_heads, tgt_len, -1).transpose(0, 1)


def _hook_head_probs(attention: nn.Module, store: Dict[int, Tensor], index: int) -> List:
    asked = {}

    def before(module, args, kwargs):
        asked["weights"] = kwargs.get("need_weights", True)
        asked["head_weights"] = kwargs.get("need_head_weights", False)
        if kwargs.get("incremental_state") is not None:
            raise RuntimeError("layer states are recorded in full-sequence training only")
        # static_kv=True sends the call down fairseq's explicit attention path (the fused one
        # averages heads; without incremental state it changes nothing else), and
        # before_softmax=True stops it at the masked scores, which _finish_attention takes on.
        return args, {**kwargs, "static_kv": True, "before_softmax": True}

    def after(module, args, kwargs, output):
        out, head_probs = _finish_attention(module, *output)
        store[index] = head_probs
        if asked["head_weights"]:
            return out, head_probs
        return out, head_probs.mean(0) if asked["weights"] else None

    return [
        attention.register_forward_pre_hook(before, with_kwargs=True),
        attention.register_forward_hook(after, with_kwargs=True),
    ]


def _checkpointed_recording_forward(layer: nn.Module, register_inner: Callable[[bool], List]):
    """A forward for a layer that fairseq wrapped for --checkpoint-activations, used while
    states inside it (attention maps, FFN outputs) are recorded.

    fairseq's wrapper runs the layer's first forward under no_grad and recomputes it in
    backward, so states kept from that forward would carry no gradient. Instead the layer runs
    in torch's non-reentrant checkpoint: the forward runs with autograd on (the states are part
    of the graph), its saved activations are dropped and recomputed in backward from the same
    RNG state. The hooks are registered inside the checkpointed function (register_inner(keep)
    returns their handles), so the recomputation takes the same explicit attention path (the
    same dropout draws) as the forward; only the forward's states are kept.
    """
    runs = []

    def run(*args, **kwargs):
        handles = register_inner(not runs)  # the recomputation's states are dropped
        runs.append(True)
        try:
            return layer.precheckpoint_forward(*args, **kwargs)
        finally:
            for handle in handles:
                handle.remove()

    def forward(*args, **kwargs):
        return checkpoint(run, *args, use_reentrant=False, preserve_rng_state=True, **kwargs)

    fairseq_forward = layer.forward  # functools.partial(_checkpointed_forward, forward, offload)
    if isinstance(fairseq_forward, functools.partial) and fairseq_forward.args[1:2] == (True,):
        warn_once("--offload-activations: layers whose attention maps or FFN outputs LR-Drop records "
                   "are checkpointed without moving their inputs to the CPU (same gradient, less saving)")
    return forward


@functools.lru_cache(maxsize=None)
def warn_once(message: str) -> None:
    """Log a warning the first time this exact message comes (the criterion's notices too)."""
    logger.warning(message)


def _inner_hooks(layer: nn.Module, index: int, hidden: Optional[Dict[int, Tensor]],
                 attention: List[Tuple[nn.Module, Dict[int, Tensor]]]) -> Optional[Callable[[bool], List]]:
    """register(keep) for the hooks on a layer's submodules (None when there are none): the
    FFN output (hidden given) and the attention maps; with keep=False they record into
    throwaway stores."""
    if hidden is None and not attention:
        return None

    def register(keep: bool) -> List:
        handles = []
        if hidden is not None:
            handles.append(layer.fc2.register_forward_hook(_keep_layer_output(hidden if keep else {}, index)))
        for module, store in attention:
            handles += _hook_head_probs(module, store if keep else {}, index)
        return handles

    return register


def layer_stacks(model: nn.Module) -> Dict[str, nn.ModuleList]:
    """A fairseq model's Transformer layers by stack: {"encoder": ..., "decoder": ...} for
    encoder-decoder models, {"encoder": ...} for RoBERTa (its layers sit in
    encoder.sentence_encoder), {"decoder": ...} for language models."""
    stacks = {}
    for side in ("encoder", "decoder"):
        module = getattr(model, side, None)
        module = getattr(module, "sentence_encoder", module)
        layers = getattr(module, "layers", None)
        if isinstance(layers, nn.ModuleList):
            stacks[side] = layers
    return stacks


@contextmanager
def recording_layer_states(stacks: Dict[str, nn.ModuleList], request: LayerStateRequest) -> Iterator[LayerStates]:
    """Within the block, forwards through these layers fill the yielded LayerStates.

    stacks: as layer_stacks gives them; a stack the model lacks is simply not there.
    """
    states = LayerStates()
    sides = (("encoder", request.encoder_layers, states.encoder_hidden),
             ("decoder", request.decoder_layers, states.decoder_hidden))
    ffn_output = request.hidden_states and request.hidden_state_point == "ffn_output"
    handles, wrapped = [], []
    try:
        for side, indices, hidden in sides:
            for index in indices:
                layer = stacks[side][index]
                if request.hidden_states and not ffn_output:
                    handles.append(layer.register_forward_hook(_keep_layer_output(hidden, index)))
                attention = [
                    (getattr(layer, attribute), states.attention[name])
                    for name, (stack, attribute) in ATTENTION_MODULE_PLACES.items()
                    # decoders without cross-attention (language models) have encoder_attn None
                    if stack == side and name in request.attention_modules
                    and getattr(layer, attribute, None) is not None
                ]
                register = _inner_hooks(layer, index, hidden if ffn_output else None, attention)
                if register is None:
                    continue
                if hasattr(layer, "precheckpoint_forward"):  # --checkpoint-activations
                    wrapped.append((layer, layer.forward))
                    layer.forward = _checkpointed_recording_forward(layer, register)
                else:
                    handles += register(True)
        yield states
    finally:
        for handle in handles:
            handle.remove()
        for layer, forward in wrapped:
            layer.forward = forward
