"""fairseq loads training batches in a daemon thread (`BackgroundConsumer`, behind
`--data-buffer-size`, default 10). When training stops inside an epoch (`--max-update`,
`--stop-time-hours`), that thread may still be collating the next batch when the interpreter
exits. On Python < 3.14 a daemon thread that wakes up during finalization is ended with
pthread_exit, whose unwinding through torch's C++ frames (the GIL is retaken in a noexcept
destructor) calls std::terminate: the process aborts with "terminate called without an
active exception", exit status 134, after training finished and saved its checkpoints.

At exit (atexit handlers run before daemon threads are stopped) each consumer still running is
stopped between batches: its queue's `put` is replaced by one that ends the thread, the queue is
emptied so that a blocked `put` returns, and the thread is joined. Nothing changes before exit.
"""
import atexit
import queue
import threading

# how long to wait at exit for a consumer to finish the batch it is collating
JOIN_TIMEOUT_SECONDS = 30.0


def _end_consumer_thread(*args, **kwargs):
    # SystemExit ends a thread silently (threading.excepthook ignores it) and is not caught by
    # BackgroundConsumer.run's `except Exception`.
    raise SystemExit


def stop_background_consumers(timeout=JOIN_TIMEOUT_SECONDS):
    """Stop every live fairseq BackgroundConsumer thread between two batches and join it.
    Returns the number of threads stopped."""
    from fairseq.data.iterators import BackgroundConsumer

    consumers = [
        t for t in threading.enumerate() if isinstance(t, BackgroundConsumer) and t.is_alive()
    ]
    for consumer in consumers:
        consumer._queue.put = _end_consumer_thread
        try:
            while True:
                consumer._queue.get_nowait()
        except queue.Empty:
            pass
    stopped = 0
    for consumer in consumers:
        consumer.join(timeout)
        stopped += not consumer.is_alive()
    return stopped


def install_background_loader_exit():
    """Idempotent (registered once however often it is called); called when the plugin is imported."""
    atexit.unregister(stop_background_consumers)
    atexit.register(stop_background_consumers)
