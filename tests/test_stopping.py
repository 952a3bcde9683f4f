"""Stopping as supervisors stop programs: real processes, real SIGTERM and SIGINT, and after each case the whole
process group checked empty. Each child gets SIGINT's default handler back before it starts: a background job of a
non-interactive shell (such as a test runner's) starts with SIGINT ignored, and would otherwise test nothing."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import (QUICKSTART, REPO, alive_in_group, assert_same_weights, cli_args, real_rows, run_main,
                      start_in_own_group, stat_fields, stop_process_group, write_csv)  # fmt: skip
from test_serve import call, free_port, post

pytestmark = pytest.mark.e2e  # every test here starts processes of ours (see pyproject.toml)

FIT_POSTS = 1500  # 85 steps an epoch, 3 epochs: long enough to be stopped in the second


def start(args: list[str], logs: Path, **kwargs) -> subprocess.Popen:
    """A child in a process group of its own (so that its whole tree can be checked), SIGINT at its default, its
    output in files (a pipe nobody reads could stall it)."""
    logs.mkdir(parents=True, exist_ok=True)
    out, err = open(logs / "stdout.txt", "w"), open(logs / "stderr.txt", "w")
    process = start_in_own_group(args, text=True, stdout=out, stderr=err, **kwargs)
    out.close(), err.close()
    process.logs = logs
    return process


def output(process: subprocess.Popen) -> tuple[str, str]:
    return tuple((process.logs / name).read_text(encoding="utf-8") for name in ("stdout.txt", "stderr.txt"))


def stopped(process: subprocess.Popen, signum: int, timeout: float = 30) -> tuple[int, float, str, str]:
    """Send ``signum``; the exit code, the seconds it took, its output; fails unless its whole group is gone (what is
    left after ``timeout`` is killed)."""
    took, killed = stop_process_group(process, signum, timeout)
    stdout, stderr = output(process)
    assert not killed, f"left running, then killed: {killed}; {stderr[-2000:]}"
    print(f"{signal.Signals(signum).name}: exit {process.returncode} after {took:.2f} s")  # the figures, with -s or -rP
    return process.returncode, took, stdout, stderr


def wait_for(condition: callable, process: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until ``condition()``; a process that ends first, or takes too long, is stopped with its group and fails."""
    deadline = time.monotonic() + timeout
    while not condition():
        ended = process.poll() is not None
        if ended or time.monotonic() > deadline:
            stop_process_group(process, timeout=10)
            pytest.fail(f"ended before it could be stopped: {output(process)[1][-2000:]}" if ended else "timed out")
        time.sleep(0.05)


def cpu_seconds(pid: int) -> float:
    """The CPU time a running process has had (user and system): how far it got, whatever share of the CPUs it had."""
    fields = stat_fields(Path(f"/proc/{pid}/stat"))
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---- main.py ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def long_train_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_csv(tmp_path_factory.mktemp("long-train") / "train.csv", real_rows(FIT_POSTS))


