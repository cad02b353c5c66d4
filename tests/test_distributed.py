"""Data-parallel training on CPU (2 gloo workers, one fairseq-train process per rank) and
fairseq's dummy-batch path, with the LR-Drop criterion.

How fairseq seeds dropout (fairseq 0.12 trainer.py): at the start of every `train_step`,
`Trainer._set_seed` calls `utils.set_torch_seed(cfg.common.seed + num_updates)`. The seed
mixes in NEITHER the data-parallel rank NOR the index of the micro-batch within
--update-freq. Hence, for update u:
  * 2 workers: rank 0 runs batch b[2u] and rank 1 runs b[2u+1] (ShardedIterator takes every
    second batch of the same shuffled list), EACH from the fresh RNG state seed + u;
  * 1 process with --update-freq 2: b[2u] from the fresh state seed + u (the same dropout
    masks as rank 0), then b[2u+1] from the state the first micro-batch LEFT (masks differ
    from rank 1's).
So with all dropouts 0 the two set-ups compute the same numbers (up to float summation
order): loss, nll_loss, gnorm, batch statistics and the trained weights must match tightly,
and the consistency terms are exactly 0. With dropout > 0 the second micro-batch's masks
differ by construction, so the two set-ups agree only statistically; what must hold exactly
there is the aggregation, checked in `test_terms_are_summed_over_workers_then_divided_once`
by recomputing one 2-worker update in-process (same weights, same batches, same seed per
rank).
"""
import math
import os
import socket
import subprocess

import torch
from conftest import BIN, HANG_GUARD_S, ONE_THREAD, TINY_MODEL, USER_DIR, batch, build, max_state_diff, run_cli, train_inner

WEIGHTS = ["--hidden-reg-weight", "1", "--attn-reg-weight", "1", "--output-reg-weight", "2"]
KEYS = ("loss", "nll_loss", "hidden_reg", "attn_reg", "output_reg", "gnorm")


def _dropout(p):
    return ["--dropout", str(p), "--attention-dropout", str(p), "--activation-dropout", str(p)]


