"""Labelling posts where they live: MindSpider's tables in SQLite, and in real PostgreSQL and MariaDB servers
(``database_servers``), through ``main.py predict``, into a labels table beside them."""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa

from conftest import REPO, cli_args, read_predictions, run_main, start_in_own_group, stop_process_group
from database_servers import PASSWORD, READER, READER_PASSWORD, USER, Server
from tools.crawl_db import fill

pytestmark = pytest.mark.e2e  # every test here starts processes of ours (see pyproject.toml)

BACKENDS = ["sqlite", "postgresql", "mariadb"]
LABELS = "weibo_sentiment_labels"


@pytest.fixture(params=BACKENDS)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL (with its password) of a new, empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'crawl.db'}"
    server: Server = request.getfixturevalue(f"{request.param}_server")
    return server.new_database(f"crawl_{uuid.uuid4().hex[:10]}")


def query(url: str, sql: str, **params: Any) -> list[Any]:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            result = connection.execute(sa.text(sql), params)
            return result.all() if result.returns_rows else []
    finally:
        engine.dispose()


def labels_of(url: str, source_table: str = "weibo_note") -> dict[str, dict[str, Any]]:
    """The labels table's rows of ``source_table``, by source_id; it fails if a post was labelled twice."""
    rows = query(url, f"SELECT source_id, label, sentiment, confidence, prob_positive, model FROM {LABELS} "
                      "WHERE source_table = :table", table=source_table)  # fmt: skip
    by_id = {row.source_id: row._asdict() for row in rows}
    assert len(by_id) == len(rows)
    return by_id


def predict_db(trained: dict, tiny_gpt2: str, root: Path, url: str, *extra: str, table: str = "weibo_note",
               id_column: str = "note_id") -> list[str]:  # fmt: skip
    return cli_args("predict", tiny_gpt2, root, "--ckpt_path", str(trained["last"]), "--data.predict_path", url,
                    "--data.table", table, "--data.text_column", "content", "--data.id_column", id_column,
                    "--predict_writer.output_path", url, *extra)  # fmt: skip


def assert_no_secret(result: subprocess.CompletedProcess, root: Path, *secrets: str) -> None:
    """No password on the terminal, nor in any file the run wrote (config.yaml, hparams, TensorBoard events)."""
    for secret in secrets:
        assert secret not in result.stdout and secret not in result.stderr
        for path in root.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path


def one_error_line(result: subprocess.CompletedProcess | Any) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    return lines[0]


def fill_notes(url: str) -> list[tuple[Any, Any]]:
    """120 crawled posts and two without text (NULL and ''); the table's (note_id, content) rows, in order."""
    fill(url, notes=120, comments=0)
    query(url, "INSERT INTO weibo_note (note_id, content, create_time) VALUES (1, NULL, 0), (2, '', 0)")
    return [tuple(row) for row in query(url, "SELECT note_id, content FROM weibo_note ORDER BY id")]


