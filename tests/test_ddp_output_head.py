"""The fused output head under torch's DistributedDataParallel, wrapped as fairseq wraps it for
--ddp-backend c10d / pytorch_ddp: ModuleProxyWrapper(DistributedDataParallel(model,
find_unused_parameters=...)). On CPU with gloo, world sizes 1 and 2 (one spawned process per
rank), tied and untied output projections, with and without --find-unused-parameters, with
layerdrop: the fused criterion gives the unfused path's loss and (all-reduced) gradients.

fairseq itself cannot build this wrapper on CPU (it passes device_ids, which DDP refuses for a
CPU module), so the test builds it with fairseq's own ModuleProxyWrapper and torch's DDP, with
the arguments fairseq passes apart from the devices.
"""
import logging
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import TINY_MODEL, USER_DIR, batch

LAYERS = ["--encoder-layers", "3", "--decoder-layers", "3"]
LAYERDROP = ["--decoder-layerdrop", "0.5"]  # (the language model has no encoder)
ENCODER_LAYERDROP = ["--encoder-layerdrop", "0.5"]
LR_DROP = ["--hidden-reg-weight", "0.1", "--attn-reg-weight", "0.1", "--output-reg-weight", "5"]
R_DROP = ["--hidden-reg-weight", "0", "--attn-reg-weight", "0", "--output-reg-weight", "5"]
PLAIN = ["--hidden-reg-weight", "0", "--attn-reg-weight", "0", "--output-reg-weight", "0"]
TIED = ["--share-decoder-input-output-embed"]
LM = ["--task", "language_modeling", "--tokens-per-sample", "16", "--sample-break-mode", "eos"]
TINY_LM = [item for name, value in zip(TINY_MODEL[::2], TINY_MODEL[1::2]) if "decoder" in name
           for item in (name, value)]

# name: (arch, flags, find_unused_parameters). The untied projections with
# --find-unused-parameters are the set-ups that failed ("Expected to mark a variable ready only
# once"); layerdrop needs --find-unused-parameters with DDP (stock fails without it too).
CASES = {
    "lm untied, find unused": ("lr_drop_transformer_lm", [*LM, *LR_DROP], True),
    "lm untied, find unused, plain": ("lr_drop_transformer_lm", [*LM, *PLAIN], True),
    "lm untied": ("lr_drop_transformer_lm", [*LM, *LR_DROP], False),
    "lm tied, find unused, layerdrop": ("lr_drop_transformer_lm", [*LM, *LR_DROP, *TIED, *LAYERDROP], True),
    "mt untied, find unused, layerdrop": ("lr_drop_transformer", [*LR_DROP, *LAYERDROP, *ENCODER_LAYERDROP], True),
    "mt untied, find unused, r-drop": ("lr_drop_transformer", R_DROP, True),
    "mt tied": ("lr_drop_transformer", [*LR_DROP, *TIED], False),
    "mt tied, find unused, plain": ("lr_drop_transformer", [*PLAIN, *TIED], True),
    # a stock model cannot run the head in its forward: the criterion falls back to the unfused path
    "stock mt untied, find unused, r-drop": ("transformer", R_DROP, True),
}
FALLBACK = ("fused output head off (TransformerModel runs inside DistributedDataParallel and cannot run "
            "the head in its own forward; an lr_drop_* architecture can): the logits are computed in full")


def lm_data(data_bin, directory):
    """The English side of the translation data as a language_modeling data directory."""
    directory.mkdir()
    os.symlink(data_bin / "dict.en.txt", directory / "dict.txt")
    for split in ("train", "valid"):
        for suffix in ("bin", "idx"):
            os.symlink(data_bin / f"{split}.en-de.en.{suffix}", directory / f"{split}.{suffix}")
    return directory