def train_args(data_bin, save_dir, *extra):
    return [
        data_bin, "--user-dir", USER_DIR, "--arch", "lr_drop_transformer", *TINY_MODEL,
        "--criterion", "lr_drop_label_smoothed_cross_entropy", "--label-smoothing", "0.1", *WEIGHTS,
        "--optimizer", "adam", "--lr", "0.002", "--cpu", "--seed", "1", "--log-format", "json",
        "--log-interval", "1", "--disable-validation", "--no-epoch-checkpoints",
        "--save-dir", save_dir, *extra,
    ]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_two_workers(args, log_dir, timeout=HANG_GUARD_S):
    """fairseq-train with 2 ranks on localhost (one process per rank, gloo, legacy_ddp);
    returns rank 0's log (only the master logs train_inner)."""
    port = _free_port()
    procs, logs = [], []
    for rank in range(2):
        log = open(log_dir / f"rank{rank}.log", "w")
        logs.append(log)
        procs.append(subprocess.Popen(
            [str(BIN / "fairseq-train"), *map(str, args), "--distributed-world-size", "2",
             "--distributed-rank", str(rank), "--distributed-init-method", f"tcp://127.0.0.1:{port}",
             "--distributed-no-spawn", "--distributed-backend", "gloo", "--ddp-backend", "legacy_ddp"],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **ONE_THREAD},
        ))
    try:
        codes = [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            log.close()
    texts = [(log_dir / f"rank{rank}.log").read_text() for rank in range(2)]
    assert codes == [0, 0], f"exit codes {codes}\n" + "\n".join(t[-3000:] for t in texts)
    for text in texts:
        assert "Traceback" not in text, text[-3000:]
    return texts[0]


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def test_two_workers_match_update_freq_2_without_dropout_including_a_dummy_batch(data_bin, tmp_path):
    """All dropouts 0 -> both set-ups run identical computations. 300 sentences in batches of
    60 = 5 batches per epoch, an ODD number: in the 3rd update rank 1 has no batch and fairseq
    runs the criterion on its dummy batch with ignore_grad=True (loss * 0, stats ignored),
    while the 1-process run's 3rd update holds the single remaining batch. 4 updates, so the
    epoch boundary is crossed too.

    Measured (fairseq 0.12.3, torch 2.13 CPU, 1 thread per process): every logged value
    identical as printed, the terms exactly 0, final weights max |diff| = 0.0 (bitwise equal).
    Asserted: logged values equal as printed (loss, nll_loss, gnorm have 3 decimals, the terms
    4), weights within 1e-6 (room for a different summation order in the all-reduce).
    """
    common = ["--batch-size", "60", "--required-batch-size-multiple", "1", "--max-update", "4",
              *_dropout(0)]
    (tmp_path / "single").mkdir()
    (tmp_path / "dist").mkdir()
    single = run_cli("fairseq-train", *train_args(data_bin, tmp_path / "single", *common),
                     "--update-freq", "2")
    single_log = train_inner(single.stdout + single.stderr)
    dist_log = train_inner(train_two_workers(train_args(data_bin, tmp_path / "dist", *common), tmp_path / "dist"))

    assert [r["num_updates"] for r in dist_log] == ["1", "2", "3", "4"]
    assert [r["epoch"] for r in dist_log] == [1, 1, 1, 2]
    # the dummy batch adds nothing to the statistics: update 3 counts rank 0's 60 sentences only
    assert [r["bsz"] for r in dist_log] == [r["bsz"] for r in single_log] == ["120", "120", "60", "120"]
    assert [r["wpb"] for r in dist_log] == [r["wpb"] for r in single_log]
    for one, two in zip(single_log, dist_log):
        for key in KEYS:
            assert one[key] == two[key], (key, one, two)
        for key in ("hidden_reg", "attn_reg", "output_reg"):
            assert float(two[key]) == 0.0  # no dropout: the two passes are identical
    # ... and no gradient: the weights after 4 updates are the same
    diff = max_state_diff(_weights(tmp_path / "single" / "checkpoint_last.pt"),
                     _weights(tmp_path / "dist" / "checkpoint_last.pt"))
    print(f"2 workers vs --update-freq 2, dropout 0: max |weight diff| {diff:.3g}")
    assert diff <= 1e-6, diff


class _Backward:
    """What task.train_step needs of an optimizer when we only want the gradients."""

    def backward(self, loss):
        loss.backward()


def test_terms_are_summed_over_workers_then_divided_once(data_bin, tmp_path):
    """Dropout 0.1, 2 workers, 2 updates. Update 2 is recomputed in-process from
    checkpoint_1_1.pt (the weights it started from): each rank's batch is taken from fairseq's
    own sharded batch iterator, and each rank's forward/backward runs from the RNG state
    seed + 1, as every rank's Trainer sets it. The logged per-token values must be
    sum over workers of the per-worker SUMS / total sample_size / ln 2 (not averaged over
    workers a second time), and gnorm the norm of the summed gradient / total sample_size.

    Measured: every logged value is the recomputed one rounded as fairseq prints it (loss,
    nll_loss, gnorm to 3 decimals, the terms to 4), e.g. hidden_reg 0.4416 vs 0.4416399,
    gnorm 3.475 vs 3.4745798. Asserted: within half a unit of the last printed digit (+1e-6).
    Averaging over workers a second time would give half the value, far outside that.
    """
    from fairseq import utils
    from fairseq.logging import metrics

    dropout = 0.1
    train_two_workers(
        train_args(data_bin, tmp_path, "--max-tokens", "300", "--max-update", "2",
                   "--save-interval-updates", "1", *_dropout(dropout)),
        tmp_path,
    )
    log = train_inner((tmp_path / "rank0.log").read_text())
    assert [r["num_updates"] for r in log] == ["1", "2"]
    logged = log[1]

    task, model, criterion = build(data_bin, dropout=dropout, extra=WEIGHTS)
    model.load_state_dict(_weights(tmp_path / "checkpoint_1_1.pt"))
    task.load_dataset("train")
    outputs = []
    model.zero_grad()
    for rank in range(2):
        epoch_itr = task.get_batch_iterator(
            dataset=task.dataset("train"), max_tokens=300,
            max_positions=utils.resolve_max_positions(task.max_positions(), model.max_positions(), 300),
            ignore_invalid_inputs=True, required_batch_size_multiple=8, seed=1,
            num_shards=2, shard_id=rank, epoch=1, disable_iterator_cache=True,
        )
        sample = list(epoch_itr.next_epoch_itr(shuffle=True, fix_batches_to_gpus=False))[1]
        utils.set_torch_seed(1 + 1)  # cfg.common.seed + num_updates, the same on every rank
        _, _, out = task.train_step(sample, model, criterion, _Backward(), update_num=1)
        outputs.append(out)

    sample_size = sum(o["sample_size"] for o in outputs)
    assert logged["bsz"] == str(sum(o["nsentences"] for o in outputs))
    assert logged["wpb"] == str(sum(o["ntokens"] for o in outputs))
    for name, decimals in (("loss", 3), ("nll_loss", 3), ("hidden_reg", 4), ("attn_reg", 4), ("output_reg", 4)):
        expected = sum(float(o[name]) for o in outputs) / sample_size / math.log(2)
        assert expected > 0.01, (name, expected)  # dropout on: every term is really there
        tol = 0.5 * 10 ** -decimals + 1e-6
        print(f"{name}: logged {logged[name]} recomputed {expected:.7f}")
        assert abs(float(logged[name]) - expected) <= tol, (name, logged[name], expected)
        assert abs(float(logged[name]) - expected / 2) > 10 * tol  # i.e. not averaged twice
    grads = [p.grad.double() / sample_size for p in model.parameters() if p.grad is not None]
    gnorm = torch.norm(torch.stack([g.norm() for g in grads])).item()
    print(f"gnorm: logged {logged['gnorm']} recomputed {gnorm:.7f}")
    assert abs(float(logged["gnorm"]) - gnorm) <= 0.5e-3 + 1e-6, (logged["gnorm"], gnorm)

    # and the criterion's own reduction gives the same from the per-worker outputs
    with metrics.aggregate(new_root=True) as agg:
        criterion.__class__.reduce_metrics(outputs)
        reduced = agg.get_smoothed_values()
    for name in ("hidden_reg", "attn_reg", "output_reg"):
        assert reduced[name] == float(logged[name]), (name, reduced[name], logged[name])


def _trainer(data_bin, dropout=0.1):
    """A real fairseq Trainer (world size 1) on the tiny model with the LR-Drop criterion."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.trainer import Trainer

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        str(data_bin), "--user-dir", USER_DIR, "--arch", "lr_drop_transformer", *TINY_MODEL,
        "--criterion", "lr_drop_label_smoothed_cross_entropy", "--label-smoothing", "0.1", *WEIGHTS,
        *_dropout(dropout), "--optimizer", "adam", "--lr", "0.002", "--cpu", "--max-tokens", "300",
    ])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(1)
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    return task, Trainer(cfg, task, model, criterion)


def _finite_grads(model):
    return all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_dummy_and_empty_batches_train_without_nan(data_bin):
    """What fairseq does when a worker runs out of data: `{}` (ShardedIterator's fill value)
    or None becomes the dummy batch, run with ignore_grad=True. With dropout on, the forward
    must be finite, the gradient exactly 0 and the update a no-op (Adam with a zero gradient)."""
    task, trainer = _trainer(data_bin)
    model, criterion = trainer.model, trainer.criterion
    dummy = batch(task, "train", size=6)

    # the criterion itself on the dummy batch, as Trainer calls it
    model.zero_grad()
    loss, sample_size, out = task.train_step(dummy, model, criterion, _Backward(), update_num=0,
                                             ignore_grad=True)
    assert loss.item() == 0.0 and sample_size == dummy["ntokens"]
    for name in ("loss", "nll_loss", "hidden_reg", "attn_reg", "output_reg"):
        assert torch.isfinite(torch.as_tensor(out[name])) and float(out[name]) > 0, (name, out[name])
    assert all((p.grad == 0).all() for p in model.parameters() if p.grad is not None)

    # the trainer's path: an empty sample from an exhausted shard -> the dummy batch
    trainer.reset_dummy_batch(dummy)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for empty in ({}, None):
        trainer.train_step([empty])
        assert _finite_grads(model)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert trainer.get_num_updates() == 2

    # one real batch afterwards still trains: finite loss and a real change
    logs = trainer.train_step([batch(task, "train", size=6, start=6)])
    assert logs is not None
    assert _finite_grads(model)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_one_token_targets_give_finite_terms_and_gradients(data_bin):
    """The shortest target fairseq produces: an empty line, binarized to just EOS (decoder
    input = [EOS], one target token), mixed with normal rows; dropout on."""
    task, model, criterion = build(data_bin, dropout=0.3, extra=WEIGHTS)
    task.load_dataset("train")
    dataset = task.dataset("train")
    eos = task.target_dictionary.eos()
    items = [dataset[i] for i in range(4)]
    for item in items[:2]:
        item["target"] = torch.tensor([eos])
    sample = dataset.collater(items)
    lengths = sorted(sample["target"].ne(task.target_dictionary.pad()).sum(1).tolist())
    assert lengths[:2] == [1, 1] and lengths[2] > 1
    only_eos = dataset.collater([{**items[0], "id": 0}])
    for s in (sample, only_eos):
        model.zero_grad()
        torch.manual_seed(3)
        loss, _, out = task.train_step(s, model, criterion, _Backward(), update_num=0)
        assert torch.isfinite(loss)
        for name in ("hidden_reg", "attn_reg", "output_reg"):
            assert math.isfinite(float(out[name])) and float(out[name]) >= 0, (name, out[name])
        assert _finite_grads(model)
