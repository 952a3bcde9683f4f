"""Shared fixtures: tiny backbones built from configs with the real bert-base-chinese vocabulary, and real posts."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from weibo_sentiment.tiny_models import build_bert, build_gpt2

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


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests call the CLI with args=[...]; pytest's own argv would otherwise look like extra CLI arguments."""
    monkeypatch.setattr("sys.argv", ["main.py"])
