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
asked for. That keeps both passes' full maps for backward (LayerStateRequest.attention_maps
"keep"). The other modes hold none: "blockwise" replaces a recorded module's forward with the
projections and losses.attention_with_row_distances (attention and the per-row distance
between the two passes, over blocks of query rows, recomputed in backward from q and k);
"checkpoint" runs the explicit path above inside torch's checkpoint. Both record H x B x T
row distances (LayerStates.attention_rows) instead of maps.
"""
import functools
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from fairseq_lrdrop.losses import attention_row_distances, attention_with_row_distances

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
# How the attention term gets the gradient through the attention probabilities (--attn-reg-maps):
#   blockwise   the recorded modules compute attention and the per-row distance between the two
#               passes in blocks of query rows; backward recomputes the probabilities from the
#               saved q, k (and the same dropout mask): no T x S map is held for backward
#   checkpoint  the recorded modules run today's explicit path inside torch's checkpoint: the
#               whole module (projections included) is recomputed in backward
#   keep        the recorded modules keep both passes' full H x 2B x T x S maps for backward and
#               the criterion computes the distance from them (the path before --attn-reg-maps)
ATTENTION_MAP_MODES = ("blockwise", "checkpoint", "keep")


@dataclass(frozen=True)
class LayerStateRequest:
    """What a criterion asks the model to return from a training forward."""

    encoder_layers: Tuple[int, ...] = ()  # indices of the layers to record
    decoder_layers: Tuple[int, ...] = ()
    hidden_states: bool = True
    attention_modules: Tuple[str, ...] = ()  # a subset of ATTENTION_MODULES
    hidden_state_point: str = "layer_output"  # one of HIDDEN_STATE_POINTS
    attention_maps: str = "keep"  # one of ATTENTION_MAP_MODES
    attention_distance: str = "skl"  # the row distance computed inside the modules (not "keep")


@dataclass
class LayerStates:
    """Filled during the forward: layer index -> tensor.

    A layer skipped by LayerDrop is simply absent (both passes of [x; x] skip it together).
    """

    encoder_hidden: Dict[int, Tensor] = field(default_factory=dict)  # T x B x C
    decoder_hidden: Dict[int, Tensor] = field(default_factory=dict)  # T x B x C
    attention: Dict[str, Dict[int, Tensor]] = field(
        default_factory=lambda: {name: {} for name in ATTENTION_MODULES}
    )  # module name -> layer -> H x B x T x S ("keep": the maps, both passes on the batch axis)
    attention_rows: Dict[str, Dict[int, Tensor]] = field(
        default_factory=lambda: {name: {} for name in ATTENTION_MODULES}
    )  # module name -> layer -> H x B x T distances between the passes' rows (other modes)


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


class _RestoreForward:
    """A handle (like a hook's) that puts back a module's own forward."""

    def __init__(self, module: nn.Module):
        self.module, self.previous = module, vars(module).get("forward")

    def remove(self):
        if self.previous is None:
            vars(self.module).pop("forward", None)
        else:
            self.module.forward = self.previous


def _blockwise_supported(module: nn.Module, query: Tensor, key: Optional[Tensor], need_head_weights: bool) -> bool:
    """The plain multi-head attention that _projected_heads reimplements: no bias_k/v, no zero
    attention, keys of the same batch, and no per-head weights asked for."""
    return (module.bias_k is None and not module.add_zero_attn and not need_head_weights
            and (key is None or key.size(1) == query.size(1)) and query.size(1) % 2 == 0
            and not getattr(module, "use_xformers", False))


def _projected_heads(module: nn.Module, query: Tensor, key: Optional[Tensor], value: Optional[Tensor]):
    """q (scaled), k, v as fairseq's explicit path makes them: (B*H) x T x D, item-major."""
    if module.self_attention:
        key = value = query
    elif module.encoder_decoder_attention:
        value = key
    q = module.q_proj(query) * module.scaling
    k, v = module.k_proj(key), module.v_proj(value)
    bsz_heads = query.size(1) * module.num_heads
    return tuple(x.contiguous().view(-1, bsz_heads, module.head_dim).transpose(0, 1) for x in (q, k, v))


def _replace_attention_forward(module: nn.Module, store: Dict[int, Tensor], index: int, mode: str,
                               distance: str) -> List:
    """Record an attention module's per-row distances between the two passes (H x B x T) into
    store[index] while it computes its output, holding no T x S map for backward (mode
    "blockwise" or "checkpoint", see ATTENTION_MAP_MODES). Returns the handle that restores
    the module's forward. Calls blockwise cannot take (bias_k, zero attention, per-head
    weights) run as in "checkpoint"."""
    stock_forward = type(module).forward

    def checkpointed(query, key, value, key_padding_mask, attn_mask, need_weights, need_head_weights):
        def run(query, key, value, key_padding_mask, attn_mask):
            scores, values = stock_forward(module, query, key, value, key_padding_mask=key_padding_mask,
                                           need_weights=False, static_kv=True, attn_mask=attn_mask,
                                           before_softmax=True)
            out, head_probs = _finish_attention(module, scores, values)
            weights = head_probs if need_head_weights else head_probs.mean(0) if need_weights else None
            return out, attention_row_distances(head_probs, distance), weights

        return checkpoint(run, query, key, value, key_padding_mask, attn_mask,
                          use_reentrant=False, preserve_rng_state=True)

    def blockwise(query, key, value, key_padding_mask, attn_mask, need_weights):
        tgt_len, bsz, embed_dim = query.shape
        q, k, v = _projected_heads(module, query, key, value)
        padding = None
        if key_padding_mask is not None and key_padding_mask.dim() > 0:  # fairseq: dim 0 means none
            padding = key_padding_mask.to(torch.bool).repeat_interleave(module.num_heads, 0).unsqueeze(1)
        dropout = module.dropout_module
        dropout_p = dropout.p if dropout.training or dropout.apply_during_inference else 0.0
        attended, rows, mean = attention_with_row_distances(q, k, v, attn_mask, padding, dropout_p,
                                                            module.num_heads, distance, head_mean=need_weights)
        out = module.out_proj(attended.transpose(0, 1).reshape(tgt_len, bsz, embed_dim))
        return out, rows, mean

    def forward(query, key=None, value=None, key_padding_mask=None, incremental_state=None, need_weights=True,
                static_kv=False, attn_mask=None, before_softmax=False, need_head_weights=False):
        if incremental_state is not None or before_softmax:
            raise RuntimeError("layer states are recorded in full-sequence training only")
        need_weights = need_weights or need_head_weights
        if mode == "blockwise" and _blockwise_supported(module, query, key, need_head_weights):
            out, rows, weights = blockwise(query, key, value, key_padding_mask, attn_mask, need_weights)
        else:
            out, rows, weights = checkpointed(query, key, value, key_padding_mask, attn_mask, need_weights,
                                              need_head_weights)
        store[index] = rows
        return out, weights

    handle = _RestoreForward(module)
    module.forward = forward
    return [handle]


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
                 attention: List[Tuple[nn.Module, Dict[int, Tensor]]],
                 request: LayerStateRequest) -> Optional[Callable[[bool], List]]:
    """register(keep) for the hooks on a layer's submodules (None when there are none): the
    FFN output (hidden given) and the attention maps (or, in the modes that hold no maps, the
    attention modules' row distances); with keep=False they record into throwaway stores."""
    if hidden is None and not attention:
        return None

    def register(keep: bool) -> List:
        handles = []
        if hidden is not None:
            handles.append(layer.fc2.register_forward_hook(_keep_layer_output(hidden if keep else {}, index)))
        for module, store in attention:
            if request.attention_maps == "keep":
                handles += _hook_head_probs(module, store if keep else {}, index)
            else:
                handles += _replace_attention_forward(module, store if keep else {}, index,
                                                      request.attention_maps, request.attention_distance)
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
                stores = states.attention if request.attention_maps == "keep" else states.attention_rows
                attention = [
                    (getattr(layer, attribute), stores[name])
                    for name, (stack, attribute) in ATTENTION_MODULE_PLACES.items()
                    # decoders without cross-attention (language models) have encoder_attn None
                    if stack == side and name in request.attention_modules
                    and getattr(layer, attribute, None) is not None
                ]
                register = _inner_hooks(layer, index, hidden if ffn_output else None, attention, request)
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
