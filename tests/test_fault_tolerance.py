"""Crashes for real: SIGKILL `main.py fit` and resume it, kill a checkpoint save and a predict midway."""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from conftest import (BATCH, EPOCHS, REPO, TRAIN_POSTS, assert_same_weights, cli_args, read_predictions, real_rows,
                      run_main, write_csv)  # fmt: skip

pytestmark = pytest.mark.e2e  # every test here starts processes of ours (see pyproject.toml)

STEPS = EPOCHS * -(-TRAIN_POSTS // BATCH)


def start_main(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "main.py", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def kill_when(process: subprocess.Popen, ready: callable, timeout: float = 300) -> None:
    """SIGKILL ``process`` as soon as ``ready()`` holds; fails if it ended on its own first."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, f"ended before it could be killed: {process.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL


def test_fit_killed_with_sigkill_resumes_to_the_same_weights_and_scores(trained: dict, tiny_gpt2: str,
                                                                        tmp_path: Path) -> None:  # fmt: skip
    """The same run as the uninterrupted `trained` one, with last.ckpt every 5 steps, killed after the first."""
    args = cli_args("fit", tiny_gpt2, tmp_path, "--data.train_path", str(trained["train_csv"]),
                    "--checkpoint.last_every_n_train_steps", "5")  # fmt: skip
    last = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    kill_when(start_main(args), last.exists)
    killed_at = torch.load(last, weights_only=True)["global_step"]
    assert 0 < killed_at < STEPS and killed_at % 5 == 0  # mid-epoch: the resume must skip the batches already seen

    resumed = run_main([*args, "--ckpt_path", "last"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not (tmp_path / "lightning_logs" / "version_1").exists()  # continued in its own run folder

    expected, got = (torch.load(path, weights_only=True) for path in (trained["last"], last))
    assert (got["global_step"], got["epoch"]) == (expected["global_step"], expected["epoch"]) == (STEPS, EPOCHS - 1)
    # On one CPU machine the resumed run repeats the uninterrupted one: the same weights (to within rounding), scores.
    assert_same_weights(got["state_dict"], expected["state_dict"])
    (best,) = last.parent.glob("best-*.ckpt")
    assert best.name == trained["best"].name  # names carry epoch, step, val_f1 and val_f1_text
    monitor = next(key for key in got["callbacks"] if key.startswith("AdapterCheckpoint"))
    assert got["callbacks"][monitor]["best_model_score"] == expected["callbacks"][monitor]["best_model_score"]


def test_a_kill_during_a_checkpoint_save_leaves_the_previous_one_whole(tmp_path: Path) -> None:
    """The process dies after writing part of the new last.ckpt; the old one must still load."""
    script = textwrap.dedent(
        f"""
        import os, signal, torch
        from weibo_sentiment.training.checkpointing import AtomicCheckpointIO
        io, path = AtomicCheckpointIO(), {str(tmp_path / "last.ckpt")!r}
        io.save_checkpoint({{"global_step": 1, "w": torch.ones(1000)}}, path)
        real_save = torch.save
        def save_half_then_die(obj, file, *args, **kwargs):
            file.write(b"PK" * 1000)  # the start of a new checkpoint...
            file.flush()
            os.kill(os.getpid(), signal.SIGKILL)  # ...and the machine's OOM killer strikes
        torch.save = save_half_then_die
        io.save_checkpoint({{"global_step": 2, "w": torch.zeros(1000)}}, path)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == -signal.SIGKILL, result.stderr
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 1 and torch.equal(checkpoint["w"], torch.ones(1000))
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "last.ckpt"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".last.ckpt.")  # the cut-short temporary, beside it


def test_predict_killed_midway_leaves_the_previous_complete_file(trained: dict, tiny_gpt2: str,
                                                                 tmp_path: Path) -> None:  # fmt: skip
    posts = write_csv(tmp_path / "posts.csv", [{"review": r["review"]} for r in real_rows(400)] * 15)  # 6,000 posts
    out = tmp_path / "predictions.csv"
    out.write_text("review,label\n上一次的结果,1\n", encoding="utf-8")  # a previous run's complete output
    previous = out.read_bytes()
    process = start_main(cli_args("predict", tiny_gpt2, tmp_path, "--ckpt_path", str(trained["best"]),
                                  "--data.predict_path", str(posts), "--predict_writer.output_path", str(out)))
    partial = lambda: [p for p in tmp_path.iterdir() if p.name.startswith(".predictions.csv.") and p.stat().st_size]
    kill_when(process, lambda: bool(partial()))  # rows are being written
    assert out.read_bytes() == previous
    with open(partial()[0], encoding="utf-8", newline="") as f:
        assert 1 < len(list(csv.reader(f))) < 6_001  # it really was midway
    # The next run replaces the leftover-free output as usual.
    done = run_main(cli_args("predict", tiny_gpt2, tmp_path, "--ckpt_path", str(trained["best"]),
                             "--data.predict_path", str(posts), "--data.eval_batch_size", "256",
                             "--predict_writer.output_path", str(out)))  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(read_predictions(out)) == 6_000
