"""Write result.json of a finished examples/ddtp/finetune.sh or lm.sh run, from the files the
run left in its save directory, and print it.

    python result.py finetune SAVE_DIR TASK SIZE MODE SEED WEIGHTS SECONDS
        -> {task, size, mode, seed, weights, epochs, valid_accuracy (best), test_accuracy,
            test_examples, train_seconds}          (train.out, test.json of glue/evaluate.py)
    python result.py lm SAVE_DIR SIZE MODE SEED WEIGHTS SECONDS
        -> {size, mode, seed, weights, epochs, best_epoch, valid_ppl (at the lowest valid
            loss), test_ppl, train_seconds}         (train.out, test.out of fairseq-eval-lm)
"""
import json
import os
import re
import sys


def valid_records(save_dir):
    """The JSON records of every validation fairseq logged to train.out, in order."""
    with open(os.path.join(save_dir, "train.out")) as fh:
        records = [json.loads(line.split("| valid | ", 1)[1]) for line in fh if "| valid | " in line]
    if not records:
        sys.exit(f"error: no validation in {save_dir}/train.out")
    return records


def finetune_result(save_dir, task, size, mode, seed, weights, seconds):
    valid = valid_records(save_dir)
    with open(os.path.join(save_dir, "test.json")) as fh:
        test = json.load(fh)
    return dict(task=task, size=size, mode=mode, seed=int(seed), weights=weights, epochs=len(valid),
                valid_accuracy=max(float(v["valid_accuracy"]) for v in valid),
                test_accuracy=test["accuracy"], test_examples=test["examples"], train_seconds=int(seconds))


def lm_result(save_dir, size, mode, seed, weights, seconds):
    valid = valid_records(save_dir)
    with open(os.path.join(save_dir, "test.out")) as fh:
        test = re.findall(r"Loss \(base 2\): ([0-9.]+), Perplexity: ([0-9.]+)", fh.read())
    if not test:
        sys.exit(f"error: no perplexity in {save_dir}/test.out")
    best = min(valid, key=lambda v: float(v["valid_loss"]))
    return dict(size=size, mode=mode, seed=int(seed), weights=weights, epochs=len(valid),
                best_epoch=int(best["epoch"]), valid_ppl=float(best["valid_ppl"]),
                test_ppl=float(test[-1][1]), train_seconds=int(seconds))


def main(argv):
    kinds = {"finetune": finetune_result, "lm": lm_result}
    if not argv or argv[0] not in kinds:
        sys.exit("usage: result.py finetune|lm SAVE_DIR ... (see the docstring)")
    save_dir = argv[1]
    result = kinds[argv[0]](*argv[1:])
    tmp = os.path.join(save_dir, "result.json.tmp")
    with open(tmp, "w") as fh:
        json.dump(result, fh, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, os.path.join(save_dir, "result.json"))  # a reader never sees half a file
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main(sys.argv[1:])