@pytest.fixture(scope="module")
def from_csv(trained: dict, tiny_gpt2: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The posts ``fill_notes`` writes, as a file (as MediaCrawler's CSV export has them), labelled by ``main.py
    predict``: what labelling them in any database must give. Once for every kind of database."""
    root = tmp_path_factory.mktemp("from-csv")
    posts = fill_notes(f"sqlite:///{root / 'crawl.db'}")
    csv_path = root / "weibo_note.csv"
    with open(csv_path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["note_id", "content"])
        writer.writerows([(note_id, content or "") for note_id, content in posts])
    result = run_main(cli_args("predict", tiny_gpt2, root, "--ckpt_path", str(trained["last"]), "--data.predict_path",
                               str(csv_path), "--data.text_column", "content", "--data.id_column", "note_id",
                               "--predict_writer.output_path", str(root / "predictions.csv")))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return {"posts": posts, "expected": {row["id"]: row for row in read_predictions(root / "predictions.csv")}}


def test_labels_written_beside_the_posts_equal_predict_from_a_csv_and_a_rerun_labels_only_new_rows(
        trained: dict, tiny_gpt2: str, database: str, from_csv: dict, tmp_path: Path) -> None:  # fmt: skip
    posts = fill_notes(database)
    assert [(str(note_id), content) for note_id, content in posts] == \
        [(str(note_id), content) for note_id, content in from_csv["posts"]]  # the same posts as the file's
    expected = from_csv["expected"]

    result = run_main(predict_db(trained, tiny_gpt2, tmp_path / "db", database))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Labelled 122 posts of weibo_note into weibo_sentiment_labels" in result.stdout
    labels = labels_of(database)
    assert set(labels) == set(expected) and len(labels) == 122
    for note_id, row in labels.items():
        want = expected[note_id]
        assert row["sentiment"] == want["sentiment"]
        if want["sentiment"] == "empty":  # NULL and '' content: kept, marked, not classified
            assert row["label"] is None and row["prob_positive"] is None
        else:
            assert row["label"] == int(want["label"]) and row["prob_positive"] == pytest.approx(float(want["prob_positive"]), abs=1e-6)
    assert labels["1"]["sentiment"] == labels["2"]["sentiment"] == "empty"
    assert len({row["model"] for row in labels.values()}) == 1
    assert_no_secret(result, tmp_path / "db", PASSWORD)

    fill(database, notes=100, comments=0)  # the crawler goes on: 100 new posts
    again = run_main(predict_db(trained, tiny_gpt2, tmp_path / "db", database))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Labelled 100 posts of weibo_note" in again.stdout
    after = labels_of(database)
    assert len(after) == 222 and all(after[key] == labels[key] for key in labels)  # the old ones untouched


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def labelled_count(url: str) -> int:
    try:
        return query(url, f"SELECT count(*) FROM {LABELS}")[0][0]
    except sa.exc.DBAPIError:  # the table is not there yet, or the database is locked for a write
        return 0


SLOW = ["--data.predict_window", "32", "--data.eval_batch_size", "4"]  # a chunk (transaction) every 32 posts


def test_killed_mid_run_then_run_again_labels_every_row_exactly_once(trained: dict, tiny_gpt2: str, database: str,
                                                                     tmp_path: Path) -> None:  # fmt: skip
    fill(database, notes=3000, comments=0)
    args = predict_db(trained, tiny_gpt2, tmp_path, database, *SLOW)
    process = start_in_own_group([sys.executable, "main.py", *args], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for(lambda: labelled_count(database) > 0 or process.poll() is not None, 120, "the first chunk")
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        stop_process_group(process)  # and its DataLoader worker, killed too
    kept = labelled_count(database)
    assert 0 < kept < 3000 and kept % 32 == 0  # whole chunks only

    result = run_main(args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Labelled {3000 - kept} posts of weibo_note" in result.stdout
    labels = labels_of(database)  # fails on a post labelled twice
    assert len(labels) == 3000


@pytest.mark.parametrize("dialect", ["postgresql", "mariadb"])
def test_a_server_that_goes_away_mid_run_is_one_line_and_the_next_run_completes(
        trained: dict, tiny_gpt2: str, dialect: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:  # fmt: skip
    server: Server = request.getfixturevalue(f"{dialect}_server")
    url = server.new_database(f"gone_{uuid.uuid4().hex[:10]}")
    fill(url, notes=3000, comments=0)
    args = predict_db(trained, tiny_gpt2, tmp_path, url, *SLOW)
    process = start_in_own_group([sys.executable, "main.py", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)  # fmt: skip
    try:
        wait_for(lambda: labelled_count(url) > 0 or process.poll() is not None, 120, "the first chunk")
        server.stop()
        stdout, stderr = process.communicate(timeout=120)
    finally:
        server.start()
        stop_process_group(process)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert process.returncode == 2 and len(lines) == 1, stderr[-3000:]
    database = "postgresql" if dialect == "postgresql" else "mysql"
    assert lines[0].startswith(f"error: {database} database 'gone_") and f"127.0.0.1:{server.port}" in lines[0]
    assert "run the same command again" in lines[0] and PASSWORD not in stderr + stdout
    kept = labelled_count(url)
    assert 0 < kept < 3000

    result = run_main(args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(labels_of(url)) == 3000


def main_in_process(args: list[str], capsys: pytest.CaptureFixture) -> SimpleNamespace:
    """``main.py`` run in this process (a mistake is found in a second, without starting Python and torch anew);
    the signal handlers it installs are put back after."""
    from weibo_sentiment.cli import main

    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    # Libraries' log handlers (Lightning's, transformers') keep the stream they were given when this process first
    # ran main() (main.py runs it once per process): an earlier test's captured output, closed since.
    for logger in [logging.getLogger(), *map(logging.getLogger, list(logging.root.manager.loggerDict))]:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and getattr(handler.stream, "closed", False):
                handler.stream = sys.stderr  # not setStream: it flushes the closed one first
    try:
        main(args)
        code = 0
    except SystemExit as stop:
        code = stop.code
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    captured = capsys.readouterr()
    # Lightning's notes, which main.py sends to stdout, reach stderr here through pytest's logging capture.
    stderr = "".join(line for line in captured.err.splitlines(keepends=True) if not line.startswith("INFO: "))
    return SimpleNamespace(returncode=code, stdout=captured.out, stderr=stderr)


@pytest.mark.parametrize("dialect", ["postgresql", "mariadb"])
def test_mistakes_are_one_line_each_before_any_labelling(trained: dict, tiny_gpt2: str, dialect: str,
                                                         request: pytest.FixtureRequest, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    server: Server = request.getfixturevalue(f"{dialect}_server")
    url = server.new_database(f"bad_{uuid.uuid4().hex[:10]}")
    fill(url, notes=20, comments=0)
    port, driver = server.port, url.split("://")[0]
    refused = "password authentication failed" if dialect == "postgresql" else "Access denied"
    cases = {
        "wrong port": (server.url().replace(f":{port}/", ":1/"), {}, "connecting failed"),
        "wrong password": (url.replace(PASSWORD, "not-the-password"), {}, refused),
        "no password at all": (url.replace(f":{PASSWORD}", ""), {}, "connecting failed"),
        "DB_PASSWORD wrong": (url.replace(f":{PASSWORD}", ""), {"DB_PASSWORD": "wrong-pw-from-env"}, "password"),
        "missing table": (url, {"table": "weibo_notes"}, "no table 'weibo_notes'"),
        "missing column": (url, {"text": "text"}, "has no column 'text'"),
        "no permission to create the labels table": (
            url.replace(f"{USER}:{PASSWORD}", f"{READER}:{READER_PASSWORD}"), {}, "creating the labels table"),
        "missing SQLite file": (f"sqlite:///{tmp_path / 'nothing.db'}", {}, "no such file"),
        "no driver": (url.replace(driver, "postgresql+pg8000" if dialect == "postgresql" else "mysql+mysqldb"), {},
                      "pip install"),
    }  # fmt: skip
    for case, (case_url, changes, message) in cases.items():
        args = predict_db(trained, tiny_gpt2, tmp_path / "run", case_url, table=changes.get("table", "weibo_note"))
        if "text" in changes:
            args[args.index("content")] = changes["text"]
        if "DB_PASSWORD" in changes:
            monkeypatch.setenv("DB_PASSWORD", changes["DB_PASSWORD"])
        else:
            monkeypatch.delenv("DB_PASSWORD", raising=False)
        line = one_error_line(main_in_process(args, capsys))
        assert message in line, (case, line)
        assert PASSWORD not in line and "wrong-pw-from-env" not in line and "not-the-password" not in line, case
    engine = sa.create_engine(url)
    assert not sa.inspect(engine).has_table(LABELS)  # nothing labelled, not even the labels table made
    engine.dispose()
    assert not (tmp_path / "run" / "lightning_logs").exists()


def test_the_password_can_come_from_the_environment_and_is_never_shown_or_saved(
        trained: dict, tiny_gpt2: str, postgresql_server: Server, tmp_path: Path) -> None:  # fmt: skip
    url = postgresql_server.new_database(f"env_{uuid.uuid4().hex[:10]}")
    fill(url, notes=30, comments=30)
    without = url.replace(f":{PASSWORD}", "")
    result = run_main(predict_db(trained, tiny_gpt2, tmp_path, without, table="weibo_note_comment",
                                 id_column="comment_id"), env={**os.environ, "DB_PASSWORD": PASSWORD})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(labels_of(url, "weibo_note_comment")) == 30
    assert (tmp_path / "lightning_logs" / "version_0" / "config.yaml").is_file()
    assert_no_secret(result, tmp_path, PASSWORD)


def test_two_processes_share_the_rows_and_label_each_once(trained: dict, tiny_gpt2: str, postgresql_server: Server,
                                                          tmp_path: Path) -> None:  # fmt: skip
    url = postgresql_server.new_database(f"ddp_{uuid.uuid4().hex[:10]}")
    fill(url, notes=500, comments=0)
    result = run_main(predict_db(trained, tiny_gpt2, tmp_path, url, "--trainer.strategy", "ddp",
                                 "--trainer.devices", "2", "--trainer.accelerator", "cpu",
                                 "--data.predict_window", "64"))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Labelled 500 posts of weibo_note" in result.stdout  # both processes' rows, counted once
    assert len(labels_of(url)) == 500


def test_following_a_crawl_labels_rows_as_they_arrive_until_stopped(trained: dict, tiny_gpt2: str,
                                                                    tmp_path: Path) -> None:  # fmt: skip
    url = f"sqlite:///{tmp_path / 'crawl.db'}"
    fill(url, notes=50, comments=0)
    args = predict_db(trained, tiny_gpt2, tmp_path, url, "--data.follow", "0.5")
    process = start_in_own_group([sys.executable, "main.py", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)  # fmt: skip
    try:
        wait_for(lambda: labelled_count(url) == 50, 120, "the first 50 posts")
        fill(url, notes=30, comments=0)  # the crawler inserts more
        wait_for(lambda: labelled_count(url) == 80, 60, "the 30 new posts")
        assert process.poll() is None  # still following
    finally:
        stop = stop_process_group(process, signal.SIGTERM)
    stdout, stderr = process.communicate()
    assert process.returncode == 143 and not stop.killed, stderr[-3000:]
    assert "stopped by SIGTERM" in stderr and "Traceback" not in stderr
    assert "weibo_note: 30 more posts labelled (80 in all)" in stdout
    assert len(labels_of(url)) == 80


def test_mediacrawler_exports_label_as_they_are_and_keep_their_columns(trained: dict, tiny_gpt2: str,
                                                                       tmp_path: Path) -> None:  # fmt: skip
    """MediaCrawler's --save_data_option csv / json files of Weibo comments, with their own columns."""
    from tools.crawl_db import comment_rows, read_texts, COMMENTS

    rows = comment_rows(read_texts(COMMENTS, "review"), 40, notes=10)
    rows[3]["content"] = ""
    exports = {"csv": tmp_path / "search_comments_2026-11-01.csv", "json": tmp_path / "search_comments_2026-11-01.json"}
    with open(exports["csv"], "w", encoding="utf-8-sig", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    exports["json"].write_text(json.dumps(rows, ensure_ascii=False, indent=4), encoding="utf-8")
    outputs = {}
    for kind, path in exports.items():
        output = tmp_path / f"labelled_{kind}.jsonl"
        result = run_main(cli_args("predict", tiny_gpt2, tmp_path / kind, "--ckpt_path", str(trained["last"]),
                                   "--data.predict_path", str(path), "--data.text_column", "content",
                                   "--data.id_column", "comment_id",
                                   "--data.keep_columns", "[note_id,create_time,source_keyword]",
                                   "--predict_writer.output_path", str(output)))  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        outputs[kind] = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    for kind, labelled in outputs.items():
        assert len(labelled) == 40
        assert list(labelled[0])[:5] == ["id", "note_id", "create_time", "source_keyword", "content"]
        for row, source in zip(labelled, rows):
            assert row["id"] == str(source["comment_id"]) and row["source_keyword"] == source["source_keyword"]
            assert str(row["create_time"]) == str(source["create_time"])
        assert labelled[3]["sentiment"] == "empty"
    assert [r["prob_positive"] for r in outputs["csv"]] == [r["prob_positive"] for r in outputs["json"]]
    assert isinstance(outputs["json"][0]["create_time"], int)  # JSON keeps its types; CSV has only text


def test_the_python_api_labels_a_table_as_main_py_does_which_then_finds_nothing_left(trained: dict, tiny_gpt2: str,
                                                                                    tmp_path: Path) -> None:  # fmt: skip
    from weibo_sentiment import SentimentAnalyzer

    url = f"sqlite:///{tmp_path / 'crawl.db'}"
    fill(url, notes=60, comments=0)
    query(url, "INSERT INTO weibo_note (note_id, content) VALUES (NULL, '没有编号的帖子')")  # left out: no id to record
    # A table to a file, with the columns to count over time
    result = run_main(cli_args("predict", tiny_gpt2, tmp_path, "--ckpt_path", str(trained["last"]),
                               "--data.predict_path", url, "--data.table", "weibo_note", "--data.text_column", "content",
                               "--data.id_column", "note_id", "--data.keep_columns", "[create_time,source_keyword]",
                               "--predict_writer.output_path", str(tmp_path / "labelled.csv")))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    from_main = read_predictions(tmp_path / "labelled.csv")
    assert len(from_main) == 60 and list(from_main[0])[:4] == ["id", "create_time", "source_keyword", "content"]

    with SentimentAnalyzer.load(trained["last"]) as analyzer:
        summary = analyzer.label_database(url, "weibo_note", id_column="note_id")
        assert summary.posts == 60
        assert analyzer.label_database(url, "weibo_note", id_column="note_id").posts == 0  # all labelled already
    labels = labels_of(url)
    for row in from_main:
        assert labels[row["id"]]["prob_positive"] == pytest.approx(float(row["prob_positive"]), abs=1e-6)

    again = run_main(predict_db(trained, tiny_gpt2, tmp_path, url))  # the same model, whatever labelled
    assert again.returncode == 0 and "Labelled 0 posts of weibo_note" in again.stdout, again.stderr[-3000:]


def readme_sqlite_example() -> list[str]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("### SQLite, embedded", 1)[1]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1).strip().splitlines()


def test_the_readme_sqlite_example_runs_as_written_after_the_quickstart(quickstart: dict, tmp_path: Path) -> None:
    for name in ("configs", "assets", "data", "tools", "main.py"):  # a user's clone after the quickstart
        (tmp_path / name).symlink_to(REPO / name)
    (tmp_path / "lightning_logs").symlink_to(quickstart["root"] / "lightning_logs")
    commands = readme_sqlite_example()
    assert len(commands) == 3 and all(command.startswith("python ") for command in commands)
    outputs = []
    for command in commands:
        args = command.split()[1:]
        result = subprocess.run([sys.executable, *args], cwd=tmp_path, capture_output=True, text=True)
        assert result.returncode == 0, (command, result.stderr[-3000:])
        outputs.append(result.stdout)
    assert re.search(r"^Labelled 200 posts of weibo_note into weibo_sentiment_labels \(SQLite database crawl\.db\): "
                     r"200 posts: \d+ negative .*; mean confidence 0\.\d{3}$", outputs[1], re.M)  # fmt: skip
    assert "Labelled 200 posts of weibo_note_comment" in outputs[2]
    url = f"sqlite:///{tmp_path / 'crawl.db'}"
    assert len(labels_of(url, "weibo_note")) == len(labels_of(url, "weibo_note_comment")) == 200
