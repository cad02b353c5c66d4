"""Step time, throughput and peak memory: baseline vs R-Drop vs LR-Drop, one run.

    python bench/speed.py --preset small            # CPU, about a minute
    python bench/speed.py --preset wmt --fp16       # transformer_wmt_en_de shapes, on a GPU
    python bench/speed.py --preset long --steps 2 --warmup 1 --memory-steps 1 --generation-repeats 0 \
        --configs rdrop_plugin,lrdrop_blockwise,lrdrop_checkpoint,lrdrop_keep   # 4 x 512 tokens a side
    python bench/speed.py --preset cnndm ...        # BART base, 1,024 source / 128 target tokens

Every configuration uses the same architecture (lr_drop_transformer, or lr_drop_bart_base for
the cnndm preset, which runs exactly the stock forward unless the criterion asks for layer
states), the same synthetic batch and the same model and optimizer (one copy, shared):
  baseline  stock label_smoothed_cross_entropy, one pass
  rdrop     fairseq's label_smoothed_cross_entropy_with_rdrop (rdrop_alpha 5)
  lrdrop    lr_drop_label_smoothed_cross_entropy, all three terms on
  (optional) lrdrop_unfused: the same with --no-fused-output-head; plain: the plugin criterion
            with every weight 0 (one pass through the fused output head), against baseline;
            rdrop_plugin (0, 0, 5) and lrdrop_no_attention (1, 0, 5): what each part adds;
            lrdrop_blockwise, lrdrop_checkpoint, lrdrop_keep: LR-Drop with each --attn-reg-maps
Step = forward + backward + optimizer step. Steps are interleaved round-robin across the
configurations so that machine noise hits them alike; the median is reported. Peak memory:
CUDA peak allocated on a GPU; on CPU the peak resident set of a fresh process that builds one
configuration and runs 3 steps, minus its resident set before the first step.
Also times generation (beam search) with the same weights in lr_drop_transformer and in the
stock transformer. Prints a table and writes JSON (--json).
"""
import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import List, NamedTuple, Optional

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

class Preset(NamedTuple):
    model_flags: List[str]
    sentences: int  # per batch
    length: int  # tokens per sentence (source; target too unless target_length is given)
    vocab: int
    arch: str = "lr_drop_transformer_wmt_en_de"
    target_length: Optional[int] = None


PRESETS = {
    # name: Preset(model flags, sentences per batch, tokens per sentence, vocabulary[, arch, target tokens])
    "small": (["--encoder-layers", "3", "--decoder-layers", "3", "--encoder-embed-dim", "128",
               "--decoder-embed-dim", "128", "--encoder-ffn-embed-dim", "512",
               "--decoder-ffn-embed-dim", "512", "--encoder-attention-heads", "4",
               "--decoder-attention-heads", "4"], 24, 24, 4000),
    "tiny": (["--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "16",
              "--decoder-embed-dim", "16", "--encoder-ffn-embed-dim", "32",
              "--decoder-ffn-embed-dim", "32", "--encoder-attention-heads", "2",
              "--decoder-attention-heads", "2"], 4, 8, 100),  # smoke tests only
    "wmt": ([], 128, 32, 32000),  # transformer_wmt_en_de: 6+6 layers, d 512, 4096 tokens a side
    # long sequences: 4 sentences x 512 tokens a side, the same model (2048 tokens a side)
    "long": ([], 4, 512, 32000),
    # CNN/DailyMail shapes: BART (bart_base: 6+6 layers, d 768, 12 heads), sources of 1,024
    # tokens, targets of 128, GPT-2 BPE vocabulary; 2 articles, so that every configuration's
    # step fits in 24 GB on CPU
    "cnndm": (["--max-source-positions", "1024", "--max-target-positions", "1024"], 2, 1024, 50264,
              "lr_drop_bart_base", 128),
}
PRESETS = {name: Preset(*values) for name, values in PRESETS.items()}
CRITERIA = {
    "baseline": ["--criterion", "label_smoothed_cross_entropy"],
    "rdrop": ["--criterion", "label_smoothed_cross_entropy_with_rdrop", "--rdrop-alpha", "5"],
    "lrdrop": ["--criterion", "lr_drop_label_smoothed_cross_entropy", "--hidden-reg-weight", "1",
               "--attn-reg-weight", "1", "--output-reg-weight", "5"],
    # the attention term's three ways (--attn-reg-maps; "lrdrop" runs the default)
    **{f"lrdrop_{mode}": ["--criterion", "lr_drop_label_smoothed_cross_entropy", "--hidden-reg-weight", "1",
                          "--attn-reg-weight", "1", "--output-reg-weight", "5", "--attn-reg-maps", mode]
       for mode in ("blockwise", "checkpoint", "keep")},
    # the same loss with the 2N x V logits held in full (the output head before the fused one)
    "lrdrop_unfused": ["--criterion", "lr_drop_label_smoothed_cross_entropy", "--hidden-reg-weight", "1",
                       "--attn-reg-weight", "1", "--output-reg-weight", "5", "--no-fused-output-head"],
    # where LR-Drop's memory goes: two passes through the fused head with no layer states (R-Drop
    # in the plugin), then the hidden-state term without the attention maps
    "rdrop_plugin": ["--criterion", "lr_drop_label_smoothed_cross_entropy", "--hidden-reg-weight", "0",
                     "--attn-reg-weight", "0", "--output-reg-weight", "5"],
    "lrdrop_no_attention": ["--criterion", "lr_drop_label_smoothed_cross_entropy", "--hidden-reg-weight", "1",
                            "--attn-reg-weight", "0", "--output-reg-weight", "5"],
    # plain training through the plugin: one pass, its output layer and loss in the fused head
    "plain": ["--criterion", "lr_drop_label_smoothed_cross_entropy", "--hidden-reg-weight", "0",
              "--attn-reg-weight", "0", "--output-reg-weight", "0"],
}
DEFAULT_CONFIGS = ("baseline", "rdrop", "lrdrop")


