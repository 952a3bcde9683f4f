"""Every process of ours dies with its parent, however the parent dies (``kill -9``, the out-of-memory killer, a
supervisor's timeout): one place for all entry points.

Why this is needed (upstream behaviour found, 2026-12):

- PyTorch's DataLoader workers look for their parent between batches (``ManagerWatchdog``), but a worker that finds
  it gone leaves its loop without cancelling its queue's feeder thread (``cancel_join_thread`` is called only when
  the loader shut it down), so at exit it joins a thread blocked on a full pipe that nobody reads: the reader of
  ``main.py predict`` lived on for good, its database connection open and the caller's stdout held.
- LitServe's HTTP server processes, its inference workers and multiprocessing's manager process do not watch their
  parent at all: after a ``kill -9`` of the API they went on answering on its port.
- Lightning's DDP launcher starts the other ranks as plain subprocesses, which wait for rank 0 until the
  collective's timeout (30 minutes) when it is gone.

How: on Linux the kernel kills the child when its parent dies (``prctl(PR_SET_PDEATHSIG, SIGKILL)`` set in the
child), then the child checks that its parent did not die before that was set. The kernel's signal follows the
*thread* that created the child, so a child started from a thread that may end before the process (LitServe
restarts dead workers from a monitoring thread) watches instead: a daemon thread that ends the process with
``os._exit`` once its parent is gone. That is also the way on other systems. A child killed or ended so runs no
exit handler: it never waits on a queue nobody reads.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
from typing import Any, Optional

LAUNCHER_ENV = "WEIBO_SENTIMENT_LAUNCHER_PID"
"""Set by an entry point's main process for the programs it starts (DDP's other ranks), so they tie themselves to it."""

PR_SET_PDEATHSIG = 1
WATCH_SECONDS = 0.5
ORPHANED_EXIT = 128 + signal.SIGKILL  # what a kill by the kernel's parent-death signal would have given


def die_with_parent(parent_pid: Optional[int] = None, kernel: bool = True) -> None:
    """In a child process: die when ``parent_pid`` (default: the multiprocessing parent, else ``getppid()``) dies.

    ``kernel=False``: watch from a thread even on Linux, for a child whose creating thread may end first.
    """
    if parent_pid is None:
        parent = multiprocessing.parent_process()
        parent_pid = parent.pid if parent is not None else os.getppid()
    if not (kernel and _kernel_kills_on_parent_death()):
        _watch_parent(parent_pid)
    if os.getppid() != parent_pid:  # the parent died before the tie was made: its orphan was reparented
        os._exit(ORPHANED_EXIT)


def dataloader_worker_init(worker_id: int) -> None:
    """``worker_init_fn`` of every DataLoader of ours: its worker processes die with the process that reads them."""
    die_with_parent()


def children_die_with_this_process() -> None:
    """In an entry point's main process, before it starts children: the processes multiprocessing forks from it
    (LitServe's HTTP servers and manager; DataLoader workers, which also tie themselves) die with it, and the
    programs it starts (DDP's other ranks) learn its pid, so that ``die_with_launcher`` ties them to it."""
    global _registered
    os.environ[LAUNCHER_ENV] = str(os.getpid())
    if not _registered and hasattr(os, "register_at_fork"):
        os.register_at_fork(before=_remember_forking_pid, after_in_child=_tie_forked_child)
        _registered = True


def die_with_launcher() -> None:
    """At the start of an entry point: a process that one of ours started (a DDP rank) dies with it. A DDP rank
    whose launcher is already gone exits at once instead of waiting for a rank 0 that will never come."""
    launcher = os.environ.get(LAUNCHER_ENV)
    if not launcher or not launcher.isdigit():
        return
    if os.getppid() == int(launcher):
        die_with_parent(int(launcher))
    elif os.environ.get("LOCAL_RANK", "0") != "0":  # Lightning started this rank; its launcher died meanwhile
        os._exit(ORPHANED_EXIT)


_registered = False
_forking: Optional[tuple[int, bool]] = None  # the forking process's pid, and whether its main thread forks


def _remember_forking_pid() -> None:
    global _forking
    _forking = (os.getpid(), threading.current_thread() is threading.main_thread())


def _tie_forked_child() -> None:
    if _forking is not None:  # (in the child, every forking thread has become its main thread: ask before the fork)
        parent_pid, from_main_thread = _forking
        die_with_parent(parent_pid, kernel=from_main_thread)


def _kernel_kills_on_parent_death() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc: Any = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent_pid: int) -> None:
    def watch() -> None:
        stopped = threading.Event()
        while not stopped.wait(WATCH_SECONDS):
            if os.getppid() != parent_pid:
                os._exit(ORPHANED_EXIT)

    threading.Thread(target=watch, name="weibo-sentiment-parent-watch", daemon=True).start()
