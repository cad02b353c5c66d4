"""LR-Drop's layer terms, shared by every criterion of the plugin: their flags, what to record
from the model, the terms themselves and their logging.

    alpha * L_HSR + beta * L_MHAR

over the layers of whatever stacks the model has: encoder and decoder (Transformer, BART),
encoder only (RoBERTa), decoder only (transformer_lm). The output term differs per task
(token distributions, class distributions, regression values) and stays in each criterion.
"""
import math
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import torch
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.logging import metrics

from fairseq_lrdrop.errors import UsageError
from fairseq_lrdrop.losses import (
    ATTENTION_DISTANCES,
    attention_consistency,
    hidden_state_consistency,
    summed_row_distance,
)
from fairseq_lrdrop.modules.layer_states import (
    ATTENTION_MAP_MODES,
    ATTENTION_MODULE_PLACES,
    ATTENTION_MODULES,
    HIDDEN_STATE_POINTS,
    LayerStateRequest,
    layer_stacks,
)

REG_TERMS = ("hidden_reg", "attn_reg", "output_reg")


@dataclass
class LayerConsistencyConfig(FairseqDataclass):
    hidden_reg_weight: float = field(
        default=0.1,
        metadata={"help": "alpha: weight of the hidden-state consistency term L_HSR (0: off)"},
    )
    attn_reg_weight: float = field(
        default=0.1,
        metadata={"help": "beta: weight of the attention consistency term L_MHAR (0: off)"},
    )
    attn_reg_modules: str = field(
        default=",".join(ATTENTION_MODULES),
        metadata={"help": "comma-separated attention modules regularized by L_MHAR, from: "
                  + ", ".join(ATTENTION_MODULES) + " (those the model lacks are skipped)"},
    )
    reg_encoder_layers: str = field(
        default="all",
        metadata={"help": "encoder layers (0-based, comma-separated; 'all' or 'none') "
                  "whose hidden states and attention are regularized"},
    )
    reg_decoder_layers: str = field(
        default="all",
        metadata={"help": "decoder layers (0-based, comma-separated; 'all' or 'none') "
                  "whose hidden states and attention are regularized"},
    )
    hidden_state_point: ChoiceEnum(HIDDEN_STATE_POINTS) = field(
        default="layer_output",
        metadata={"help": "the hidden state L_HSR compares: each layer's output (after the "
                  "residual and layer norm), or its feed-forward block's output fc2(act(fc1(x))) "
                  "before dropout, residual and layer norm"},
    )
    attn_distance: ChoiceEnum(sorted(ATTENTION_DISTANCES)) = field(
        default="skl",
        metadata={"help": "distance between the two passes' attention rows in L_MHAR: symmetric "
                  "KL (skl) or squared error summed over keys (mse)"},
    )
    attn_reg_maps: ChoiceEnum(ATTENTION_MAP_MODES) = field(
        default="blockwise",
        metadata={"help": "how L_MHAR's gradient reaches the attention probabilities: blockwise (the "
                  "recorded modules compute attention and the term over blocks of query rows and "
                  "recompute the probabilities in backward from the saved queries and keys; no T x S "
                  "map is held), checkpoint (the recorded modules run fairseq's explicit path under "
                  "activation checkpointing) or keep (both passes' full maps are held for backward; "
                  "the path before this flag)"},
    )


def check_weight(flag: str, value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"{flag} must be a finite number >= 0 (got {value}); 0 turns the term off")
    return float(value)


def parse_layers(flag: str, spec: str) -> Optional[Tuple[int, ...]]:
    """'all' -> None (every layer), 'none' or '' -> (), '0,2,5' -> (0, 2, 5); a layer named
    twice counts once ('0,0' -> (0,))."""
    spec = spec.strip().lower()
    if spec == "all":
        return None
    if spec in ("", "none"):
        return ()
    try:
        layers = tuple(int(part) for part in spec.split(","))
    except ValueError:
        raise UsageError(f"{flag} takes 'all', 'none' or 0-based layer indices like 0,2,5 (got {spec!r})")
    if any(layer < 0 for layer in layers):
        raise UsageError(f"{flag} takes 0-based layer indices >= 0 (got {spec!r})")
    return tuple(sorted(set(layers)))


