"""Shared fixtures: tiny backbones built from configs with the real bert-base-chinese vocabulary, and real posts."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
