"""Shared fixtures: tiny backbones built from configs with the real bert-base-chinese vocabulary, and real posts."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from contextlib import suppress
from pathlib import Path
from typing import Iterator, NamedTuple

import pytest

# Under pytest-xdist the workers, and the processes each starts, share the CPUs: each gets its share of compute threads
# (torch's and onnxruntime's follow OMP_NUM_THREADS), not all of them each, where their threads would spin against one
# another's. Set before torch is imported, and inherited by every process a test starts.
if (workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // workers)))

import torch  # noqa: E402

from database_servers import Server, remove, start_mariadb, start_postgresql
from tools.tiny_models import build_bert, build_gpt2

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "sample" / "weibo_senti_4k.csv"


def real_rows(n: int, offset: int = 0) -> list[dict[str, str]]:
    """The first ``n`` real Weibo posts (label, review) of the bundled sample, after ``offset``."""
    with open(SAMPLE, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return rows[offset : offset + n]


def write_csv(path: Path, rows: list[dict[str, str]], columns: list[str] | None = None) -> Path:
    columns = columns or list(rows[0])
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({c: row[c] for c in columns} for row in rows)
    return path


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_gpt2(tmp_path_factory.mktemp("tiny-gpt2"), n_embd=32, n_layer=2, n_head=2))


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_bert(tmp_path_factory.mktemp("tiny-bert"), hidden_size=32, num_layers=2))


@pytest.fixture(scope="session")
def train_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 real labelled posts."""
    return write_csv(tmp_path_factory.mktemp("data") / "train.csv", real_rows(300))


@pytest.fixture(scope="session")
def posts_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """50 other real posts to label, with an id column and no label."""
    rows = [{"id": f"p{i}", "review": row["review"]} for i, row in enumerate(real_rows(50, offset=300))]
    return write_csv(tmp_path_factory.mktemp("posts") / "posts.csv", rows)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--repeat", type=int, default=1, metavar="N",
                     help="run each selected test N times (run-0 .. run-N-1), to count rare failures; "
                          "benchmarks/stopping_loop.py uses it")  # fmt: skip


@pytest.fixture
def repeat_index(request: pytest.FixtureRequest) -> int:
    return request.param


@pytest.hookimpl(trylast=True)  # after the tests' own parameters: ids read [one-process-run-0]
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    repeat = metafunc.config.getoption("repeat")
    if repeat > 1:  # a parameter of its own, so the test's other parameters and module fixtures stay as they are
        metafunc.fixturenames.append("repeat_index")
        metafunc.parametrize("repeat_index", range(repeat), indirect=True, ids=[f"run-{i}" for i in range(repeat)])


QUICKSTART = str(REPO / "configs" / "quickstart.yaml")
EPOCHS, TRAIN_POSTS, BATCH = 2, 270, 16  # 300 posts, 10 % held out


def cli_args(subcommand: str, tiny_gpt2: str, root: Path, *extra: str) -> list[str]:
    return [
        subcommand,
        "--config", QUICKSTART,
        "--model.model_name_or_path", tiny_gpt2,
        "--trainer.default_root_dir", str(root),
        "--trainer.enable_progress_bar", "false",
        "--trainer.max_epochs", str(EPOCHS),
        *extra,
    ]  # fmt: skip


def run_main(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "main.py", *args], cwd=REPO, capture_output=True, text=True, **kwargs)


def run_together(commands: dict[str, list[str]], input: str = "", timeout: float = 300,
                 **popen_kwargs) -> dict[str, subprocess.CompletedProcess]:  # fmt: skip
    """Independent commands at once, each with ``input`` on its standard input: each spends its first seconds
    importing, which two cores overlap. Every one is waited for; one still running after ``timeout`` is killed."""
    popen_kwargs.setdefault("cwd", REPO)
    started = {name: subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, **popen_kwargs) for name, command in commands.items()}  # fmt: skip
    results = {}
    try:
        for name, process in started.items():
            stdout, stderr = process.communicate(input=input, timeout=timeout)
            results[name] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    finally:
        for process in started.values():
            process.kill()  # a no-op for those that ended; one that hung does not outlive the test
            process.wait()
    return results


