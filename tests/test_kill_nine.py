"""Nothing outlives a ``kill -9``: each entry point is started on real data in a process group of its own, its main
process (only) is killed with SIGKILL mid-work, as the out-of-memory killer or ``docker stop`` would, and within
15 s no process of its group may be left: LitServe's HTTP servers, model workers and manager, the DataLoader
processes that read, the other DDP rank. Then what they held is free again: the API's port, PostgreSQL's
connections. (SIGTERM and Ctrl-C: test_stopping.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from contextlib import suppress
from pathlib import Path
from typing import Callable

import pytest
import sqlalchemy as sa

from conftest import alive_in_group, cli_args, real_rows, start_in_own_group, write_csv
from database_servers import Server
from test_stopping import output, start, start_server, stopped, tiny_model
from tools.crawl_db import fill

pytestmark = pytest.mark.e2e  # every test here starts processes of ours (see pyproject.toml)

GONE_WITHIN = 15  # seconds, from the kill
STOPPED_BEFORE_KILL = 1.0  # seconds
# Batches larger than a pipe's buffer (64 KiB): a reader ahead of a stopped main process blocks writing one.
BIG_BATCHES = ["--data.eval_batch_size", "512"]
DDP = ["--trainer.accelerator", "cpu", "--trainer.strategy", "ddp", "--trainer.devices", "2"]


def command_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "(gone)"


def kill_nine_when(process: subprocess.Popen, ready: Callable[[], bool], timeout: float = 180) -> list[str]:
    """SIGKILL the main process of ``process``'s group once ``ready()`` holds (stopped a moment first); the commands of the group's other
    processes at that moment. Fails when any process of the group is still alive ``GONE_WITHIN`` s later (and kills
    them, so that nothing is left for the next test)."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            stopped_early = process.poll() is not None
            os.killpg(process.pid, signal.SIGKILL)
            said = output(process)[1][-2000:] if hasattr(process, "logs") else ""
            pytest.fail(f"{'ended' if stopped_early else 'timed out'} before it could be killed: {said}")
        time.sleep(0.05)
    children = [command_of(pid) for pid in alive_in_group(process.pid) if pid != process.pid]
    # Stopped first, as a process the out-of-memory killer picks has often stopped reading (paging, or stuck): its
    # children fill the pipes to it, and a child that then waits at exit on a full pipe is caught here.
    process.send_signal(signal.SIGSTOP)
    time.sleep(STOPPED_BEFORE_KILL)
    process.kill()
    process.wait()
    killed_at = time.monotonic()
    while alive_in_group(process.pid) and time.monotonic() - killed_at < GONE_WITHIN:
        time.sleep(0.1)
    left = {pid: command_of(pid) for pid in alive_in_group(process.pid)}
    if left:
        os.killpg(process.pid, signal.SIGKILL)
    assert not left, f"alive {GONE_WITHIN} s after kill -9 of the main process: {left}"
    return children


def writing_to_a_full_pipe(process: subprocess.Popen) -> bool:
    """Whether a child of the group is blocked writing to a pipe: a reader ahead of the main process, a batch in its
    queue's pipe, the moment its exit would wait on that pipe for good if nothing tied it to its parent."""
    for pid in alive_in_group(process.pid):
        if pid != process.pid:
            for task in Path(f"/proc/{pid}/task").glob("*/wchan"):
                with suppress(OSError):
                    if "pipe_write" in task.read_text():
                        return True
    return False


def reading_ahead(process: subprocess.Popen, started: Callable[[], bool], patience: float = 20) -> Callable[[], bool]:
    """Ready once ``started()`` holds and a child is blocked on a full pipe (or ``patience`` s after it started)."""
    since: list[float] = []

    def ready() -> bool:
        if not since:
            if started():
                since.append(time.monotonic())
            return False
        return writing_to_a_full_pipe(process) or time.monotonic() - since[0] > patience

    return ready


