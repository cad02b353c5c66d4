"""`lr_drop_label_smoothed_cross_entropy`: label-smoothed CE + LR-Drop's consistency terms.

    L = L_CE(pass 1) + L_CE(pass 2) + alpha * L_HSR + beta * L_MHAR + gamma * L_OR

Training runs ONE forward over the concatenated batch [x; x] (two dropout masks). Validation
and inference run the stock single pass. With alpha = beta = 0 this is R-Drop (and equals
fairseq's label_smoothed_cross_entropy_with_rdrop at rdrop_alpha = gamma); with all three
weights 0 it is stock label_smoothed_cross_entropy, trained through the fused output head
where it serves the model (adaptive softmax, which stock cannot train with this loss either,
is refused with one line).
"""
import math
from dataclasses import dataclass, field
from typing import Optional, Tuple

import torch
from fairseq import utils
from fairseq.criterions import register_criterion
from fairseq.dataclass import ChoiceEnum
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    LabelSmoothedCrossEntropyCriterionConfig,
    label_smoothed_nll_loss,
)
from fairseq.logging import metrics

from fairseq_lrdrop.errors import UsageError
from fairseq_lrdrop.losses import (
    ATTENTION_DISTANCES,
    attention_consistency,
    hidden_state_consistency,
    output_consistency,
    split_passes,
)
from fairseq_lrdrop.modules.layer_states import ATTENTION_MODULES, HIDDEN_STATE_POINTS, LayerStateRequest, warn_once
from fairseq_lrdrop.output_head import fused_output_losses

REG_TERMS = ("hidden_reg", "attn_reg", "output_reg")