# A resumed run repeats the uninterrupted one, in practice bit for bit; but the CPU's math library may round a sum
# differently now and then (seen once in a whole suite on a 2-core Intel Xeon: 4e-8 after 255 steps), while a
# resume that trains one batch twice moves the weights by ~1e-2 (measured, 2026-12-06). 1e-6 tells the two apart.
RESUMED_WEIGHTS_ATOL = 1e-6


def assert_same_weights(got: dict, expected: dict) -> None:
    """Two checkpoints' ``state_dict``s hold the same tensors, to within float rounding (``RESUMED_WEIGHTS_ATOL``)."""
    assert got.keys() == expected.keys()
    for key, tensor in expected.items():
        torch.testing.assert_close(got[key], tensor, rtol=0, atol=RESUMED_WEIGHTS_ATOL,
                                   msg=lambda detail, key=key: f"{key}: {detail}")


def read_predictions(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_gpt2: str, train_csv: Path) -> dict:
    """One real `python main.py fit` on 300 real posts; the tests below read what it wrote."""
    root = tmp_path_factory.mktemp("run")
    result = run_main(cli_args("fit", tiny_gpt2, root, "--data.train_path", str(train_csv)))
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = root / "lightning_logs" / "version_0"
    (best,) = run_dir.glob("checkpoints/best-*.ckpt")
    return {"root": root, "run_dir": run_dir, "best": best, "last": run_dir / "checkpoints" / "last.ckpt",
            "stdout": result.stdout, "train_csv": train_csv}  # fmt: skip


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests call the CLI with args=[...]; pytest's own argv would otherwise look like extra CLI arguments."""
    monkeypatch.setattr("sys.argv", ["main.py"])


