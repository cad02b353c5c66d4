"""`lr_drop_label_smoothed_cross_entropy`: label-smoothed CE + LR-Drop's consistency terms.

    L = L_CE(pass 1) + L_CE(pass 2) + alpha * L_HSR + beta * L_MHAR + gamma * L_OR

Training runs ONE forward over the concatenated batch [x; x] (two dropout masks). Validation
and inference run the stock single pass. With alpha = beta = 0 this is R-Drop (and equals
fairseq's label_smoothed_cross_entropy_with_rdrop at rdrop_alpha = gamma); with all three
weights 0 it is stock label_smoothed_cross_entropy, trained through the fused output head
where it serves the model (adaptive softmax, which stock cannot train with this loss either,
is refused with one line).
"""
from dataclasses import dataclass, field
from typing import Optional

import torch
from fairseq import utils
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    LabelSmoothedCrossEntropyCriterionConfig,
    label_smoothed_nll_loss,
)

from fairseq_lrdrop.errors import UsageError
from fairseq_lrdrop.losses import output_consistency, split_passes
from fairseq_lrdrop.modules.layer_states import ATTENTION_MODULES, LayerStateRequest, warn_once
from fairseq_lrdrop.output_head import OutputHeadRequest

from .layer_consistency import (
    LayerConsistency,
    LayerConsistencyConfig,
    add_weighted,
    both_passes,
    check_weight,
    log_consistency_terms,
    refuse_fully_sharded,
    unwrap,
)

NAME = "lr_drop_label_smoothed_cross_entropy"


@dataclass
class LRDropLabelSmoothedCrossEntropyConfig(LabelSmoothedCrossEntropyCriterionConfig, LayerConsistencyConfig):
    output_reg_weight: float = field(
        default=5.0,
        metadata={"help": "gamma: weight of the output consistency term L_OR, R-Drop's KL (0: off)"},
    )
    no_fused_output_head: bool = field(
        default=False,
        metadata={"help": "compute the output projection, log-softmax and losses of the training "
                  "forward unfused, holding the logits in full (2N x V for [x; x], N x V in plain "
                  "training; by default the fused head computes them in blocks of rows, wherever "
                  "it gives the unfused result)"},
    )


def _check_training_setup(model, two_passes: bool):
    """Refuse, before the first update, what the criterion cannot train exactly."""
    if getattr(getattr(unwrap(model), "decoder", None), "adaptive_softmax", None) is not None:
        raise UsageError(
            "--adaptive-softmax-cutoff: fairseq's adaptive softmax trains only with --criterion "
            "adaptive_loss (its full log-probabilities are computed in place, without gradients), "
            "and label-smoothed cross-entropy and the output term need the full distribution; "
            "leave out --adaptive-softmax-cutoff"
        )
    if two_passes:
        refuse_fully_sharded(model, NAME)


def _inside_pytorch_ddp(model) -> bool:
    """Whether torch's DistributedDataParallel wraps the model (--ddp-backend c10d /
    pytorch_ddp), which reduces gradients only of the parameters its forward used."""
    while model is not None:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            return True
        model = getattr(model, "module", None)
    return False


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


