"""fairseq's batch-loading daemon thread at exit (fairseq_lrdrop/modules/background_loader_exit.py):
a process that stops while that thread is inside a torch op aborts on Python < 3.14 unless the
plugin stops the thread first."""
import signal
import sys
from pathlib import Path

import torch
from conftest import REPO, run_cli
from fairseq.data.iterators import BufferedIterator

from fairseq_lrdrop.modules.background_loader_exit import stop_background_consumers

# Exits right after taking the first batch, while the loader thread is collating the second
# (about a second of 256 x 256 matrix products, each one a GIL-free torch op).
EXIT_WHILE_LOADING = """
import sys
import torch
from fairseq.data.iterators import BufferedIterator
if sys.argv[1] == "plugin":
    import fairseq_lrdrop  # noqa: F401

class SlowBatches:
    def __len__(self):
        return 100

    def __iter__(self):
        x = torch.randn(256, 256)
        while True:
            for _ in range(3000):
                x = torch.tanh(x @ x)
            yield x

batches = BufferedIterator(1, SlowBatches())
print("took a batch of shape", tuple(next(batches).shape), flush=True)
"""


def _exit_while_loading(mode, tmp_path):
    script = tmp_path / "exit_while_loading.py"
    script.write_text(EXIT_WHILE_LOADING)
    return run_cli(Path(sys.executable).name, script, mode, check=False, env={"PYTHONPATH": str(REPO)})


def test_stock_exit_aborts_while_the_loader_thread_is_in_a_torch_op(tmp_path):
    # the failure the plugin prevents, reproduced without it
    stock = _exit_while_loading("stock", tmp_path)
    assert "took a batch of shape (256, 256)" in stock.stdout
    assert stock.returncode == -signal.SIGABRT
    assert "terminate called without an active exception" in stock.stderr


def test_plugin_stops_the_loader_thread_before_exit(tmp_path):
    with_plugin = _exit_while_loading("plugin", tmp_path)
    assert with_plugin.returncode == 0, with_plugin.stderr
    assert "took a batch of shape (256, 256)" in with_plugin.stdout
    assert "terminate called" not in with_plugin.stderr


def test_stop_background_consumers_stops_a_thread_mid_epoch():
    items = [torch.full((2,), float(i)) for i in range(50)]
    batches = BufferedIterator(3, items)
    assert torch.equal(next(batches), items[0])
    consumer = batches._consumer
    assert consumer.is_alive()  # blocked on its full queue, 46 batches to go
    assert stop_background_consumers(timeout=30) == 1
    assert not consumer.is_alive() and consumer.count < len(items)
    assert stop_background_consumers(timeout=30) == 0