@pytest.fixture(scope="session", autouse=True)
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ONNX exports made by the tests go to a folder of their own (subprocesses inherit it), not ~/.cache."""
    folder = tmp_path_factory.mktemp("onnx-cache")
    os.environ["WEIBO_SENTIMENT_CACHE"] = str(folder)
    return folder


def quickstart_args(subcommand: str, root: Path, *extra: str) -> list[str]:
    return [subcommand, "--config", QUICKSTART, "--trainer.default_root_dir", str(root),
            "--trainer.enable_progress_bar", "false", *extra]  # fmt: skip


@pytest.fixture(scope="session")
def quickstart(tmp_path_factory: pytest.TempPathFactory, train_csv: Path) -> dict:
    """The quickstart model fine-tuned briefly (one epoch on 300 real posts), and 60 other posts to label, one of
    them without text."""
    root = tmp_path_factory.mktemp("quickstart")
    result = run_main(quickstart_args("fit", root, "--data.train_path", str(train_csv), "--trainer.max_epochs", "1"))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [{"id": f"p{i}", "review": row["review"]} for i, row in enumerate(real_rows(60, offset=400))]
    rows[7]["review"] = "  "
    posts = write_csv(root / "posts.csv", rows)
    return {"root": root, "ckpt": str(next(root.glob("lightning_logs/version_0/checkpoints/last.ckpt"))), "posts": posts}


# ---- processes the tests start --------------------------------------------------------------------------------------
def start_in_own_group(args: list[str], **popen_kwargs) -> subprocess.Popen:
    """A child in a session, so a process group, of its own (its pid is the group's id): its whole tree, LitServe's
    workers and all, can be checked and stopped at once, and no signal meant for it reaches pytest. SIGINT is back at
    its default: a background job of a non-interactive shell (such as a test runner's) starts with it ignored."""
    restore_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    popen_kwargs.setdefault("cwd", REPO)
    return subprocess.Popen(args, start_new_session=True, preexec_fn=restore_sigint, **popen_kwargs)


def stat_fields(stat: Path) -> list[str]:
    """The fields of a /proc/PID/stat after the command's name (which may hold spaces): state, ppid, pgrp, ..."""
    return stat.read_text().rsplit(")", 1)[1].split()


def alive_in_group(pgid: int) -> list[int]:
    """Processes of the group that still run (zombies waiting to be reaped do not count)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_fields(stat)
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            alive.append(int(stat.parent.name))
    return alive


class GroupStop(NamedTuple):
    seconds: float  # from the signal until the process exited, or was killed
    killed: list[int]  # what of its group still ran and was killed: nothing when it stopped as asked


def stop_process_group(process: subprocess.Popen, signum: int = signal.SIGTERM, timeout: float = 30,
                       grace: float = 10) -> GroupStop:  # fmt: skip
    """Stop a process of ``start_in_own_group`` and all of its group: ``signum``, up to ``timeout`` s for the process
    to exit and ``grace`` s more for the rest of its group, then SIGKILL to the whole group for whatever is left.
    (Killing the process alone would leave its children running, orphaned: LitServe's workers, DataLoader workers.)"""
    sent = time.monotonic()
    process.send_signal(signum)  # nothing, if it has already exited
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=timeout)
    seconds = time.monotonic() - sent
    deadline = time.monotonic() + grace
    while process.poll() is not None and alive_in_group(process.pid) and time.monotonic() < deadline:
        time.sleep(0.1)  # it stopped; its children may take a moment more
    left = alive_in_group(process.pid)
    if left:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        deadline = time.monotonic() + 10
        while alive_in_group(process.pid) and time.monotonic() < deadline:  # SIGKILL takes a moment to land
            time.sleep(0.05)
    return GroupStop(seconds, left)


# Every process that this test session starts inherits this variable, with a value of this session's own: it survives
# what a check by parentage would miss (a child orphaned by its killed parent belongs to init, no more to pytest), and
# no process started outside this session (a developer's own server, another pytest run) carries it.
SESSION_MARK = "WEIBO_SENTIMENT_TEST_SESSION"
# The project's programs, and the multiprocessing children they start (LitServe's model workers); forked children
# run their parent's command line.
PROJECT_COMMAND = re.compile(r"(^|[\s/])main\.py(\s|$)|-m weibo_sentiment\.(serve|console|export)(\s|$)"
                             r"|(^|[\s/])weibo-sentiment-[\w-]+(\s|$)"
                             r"|multiprocessing\.spawn import spawn_main")  # fmt: skip


def project_processes_of_session(mark: bytes) -> dict[int, str]:
    """Running processes of the project whose environment holds ``mark``, other than pytest and its forks (a zombie's
    environment reads empty)."""
    own_pid, left = os.getpid(), {}
    own_cmdline = Path(f"/proc/{own_pid}/cmdline").read_bytes()
    for folder in Path("/proc").glob("[0-9]*"):
        try:
            environ, cmdline = (folder / "environ").read_bytes(), (folder / "cmdline").read_bytes()
        except OSError:  # gone, or another user's
            continue
        command = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
        if mark in environ.split(b"\0") and cmdline != own_cmdline and PROJECT_COMMAND.search(command):
            left[int(folder.name)] = command
    return left


@pytest.fixture(scope="session", autouse=True)
def no_project_process_left() -> Iterator[None]:
    """After the suite (this fixture's teardown comes after those of the fixtures that start servers), no process of
    the project that the tests started may still run: it fails naming them, and kills them."""
    os.environ[SESSION_MARK] = uuid.uuid4().hex
    mark = f"{SESSION_MARK}={os.environ[SESSION_MARK]}".encode()
    yield
    deadline = time.monotonic() + 10  # a server stopped by the last test may still be reaping its workers
    while (left := project_processes_of_session(mark)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in left:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, "processes of the project that the tests started still ran after the suite (now killed):\n" + \
        "\n".join(f"  {pid}: {command}" for pid, command in left.items())  # fmt: skip


# Real database servers, started once per test run on 127.0.0.1 (database_servers), for every test file that needs one.
@pytest.fixture(scope="session")
def postgresql_server() -> Iterator[Server]:
    server = start_postgresql()
    yield server
    remove(server)


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[Server]:
    server = start_mariadb()
    yield server
    remove(server)