def fit_args(tiny_gpt2: str, root: Path, train_csv: Path) -> list[str]:
    # last.ckpt only after validations: what a stop writes is the only mid-epoch checkpoint
    return cli_args("fit", tiny_gpt2, root, "--data.train_path", str(train_csv), "--trainer.max_epochs", "3",
                    "--checkpoint.last_every_n_train_steps", "0")  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(tiny_gpt2: str, long_train_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("uninterrupted")
    result = run_main(fit_args(tiny_gpt2, root, long_train_csv))
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(root / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_fit_stopped_writes_last_ckpt_where_it_stood_and_resumes_to_the_same_state(
    signum: int, uninterrupted: dict, tiny_gpt2: str, long_train_csv: Path, tmp_path: Path
) -> None:
    args = fit_args(tiny_gpt2, tmp_path, long_train_csv)
    last = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    process = start([sys.executable, "main.py", *args], tmp_path / "logs")
    wait_for(last.exists, process)  # the first epoch's validation is done (an epoch takes ~2 s here)
    # Into the second epoch's training steps: measured in the CPU time the run has had since, not in wall time, which
    # says nothing of its progress when other processes share the CPUs (a second test worker): ~20-40 steps of 85.
    into_the_second_epoch = cpu_seconds(process.pid) + 1.0
    wait_for(lambda: cpu_seconds(process.pid) > into_the_second_epoch, process)
    code, took, stdout, stderr = stopped(process, signum)
    assert code == 128 + signum, stderr[-2000:]
    assert took < 10 and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == f"stopped by {signal.Signals(signum).name}"
    stopped_at = torch.load(last, weights_only=True)["global_step"]
    print(f"stopped at step {stopped_at}")
    assert 85 < stopped_at < uninterrupted["global_step"], "not stopped mid-run: the test's timing needs a look"
    # It says where it stopped and how to go on.
    assert f"Stopped by {signal.Signals(signum).name} after step {stopped_at}: wrote {last}" in stdout

    resumed = run_main([*args, "--ckpt_path", "last"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got = torch.load(last, weights_only=True)
    assert (got["global_step"], got["epoch"]) == (uninterrupted["global_step"], uninterrupted["epoch"])
    assert_same_weights(got["state_dict"], uninterrupted["state_dict"])  # the state of a run that never stopped


@pytest.fixture(scope="module")
def many_posts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6,000 real posts: a predict long enough to stop midway."""
    return write_csv(tmp_path_factory.mktemp("many") / "posts.csv", [{"review": r["review"]} for r in real_rows(400)] * 15)


@pytest.mark.parametrize("devices", [1, 2], ids=["one-process", "ddp-2-processes"])
def test_predict_stopped_removes_its_temporaries_and_leaves_the_previous_output(
    devices: int, trained: dict, tiny_gpt2: str, many_posts: Path, tmp_path: Path
) -> None:
    out = tmp_path / "predictions.csv"
    out.write_text("review,label\n上一次的结果,1\n", encoding="utf-8")
    previous = out.read_bytes()
    ddp = ["--trainer.accelerator", "cpu", "--trainer.strategy", "ddp", "--trainer.devices", "2"] if devices == 2 else []
    process = start([sys.executable, "main.py", *cli_args("predict", tiny_gpt2, tmp_path, "--ckpt_path",
                     str(trained["best"]), "--data.predict_path", str(many_posts), "--data.predict_window", "256",
                     "--predict_writer.output_path", str(out), *ddp)], tmp_path / "logs")  # fmt: skip
    temporaries = lambda: [p for p in tmp_path.rglob("*") if ".predictions.csv." in str(p) and p.is_file()
                           and p.stat().st_size]  # fmt: skip
    wait_for(lambda: bool(temporaries()), process)  # rows are being written
    code, took, _, stderr = stopped(process, signal.SIGTERM)
    assert code == 143, stderr[-2000:]
    assert took < 10 and "Traceback" not in stderr
    assert out.read_bytes() == previous
    assert not [p for p in tmp_path.rglob("*") if ".predictions.csv." in str(p)]  # no part file or folder, any rank
    assert not (tmp_path / "lightning_logs").exists() or not any((tmp_path / "lightning_logs").iterdir())


# A DDP launcher whose ranks have stopped, as Lightning starts and watches them, but with a look every 0.1 s instead of
# every 5 s, and a clean-up on the way out that lasts {cleanup} s.
LAUNCHER = """
import os, signal, subprocess, sys, time
from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver
from weibo_sentiment import stopping
stopping.LAUNCHER_STOP_GRACE_SECONDS = {grace}
rank = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(143)"])  # a rank the same stop ended
_ChildProcessObserver(main_pid=os.getpid(), child_processes=[rank], sleep_period=0.1).start()
with stopping.exit_when_stopped():
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(60)
    finally:
        time.sleep({cleanup})  # removing temporaries, writing last.ckpt
"""


@pytest.mark.parametrize(("grace", "cleanup", "code"), [(60, 1.5, 143), (0.5, 60, -signal.SIGKILL)],
                         ids=["a-stop-that-ends-is-spared", "a-stop-that-hangs-is-still-killed"])  # fmt: skip
def test_a_stopping_ddp_launcher_ends_of_its_own_accord(grace: float, cleanup: float, code: int,
                                                        tmp_path: Path) -> None:  # fmt: skip
    # Lightning's observer of the ranks kills the launcher once a rank has exited non-zero: while the launcher of a
    # stopped `predict` on two processes was still removing its temporaries, CI once saw it killed (-9, not 143).
    process = start([sys.executable, "-c", LAUNCHER.format(grace=grace, cleanup=cleanup)], tmp_path)
    process.wait(timeout=30)
    assert process.returncode == code, output(process)[1][-2000:]
    assert ("stopped by SIGTERM" in output(process)[1]) == (code == 143)


def test_validate_stopped_by_ctrl_c_exits_130_and_leaves_no_run_folder(trained: dict, tiny_gpt2: str,
                                                                      tmp_path: Path) -> None:  # fmt: skip
    val = write_csv(tmp_path / "val.csv", real_rows(400) * 30)  # 12,000 posts
    # Batches of 8: 1,500 of them, a validation far longer than a signal takes to land (in batches of 64 the tiny
    # model went through all 12,000 posts in about two seconds, and a loaded machine once finished before the stop).
    process = start([sys.executable, "main.py", *cli_args("validate", tiny_gpt2, tmp_path, "--ckpt_path",
                     str(trained["best"]), "--data.val_path", str(val), "--data.eval_batch_size", "8")],
                    tmp_path / "logs")  # fmt: skip
    wait_for(lambda: (tmp_path / "lightning_logs").exists(), process)
    code, took, _, stderr = stopped(process, signal.SIGINT)
    assert code == 130 and took < 10 and "Traceback" not in stderr
    assert not (tmp_path / "lightning_logs").exists()  # neither its run folder nor the lightning_logs it made


# ---- the console --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_the_console_stops_on_a_signal_without_a_traceback(signum: int, trained: dict, tiny_gpt2: str,
                                                           tmp_path: Path) -> None:  # fmt: skip
    process = start([sys.executable, "-m", "weibo_sentiment.console", "--config", QUICKSTART,
                     "--model.model_name_or_path", tiny_gpt2, "--ckpt_path", str(trained["best"])], tmp_path,
                    stdin=subprocess.PIPE)  # fmt: skip
    process.stdin.write("好开心[哈哈]\n")
    process.stdin.flush()
    wait_for(lambda: output(process)[0].strip() != "", process)  # it answered, and now waits for the next post
    code, _, _, stderr = stopped(process, signum)
    assert code == 128 + signum and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == f"stopped by {signal.Signals(signum).name}"


# ---- the API ------------------------------------------------------------------------------------------------------
def start_server(model: list[str], logs: Path, *extra: str, env: dict | None = None,
                 port: int | None = None) -> tuple[subprocess.Popen, str]:  # fmt: skip
    """The API on ``port`` (default: a free one), for the model that the flags ``model`` name; returns once /health
    says ok."""
    port = port or free_port()
    process = start([sys.executable, "-m", "weibo_sentiment.serve", "--config", QUICKSTART, *model, "--serve.port",
                     str(port), *extra], logs, env={**os.environ, **(env or {})})  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    headers = {"X-API-Key": env["WEIBO_SENTIMENT_API_KEY"]} if env else {}
    wait_for(lambda: _health(base, headers) == 200, process)
    return process, base


def tiny_model(trained: dict, tiny_gpt2: str) -> list[str]:
    return ["--model.model_name_or_path", tiny_gpt2, "--ckpt_path", str(trained["best"])]


def _health(base: str, headers: dict) -> int:
    try:
        return call(f"{base}/health", headers=headers)[0]
    except OSError:
        return 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_the_api_answers_requests_in_flight_then_every_process_exits_0(signum: int, trained: dict, tiny_gpt2: str,
                                                                        tmp_path: Path) -> None:  # fmt: skip
    # A request waits up to 1.5 s for others to share its batch: it is in flight when the signal comes.
    process, base = start_server(tiny_model(trained, tiny_gpt2), tmp_path, "--serve.batch_timeout", "1.5",
                                 "--serve.max_batch_size", "8")  # fmt: skip
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(post, f"{base}/api/sentiment", {"texts": ["好开心[哈哈]", "太难过了[泪]"]})
        time.sleep(0.5)
        code, took, stdout, stderr = stopped(process, signum, timeout=60)
        status, body = answer.result(timeout=30)
    assert status == 200 and len(body["results"]) == 2  # answered, not cut off
    assert code == 0, stderr[-3000:]
    assert took < 15 and f"stopped by {signal.Signals(signum).name}" in stdout


def test_a_dead_worker_shows_in_health_and_is_restarted(trained: dict, tiny_gpt2: str, tmp_path: Path) -> None:
    process, base = start_server(tiny_model(trained, tiny_gpt2), tmp_path)
    try:
        workers = [pid for pid in alive_in_group(process.pid) if "spawn_main" in _cmdline(pid)]
        assert workers
        os.kill(workers[0], signal.SIGKILL)
        deadline = time.monotonic() + 20
        while _health(base, {}) == 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _health(base, {}) == 503  # not half-alive: it says so
        wait_for(lambda: _health(base, {}) == 200, process)  # restarted
        assert post(f"{base}/api/sentiment", {"text": "好开心"})[0] == 200
    finally:
        assert stopped(process, signal.SIGTERM, timeout=60)[0] == 0


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_an_oversized_body_is_answered_413_before_it_is_read(trained: dict, tiny_gpt2: str, tmp_path: Path) -> None:
    process, base = start_server(tiny_model(trained, tiny_gpt2), tmp_path, "--serve.max_texts", "8", "--serve.max_chars", "100")
    host, port = base.removeprefix("http://").split(":")
    try:
        # 57 MB announced, nothing sent: the answer must not wait for the body.
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        started = time.monotonic()
        connection.putrequest("POST", "/api/sentiment")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(57_000_000))
        connection.endheaders()
        response = connection.getresponse()
        print(f"413 for a 57 MB Content-Length after {time.monotonic() - started:.3f} s")
        assert response.status == 413 and time.monotonic() - started < 1.0
        assert "serve.max_body_bytes" in json.loads(response.read())["detail"]
        connection.close()
        # urllib.request sends the whole body before it reads the answer: the server reads the rest of the body and
        # drops it before it closes, so that the client is not reset mid-body and reads the answer.
        started = time.monotonic()
        status, answer = call(f"{base}/api/sentiment", b"x" * 57_000_000)
        print(f"413 read by urllib.request after sending 57 MB, {time.monotonic() - started:.3f} s")
        assert status == 413 and "serve.max_body_bytes" in answer["detail"]
        # Chunked, without a length: read only up to the limit (8 x (100 x 6 + 16) + 1024 bytes), the rest dropped.
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        chunks = (b'{"texts": [' + b'"\\u597d",' * 2_000 for _ in range(200))  # ~5 MB in all
        started = time.monotonic()
        connection.request("POST", "/api/sentiment", body=chunks, headers={"Content-Type": "application/json"},
                           encode_chunked=True)  # fmt: skip
        status = connection.getresponse().status
        print(f"413 for a chunked body over the limit after {time.monotonic() - started:.3f} s")
        assert status == 413 and time.monotonic() - started < 1.0
        assert _health(base, {}) == 200 and post(f"{base}/api/sentiment", {"text": "好开心"})[0] == 200
    finally:
        assert stopped(process, signal.SIGTERM, timeout=60)[0] == 0


def test_served_beyond_loopback_the_api_needs_its_key(trained: dict, tiny_gpt2: str, tmp_path: Path) -> None:
    refused = subprocess.run([sys.executable, "-m", "weibo_sentiment.serve", "--config", QUICKSTART,
                              "--model.model_name_or_path", tiny_gpt2, "--ckpt_path", str(trained["best"]),
                              "--serve.host", "0.0.0.0"], cwd=REPO, capture_output=True, text=True,
                             env={k: v for k, v in os.environ.items() if k != "WEIBO_SENTIMENT_API_KEY"})  # fmt: skip
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "error: serve.host 0.0.0.0 lets other machines call the API: set an API key (environment variable "
        "WEIBO_SENTIMENT_API_KEY, or serve.api_key), or serve on 127.0.0.1"
    ]
    key = "k3y-that-must-not-leak"
    process, base = start_server(tiny_model(trained, tiny_gpt2), tmp_path, "--serve.host", "0.0.0.0", "--serve.batch_timeout",
                                 "1.5", env={"WEIBO_SENTIMENT_API_KEY": key})  # fmt: skip
    url = f"{base}/api/sentiment"
    try:
        for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}):
            started = time.monotonic()
            status, answer = call(url, json.dumps({"text": "好开心"}).encode(), headers=headers)
            # 401 at once: a request that reached the model's queue would wait 1.5 s for company first
            assert status == 401 and "API key" in answer["detail"] and time.monotonic() - started < 1.0
        assert call(url, json.dumps({"text": "好开心"}).encode(), headers={"X-API-Key": key})[0] == 200
        assert call(url, json.dumps({"text": "好开心"}).encode(), headers={"Authorization": f"Bearer {key}"})[0] == 200
    finally:
        code, _, stdout, stderr = stopped(process, signal.SIGTERM, timeout=60)
    assert code == 0 and key not in stdout and key not in stderr
