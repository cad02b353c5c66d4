"""Shared fixtures: a tiny En->De corpus binarized with the real fairseq-preprocess, and
in-process builders for fairseq tasks, models and criterions on it."""
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
USER_DIR = str(REPO / "fairseq_lrdrop")
BIN = Path(sys.executable).parent

# One intra-op thread per process: the suite runs on 2 shared cores, where 2 threads make these
# tiny models ~4x slower, and subprocess ranks would oversubscribe the cores.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# Subprocess time limits are hang guards only, far above any run on a loaded machine (the
# slowest test takes minutes): speed is measured in bench/, never asserted here.
HANG_GUARD_S = 3600
torch.set_num_threads(1)

# A toy language pair: word-by-word translation, so a few updates already learn something.
EN = "the a cat dog house tree runs sees big small red blue green quick slow old new".split()
DE = "der ein katze hund haus baum rennt sieht gross klein rot blau gruen schnell langsam alt neu".split()
TINY_MODEL = [
    "--encoder-layers", "2", "--decoder-layers", "2",
    "--encoder-embed-dim", "32", "--decoder-embed-dim", "32",
    "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64",
    "--encoder-attention-heads", "4", "--decoder-attention-heads", "4",
]


def write_corpus(directory: Path, sizes=(("train", 300), ("valid", 30), ("test", 30)), seed=0):
    rng = random.Random(seed)
    table = dict(zip(EN, DE))
    for split, count in sizes:
        with open(directory / f"{split}.en", "w") as en, open(directory / f"{split}.de", "w") as de:
            for _ in range(count):
                words = [rng.choice(EN) for _ in range(rng.randint(2, 10))]
                en.write(" ".join(words) + "\n")
                de.write(" ".join(table[w] for w in words) + "\n")


def bench_module(name: str):
    """A script of bench/ (bench/<name>.py) imported as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cli(tool, *args, check=True, env=None, cwd=None):
    """Run a fairseq console script from this venv; returns the CompletedProcess."""
    proc = subprocess.run(
        [str(BIN / tool), *map(str, args)], capture_output=True, text=True,
        env={**os.environ, **ONE_THREAD, **(env or {})}, cwd=cwd, timeout=HANG_GUARD_S,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{tool} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def data_bin(tmp_path_factory):
    raw = tmp_path_factory.mktemp("raw")
    write_corpus(raw)
    out = raw / "bin"
    run_cli(
        "fairseq-preprocess", "--source-lang", "en", "--target-lang", "de",
        "--trainpref", raw / "train", "--validpref", raw / "valid", "--testpref", raw / "test",
        "--destdir", out, "--joined-dictionary", "--workers", "1",
    )
    return out


def build(data_bin, arch="lr_drop_transformer", criterion="lr_drop_label_smoothed_cross_entropy",
          dropout=0.1, extra=()):
    """(task, model, criterion) built exactly as fairseq-train builds them."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        str(data_bin), "--user-dir", USER_DIR, "--arch", arch, "--criterion", criterion,
        "--label-smoothing", "0.1", "--dropout", str(dropout), "--attention-dropout", str(dropout),
        "--activation-dropout", str(dropout), "--cpu", *TINY_MODEL, *extra,
    ])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(1)
    model = task.build_model(cfg.model)
    return task, model, task.build_criterion(cfg.criterion)


def perturb_second_pass(*embeddings):
    """Make the two passes of [x; x] differ WITHOUT dropout: the second half of the batch gets
    an offset on its token embeddings that depends only on the token id (and the channel, so
    that an embedding layer norm, as BART and RoBERTa have, keeps it); padding cannot change it."""
    def hook(module, args, output):
        (tokens,) = args
        half = tokens.size(0) // 2
        channels = torch.arange(1, output.size(-1) + 1)
        offset = 0.1 * torch.sin(tokens[half:].float().unsqueeze(-1) * channels)
        return torch.cat([output[:half], output[half:] + offset])
    for embedding in set(embeddings):
        embedding.register_forward_hook(hook)


def criterion_cfg(name, **fields):
    """A criterion config as fairseq builds it: label smoothing 0.1, stock options off."""
    from omegaconf import OmegaConf
    return OmegaConf.create({"_name": name, "label_smoothing": 0.1, "sentence_avg": False,
                             "ignore_prefix_size": 0, "report_accuracy": False, **fields})


def batch(task, split="valid", size=8, start=0):
    task.load_dataset(split)
    dataset = task.dataset(split)
    return dataset.collater([dataset[i] for i in range(start, start + size)])


def train_inner(log):
    """The train_inner records of a --log-format json log, in order."""
    return [json.loads(line.split("| train_inner | ", 1)[1])
            for line in log.splitlines() if "| train_inner | " in line]


def max_state_diff(a, b):
    """Largest absolute difference between two state dicts with the same keys."""
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def entropy(probs):
    """Entropy (nats) over the last dimension, written apart from bench/diagnose.py's."""
    return -torch.special.xlogy(probs.double(), probs.double()).sum(-1)


def attention_request(stack, layers):
    from fairseq_lrdrop.modules.layer_states import LayerStateRequest

    return LayerStateRequest(**{f"{stack}_layers": tuple(range(layers))}, hidden_states=False,
                             attention_modules=(f"{stack}_self",))


def row_entropies(states, module):
    """(sum, count) of the entropies of every recorded attention row of one unpadded pass."""
    rows = torch.cat([entropy(maps).flatten() for maps in states.attention[module].values()])  # H x 1 x T x S maps
    return rows.sum().item(), rows.numel()


def classifier_diagnosis_matches_the_hub(hub, checkpoint, data, subset="valid", task_from=None):
    """bench/diagnose.py on a RoBERTa classifier: the mean entropy of the class distribution
    equals the hub interface's, sentence by sentence, and so does the encoder's self-attention
    entropy (each sentence unpadded); no EOS measures. Returns diagnose's measures."""
    from fairseq_lrdrop.modules.layer_states import layer_stacks, recording_layer_states

    measures = bench_module("diagnose").model_measures(str(checkpoint), str(data), subset, max_tokens=512,
                                                       task_from=task_from and str(task_from))
    hub.task.load_dataset(subset)
    dataset = hub.task.dataset(subset)
    output, bound, attention_rows = [], [], [0.0, 0]
    request = attention_request("encoder", len(layer_stacks(hub.model)["encoder"]))
    with torch.no_grad():
        for index in range(len(dataset)):
            tokens = dataset[index]["net_input.src_tokens"]
            with recording_layer_states(layer_stacks(hub.model), request) as states:
                lprobs = hub.predict("sentence_classification_head", tokens)
            output.append(entropy(lprobs.exp()).item())
            total, count = row_entropies(states, "encoder_self")
            attention_rows[0] += total
            attention_rows[1] += count
            bound += [math.log(len(tokens))] * len(tokens)
    assert measures["output_entropy"] == pytest.approx(sum(output) / len(output), rel=1e-5)
    attention = measures["attention_entropy"]
    assert attention["decoder_self"] is None and attention["decoder_cross"] is None
    assert attention["encoder_self"] == pytest.approx(attention_rows[0] / attention_rows[1], rel=1e-5)
    assert 0 < attention["encoder_self"] <= sum(bound) / len(bound) + 1e-9
    assert measures["eos_prob_at_end"] is None and measures["eos_prob_inside"] is None
    return measures
