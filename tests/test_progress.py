"""Predict's progress bar counts posts against the input's size (n/N and the time left), says when standard input
gives it no total, and ends before the run's summary line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import QUICKSTART, REPO, real_rows, write_csv

pytestmark = pytest.mark.e2e  # every test here starts processes of ours (see pyproject.toml)


def predict_with_the_bar(trained: dict, tiny_gpt2: str, tmp_path: Path, *extra: str, **run) -> list[str]:
    """``main.py predict`` as a user runs it, progress bar on; the lines of its stdout (a file, not a terminal: Rich
    prints the bar once, as it ends)."""
    args = [sys.executable, "main.py", "predict", "--config", QUICKSTART, "--model.model_name_or_path", tiny_gpt2,
            "--ckpt_path", str(trained["best"]), "--trainer.default_root_dir", str(tmp_path),
            "--predict_writer.output_path", str(tmp_path / "out.csv"), *extra]  # fmt: skip
    result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, **run)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.splitlines()


def bar_and_summary(lines: list[str]) -> tuple[int, str, int]:
    """The index and text of the bar's last line, and the index of the summary line."""
    (bar,) = [i for i, line in enumerate(lines) if line.startswith("Predicting")]
    (summary,) = [i for i, line in enumerate(lines) if line.startswith("Wrote ")]
    return bar, lines[bar], summary


def test_the_bar_counts_the_posts_of_a_file_and_ends_before_the_summary(trained: dict, tiny_gpt2: str,
                                                                         tmp_path: Path) -> None:  # fmt: skip
    rows = [{"review": row["review"]} for row in real_rows(70, offset=500)]
    rows[3]["review"] = "第一行\n第二行，引号里的换行[哈哈]"  # one post over two lines: a count of lines would say 71
    rows[9]["review"] = ""  # a post without text is still a row of the output
    posts = write_csv(tmp_path / "posts.csv", rows)
    lines = predict_with_the_bar(trained, tiny_gpt2, tmp_path, "--data.predict_path", str(posts),
                                 "--data.predict_window", "16")  # fmt: skip
    bar, text, summary = bar_and_summary(lines)
    assert re.search(r"\b70/70\b", text), text  # posts, not batches, out of the file's
    assert re.search(r"\d:\d\d:\d\d • \d:\d\d:\d\d", text), text  # elapsed • time left
    assert lines[summary].startswith(f"Wrote {tmp_path / 'out.csv'}: 70 posts: ")
    assert bar < summary and not any("Predicting" in line for line in lines[summary:])


def test_from_standard_input_the_bar_counts_without_a_total_and_says_so(trained: dict, tiny_gpt2: str,
                                                                         tmp_path: Path) -> None:  # fmt: skip
    texts = "".join(f"{row['review']}\n" for row in real_rows(5, offset=500))
    lines = predict_with_the_bar(trained, tiny_gpt2, tmp_path, "--data.predict_path", "-", input=texts)
    bar, text, summary = bar_and_summary(lines)
    assert "no total" in text and re.search(r"\b5/--", text), text
    assert bar < summary


def test_under_ddp_rank_zero_alone_shows_a_bar_of_its_share(trained: dict, tiny_gpt2: str, tmp_path: Path) -> None:
    posts = write_csv(tmp_path / "posts.csv", [{"review": row["review"]} for row in real_rows(70, offset=500)])
    lines = predict_with_the_bar(trained, tiny_gpt2, tmp_path, "--data.predict_path", str(posts),
                                 "--data.predict_window", "16", "--trainer.accelerator", "cpu",
                                 "--trainer.strategy", "ddp", "--trainer.devices", "2")  # fmt: skip
    bar, text, summary = bar_and_summary(lines)  # one bar: rank 1 shows none
    # Windows of 16 posts go to ranks 0, 1, 0, 1, 0: rank 0 labels 16 + 16 + 6 of the 70.
    assert "rank 0's share" in text and re.search(r"\b38/38\b", text), text
    assert lines[summary].startswith(f"Wrote {tmp_path / 'out.csv'}: 70 posts: ") and bar < summary
