"""Every private name of Lightning and LitServe this project relies on, in one place, each with why.

Both libraries leave some things this project needs without a public way; where a public hook does the job, the
project uses it instead (``cli.SentimentCLI`` resolves checkpoints in ``parse_arguments``/
``before_instantiate_classes`` and cleans up in its subcommand methods). When this module is imported it checks, for
each of the two libraries already loaded, that the names it relies on exist: an upgrade that removed or renamed one
stops the program with one line naming the installed version, not deep inside a training run or a shutdown.
``tests/test_layout.py`` checks that no other module uses a private name of either library.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from functools import partial
from importlib.metadata import version
from typing import Any, Optional


class IncompatibleVersion(ImportError):
    """An installed library lacks a name this project relies on."""


def _require(package: str, owner: Any, names: tuple[str, ...]) -> None:
    missing = [name for name in names if not hasattr(owner, name)]
    if missing:
        raise IncompatibleVersion(
            f"{package} {version(package)} has no {owner.__name__}.{', '.join(missing)}, which weibo-sentiment relies "
            f"on (weibo_sentiment/compat.py); install the {package} version that pyproject.toml asks for"
        )


# ---- Lightning: ModelCheckpoint ------------------------------------------------------------------------------------
# Lightning 2.6 writes last.ckpt only when a top-k checkpoint is saved at the same step and offers no public way to
# write it at another moment. checkpointing.AdapterCheckpoint writes it after every validation, every N training
# steps and when a stop signal ends training, through the private method Lightning itself uses, so the file is
# named, versioned and recorded (last_model_path) as Lightning's own.
LIGHTNING_CHECKPOINT_NAMES = ("_save_last_checkpoint", "_monitor_candidates", "_should_save_on_train_epoch_end",
                              "_should_skip_saving_checkpoint")  # fmt: skip


def save_last_checkpoint(callback: Any, trainer: Any) -> None:
    """Write ``last.ckpt`` now, with the monitored values of this moment."""
    callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))


@contextmanager
def without_recording_the_step(callback: Any) -> Iterator[None]:
    """A save records its step and ModelCheckpoint skips any later save at that step: a periodic ``last.ckpt`` must
    not keep a validation at the same step from choosing the best checkpoint."""
    saved_step = callback._last_global_step_saved
    try:
        yield
    finally:
        callback._last_global_step_saved = saved_step


def saves_after_training_epochs(callback: Any, trainer: Any) -> bool:
    """Whether the callback checkpoints at the end of training epochs (else after validations)."""
    return callback._should_save_on_train_epoch_end(trainer)


def skips_saving_now(callback: Any, trainer: Any) -> bool:
    """Lightning's own reasons not to save at this moment (sanity check, fast_dev_run, saved at this step)."""
    return callback._should_skip_saving_checkpoint(trainer)


# ---- Lightning: the DDP launcher's child-process observer -----------------------------------------------------------
# Lightning's DDP launcher watches the ranks it started from a thread of rank 0 that looks every 5 s and, once one has
# exited with a non-zero code, kills them all and rank 0 itself with SIGKILL (so that no rank waits forever in a
# collective for a dead one). A stop signal ends every rank with 128 + its number (Lightning forwards SIGTERM to the
# ranks itself, Ctrl-C reaches them all), so a rank 0 still removing its temporaries or writing last.ckpt when the
# observer looked was killed halfway: seen once in CI as ``main.py predict`` on two processes exiting -9, not 143.
# There is no public way to tell the observer that rank 0 is stopping; spare_a_stopping_launcher wraps its look.
LIGHTNING_OBSERVER_MODULE = "lightning.fabric.strategies.launchers.subprocess_script"
LIGHTNING_OBSERVER_NAMES = ("_ChildProcessObserver",)


def spare_a_stopping_launcher(grace_seconds: float) -> None:
    """This process was asked to stop: if it is the launcher of DDP ranks, the observer of those ranks leaves it
    ``grace_seconds`` to exit of its own accord (its ranks die with it, ``processes.py``) before it does what it
    would have done, so a stop that hangs still ends."""
    module = sys.modules.get(LIGHTNING_OBSERVER_MODULE)
    if module is None:  # Lightning never started ranks in this process
        return
    deadline = time.monotonic() + grace_seconds
    for thread in threading.enumerate():
        if isinstance(thread, module._ChildProcessObserver):
            thread._run = partial(_look_after, deadline, thread._run)


def _look_after(deadline: float, look: Callable[[], bool]) -> bool:
    """The observer's look (True: done watching), or before ``deadline`` nothing (False: keep watching)."""
    return look() if time.monotonic() >= deadline else False


