"""weibo-sentiment-trend on a labelled MindSpider table and on a labelled predictions file: counts per day and
keyword against counts made independently, in SQL."""

from __future__ import annotations

import csv
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, cli_args, run_main
from tools.crawl_db import fill
from weibo_sentiment.integrations.trend import period_of

pytestmark = pytest.mark.e2e  # every test here starts processes of ours (see pyproject.toml)


@pytest.fixture(scope="module")
def labelled_crawl(trained: dict, tiny_gpt2: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """300 posts over three weeks, labelled into the labels table (Python API) and into a CSV (main.py predict)."""
    from weibo_sentiment import SentimentAnalyzer

    folder = tmp_path_factory.mktemp("crawl")
    url = f"sqlite:///{folder / 'crawl.db'}"
    fill(url, notes=300, comments=0)
    with sqlite3.connect(folder / "crawl.db") as db:  # a post without text, and one without a time
        db.execute("INSERT INTO weibo_note (note_id, content, create_time, source_keyword) VALUES (7, '', 1793491200000, '春运')")
        db.execute("INSERT INTO weibo_note (note_id, content, create_time, source_keyword) VALUES (8, '好', NULL, '春运')")
    with SentimentAnalyzer.load(trained["last"]) as analyzer:
        assert analyzer.label_database(url, "weibo_note", id_column="note_id").posts == 302
    result = run_main(cli_args("predict", tiny_gpt2, folder, "--ckpt_path", str(trained["last"]),
                               "--data.predict_path", url, "--data.table", "weibo_note", "--data.text_column",
                               "content", "--data.id_column", "note_id", "--data.keep_columns",
                               "[create_time,source_keyword]", "--predict_writer.output_path",
                               str(folder / "labelled.csv")))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return {"folder": folder, "url": url, "csv": folder / "labelled.csv"}


def counted_in_sql(database: Path) -> dict[tuple[str, str], dict[str, int]]:
    """Posts per (Beijing day, keyword) and sentiment, counted by SQLite itself from the two tables."""
    query = """SELECT date(n.create_time / 1000, 'unixepoch', '+8 hours') AS day, n.source_keyword, l.sentiment, count(*)
               FROM weibo_note AS n JOIN weibo_sentiment_labels AS l
                 ON l.source_table = 'weibo_note' AND l.source_id = CAST(n.note_id AS TEXT)
               WHERE n.create_time IS NOT NULL GROUP BY 1, 2, 3"""
    counts: dict[tuple[str, str], dict[str, int]] = {}
    with sqlite3.connect(database) as db:
        for day, keyword, sentiment, count in db.execute(query):
            counts.setdefault((day, keyword), {})[sentiment] = count
    return counts


def trend(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "weibo_sentiment.integrations.trend", *args], cwd=REPO, capture_output=True,
                          text=True)  # fmt: skip


@pytest.mark.parametrize("source", ["database", "predictions file"])
def test_counts_per_day_and_keyword_equal_an_independent_count(labelled_crawl: dict, source: str,
                                                               tmp_path: Path) -> None:  # fmt: skip
    args = (["--input", labelled_crawl["url"], "--table", "weibo_note", "--id_column", "note_id"]
            if source == "database" else ["--input", str(labelled_crawl["csv"])])  # fmt: skip
    result = trend(*args, "--time_column", "create_time", "--by", "day", "--group_column", "source_keyword",
                   "--output_dir", str(tmp_path))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith(f"Wrote trend.csv, trend.json and trend.png to {tmp_path}: 302 posts over 21 days")
    assert "1 without a time, left out" in result.stdout
    with open(tmp_path / "trend.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    expected = counted_in_sql(labelled_crawl["folder"] / "crawl.db")
    assert {(row["period"], row["group"]) for row in rows} == set(expected)
    for row in rows:
        counts = expected[(row["period"], row["group"])]
        assert int(row["positive"]) == counts.get("positive", 0) and int(row["negative"]) == counts.get("negative", 0)
        assert int(row["posts"]) == sum(counts.values()) and int(row["neutral"]) == 0
        classified = int(row["positive"]) + int(row["negative"])
        if classified:
            assert float(row["negative_share"]) == pytest.approx(int(row["negative"]) / classified, abs=1e-6)
    report = json.loads((tmp_path / "trend.json").read_text(encoding="utf-8"))
    assert report["by"] == "day" and len(report["rows"]) == len(rows) and report["untimed_posts"] == 1
    assert report["report"]["sentence"].startswith("情感分布比例（正面")
    assert (tmp_path / "trend.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_neutral_band_hours_and_weeks(labelled_crawl: dict, tmp_path: Path) -> None:
    result = trend("--input", str(labelled_crawl["csv"]), "--by", "week", "--neutral_band", "[0.4,0.6]",
                   "--output_dir", str(tmp_path))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    with open(labelled_crawl["csv"], encoding="utf-8", newline="") as f:
        inside = sum(1 for row in csv.DictReader(f) if row["prob_positive"] and row["create_time"]
                     and 0.4 <= float(row["prob_positive"]) <= 0.6)  # fmt: skip
    with open(tmp_path / "trend.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sum(int(row["neutral"]) for row in rows) == inside and all(row["period"].startswith("2026-W") for row in rows)
    assert period_of(1793491200000, "hour", 8.0) == "2026-11-01 08:00" == period_of("2026-11-01 08:59:59", "hour", 8.0)
    assert period_of(1793491200, "day", 0.0) == "2026-11-01"


def test_mistakes_are_one_line(labelled_crawl: dict, tmp_path: Path) -> None:
    cases = {
        "no such column": (["--input", str(labelled_crawl["csv"]), "--time_column", "created"], "no 'created' column"),
        "a table without its id column": (["--input", labelled_crawl["url"], "--table", "weibo_note"], "--id_column"),
        "no labels yet": (["--input", labelled_crawl["url"], "--table", "weibo_note_comment", "--id_column",
                           "comment_id"], "no post of weibo_note_comment is labelled yet"),
    }  # fmt: skip
    for case, (args, message) in cases.items():
        result = trend(*args, "--output_dir", str(tmp_path / "out"))
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and message in lines[0], (case, result.stderr[-2000:])
