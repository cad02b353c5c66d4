"""Step time and peak memory of classifier fine-tuning: plain (stock sentence_prediction) vs
R-Drop vs LR-Drop (lr_drop_sentence_prediction), on a model imported by
`python -m fairseq_lrdrop.import_bert` and a real batch of a sentence_prediction data-bin.

    python bench/finetune_cost.py --imported runs/ddtp-minilm/imported-classification \
        --data-bin runs/ddtp-minilm/data/bin/classification-1000 --json bench/cost-minilm-cpu.json

The batch is --batch-size train examples: the longest ones (--batch longest, the step's worst
case) or a seeded random draw (--batch random, a typical step). Every configuration uses the
same model, optimizer and batch; steps are interleaved round-robin so that machine noise hits
them alike, and the median is reported. Peak memory: the peak resident set of a fresh process
that builds one configuration and runs --memory-steps steps, minus its resident set before
the first step (bench/speed.py's measure). Prints a table; --json writes it.
"""
import argparse
import json
import logging
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench import speed  # noqa: E402

CRITERIA = {
    "baseline": ["--criterion", "sentence_prediction"],
    "rdrop": ["--criterion", "lr_drop_sentence_prediction", "--hidden-reg-weight", "0",
              "--attn-reg-weight", "0", "--output-reg-weight", "1"],
    "lrdrop": ["--criterion", "lr_drop_sentence_prediction", "--hidden-reg-weight", "0.01",
               "--attn-reg-weight", "0.01", "--output-reg-weight", "1"],
}


def setup(imported, data_bin, criterion, model=None):
    """(task, model, criterion) from import_bert's finetune_flags.txt and the data-bin."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    flags = (Path(imported) / "finetune_flags.txt").read_text().split()
    flags = [f for i, f in enumerate(flags) if not (f.startswith("--reset") or f == "--restore-file"
                                                   or (i and flags[i - 1] == "--restore-file"))]
    args = options.parse_args_and_arch(options.get_training_parser(), [
        str(data_bin), "--user-dir", str(REPO / "fairseq_lrdrop"), *flags, *CRITERIA[criterion], "--cpu"])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    if model is None:
        torch.manual_seed(0)
        model = task.build_model(cfg.model)
        from fairseq import checkpoint_utils   # the plugin's checked loader

        state = checkpoint_utils.load_checkpoint_to_cpu(str(Path(imported) / "model.pt"))["model"]
        model.load_state_dict(state, strict=True, model_cfg=cfg.model)
    return task, model, task.build_criterion(cfg.criterion)


def batch(task, size, how, seed=1):
    """A collated train batch of `size` examples: the longest ones, or a seeded random draw."""
    task.load_dataset("train")
    dataset = task.dataset("train")
    if how == "longest":
        indices = sorted(range(len(dataset)), key=lambda i: -int(dataset.size(i)))[:size]
    else:
        indices = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:size].tolist()
    return dataset.collater([dataset[i] for i in indices])


class Config(speed.Config):
    """One criterion on the imported model; step() is bench/speed.py's (forward, backward, Adam)."""

    def __init__(self, name, args, shared=None):
        self.name = name
        self.task, self.model, self.criterion = setup(args.imported, args.data_bin, name,
                                                      shared.model if shared else None)
        self.sample = shared.sample if shared else batch(self.task, args.batch_size, args.batch)
        self.optimizer = shared.optimizer if shared else torch.optim.Adam(self.model.parameters(), lr=1e-5)
        self.model.train()
        self.times = []


def peak_rss_delta(name, args):
    """Peak RSS growth (MiB) of a fresh process running `--memory-steps` steps of one configuration."""
    cmd = [sys.executable, __file__, "--imported", args.imported, "--data-bin", args.data_bin,
           "--batch", args.batch, "--batch-size", str(args.batch_size), "--memory-of", name,
           "--memory-steps", str(args.memory_steps)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--imported", required=True, help="fairseq_lrdrop.import_bert's output directory")
    parser.add_argument("--data-bin", required=True, help="a sentence_prediction data-bin in its dictionary")
    parser.add_argument("--batch", choices=("longest", "random"), default="longest")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--memory-steps", type=int, default=3)
    parser.add_argument("--configs", default="baseline,rdrop,lrdrop")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--memory-of", choices=sorted(CRITERIA), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for flag, path in (("--imported", Path(args.imported) / "finetune_flags.txt"),
                       ("--data-bin", Path(args.data_bin) / "input0" / "train.idx")):
        if not path.is_file():
            sys.exit(f"error: {flag}: {path} missing (import with fairseq_lrdrop.import_bert; "
                     "binarize with examples/ddtp/nlu_bert.py)")
    names = args.configs.split(",")
    unknown = [n for n in names if n not in CRITERIA]
    if unknown:
        sys.exit(f"error: --configs: unknown {', '.join(unknown)} (choose from {', '.join(CRITERIA)})")
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.memory_of:
        print(json.dumps(speed.peak_rss_growth(Config(args.memory_of, args), args.memory_steps)))
        return 0

    configs = []
    for name in names:
        configs.append(Config(name, args, shared=configs[0] if configs else None))
    sample = configs[0].sample
    tokens = int(sample["net_input"]["src_tokens"].ne(configs[0].task.source_dictionary.pad()).sum())
    for round_ in range(args.warmup + args.steps):
        for config in configs:
            start = time.perf_counter()
            config.step()
            if round_ >= args.warmup:
                config.times.append(time.perf_counter() - start)
    rows = {}
    for config in configs:
        rows[config.name] = {"step_seconds": statistics.median(config.times),
                             "peak_rss_delta_mib": peak_rss_delta(config.name, args)}
    base = rows.get("baseline")
    print(f"batch: {args.batch_size} examples ({args.batch}), {tokens} tokens, "
          f"{tuple(sample['net_input']['src_tokens'].shape)} padded; threads {torch.get_num_threads()}")
    print("| config | step (s) | x baseline | peak RSS growth (MiB) | x baseline |")
    print("|---|---:|---:|---:|---:|")
    for name, row in rows.items():
        ratio = lambda key: f"{row[key] / base[key]:.2f}x" if base else ""
        print(f"| {name} | {row['step_seconds']:.3f} | {ratio('step_seconds')} | "
              f"{row['peak_rss_delta_mib']:.0f} | {ratio('peak_rss_delta_mib')} |")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "imported": str(args.imported), "data_bin": str(args.data_bin), "batch": args.batch,
            "batch_size": args.batch_size, "tokens": tokens,
            "padded_shape": list(sample["net_input"]["src_tokens"].shape),
            "threads": torch.get_num_threads(), "steps": args.steps, "criteria": CRITERIA,
            "torch": torch.__version__, "rows": rows}, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