@register_criterion(NAME, dataclass=LRDropLabelSmoothedCrossEntropyConfig)
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
        attn_reg_maps="blockwise",
    ):
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy)
        self.layers = LayerConsistency(
            NAME, hidden_reg_weight, attn_reg_weight, attn_reg_modules, reg_encoder_layers,
            reg_decoder_layers, hidden_state_point, attn_distance, attn_reg_maps,
        )
        self.output_reg_weight = check_weight("--output-reg-weight", output_reg_weight)
        self.fused_output_head = not no_fused_output_head
        self._setup_checked = False

    @property
    def two_passes(self) -> bool:
        return self.layers.active or self.output_reg_weight > 0

    def layer_state_request(self, model) -> Optional[LayerStateRequest]:
        """What to record in the forward (None with alpha = beta = 0: R-Drop, any model)."""
        return self.layers.request(model)

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
        request = self._fused_head_request(model, sample["target"], output_weight=0.0) if reduce else None
        if request is None:
            return super().forward(model, sample, reduce=reduce)
        _, head = self._forward_with_head(model, sample["net_input"], {}, request)
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
            logging_output["total"] = utils.item(request.scored_target().ne(self.padding_idx).sum())
        return head.loss, sample_size, logging_output

    def two_pass_losses(self, model, sample):
        """One training forward over [x; x] -> (the loss to optimise, the label-smoothed CE and
        NLL summed over both passes, {term name: unweighted term}, argmax hits and real target
        rows of both passes). Unfused, every term keeps its own graph (bench/term_gradients.py
        takes each term's gradient from them); fused, only the loss has gradients."""
        layer_request = self.layers.request(model)
        head_request = self._fused_head_request(model, sample["target"], self.output_reg_weight)
        # [x; x] in one forward: two dropout masks, one kernel launch per op
        net_input = both_passes(sample["net_input"])
        extra_args = {"layer_states": layer_request} if layer_request is not None else {}
        weights = {**self.layers.weights, "output_reg": self.output_reg_weight}

        if head_request is None:
            net_output = model(**net_input, **extra_args)
            layer_states = net_output[1].get("layer_states")
            doubled = {**sample, "target": torch.cat([sample["target"], sample["target"]])}
            lprobs, target = self.get_lprobs_and_target(model, net_output, doubled)  # 2N x V, 2N
            ce_loss, nll_loss = label_smoothed_nll_loss(lprobs, target, self.eps, ignore_index=self.padding_idx)
            terms = self.consistency_terms(lprobs, target, layer_states, sample["net_input"])
            real = target.ne(self.padding_idx)
            n_correct = lprobs.argmax(1).eq(target).masked_select(real).sum() if self.report_accuracy else None
            return add_weighted(ce_loss, terms, weights), ce_loss, nll_loss, terms, n_correct, real.sum()

        net_output, head = self._forward_with_head(model, net_input, extra_args, head_request)
        terms = self.consistency_terms(None, None, net_output[1].get("layer_states"), sample["net_input"])
        loss = add_weighted(head.loss, terms, weights)
        if self.output_reg_weight > 0:
            terms["output_reg"] = head.skl  # for the log; its gradient is in head.loss
        real = head_request.scored_target().ne(self.padding_idx).sum() * 2
        return loss, head.ce, head.nll, terms, head.n_correct, real

    def _forward_with_head(self, model, net_input, extra_args, request: OutputHeadRequest):
        """The training forward with the fused head -> (net_output with the decoder's features,
        HeadLosses). A model with LayerStatesModelMixin runs the head inside its own forward
        (DistributedDataParallel then sees the projection used); a stock model returns its
        features and the head runs here (_fused_head_request keeps stock models out of DDP)."""
        if getattr(unwrap(model), "runs_output_head", False):
            net_output = model(**net_input, **extra_args, output_head=request)
            return net_output, net_output[1]["output_head"]
        net_output = model(**net_input, **extra_args, features_only=True)
        return net_output, request.losses(net_output[0], unwrap(model).decoder.output_projection.weight)

    def _fused_head_request(self, model, target, output_weight) -> Optional[OutputHeadRequest]:
        """The fused head's request when it computes exactly what the model's output layer
        and log-softmax give; None (the unfused path) otherwise, with the reason logged once."""
        if not self.fused_output_head:
            return None
        reason = fused_head_unsupported(unwrap(model))
        if reason is None and _inside_pytorch_ddp(model) and not getattr(unwrap(model), "runs_output_head", False):
            reason = (f"{type(unwrap(model)).__name__} runs inside DistributedDataParallel and cannot run the "
                      "head in its own forward; an lr_drop_* architecture can")
        if reason is not None:
            warn_once(f"fused output head off ({reason}): the logits are computed in full")
            return None
        return OutputHeadRequest(target, self.padding_idx, self.eps, output_weight, self.report_accuracy,
                                 self.ignore_prefix_size)

    def consistency_terms(self, lprobs, target, layer_states, net_input):
        """The weighted-in regularization terms (float32 sums over positions); the output
        term only from unfused 2N x V lprobs (the fused head computes it itself)."""
        terms = self.layers.terms(layer_states, net_input, self.padding_idx)
        if self.output_reg_weight > 0 and lprobs is not None:
            # target is [t; t]: the mask of pass 1 is that of pass 2
            token_mask = split_passes(target, 0)[0].ne(self.padding_idx)
            terms["output_reg"] = output_consistency(lprobs, token_mask)
        return terms

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        """Aggregate logging outputs from data parallel training."""
        super().reduce_metrics(logging_outputs)
        log_consistency_terms(logging_outputs)