def setup(preset, criterion, device, dtype, extra=(), model=None):
    """(task, model, criterion) for a preset; a given model (of the same preset) is used as it is."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    model_flags, vocab, arch = PRESETS[preset].model_flags, PRESETS[preset].vocab, PRESETS[preset].arch
    data = Path(tempfile.gettempdir()) / f"lrdrop-bench-dict-{vocab}"
    data.mkdir(exist_ok=True)
    for lang in ("src", "tgt"):
        (data / f"dict.{lang}.txt").write_text("".join(f"w{i} 1\n" for i in range(vocab - 4)))
    args = options.parse_args_and_arch(options.get_training_parser(), [
        str(data), "--user-dir", str(REPO / "fairseq_lrdrop"), "-s", "src", "-t", "tgt",
        "--arch", arch, *model_flags, "--dropout", "0.1", "--attention-dropout", "0.1",
        "--label-smoothing", "0.1", *CRITERIA[criterion], *extra,
    ])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    if model is None:
        torch.manual_seed(0)
        model = task.build_model(cfg.model).to(device=device, dtype=dtype)
    return task, model, task.build_criterion(cfg.criterion)


def synthetic_batch(task, preset, device):
    sentences, length = PRESETS[preset].sentences, PRESETS[preset].length
    target_length = PRESETS[preset].target_length or length
    g = torch.Generator().manual_seed(0)
    d = task.target_dictionary
    src = torch.randint(d.nspecial, len(d), (sentences, length), generator=g)
    tgt = torch.randint(d.nspecial, len(d), (sentences, target_length), generator=g)
    # varied lengths: right-pad targets, left-pad sources, as fairseq batches are (with separate
    # target lengths, every sentence has its source and target in the upper half of their range)
    lengths = torch.randint(length // 2, length + 1, (sentences,), generator=g)
    target_lengths = lengths if target_length == length else \
        torch.randint(target_length // 2, target_length + 1, (sentences,), generator=g)
    tgt = tgt.masked_fill(torch.arange(target_length)[None] >= target_lengths[:, None], d.pad())
    tgt[torch.arange(sentences), target_lengths - 1] = d.eos()
    src = src.masked_fill(torch.arange(length).flip(0)[None] >= lengths[:, None], d.pad())
    src[:, -1] = d.eos()
    prev = torch.cat([torch.full((sentences, 1), d.eos()), tgt[:, :-1]], 1).masked_fill(tgt.eq(d.pad()), d.pad())
    ntokens = int(tgt.ne(d.pad()).sum())
    sample = {"net_input": {"src_tokens": src, "src_lengths": lengths, "prev_output_tokens": prev},
              "target": tgt, "ntokens": ntokens, "id": torch.arange(sentences)}
    return {k: ({kk: vv.to(device) for kk, vv in v.items()} if isinstance(v, dict) else
                v.to(device) if torch.is_tensor(v) else v) for k, v in sample.items()}


class Config:
    def __init__(self, name, preset, device, dtype, extra=(), shared=None):
        """shared: a Config whose model and optimizer this one uses too (the configurations
        differ only in the criterion), so that long presets hold one model, not one each."""
        self.name = name
        self.task, self.model, self.criterion = setup(preset, name, device, dtype, extra=extra,
                                                      model=shared.model if shared else None)
        self.sample = synthetic_batch(self.task, preset, device)
        self.optimizer = shared.optimizer if shared else torch.optim.Adam(self.model.parameters(), lr=1e-5)
        self.model.train()
        self.times = []

    def step(self):
        # fairseq's fp16 keeps float32 master weights and scales the loss; here the model runs
        # in the requested dtype end to end, the same for every configuration.
        loss, sample_size, _ = self.criterion(self.model, self.sample)
        (loss / sample_size).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def cpu_peak_rss_delta(name, preset, dtype, extra, steps=3):
    """Peak RSS growth (MiB) of a fresh process that builds one configuration and runs `steps`
    steps: RSS is per process, so each configuration gets its own (a fork would deadlock
    torch's OpenMP pool)."""
    out = subprocess.run(
        [sys.executable, __file__, "--preset", preset, "--cpu", "--memory-of", name,
         "--steps", str(steps)] + (["--bf16"] if dtype == torch.bfloat16 else [])
        + (["--checkpoint-activations"] if "--checkpoint-activations" in extra else []),
        capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_own_memory(name, preset, dtype, steps, extra):
    print(json.dumps(peak_rss_growth(Config(name, preset, torch.device("cpu"), dtype, extra), steps)))


def peak_rss_growth(config, steps):
    """Peak resident set growth (MiB) of this process over `steps` steps of config."""
    # Reset the kernel's peak-RSS mark (VmHWM), so start-up transients do not count.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    start = _status_mib("VmRSS")
    for _ in range(steps):
        config.step()
    return _status_mib("VmHWM") - start


def _status_mib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def time_generation(preset, device, dtype, repeats):
    """Beam search with the same weights in the lr_drop architecture and its stock one."""
    task, model, _ = setup(preset, "baseline", device, dtype)
    stock_model = next(c for c in type(model).__mro__[1:] if not c.__module__.startswith("fairseq_lrdrop"))
    stock = stock_model.build_model(model.args, task).to(device=device, dtype=dtype)
    stock.load_state_dict(model.state_dict())
    sample = synthetic_batch(task, preset, device)
    sample = {**sample, "net_input": {k: v[:8] for k, v in sample["net_input"].items()}}
    from fairseq.sequence_generator import SequenceGenerator

    results = {}
    times = {"lrdrop_arch": [], "stock_arch": []}
    generators = {name: SequenceGenerator([m.eval()], task.target_dictionary, beam_size=4, max_len_b=20)
                  for name, m in (("lrdrop_arch", model), ("stock_arch", stock))}
    with torch.no_grad():
        for round_ in range(repeats + 1):  # the first round warms up
            # alternate which architecture goes first, so order effects cancel
            for name, generator in sorted(generators.items(), reverse=bool(round_ % 2)):
                sync(device)
                start = time.perf_counter()
                out = generator.generate([generator.model.single_model], sample)
                sync(device)
                times[name].append(time.perf_counter() - start)
                results[name] = [h[0]["tokens"].tolist() for h in out]
    assert results["lrdrop_arch"] == results["stock_arch"], "same weights must give the same output"
    return {name: statistics.median(t[1:]) for name, t in times.items()}


def main():
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--fp16", action="store_true", help="run the model in float16 (GPU)")
    parser.add_argument("--bf16", action="store_true", help="run the model in bfloat16")
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even with a GPU")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                        help="comma-separated subset of " + ",".join(CRITERIA) + " (ratios need both sides)")
    parser.add_argument("--json", default=None, help="write results here")
    parser.add_argument("--generation-repeats", type=int, default=30, help="timed beam-search rounds (0: none)")
    parser.add_argument("--memory-steps", type=int, default=3,
                        help="steps of each fresh process that measures a configuration's CPU peak memory")
    parser.add_argument("--checkpoint-activations", action="store_true",
                        help="train every configuration with fairseq's --checkpoint-activations")
    parser.add_argument("--memory-of", choices=sorted(CRITERIA), help=argparse.SUPPRESS)
    parser.add_argument("--no-memory", action="store_true", help="skip the CPU peak-memory processes")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    dtype = torch.float16 if args.fp16 else torch.bfloat16 if args.bf16 else torch.float32
    steps = args.steps or (20 if device.type == "cpu" else 50)
    extra = ["--checkpoint-activations"] if args.checkpoint_activations else []
    if args.memory_of:
        return measure_own_memory(args.memory_of, args.preset, dtype, steps, extra)

    names = [name.strip() for name in args.configs.split(",") if name.strip()]
    unknown = [name for name in names if name not in CRITERIA]
    if unknown or not names:
        parser.error(f"--configs: unknown configuration {unknown[0] if unknown else '(none)'}; "
                     f"choose from {','.join(CRITERIA)}")
    # CPU peak memory first, one fresh process per configuration, while this process holds
    # nothing: with every configuration built here (wmt shapes: several GB each) a second
    # process measuring R-Drop's 13 GB would not fit in 24 GB
    cpu_peaks = {name: cpu_peak_rss_delta(name, args.preset, dtype, extra, steps=args.memory_steps)
                 for name in names} if device.type == "cpu" and not args.no_memory else {}
    configs = [Config(names[0], args.preset, device, dtype, extra)]
    configs += [Config(name, args.preset, device, dtype, extra, shared=configs[0]) for name in names[1:]]
    for _ in range(args.warmup):
        for config in configs:
            config.step()
    for _ in range(steps):
        for config in configs:
            sync(device)
            start = time.perf_counter()
            config.step()
            sync(device)
            config.times.append(time.perf_counter() - start)

    rows = {}
    for config in configs:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            config.step()
            sync(device)
            peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            peak = cpu_peaks.get(config.name, float("nan"))
        median = statistics.median(config.times)
        rows[config.name] = {"step_ms": 1000 * median, "tokens_per_s": config.sample["ntokens"] / median,
                             "peak_mib": peak}
    generation = time_generation(args.preset, device, dtype, repeats=args.generation_repeats) \
        if args.generation_repeats > 0 else None

    ratios = {}
    for label, (top, bottom, field) in {
        "lrdrop/rdrop step": ("lrdrop", "rdrop", "step_ms"),
        "lrdrop/rdrop memory": ("lrdrop", "rdrop", "peak_mib"),
        "lrdrop/baseline step": ("lrdrop", "baseline", "step_ms"),
        "lrdrop/baseline memory": ("lrdrop", "baseline", "peak_mib"),
        "lrdrop/lrdrop_unfused step": ("lrdrop", "lrdrop_unfused", "step_ms"),
        "lrdrop/lrdrop_unfused memory": ("lrdrop", "lrdrop_unfused", "peak_mib"),
        "plain/baseline step": ("plain", "baseline", "step_ms"),
        "plain/baseline memory": ("plain", "baseline", "peak_mib"),
        # the attention term's ways against R-Drop in the plugin (the same fused output head)
        **{f"lrdrop{way}/{other} {label}": (f"lrdrop{way}", other, field)
           for way in ("", "_blockwise", "_checkpoint", "_keep") for other in ("rdrop_plugin", "baseline")
           for label, field in (("step", "step_ms"), ("memory", "peak_mib"))
           if way or other == "rdrop_plugin"},
        **{f"lrdrop{way}/rdrop {label}": (f"lrdrop{way}", "rdrop", field)
           for way in ("_blockwise", "_checkpoint", "_keep")
           for label, field in (("step", "step_ms"), ("memory", "peak_mib"))},
    }.items():
        if top in rows and bottom in rows:
            ratios[label] = rows[top][field] / rows[bottom][field]
    if generation:
        ratios["generation speed lrdrop_arch/stock_arch"] = generation["stock_arch"] / generation["lrdrop_arch"]
    machine = (torch.cuda.get_device_name() if device.type == "cuda"
               else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"preset {args.preset}{' --checkpoint-activations' if extra else ''}, {device.type} ({machine}), {dtype}, "
          f"{steps} timed steps per configuration, "
          f"{configs[0].sample['ntokens']} target tokens per batch")
    print(f"{'config':18} {'step ms':>9} {'tokens/s':>10} {'peak MiB':>9}")
    for name, row in rows.items():
        print(f"{name:18} {row['step_ms']:9.1f} {row['tokens_per_s']:10.0f} {row['peak_mib']:9.1f}")
    if generation:
        print(f"generation (beam 4): lr_drop arch {1000 * generation['lrdrop_arch']:.1f} ms, "
              f"stock arch {1000 * generation['stock_arch']:.1f} ms")
    for name, value in ratios.items():
        print(f"{name:42} {value:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "preset": args.preset, "checkpoint_activations": bool(extra), "device": device.type, "machine": machine, "dtype": str(dtype),
            "steps": steps, "torch": torch.__version__, "rows": rows, "generation_s": generation,
            "ratios": ratios}, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