def build(data, arch, flags):
    """(task, model, criterion) as fairseq-train builds them: the tiny model, 3 layers a stack,
    dropout 0.1, label smoothing 0.1."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    language_model = "--task" in flags
    tiny = [*TINY_LM, "--decoder-layers", "3"] if language_model else [*TINY_MODEL, *LAYERS]
    args = options.parse_args_and_arch(options.get_training_parser(), [
        str(data["lm" if language_model else "translation"]), "--user-dir", USER_DIR, "--arch", arch,
        "--criterion", "lr_drop_label_smoothed_cross_entropy", "--label-smoothing", "0.1", "--dropout", "0.1",
        "--attention-dropout", "0.1", "--cpu", *tiny, *flags,
    ])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(1)
    return task, task.build_model(cfg.model), task.build_criterion(cfg.criterion)


def one_case(data, arch, flags, find_unused, rank):
    """(loss, logged values, {name: gradient}) of the fused and the unfused criterion on this
    rank's batch, both through the DDP-wrapped model, from the same dropout/layerdrop draws."""
    from fairseq.distributed import ModuleProxyWrapper
    from torch.nn.parallel import DistributedDataParallel

    task, model, fused = build(data, arch, flags)
    unfused = build(data, arch, [*flags, "--no-fused-output-head"])[2]
    wrapped = ModuleProxyWrapper(DistributedDataParallel(model, find_unused_parameters=find_unused))
    wrapped.train()
    sample = batch(task, "train", size=4, start=4 * rank)
    results = {}
    for name, criterion in (("fused", fused), ("unfused", unfused)):
        model.zero_grad()
        torch.manual_seed(11 + rank)  # layerdrop may skip different layers on the two ranks
        loss, _, log = criterion(wrapped, sample)
        loss.backward()
        results[name] = (loss.detach(), {k: float(v) for k, v in log.items()},
                         {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    return results


def worker(rank, world_size, port, data, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    notes = []
    handler = logging.Handler()
    handler.emit = lambda record: notes.append(record.getMessage())
    logging.getLogger("fairseq_lrdrop").addHandler(handler)
    try:
        results = {name: one_case(data, *case, rank) for name, case in CASES.items()}
        torch.save({"results": results, "notes": notes}, out_dir / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("world_size", [1, 2])
def test_fused_head_under_ddp_equals_the_unfused_path(data_bin, tmp_path, world_size):
    data = {"translation": data_bin, "lm": lm_data(data_bin, tmp_path / "lm")}
    mp.spawn(worker, args=(world_size, _free_port(), data, tmp_path), nprocs=world_size)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in range(world_size)]
    for name in CASES:
        for rank in ranks:
            (loss, log, grads), (ref_loss, ref_log, ref_grads) = (rank["results"][name][path]
                                                                  for path in ("fused", "unfused"))
            torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5, msg=name)
            assert log.keys() == ref_log.keys(), name
            for key in log:
                assert log[key] == pytest.approx(ref_log[key], rel=1e-5, abs=1e-5), (name, key)
            assert grads.keys() == ref_grads.keys(), name
            for key in grads:
                torch.testing.assert_close(grads[key], ref_grads[key], rtol=1e-4, atol=1e-6, msg=f"{name}: {key}")
            # the projection's own gradient (tied: the embedding's, which holds both parts)
            untied = "decoder.output_projection.weight" in grads
            assert untied == ("untied" in name), name
            projection = "decoder.output_projection.weight" if untied else "decoder.embed_tokens.weight"
            assert grads[projection].abs().sum() > 0, name
        # DDP averaged the gradients: every rank holds the same ones (their batches differ)
        first = ranks[0]["results"][name]["fused"]
        for rank in ranks[1:]:
            assert rank["results"][name]["fused"][0] != first[0], name
            for key, grad in rank["results"][name]["fused"][2].items():
                torch.testing.assert_close(grad, first[2][key], rtol=1e-6, atol=1e-8,
                                           msg=f"{name}: {key}")
    for rank in ranks:
        assert [note for note in rank["notes"] if "fused output head off" in note] == [FALLBACK]
