"""What a trained model does, beyond its BLEU/ROUGE: the measurements the quality tables carry.

    python bench/diagnose.py --checkpoint runs/x/checkpoint_best.pt --data-bin data/bin \\
        --subset test --hyp runs/x/eval-test-checkpoint_best/hyp.txt \\
        --ref runs/x/eval-test-checkpoint_best/ref.txt --json runs/x/diagnose-test.json

From the decoded text (--hyp, --ref; one segment a line):
  length_ratio      hypothesis words / reference words, over the whole set
  loop_share        share of hypotheses with a repetition loop: a run of 2 to 4 words said
                    again right after itself ("de la documentation de la documentation"), or
                    one word three times in a row
From one pass of the model over the binarized subset (eval mode, no dropout), for every
family: encoder-decoder (teacher-forced, the reference as decoder input), language model
(fairseq-eval-lm's blocks) and RoBERTa classifier (sentence_prediction; --data-bin may be left
out to use the data the checkpoint was trained on). --task-from takes the task and data from
another checkpoint: a pre-trained model before fine-tuning (fairseq_lrdrop.import_bert's
model.pt, saved with the masked_lm task) measured on the data a fine-tuned run of it read:
  attention_entropy mean entropy (nats) of the attention rows of each module type
                    (encoder_self, decoder_self, decoder_cross; None where the model has
                    none), over heads, layers and real query positions
  output_entropy    mean entropy (nats) of the output distribution at real target positions;
                    a classifier's over its classes (None for a regression head)
  eos_prob_at_end   mean probability of EOS where the reference ends (its EOS position)
  eos_prob_inside   mean probability of EOS at the other real target positions (both None
                    for a classifier)
Prints the JSON; --json also writes it.
"""
import argparse
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import List, Optional, Sequence

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def has_loop(words: Sequence[str]) -> bool:
    """A run of 2-4 words immediately repeated, or one word three times in a row."""
    for n in (2, 3, 4):
        for start in range(len(words) - 2 * n + 1):
            if words[start:start + n] == words[start + n:start + 2 * n]:
                return True
    return any(words[i] == words[i + 1] == words[i + 2] for i in range(len(words) - 2))


def text_measures(hyps: List[str], refs: List[str]) -> dict:
    if len(hyps) != len(refs) or not refs:
        raise ValueError(f"{len(hyps)} hypotheses for {len(refs)} references")
    hyp_words = [h.split() for h in hyps]
    ref_words = sum(len(r.split()) for r in refs)
    return {"length_ratio": sum(map(len, hyp_words)) / max(ref_words, 1),
            "loop_share": sum(map(has_loop, hyp_words)) / len(hyps)}