def group_grew(process: subprocess.Popen, processes: int) -> Callable[[], bool]:
    return lambda: len(alive_in_group(process.pid)) >= processes


def test_the_api_killed_leaves_no_worker_and_its_port_serves_again(trained: dict, tiny_gpt2: str,
                                                                   tmp_path: Path) -> None:  # fmt: skip
    process, base = start_server(tiny_model(trained, tiny_gpt2), tmp_path / "first")
    children = kill_nine_when(process, lambda: True)
    assert len(children) >= 3, children  # LitServe's HTTP server, model worker and manager: all gone now
    port = int(base.rsplit(":", 1)[1])
    again, base_again = start_server(tiny_model(trained, tiny_gpt2), tmp_path / "second", port=port)
    try:
        from test_serve import post

        status, answer = post(f"{base_again}/api/sentiment", {"text": "好开心[哈哈]"})
        assert status == 200 and answer["sentiment"] in {"positive", "negative"}
    finally:
        assert stopped(again, signal.SIGTERM)[0] == 0


def test_predict_from_a_file_killed_leaves_no_reader(trained: dict, tiny_gpt2: str, tmp_path: Path) -> None:
    posts = write_csv(tmp_path / "posts.csv", [{"review": r["review"]} for r in real_rows(400)] * 30)  # 12,000
    process = start([sys.executable, "main.py", *cli_args(
        "predict", tiny_gpt2, tmp_path, "--ckpt_path", str(trained["best"]), "--data.predict_path", str(posts),
        "--predict_writer.output_path", str(tmp_path / "predictions.csv"), *BIG_BATCHES)], tmp_path / "logs")  # fmt: skip
    writing = lambda: any(p.name.startswith(".predictions.csv.") and p.stat().st_size for p in tmp_path.iterdir())  # noqa: E731
    children = kill_nine_when(process, reading_ahead(process, writing))
    assert children, "predict reads in a process of its own: it was running"


def database_predict(trained: dict, tiny_gpt2: str, root: Path, url: str) -> subprocess.Popen:
    args = cli_args("predict", tiny_gpt2, root, "--ckpt_path", str(trained["last"]), "--data.predict_path", url,
                    "--data.table", "weibo_note", "--data.text_column", "content", "--data.id_column", "note_id",
                    "--predict_writer.output_path", url, "--data.predict_window", "1024", *BIG_BATCHES)
    return start([sys.executable, "main.py", *args], root / "logs")


def labelled(url: str) -> Callable[[], bool]:
    def any_labelled() -> bool:
        engine = sa.create_engine(url)
        try:
            with engine.connect() as connection:
                return connection.execute(sa.text("SELECT count(*) FROM weibo_sentiment_labels")).scalar_one() > 0
        except sa.exc.DBAPIError:  # not created yet, or locked by a write
            return False
        finally:
            engine.dispose()

    return any_labelled


def test_predict_from_sqlite_killed_leaves_no_reader(trained: dict, tiny_gpt2: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'crawl.db'}"
    fill(url, notes=3000, comments=0)
    process = database_predict(trained, tiny_gpt2, tmp_path, url)
    children = kill_nine_when(process, reading_ahead(process, labelled(url)))
    assert children


def connections_to(server: Server, database: str) -> int:
    admin = sa.create_engine(server.url(database="postgres"))
    try:
        with admin.connect() as connection:
            return connection.execute(sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = :name"),
                                      {"name": database}).scalar_one()  # fmt: skip
    finally:
        admin.dispose()