# ---- LitServe: LitServer's shutdown ---------------------------------------------------------------------------------
# LitServer stops its worker queues before its HTTP servers, so requests in flight wait for nothing, and it has no
# public hook for the moment the workers are up or for the order of its shutdown. DrainingServer overrides the two
# private methods that do those (LitServe 0.2.x), and reads LitServer's shutdown event and transport.
LITSERVE_SERVER_NAMES = ("_start_server", "_perform_graceful_shutdown")


def _draining_server_class() -> type:
    import litserve as ls

    _require("litserve", ls.LitServer, LITSERVE_SERVER_NAMES)

    class DrainingServer(ls.LitServer):
        """LitServer that stops in the order that lets requests in flight finish.

        First the HTTP servers stop accepting and answer what they hold (uvicorn's graceful shutdown, up to
        ``drain_seconds``) while the model workers still run, then the workers and the queues between them stop.
        (LitServe's own order closes the queues first, so requests in flight would wait for nothing.) A worker that dies
        is restarted meanwhile; the restarting stops before shutting down, so that no worker outlives the server.
        """

        def __init__(self, *args: Any, drain_seconds: float, **kwargs: Any) -> None:
            super().__init__(*args, restart_workers=True, **kwargs)
            self.uvicorn_graceful_timeout = drain_seconds
            self.monitor_internal = 0.5  # how often dead workers are looked for (/health is 503 from then until ready)
            self.stop_signal: Optional[int] = None
            self._serving = self._stopping = False

        def on_stop_signal(self, signum: int, frame: Any) -> None:
            """SIGTERM or SIGINT in the main process: shut down now, or as soon as starting up is over."""
            self.stop_signal = self.stop_signal or signum
            if self._serving:
                raise KeyboardInterrupt  # LitServer.run() turns it into its shutdown

        def _start_server(self, *args: Any, **kwargs: Any) -> Any:
            workers = super()._start_server(*args, **kwargs)
            self._serving = True
            if self.stop_signal is not None:  # asked to stop while the workers were loading the model
                self._shutdown_event.set()
            return workers

        def _perform_graceful_shutdown(self, manager: Any, uvicorn_workers: dict, shutdown_reason: str = "normal"
                                       ) -> None:  # fmt: skip
            if self._stopping:
                return
            self._stopping = True
            # The worker monitor's loop ends when the event is set. Set from a thread of its own: the main thread's
            # connection to the manager may still wait on the event (the wait that the signal interrupted).
            setter = threading.Thread(target=set_ignoring_errors, args=(self._shutdown_event,), daemon=True)
            setter.start()
            setter.join(timeout=5)
            for thread in threading.enumerate():
                if thread.name == "litserve-monitoring" and thread is not threading.current_thread():
                    thread.join(timeout=5)
            for server in uvicorn_workers.values():  # stop accepting, finish requests in flight
                server.terminate()
            for server in uvicorn_workers.values():
                stop_process(server, self.uvicorn_graceful_timeout + 5)
            with suppress(Exception):
                self._transport.close(send_sentinel=False)
            for worker in self.inference_workers:
                worker.terminate()
            for worker in self.inference_workers:
                stop_process(worker, 10)
            manager.shutdown()

    return DrainingServer


def set_ignoring_errors(event: Any) -> None:
    with suppress(Exception):  # the manager may already be gone
        event.set()


def stop_process(process: Any, timeout: float) -> None:
    """Wait up to ``timeout`` for a process that was asked to stop, then kill it."""
    process.join(timeout=timeout)
    if process.is_alive():
        process.kill()
        process.join(timeout=5)


def __getattr__(name: str) -> Any:
    # LitServe is imported only by those who serve (importing it takes ~0.7 s that training does not need to pay).
    if name == "DrainingServer":
        globals()[name] = cls = _draining_server_class()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _check_loaded_libraries() -> None:
    if "lightning.pytorch" in sys.modules:
        from lightning.pytorch.callbacks import ModelCheckpoint

        _require("lightning", ModelCheckpoint, LIGHTNING_CHECKPOINT_NAMES)
    if LIGHTNING_OBSERVER_MODULE in sys.modules:
        observer_module = sys.modules[LIGHTNING_OBSERVER_MODULE]
        _require("lightning", observer_module, LIGHTNING_OBSERVER_NAMES)
        _require("lightning", observer_module._ChildProcessObserver, ("_run",))
    if "litserve" in sys.modules:
        import litserve

        _require("litserve", litserve.LitServer, LITSERVE_SERVER_NAMES)


_check_loaded_libraries()