def row_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) over the last dimension of probabilities; 0 * log 0 counts as 0."""
    probs = probs.double()
    return -(probs * probs.clamp_min(1e-300).log()).sum(-1)


def eval_batches(checkpoint: str, data_bin: Optional[str], subset: str, max_tokens: int,
                 task_from: Optional[str] = None):
    """(model in eval mode, cfg, task, the subset's batches in order) of a checkpoint; data_bin
    None: the data the checkpoint (or task_from) was trained on. task_from: the task is set up
    as that checkpoint's (e.g. a fine-tuned run), and builds the model of `checkpoint`."""
    from fairseq import checkpoint_utils, tasks, utils

    import fairseq_lrdrop  # noqa: F401  (the lr_drop_* archs and checkpoint loading)

    overrides = {"data": data_bin} if data_bin else {}
    task = None
    if task_from:
        task = tasks.setup_task(checkpoint_utils.load_checkpoint_to_cpu(task_from, arg_overrides=overrides)["cfg"].task)
    (model,), cfg, task = checkpoint_utils.load_model_ensemble_and_task([checkpoint], arg_overrides=overrides, task=task)
    model.eval()
    task.load_dataset(subset)
    dataset = task.dataset(subset)
    batches = task.get_batch_iterator(dataset=dataset, max_tokens=max_tokens, ignore_invalid_inputs=True,
                                      max_positions=utils.resolve_max_positions(task.max_positions(),
                                                                                model.max_positions()),
                                      required_batch_size_multiple=1).next_epoch_itr(shuffle=False)
    return model, cfg, task, batches


def model_measures(checkpoint: str, data_bin: Optional[str], subset: str, max_tokens: int,
                   task_from: Optional[str] = None) -> dict:
    """One eval-mode pass over the subset, for each family: encoder-decoder (teacher-forced,
    the reference as decoder input), language model (the block's tokens as input), and
    RoBERTa classifier (its classification head; the output entropy is over classes, and is
    None for a regression head). Attention modules the model lacks, and the EOS measures of a
    classifier, are None."""
    from fairseq_lrdrop.modules.layer_states import ATTENTION_MODULES, LayerStateRequest, layer_stacks, recording_layer_states

    model, cfg, task, batches = eval_batches(checkpoint, data_bin, subset, max_tokens, task_from)
    stacks = layer_stacks(model)
    request = LayerStateRequest(encoder_layers=tuple(range(len(stacks.get("encoder", ())))),
                                decoder_layers=tuple(range(len(stacks.get("decoder", ())))),
                                hidden_states=False, attention_modules=ATTENTION_MODULES)
    heads = list(getattr(model, "classification_heads", None) or {})
    head = getattr(cfg.criterion, "classification_head_name", None) if heads else None
    if heads and head not in heads:
        head = heads[0]
    pad = task.source_dictionary.pad()
    # a classifier's target dictionary holds labels (None for regression); it has no decoder
    target_pad, eos = (pad, None) if heads else (task.target_dictionary.pad(), task.target_dictionary.eos())
    sums = {name: [0.0, 0] for name in (*ATTENTION_MODULES, "output", "eos_end", "eos_inside")}

    def add(name, values):
        sums[name][0] += float(values.sum())
        sums[name][1] += values.numel()

    with torch.no_grad():
        for sample in batches:
            net_input = sample["net_input"]
            with recording_layer_states(stacks, request) as states:
                if head:
                    logits, _ = model(**net_input, features_only=True, classification_head_name=head)  # B x classes
                else:
                    net_output = model(**net_input)
            source = net_input["src_tokens"].ne(pad)  # B x S
            # a language model's decoder reads src_tokens; an encoder-decoder's, the shifted target
            decoder_in = net_input.get("prev_output_tokens", net_input["src_tokens"]).ne(target_pad)  # B x T
            queries = {"encoder_self": source, "decoder_self": decoder_in, "decoder_cross": decoder_in}
            for name, layers in states.attention.items():
                for probs in layers.values():  # H x B x T x S
                    add(name, row_entropy(probs)[:, queries[name]])
            if head:
                if logits.size(-1) > 1:
                    add("output", row_entropy(logits.float().softmax(-1)))
                continue
            probs = model.get_normalized_probs(net_output, log_probs=False)  # B x T x V
            target = sample["target"]
            real = target.ne(target_pad)
            add("output", row_entropy(probs)[real])
            eos_probs = probs[..., eos]
            add("eos_end", eos_probs[target.eq(eos)])
            add("eos_inside", eos_probs[real & target.ne(eos)])
    mean = {name: total / count if count else None for name, (total, count) in sums.items()}
    return {"attention_entropy": {name: mean[name] for name in ATTENTION_MODULES},
            "output_entropy": mean["output"], "eos_prob_at_end": mean["eos_end"],
            "eos_prob_inside": mean["eos_inside"]}


def main():
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data-bin", help="data directory (default: the one the checkpoint was trained on)")
    parser.add_argument("--task-from", help="set the task and data up as this checkpoint was trained (e.g. a run "
                        "fine-tuned from --checkpoint), and measure --checkpoint on them")
    parser.add_argument("--subset", default="test")
    parser.add_argument("--hyp", help="decoded hypotheses, one a line (with --ref)")
    parser.add_argument("--ref", help="references, one a line (with --hyp)")
    parser.add_argument("--max-tokens", type=int, default=4000)
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()
    for flag, path in (("--checkpoint", args.checkpoint), ("--data-bin", args.data_bin), ("--task-from", args.task_from),
                       ("--hyp", args.hyp), ("--ref", args.ref)):
        if path is not None and not Path(path).exists():
            parser.error(f"{flag} {path} does not exist")
    if (args.hyp is None) != (args.ref is None):
        parser.error("--hyp and --ref go together")
    result = {"checkpoint": args.checkpoint, "subset": args.subset}
    if args.hyp:
        read = lambda path: Path(path).read_text(encoding="utf-8").splitlines()  # noqa: E731
        try:
            result.update(text_measures(read(args.hyp), read(args.ref)))
        except ValueError as error:
            parser.error(f"--hyp/--ref: {error}")
    result.update(model_measures(args.checkpoint, args.data_bin, args.subset, args.max_tokens, args.task_from))
    text = json.dumps(result, indent=1)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