def test_predict_from_postgresql_killed_gives_back_its_connections(trained: dict, tiny_gpt2: str,
                                                                   postgresql_server: Server, tmp_path: Path) -> None:  # fmt: skip
    name = f"kill_{uuid.uuid4().hex[:10]}"
    url = postgresql_server.new_database(name)
    fill(url, notes=3000, comments=0)
    before = connections_to(postgresql_server, name)
    process = database_predict(trained, tiny_gpt2, tmp_path, url)
    during: list[int] = []
    reading = lambda: labelled(url)() and during.append(connections_to(postgresql_server, name)) is None  # noqa: E731
    children = kill_nine_when(process, reading_ahead(process, reading))
    assert children and during[-1] > before  # it was connected when it was killed
    deadline = time.monotonic() + GONE_WITHIN
    while connections_to(postgresql_server, name) != before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert connections_to(postgresql_server, name) == before


def test_fit_with_workers_killed_leaves_no_worker(trained: dict, tiny_gpt2: str, tmp_path: Path) -> None:
    posts = write_csv(tmp_path / "train.csv", real_rows(1500))
    process = start([sys.executable, "main.py", *cli_args(
        "fit", tiny_gpt2, tmp_path, "--data.train_path", str(posts), "--data.num_workers", "2",
        "--trainer.max_epochs", "5")], tmp_path / "logs")  # fmt: skip
    children = kill_nine_when(process, group_grew(process, 3))  # training: its two loader workers run
    assert len(children) >= 2


def test_ddp_predict_killed_leaves_neither_rank_nor_reader(trained: dict, tiny_gpt2: str, tmp_path: Path) -> None:
    posts = write_csv(tmp_path / "posts.csv", [{"review": r["review"]} for r in real_rows(400)] * 30)
    process = start([sys.executable, "main.py", *cli_args(
        "predict", tiny_gpt2, tmp_path, "--ckpt_path", str(trained["best"]), "--data.predict_path", str(posts),
        "--predict_writer.output_path", str(tmp_path / "predictions.csv"), *DDP)], tmp_path / "logs")  # fmt: skip
    # Rank 0, rank 1 and each rank's reader: killed once all four run.
    children = kill_nine_when(process, group_grew(process, 4))
    assert any("main.py" in command for command in children)


def test_a_child_whose_parent_died_before_it_was_tied_exits_at_once(tmp_path: Path) -> None:
    """The window between a fork and the tie: a child that finds itself orphaned when it ties itself exits."""
    script = (
        "import os, sys, time\n"
        "from weibo_sentiment.processes import die_with_parent\n"
        "parent = os.getpid()\n"
        "if os.fork() == 0:\n"
        "    while os.getppid() == parent: time.sleep(0.01)\n"  # the parent is gone before the child ties itself
        "    die_with_parent(parent)\n"
        "    open(sys.argv[1], 'w').write('survived')\n"
        "    os._exit(0)\n"
        "os._exit(0)\n"
    )
    marker = tmp_path / "survived.txt"
    subprocess.run([sys.executable, "-c", script, str(marker)], check=True)
    time.sleep(2)
    assert not marker.exists()


def test_a_child_started_from_a_thread_outlives_the_thread_not_the_process() -> None:
    """A child forked from a thread that ends is watched, not killed with that thread (LitServe's restarted workers);
    it still dies with its process."""
    script = (
        "import multiprocessing as mp, sys, threading, time\n"
        "from weibo_sentiment.processes import children_die_with_this_process\n"
        "children_die_with_this_process()\n"
        "found = []\n"
        "def start(): found.append(mp.get_context('fork').Process(target=time.sleep, args=(60,)))\n"
        "def run(): found[0].start()\n"
        "start(); t = threading.Thread(target=run); t.start(); t.join()\n"  # its creator thread has ended
        "time.sleep(1.5)\n"
        "print(found[0].pid, found[0].is_alive(), flush=True)\n"
        "time.sleep(60)\n"
    )
    process = start_in_own_group([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pid, alive = process.stdout.readline().split()
    assert alive == "True"  # not killed when the thread that started it ended
    assert pid in [str(child) for child in alive_in_group(process.pid)]
    kill_nine_when(process, lambda: True)  # ...but gone with its process