def unwrap(model):
    """The fairseq model inside DDP / proxy wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model


def refuse_fully_sharded(model, criterion: str) -> None:
    while model is not None:
        if type(model).__name__ == "FullyShardedDataParallel":
            raise UsageError(
                f"--ddp-backend fully_sharded is not supported by {criterion} with a consistency "
                "weight > 0 (fairscale's FSDP with the doubled forward and the layer hooks is "
                "untested); use --ddp-backend c10d (pytorch_ddp) or legacy_ddp"
            )
        model = getattr(model, "module", None)


def _has_quant_noise(linear) -> bool:
    # fairseq's quant_noise() registers this pre-hook, which rewrites the weight in place
    return any("quant_noise" in getattr(hook, "__qualname__", "") for hook in linear._forward_pre_hooks.values())


class LayerConsistency:
    """The hidden-state and attention terms for one criterion: parsed and checked flags, the
    LayerStateRequest for the model (built and checked on the first training forward), and
    the terms from the recorded LayerStates."""

    def __init__(self, criterion: str, hidden_reg_weight=0.1, attn_reg_weight=0.1,
                 attn_reg_modules=",".join(ATTENTION_MODULES), reg_encoder_layers="all",
                 reg_decoder_layers="all", hidden_state_point="layer_output", attn_distance="skl",
                 attn_reg_maps="blockwise"):
        self.criterion = criterion
        self.hidden_reg_weight = check_weight("--hidden-reg-weight", hidden_reg_weight)
        self.attn_reg_weight = check_weight("--attn-reg-weight", attn_reg_weight)
        modules = tuple(m.strip() for m in attn_reg_modules.split(",") if m.strip())
        unknown = [m for m in modules if m not in ATTENTION_MODULES]
        if unknown:
            raise UsageError(
                f"--attn-reg-modules: unknown module {unknown[0]!r}; choose from {','.join(ATTENTION_MODULES)}"
            )
        self.attn_reg_modules = modules
        self.encoder_layers = parse_layers("--reg-encoder-layers", reg_encoder_layers)
        self.decoder_layers = parse_layers("--reg-decoder-layers", reg_decoder_layers)
        point, distance = str(hidden_state_point), str(attn_distance)
        if point not in HIDDEN_STATE_POINTS:  # hydra / Python callers, not argparse
            raise UsageError(f"--hidden-state-point: choose from {'|'.join(HIDDEN_STATE_POINTS)} (got {point!r})")
        if distance not in ATTENTION_DISTANCES:
            raise UsageError(f"--attn-distance: choose from {'|'.join(sorted(ATTENTION_DISTANCES))} (got {distance!r})")
        self.hidden_state_point = point
        self.attn_distance = ATTENTION_DISTANCES[distance]
        self.attn_distance_name = distance
        if str(attn_reg_maps) not in ATTENTION_MAP_MODES:
            raise UsageError(f"--attn-reg-maps: choose from {'|'.join(ATTENTION_MAP_MODES)} (got {attn_reg_maps!r})")
        self.attn_reg_maps = str(attn_reg_maps)
        self._request = None

    @classmethod
    def from_config(cls, cfg, criterion: str) -> "LayerConsistency":
        """From any config that has LayerConsistencyConfig's fields."""
        names = LayerConsistencyConfig.__dataclass_fields__
        return cls(criterion, **{name: getattr(cfg, name) for name in names if not name.startswith("_")})

    @property
    def active(self) -> bool:
        return self.hidden_reg_weight > 0 or self.attn_reg_weight > 0

    @property
    def weights(self) -> Dict[str, float]:
        return {"hidden_reg": self.hidden_reg_weight, "attn_reg": self.attn_reg_weight}

    def request(self, model) -> Optional[LayerStateRequest]:
        """What to record in the forward; None when both layer terms are off (R-Drop), which
        then works with any model. Checks the model once, before the first update."""
        if not self.active:
            return None
        if self._request is None:
            self._request = self._build_request(unwrap(model))
        return self._request

    def _build_request(self, model) -> LayerStateRequest:
        if not getattr(model, "returns_layer_states", False):
            raise UsageError(
                f"--criterion {self.criterion} with --hidden-reg-weight or --attn-reg-weight > 0 "
                f"needs a model that returns layer states, and {type(model).__name__} does not: "
                "use --arch lr_drop_<stock arch name> (lr_drop_transformer, "
                "lr_drop_transformer_wmt_en_de, lr_drop_bart_large, lr_drop_roberta_base, "
                "lr_drop_transformer_lm, ...)"
            )
        stacks = layer_stacks(model)
        chosen = {}
        for side, flag, layers in (("encoder", "--reg-encoder-layers", self.encoder_layers),
                                   ("decoder", "--reg-decoder-layers", self.decoder_layers)):
            count = len(stacks.get(side, ()))
            if layers is None:
                layers = tuple(range(count))
            if layers and side not in stacks:
                raise UsageError(f"{flag}: {type(model).__name__} has no {side}; use {flag} none (or leave it at all)")
            too_big = [layer for layer in layers if layer >= count]
            if too_big:
                raise UsageError(
                    f"{flag}: layer {too_big[0]} is out of range, the model has {count} "
                    f"layers (valid: 0..{count - 1})"
                )
            chosen[side] = layers
        modules = self.attn_reg_modules if self.attn_reg_weight > 0 else ()
        if modules and not any(ATTENTION_MODULE_PLACES[m][0] in stacks for m in modules):
            raise UsageError(
                f"--attn-reg-modules {','.join(modules)}: {type(model).__name__} has none of these "
                f"attention modules; it has the {' and '.join(stacks)} stack(s)"
            )
        request = LayerStateRequest(
            encoder_layers=chosen["encoder"],
            decoder_layers=chosen["decoder"],
            hidden_states=self.hidden_reg_weight > 0,
            attention_modules=modules,
            hidden_state_point=self.hidden_state_point,
            attention_maps=self.attn_reg_maps,
            attention_distance=self.attn_distance_name,
        )
        self._check_attention_path(stacks, request)
        return request

    def _check_attention_path(self, stacks, request: LayerStateRequest) -> None:
        for name in request.attention_modules:
            side, attribute = ATTENTION_MODULE_PLACES[name]
            indices = request.encoder_layers if side == "encoder" else request.decoder_layers
            for index in indices:
                attention = getattr(stacks[side][index], attribute, None)
                if attention is not None and _has_quant_noise(attention.q_proj):
                    raise UsageError(
                        "--quant-noise-pq > 0 with --attn-reg-weight > 0: recording attention maps "
                        "runs fairseq's explicit attention path, which applies quant-noise to the "
                        "attention projections where stock fairseq's fused path does not, so the "
                        "model would train differently from stock; use --attn-reg-weight 0 (R-Drop "
                        "and the hidden-state term keep the stock path) or --quant-noise-pq 0"
                    )

    def terms(self, layer_states, net_input, padding_idx: int) -> Dict:
        """{"hidden_reg": L_HSR, "attn_reg": L_MHAR}, unweighted float32 sums over positions,
        for the terms that are on and have something recorded.

        net_input is the batch of ONE pass. The encoder reads src_tokens; the decoder reads
        prev_output_tokens, or src_tokens in a language model (which has no encoder)."""
        terms = {}
        if not self.active:
            return terms
        encoder_mask = net_input["src_tokens"].ne(padding_idx)  # B x S
        decoder_mask = net_input.get("prev_output_tokens", net_input["src_tokens"]).ne(padding_idx)  # B x T
        masks = {"encoder": encoder_mask, "decoder": decoder_mask}
        if self.hidden_reg_weight > 0:
            layers = [
                (state, masks[side])
                for side, states in (("encoder", layer_states.encoder_hidden), ("decoder", layer_states.decoder_hidden))
                for state in states.values()
            ]
            if layers:
                terms["hidden_reg"] = hidden_state_consistency(layers)
        if self.attn_reg_weight > 0:
            modules = [
                (probs, masks[ATTENTION_MODULE_PLACES[name][0]])  # the query positions' mask
                for name in self.attn_reg_modules
                for probs in layer_states.attention[name].values()
            ]
            rows = [  # the modes that hold no maps: per-row distances, H x B x T
                (distances, masks[ATTENTION_MODULE_PLACES[name][0]])
                for name in self.attn_reg_modules
                for distances in layer_states.attention_rows[name].values()
            ]
            if modules:  # --attn-reg-maps keep
                terms["attn_reg"] = attention_consistency(modules, self.attn_distance)
            elif rows:
                terms["attn_reg"] = attention_consistency(rows, summed_row_distance)
        return terms


def both_passes(net_input: Dict) -> Dict:
    """The model input of [x; x]: every tensor concatenated with itself along the batch. A new
    dict, so the caller's sample is never modified."""
    return {k: torch.cat([v, v]) if torch.is_tensor(v) else v for k, v in net_input.items()}


def add_weighted(loss, terms: Dict, weights: Dict[str, float]):
    """loss + sum over the terms of weight * term."""
    for name, value in terms.items():
        loss = loss + weights[name] * value
    return loss


def log_consistency_terms(logging_outputs) -> None:
    """Log each regularization term that any worker reported, per sample_size unit, in bits
    (the scale of fairseq's loss)."""
    sample_size = sum(log.get("sample_size", 0) for log in logging_outputs)
    for name in REG_TERMS:
        if any(name in log for log in logging_outputs):
            total = sum(log.get(name, 0) for log in logging_outputs)
            metrics.log_scalar(name, total / sample_size / math.log(2), sample_size, round=4)
