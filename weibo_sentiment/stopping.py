"""Stopping when asked: SIGTERM (systemd, Docker, Kubernetes, Slurm) and SIGINT (Ctrl-C) in every entry point.

A stopped job exits with 128 + the signal's number, as shells report it (130 for SIGINT, 143 for SIGTERM), so a
supervisor or scheduler never mistakes it for a finished one. What a stop leaves depends on the work:

- a training step in progress finishes first, never stopped halfway, and ``last.ckpt`` is written right after it,
  at the point where periodic checkpoints are written (see ``checkpointing.AdapterCheckpoint``), so that
  ``--ckpt_path last`` resumes to exactly the state of a run that was never stopped;
- everything else (start-up, validation, ``validate``, ``test``, ``predict``, the console, the export) stops at
  once: it holds nothing a later run needs, and removes its temporaries on the way out.

A second signal stops at once, whatever is running. A SIGINT that the parent process ignores (a background job of
a non-interactive shell, ``nohup``) stays ignored, as Unix programs do.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, Callable, Optional

from weibo_sentiment.compat import spare_a_stopping_launcher

LAUNCHER_STOP_GRACE_SECONDS = 60.0
"""How long the launcher of DDP ranks may take to stop of its own accord (finish a training step, write last.ckpt,
remove temporaries) once its ranks have stopped, before Lightning's watch over them kills it."""


def handle_stop_signals(handler: Callable[[int, Optional[FrameType]], Any]) -> None:
    """Give SIGTERM, and SIGINT unless the parent ignores it (a background job, ``nohup``), to ``handler``."""
    signal.signal(signal.SIGTERM, handler)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, handler)


class Interrupted(BaseException):
    """Raised where the program stands when a stop signal arrives (a BaseException, like KeyboardInterrupt, so that
    no ``except Exception`` swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


class StopRequest:
    """The stop signal this process received, if any, and whether the work in hand may finish its step first."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.finish_step = False  # set while training steps run (checkpointing.AdapterCheckpoint)

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGTERM)

    def install(self) -> None:
        """Handle SIGTERM, and SIGINT unless it is ignored. (Lightning composes its own SIGTERM handler with this one
        while a trainer runs, and puts this one back after.)"""
        handle_stop_signals(self._on_signal)

    def _on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.signum is not None:  # asked twice: stop now
            raise Interrupted(self.signum)
        self.signum = signum
        spare_a_stopping_launcher(LAUNCHER_STOP_GRACE_SECONDS)  # its ranks stop too, and must not get it killed
        if not self.finish_step:
            raise Interrupted(signum)
        # else: the training step in progress ends, then checkpointing writes last.ckpt and raises Interrupted


STOP = StopRequest()
"""This process's stop request (signal handlers are per process)."""


@contextmanager
def exit_when_stopped() -> Iterator[None]:
    """The outermost boundary of an entry point: handle the stop signals, and when one stopped the work, end the
    process with one line on stderr and 128 + the signal's number, whatever was raised on the way out (a worker
    process that the same signal stopped can raise its own error first)."""
    STOP.install()
    try:
        yield
    except BaseException:
        if STOP.signum is None:
            raise
        sys.stderr.write(f"stopped by {signal.Signals(STOP.signum).name}\n")
        raise SystemExit(STOP.exit_code) from None