@dataclass
class LRDropLabelSmoothedCrossEntropyConfig(LabelSmoothedCrossEntropyCriterionConfig):
    hidden_reg_weight: float = field(
        default=0.1,
        metadata={"help": "alpha: weight of the hidden-state consistency term L_HSR (0: off)"},
    )
    attn_reg_weight: float = field(
        default=0.1,
        metadata={"help": "beta: weight of the attention consistency term L_MHAR (0: off)"},
    )
    output_reg_weight: float = field(
        default=5.0,
        metadata={"help": "gamma: weight of the output consistency term L_OR, R-Drop's KL (0: off)"},
    )
    attn_reg_modules: str = field(
        default=",".join(ATTENTION_MODULES),
        metadata={"help": "comma-separated attention modules regularized by L_MHAR, "
                  "from: " + ", ".join(ATTENTION_MODULES)},
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
    no_fused_output_head: bool = field(
        default=False,
        metadata={"help": "compute the output projection, log-softmax and losses of the training "
                  "forward unfused, holding the logits in full (2N x V for [x; x], N x V in plain "
                  "training; by default the fused head computes them in blocks of rows, wherever "
                  "it gives the unfused result)"},
    )
    attn_distance: ChoiceEnum(sorted(ATTENTION_DISTANCES)) = field(
        default="skl",
        metadata={"help": "distance between the two passes' attention rows in L_MHAR: symmetric "
                  "KL (skl) or squared error summed over keys (mse)"},
    )


def _check_weight(flag: str, value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"{flag} must be a finite number >= 0 (got {value}); 0 turns the term off")
    return float(value)


def _parse_layers(flag: str, spec: str) -> Optional[Tuple[int, ...]]:
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


def _unwrap(model):
    """The fairseq model inside DDP / proxy wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model


def _check_training_setup(model, two_passes: bool):
    """Refuse, before the first update, what the criterion cannot train exactly."""
    if getattr(getattr(_unwrap(model), "decoder", None), "adaptive_softmax", None) is not None:
        raise UsageError(
            "--adaptive-softmax-cutoff: fairseq's adaptive softmax trains only with --criterion "
            "adaptive_loss (its full log-probabilities are computed in place, without gradients), "
            "and label-smoothed cross-entropy and the output term need the full distribution; "
            "leave out --adaptive-softmax-cutoff"
        )
    while two_passes and model is not None:
        if type(model).__name__ == "FullyShardedDataParallel":
            raise UsageError(
                "--ddp-backend fully_sharded is not supported by lr_drop_label_smoothed_cross_entropy "
                "with a consistency weight > 0 (fairscale's FSDP with the doubled forward and the "
                "layer hooks is untested); use --ddp-backend c10d (pytorch_ddp) or legacy_ddp"
            )
        model = getattr(model, "module", None)


def fused_head_unsupported(model) -> Optional[str]:
    """Why the fused head cannot stand in for this model's output layer and log-softmax
    (None: it can): it serves fairseq's Transformer decoder whose output layer is one linear
    projection without bias, followed by the stock log-softmax."""
    from fairseq.models import BaseFairseqModel, FairseqDecoder
    from fairseq.models.transformer import TransformerDecoderBase, TransformerModelBase

    decoder = getattr(model, "decoder", None)
    if not isinstance(decoder, TransformerDecoderBase):
        return f"the decoder {type(decoder).__name__} is not fairseq's TransformerDecoder"
    if decoder.adaptive_softmax is not None:
        return "adaptive softmax"
    projection = getattr(decoder, "output_projection", None)
    if not isinstance(projection, torch.nn.Linear) or projection.bias is not None:
        return "the output layer is not one linear projection without bias"
    if projection._forward_pre_hooks or projection._forward_hooks:  # e.g. quant-noise, which rewrites the weight
        return "the output projection has forward hooks"
    # the stock implementations: the output projection, then log-softmax in float32
    stock = (
        (type(decoder), "output_layer", (TransformerDecoderBase,)),
        (type(decoder), "get_normalized_probs", (FairseqDecoder,)),
        (type(decoder), "get_normalized_probs_scriptable", (FairseqDecoder,)),
        (type(model), "get_normalized_probs", (BaseFairseqModel, TransformerModelBase)),  # the latter: a jit export
        (type(model), "get_normalized_probs_scriptable", (BaseFairseqModel,)),
    )
    overridden = [name for cls, name, bases in stock
                  if all(getattr(cls, name) is not getattr(base, name) for base in bases)]
    if overridden:
        return f"{type(model).__name__} overrides {overridden[0]}"
    return None


def _has_quant_noise(linear) -> bool:
    # fairseq's quant_noise() registers this pre-hook, which rewrites the weight in place
    return any("quant_noise" in getattr(hook, "__qualname__", "") for hook in linear._forward_pre_hooks.values())


@register_criterion(
    "lr_drop_label_smoothed_cross_entropy", dataclass=LRDropLabelSmoothedCrossEntropyConfig
)
class LRDropLabelSmoothedCrossEntropyCriterion(LabelSmoothedCrossEntropyCriterion):
    def __init__(
        self,
        task,
        sentence_avg,
        label_smoothing,
        ignore_prefix_size=0,
        report_accuracy=False,
        hidden_reg_weight=0.1,
        attn_reg_weight=0.1,
        output_reg_weight=5.0,
        attn_reg_modules=",".join(ATTENTION_MODULES),
        reg_encoder_layers="all",
        reg_decoder_layers="all",
        hidden_state_point="layer_output",
        attn_distance="skl",
        no_fused_output_head=False,
    ):
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy)
        self.hidden_reg_weight = _check_weight("--hidden-reg-weight", hidden_reg_weight)
        self.attn_reg_weight = _check_weight("--attn-reg-weight", attn_reg_weight)
        self.output_reg_weight = _check_weight("--output-reg-weight", output_reg_weight)
        modules = tuple(m.strip() for m in attn_reg_modules.split(",") if m.strip())
        unknown = [m for m in modules if m not in ATTENTION_MODULES]
        if unknown:
            raise UsageError(
                f"--attn-reg-modules: unknown module {unknown[0]!r}; "
                f"choose from {','.join(ATTENTION_MODULES)}"
            )
        self.attn_reg_modules = modules
        self.encoder_layers = _parse_layers("--reg-encoder-layers", reg_encoder_layers)
        self.decoder_layers = _parse_layers("--reg-decoder-layers", reg_decoder_layers)
        if str(hidden_state_point) not in HIDDEN_STATE_POINTS:  # hydra / Python callers, not argparse
            raise UsageError(f"--hidden-state-point: choose from {'|'.join(HIDDEN_STATE_POINTS)} (got {hidden_state_point!r})")
        if str(attn_distance) not in ATTENTION_DISTANCES:
            raise UsageError(f"--attn-distance: choose from {'|'.join(sorted(ATTENTION_DISTANCES))} (got {attn_distance!r})")
        self.hidden_state_point = str(hidden_state_point)
        self.attn_distance = ATTENTION_DISTANCES[str(attn_distance)]
        self.fused_output_head = not no_fused_output_head
        self._request = None  # built and checked against the model on the first forward
        self._setup_checked = False

    @property
    def two_passes(self) -> bool:
        return self.hidden_reg_weight > 0 or self.attn_reg_weight > 0 or self.output_reg_weight > 0

    def layer_state_request(self, model) -> Optional[LayerStateRequest]:
        """What to record in the forward; None when only the output term is on (R-Drop),
        which then works with any model. Checks the model once, before the first update."""
        if self.hidden_reg_weight == 0 and self.attn_reg_weight == 0:
            return None
        if self._request is None:
            self._request = self._build_request(_unwrap(model))
        return self._request

    def _check_attention_path(self, model, request: LayerStateRequest) -> None:
        attributes = {"encoder_self": ("encoder", "self_attn"), "decoder_self": ("decoder", "self_attn"),
                      "decoder_cross": ("decoder", "encoder_attn")}
        for name in request.attention_modules:
            side, attribute = attributes[name]
            indices = request.encoder_layers if side == "encoder" else request.decoder_layers
            for index in indices:
                attention = getattr(getattr(model, side).layers[index], attribute, None)
                if attention is not None and _has_quant_noise(attention.q_proj):
                    raise UsageError(
                        "--quant-noise-pq > 0 with --attn-reg-weight > 0: recording attention maps "
                        "runs fairseq's explicit attention path, which applies quant-noise to the "
                        "attention projections where stock fairseq's fused path does not, so the "
                        "model would train differently from stock; use --attn-reg-weight 0 (R-Drop "
                        "and the hidden-state term keep the stock path) or --quant-noise-pq 0"
                    )

    def _build_request(self, model) -> LayerStateRequest:
        if not getattr(model, "returns_layer_states", False):
            name = type(model).__name__
            raise UsageError(
                f"--criterion lr_drop_label_smoothed_cross_entropy with --hidden-reg-weight or "
                f"--attn-reg-weight > 0 needs a model that returns layer states, and {name} does "
                f"not: use --arch lr_drop_transformer (or lr_drop_transformer_wmt_en_de, "
                f"lr_drop_bart_large, ... : lr_drop_ + the stock arch name)"
            )
        chosen = []
        for flag, layers, count in (
            ("--reg-encoder-layers", self.encoder_layers, len(model.encoder.layers)),
            ("--reg-decoder-layers", self.decoder_layers, len(model.decoder.layers)),
        ):
            if layers is None:
                layers = tuple(range(count))
            too_big = [layer for layer in layers if layer >= count]
            if too_big:
                raise UsageError(
                    f"{flag}: layer {too_big[0]} is out of range, the model has {count} "
                    f"layers (valid: 0..{count - 1})"
                )
            chosen.append(layers)
        request = LayerStateRequest(
            encoder_layers=chosen[0],
            decoder_layers=chosen[1],
            hidden_states=self.hidden_reg_weight > 0,
            attention_modules=self.attn_reg_modules if self.attn_reg_weight > 0 else (),
            hidden_state_point=self.hidden_state_point,
        )
        self._check_attention_path(model, request)
        return request

    def forward(self, model, sample, reduce=True):
        """Compute the loss for the given sample.

        Returns (loss, sample_size, logging_output); sample_size counts the target tokens
        (or sentences) of the ORIGINAL batch, as the stock criterion does.
        """
        if model.training and not self._setup_checked:
            _check_training_setup(model, self.two_passes)
            self._setup_checked = True
        if not model.training:
            return super().forward(model, sample, reduce=reduce)
        if not self.two_passes:
            return self.one_pass_forward(model, sample, reduce)
        if not reduce:
            # the hidden-state and attention terms are sums over layers and source positions:
            # they have no per-target-token share to spread over fairseq's unreduced rows
            raise UsageError(
                "lr_drop_label_smoothed_cross_entropy: reduce=False (per-token losses) is not "
                "available in training with a consistency weight > 0; call it with reduce=True, "
                "or set the three weights to 0 for stock per-token losses"
            )
        loss, ce_loss, nll_loss, terms, n_correct, total = self.two_pass_losses(model, sample)

        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        logging_output = {
            # The optimised CE covers both passes; log it per pass, on the stock scale.
            "loss": ce_loss.data / 2,
            "nll_loss": nll_loss.data / 2,
            "ntokens": sample["ntokens"],
            "nsentences": sample["target"].size(0),
            "sample_size": sample_size,
        }
        for name, value in terms.items():
            logging_output[name] = value.data
        if self.report_accuracy:
            # over both passes: the ratio n_correct / total is what gets logged
            logging_output["n_correct"] = utils.item(n_correct)
            logging_output["total"] = utils.item(total)
        return loss, sample_size, logging_output

    def one_pass_forward(self, model, sample, reduce=True):
        """Plain training (every weight 0): stock label_smoothed_cross_entropy, with the output
        projection, log-softmax and loss computed by the fused head (no N x V tensor held)
        where it serves the model and the loss is reduced; the stock code otherwise."""
        head_weight = self._fused_head_weight(model) if reduce else None
        if head_weight is None:
            return super().forward(model, sample, reduce=reduce)
        features = model(**sample["net_input"], features_only=True)[0]  # B x T x C
        head, target = self._fused_head(features, head_weight, sample["target"], output_weight=0.0)
        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        logging_output = {
            "loss": head.ce.data,
            "nll_loss": head.nll.data,
            "ntokens": sample["ntokens"],
            "nsentences": sample["target"].size(0),
            "sample_size": sample_size,
        }
        if self.report_accuracy:
            logging_output["n_correct"] = utils.item(head.n_correct)
            logging_output["total"] = utils.item(target.ne(self.padding_idx).sum())
        return head.loss, sample_size, logging_output

    def two_pass_losses(self, model, sample):
        """One training forward over [x; x] -> (the loss to optimise, the label-smoothed CE and
        NLL summed over both passes, {term name: unweighted term}, argmax hits and real target
        rows of both passes). Unfused, every term keeps its own graph (bench/term_gradients.py
        takes each term's gradient from them); fused, only the loss has gradients."""
        request = self.layer_state_request(model)
        head_weight = self._fused_head_weight(model)
        # [x; x] in one forward: two dropout masks, one kernel launch per op. New dicts,
        # so the caller's sample is never modified.
        net_input = {
            k: torch.cat([v, v]) if torch.is_tensor(v) else v for k, v in sample["net_input"].items()
        }
        extra_args = {"layer_states": request} if request is not None else {}
        if head_weight is not None:
            extra_args["features_only"] = True
        net_output = model(**net_input, **extra_args)
        layer_states = net_output[1].get("layer_states")
        weights = dict(zip(REG_TERMS, (self.hidden_reg_weight, self.attn_reg_weight, self.output_reg_weight)))

        if head_weight is None:
            doubled = {**sample, "target": torch.cat([sample["target"], sample["target"]])}
            lprobs, target = self.get_lprobs_and_target(model, net_output, doubled)  # 2N x V, 2N
            ce_loss, nll_loss = label_smoothed_nll_loss(lprobs, target, self.eps, ignore_index=self.padding_idx)
            terms = self.consistency_terms(lprobs, target, layer_states, sample["net_input"], sample["target"])
            real = target.ne(self.padding_idx)
            n_correct = lprobs.argmax(1).eq(target).masked_select(real).sum() if self.report_accuracy else None
        else:
            head, target = self._fused_head(net_output[0], head_weight, sample["target"], self.output_reg_weight)
            ce_loss, nll_loss, n_correct = head.ce, head.nll, head.n_correct
            terms = self.consistency_terms(None, None, layer_states, sample["net_input"], sample["target"])
            real = target.ne(self.padding_idx).repeat(2, 1)
        loss = ce_loss if head_weight is None else head.loss
        for name, value in terms.items():
            loss = loss + weights[name] * value
        if head_weight is not None and self.output_reg_weight > 0:
            terms["output_reg"] = head.skl  # for the log; its gradient is in head.loss
        return loss, ce_loss, nll_loss, terms, n_correct, real.sum()

    def _fused_head(self, features, head_weight, target, output_weight):
        """The fused head on the decoder's features (P*B x T x C for P passes) and the target of
        one pass (B x T), after --ignore-prefix-size -> (HeadLosses, the target it scored)."""
        if self.ignore_prefix_size > 0:
            features = features[:, self.ignore_prefix_size:, :]
            target = target[:, self.ignore_prefix_size:]
        head = fused_output_losses(features.reshape(-1, features.size(-1)), head_weight, target.reshape(-1),
                                   self.padding_idx, self.eps, output_weight, self.report_accuracy)
        return head, target

    def _fused_head_weight(self, model):
        """The output projection's weight when the fused head computes exactly what the
        model's output layer and log-softmax give; None (the unfused path) otherwise, with the
        reason logged once."""
        if not self.fused_output_head:
            return None
        reason = fused_head_unsupported(_unwrap(model))
        if reason is not None:
            warn_once(f"fused output head off ({reason}): the logits are computed in full")
            return None
        return _unwrap(model).decoder.output_projection.weight

    def consistency_terms(self, lprobs, target, layer_states, net_input, sample_target):
        """The weighted-in regularization terms (float32 sums over positions)."""
        terms = {}
        if self.hidden_reg_weight > 0 or self.attn_reg_weight > 0:
            source_mask = net_input["src_tokens"].ne(self.padding_idx)  # B x S
            decoder_input = net_input.get("prev_output_tokens", sample_target)
            target_mask = decoder_input.ne(self.padding_idx)  # B x T
        if self.hidden_reg_weight > 0:
            layers = [
                (state, mask)
                for states, mask in (
                    (layer_states.encoder_hidden, source_mask),
                    (layer_states.decoder_hidden, target_mask),
                )
                for state in states.values()
            ]
            if layers:
                terms["hidden_reg"] = hidden_state_consistency(layers)
        if self.attn_reg_weight > 0:
            query_masks = {"encoder_self": source_mask, "decoder_self": target_mask,
                           "decoder_cross": target_mask}
            modules = [
                (probs, query_masks[name])
                for name in self.attn_reg_modules
                for probs in layer_states.attention[name].values()
            ]
            if modules:
                terms["attn_reg"] = attention_consistency(modules, self.attn_distance)
        if self.output_reg_weight > 0 and lprobs is not None:  # None: the fused head computes it
            # target is [t; t]: the mask of pass 1 is that of pass 2
            token_mask = split_passes(target, 0)[0].ne(self.padding_idx)
            terms["output_reg"] = output_consistency(lprobs, token_mask)
        return terms

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        """Aggregate logging outputs from data parallel training."""
        super().reduce_metrics(logging_outputs)
        sample_size = sum(log.get("sample_size", 0) for log in logging_outputs)
        for name in REG_TERMS:
            if any(name in log for log in logging_outputs):
                total = sum(log.get(name, 0) for log in logging_outputs)
                metrics.log_scalar(name, total / sample_size / math.log(2), sample_size, round=4)
