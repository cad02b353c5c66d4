"""`lr_drop_sentence_prediction`: fairseq's sentence_prediction (RoBERTa classification and
regression fine-tuning) + LR-Drop's consistency terms.

    L = L_task(pass 1) + L_task(pass 2) + alpha * L_HSR + beta * L_MHAR + gamma * L_OR

L_task is stock's: the NLL of the class (summed over sentences), or for --regression-target the
squared error. L_OR compares the two passes' predictions: symmetric KL of the class
distributions, or for regression the squared difference of the two predicted values (R-Drop's
choice for STS-B). L_HSR and L_MHAR run over the encoder's layers. Training runs ONE forward
over [x; x]; validation is stock's single pass, so accuracy, F1, MCC and Pearson/Spearman are
logged exactly as a baseline run logs them. With all three weights 0 this is stock
sentence_prediction.
"""
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from fairseq.criterions import register_criterion
from fairseq.criterions.sentence_prediction import SentencePredictionConfig, SentencePredictionCriterion

from fairseq_lrdrop.losses import output_consistency, regression_consistency

from .layer_consistency import (
    LayerConsistency,
    LayerConsistencyConfig,
    add_weighted,
    both_passes,
    check_weight,
    log_consistency_terms,
    refuse_fully_sharded,
)

NAME = "lr_drop_sentence_prediction"


@dataclass
class LRDropSentencePredictionConfig(SentencePredictionConfig, LayerConsistencyConfig):
    # 0.01, not the translation criterion's 0.1: L_task sums over sentences while the layer
    # terms sum over every token, so the same alpha weighs them ~tokens-per-sentence times more;
    # the DDTP fine-tuning study chose 0.01 on valid for both tasks (README, "Default weights")
    hidden_reg_weight: float = field(
        default=0.01,
        metadata={"help": "alpha: weight of the hidden-state consistency term L_HSR (0: off)"},
    )
    attn_reg_weight: float = field(
        default=0.01,
        metadata={"help": "beta: weight of the attention consistency term L_MHAR (0: off)"},
    )
    output_reg_weight: float = field(
        default=1.0,
        metadata={"help": "gamma: weight of the output consistency term L_OR (0: off): symmetric "
                  "KL of the two passes' class distributions, or with --regression-target the "
                  "squared difference of their predictions (R-Drop's GLUE weights: 0.5-1.0)"},
    )


@register_criterion(NAME, dataclass=LRDropSentencePredictionConfig)
class LRDropSentencePredictionCriterion(SentencePredictionCriterion):
    def __init__(self, cfg: LRDropSentencePredictionConfig, task):
        super().__init__(cfg, task)
        self.layers = LayerConsistency.from_config(cfg, NAME)
        self.output_reg_weight = check_weight("--output-reg-weight", cfg.output_reg_weight)
        self.source_padding_idx = task.source_dictionary.pad()
        self._setup_checked = False

    @property
    def two_passes(self) -> bool:
        return self.layers.active or self.output_reg_weight > 0

    def forward(self, model, sample, reduce=True):
        """Returns (loss, sample_size, logging_output) as stock does; sample_size counts the
        sentences of the ORIGINAL batch."""
        if not model.training or not self.two_passes:
            return super().forward(model, sample, reduce=reduce)
        if not self._setup_checked:
            refuse_fully_sharded(model, NAME)
            self._setup_checked = True
        assert self.classification_head_name in getattr(model, "classification_heads", {}), (
            f"model must provide the classification head {self.classification_head_name!r} "
            f"for --criterion {NAME}"
        )
        loss, task_loss, terms, penalties, logits = self.two_pass_losses(model, sample)
        targets = model.get_targets(sample, [logits]).view(-1)
        sample_size = targets.numel()
        logging_output = {
            # the optimised task loss covers both passes: log it per pass, on stock's scale,
            # plus stock's pruning penalties, which the loss holds once (as stock's does)
            "loss": task_loss.data / 2 + sum(penalty.data for penalty in penalties.values()),
            "ntokens": sample["ntokens"],
            "nsentences": sample_size,
            "sample_size": sample_size,
        }
        logging_output.update({name: penalty.data for name, penalty in penalties.items()})
        for name, value in terms.items():
            logging_output[name] = value.data
        if not self.regression_target:
            logging_output["ncorrect"] = (logits[:sample_size].argmax(dim=1) == targets).sum()  # pass 1
        return loss, sample_size, logging_output

    def two_pass_losses(self, model, sample):
        """One training forward over [x; x] -> (the loss to optimise, the task loss summed over
        both passes, {term name: unweighted term}, {stock penalty name: penalty}, the 2B x C
        logits)."""
        request = self.layers.request(model)
        net_input = both_passes(sample["net_input"])
        extra_args = {"layer_states": request} if request is not None else {}
        logits, extra = model(**net_input, features_only=True,
                              classification_head_name=self.classification_head_name, **extra_args)
        targets = model.get_targets(sample, [logits]).view(-1)
        targets = torch.cat([targets, targets])
        if self.regression_target:
            predictions = logits.view(-1).float()
            task_loss = F.mse_loss(predictions, targets.float(), reduction="sum")
            output_term = regression_consistency(predictions) if self.output_reg_weight > 0 else None
        else:
            lprobs = F.log_softmax(logits, dim=-1, dtype=torch.float32)  # 2B x C
            task_loss = F.nll_loss(lprobs, targets, reduction="sum")
            every_sentence = torch.ones(len(targets) // 2, dtype=torch.bool, device=lprobs.device)
            output_term = output_consistency(lprobs, every_sentence) if self.output_reg_weight > 0 else None
        terms = self.layers.terms(extra.get("layer_states"), sample["net_input"], self.source_padding_idx)
        if output_term is not None:
            terms["output_reg"] = output_term
        weights = {**self.layers.weights, "output_reg": self.output_reg_weight}
        loss = add_weighted(task_loss, terms, weights)
        # stock's optional pruning penalties (roberta --mha-reg-scale-factor, --ffn-reg-scale-factor),
        # under stock's log names
        penalties = {}
        for factor, penalty, name in (("mha_reg_scale_factor", "_get_adaptive_head_loss", "mha_reg_loss"),
                                      ("ffn_reg_scale_factor", "_get_adaptive_ffn_loss", "ffn_reg_loss")):
            if getattr(getattr(model, "args", None), factor, 0.0) != 0.0:
                penalties[name] = getattr(model, penalty)()
                loss = loss + penalties[name]
        return loss, task_loss, terms, penalties, logits

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        """Aggregate logging outputs from data parallel training."""
        SentencePredictionCriterion.reduce_metrics(logging_outputs)
        log_consistency_terms(logging_outputs)
