"""Labelling from a database against labelling the same posts from a CSV file, through ``main.py predict``.

    python main.py fit --config configs/quickstart.yaml            # a model to label with (or pass --ckpt_path)
    python benchmarks/database_speed.py --rows 10000 --repeats 3

MindSpider's ``weibo_note`` table is filled with ``--rows`` posts (``tools/crawl_db.py``) in SQLite and in a
PostgreSQL server (``--postgresql URL``; default: one started for the run, as the tests start theirs), and the same
posts are written to a CSV file (``note_id,content``, as MediaCrawler exports them). Then, in each mode and
alternating the three sources ``--repeats`` times, ``main.py predict`` labels them: the CSV into a CSV file, the
tables into their database's labels table (emptied before each run, so every run labels every row). Posts per
second are timed from inside (``speed_meter.StepTimer``: the predict loop, reading and writing included, start-up
left out); the table gives medians and each database's ratio to the CSV in the same mode. The CPU and what it can
do are printed beside the figures.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

MODES = {"torch fp32": [], "onnxruntime int8": ["--model.quantize", "int8"]}


def predict(work: Path, args: list[str], label: str) -> dict[str, Any]:
    report = work / f"{label}.json"
    command = [sys.executable, "main.py", "predict", *args, "--trainer.logger", "false",
               "--trainer.enable_progress_bar", "false", "--trainer.callbacks+=speed_meter.StepTimer",
               f"--trainer.callbacks.report_path={report}"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "benchmarks"), str(ROOT)]),
           "WEIBO_SENTIMENT_CACHE": str(work / "onnx-cache")}  # fmt: skip
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"error: {label} failed:\n{result.stderr[-3000:]}")
    timing = json.loads(report.read_text(encoding="utf-8"))
    return {"posts_per_second": timing["posts"] / timing["seconds"], "posts": timing["posts"],
            "wall_seconds": time.perf_counter() - started}  # fmt: skip


def empty_labels(url: str) -> None:
    import sqlalchemy as sa

    from weibo_sentiment.data.database import LABELS_TABLE, connection_url

    engine = sa.create_engine(connection_url(url))
    with engine.begin() as connection:
        connection.execute(sa.text(f"DROP TABLE IF EXISTS {LABELS_TABLE}"))
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000, help="posts in the table and the file")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds of the three sources")
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--ckpt_path", default="last", help="the model that labels (default: the newest last.ckpt)")
    parser.add_argument("--postgresql", help="a PostgreSQL database URL to fill (default: a server started here)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--out", type=Path, help="every figure as JSON")
    args = parser.parse_args()

    from tools.crawl_db import fill
    from weibo_sentiment.hardware import describe_cpu

    work = Path(tempfile.mkdtemp(prefix="database-speed-"))
    server: Optional[Any] = None
    if args.postgresql is None:
        from database_servers import remove, start_postgresql

        server = start_postgresql()
        args.postgresql = server.new_database("speed")
    try:
        sources = {"sqlite": f"sqlite:///{work / 'crawl.db'}", "postgresql": args.postgresql}
        for url in sources.values():
            fill(url, notes=args.rows, comments=0, replace=True)
        csv_path = work / "weibo_note.csv"
        import sqlalchemy as sa

        engine = sa.create_engine(sources["sqlite"])
        with engine.connect() as connection, open(csv_path, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["note_id", "content"])
            writer.writerows(connection.execute(sa.text("SELECT note_id, content FROM weibo_note ORDER BY id")))
        engine.dispose()
        model = ["--config", args.config, "--ckpt_path", args.ckpt_path, "--data.text_column", "content",
                 "--data.id_column", "note_id"]  # fmt: skip
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
        print(f"CPU: {describe_cpu()}; {args.rows:,} posts, modes {', '.join(args.modes)}", flush=True)
        for repeat in range(args.repeats):
            for mode in args.modes:
                for source in ("csv", "sqlite", "postgresql"):
                    if source == "csv":
                        io = ["--data.predict_path", str(csv_path), "--predict_writer.output_path",
                              str(work / "predictions.csv")]  # fmt: skip
                    else:
                        empty_labels(sources[source])
                        io = ["--data.predict_path", sources[source], "--data.table", "weibo_note",
                              "--predict_writer.output_path", sources[source]]  # fmt: skip
                    run = predict(work, [*model, *MODES[mode], *io], f"{mode.replace(' ', '-')}-{source}-{repeat}")
                    assert run["posts"] == args.rows, run
                    runs.setdefault(mode, {}).setdefault(source, []).append(run)
                    print(f"  round {repeat + 1}, {mode}, {source}: {run['posts_per_second']:,.0f} posts/s", flush=True)
    finally:
        if server is not None:
            remove(server)
    print(f"\nCPU: {describe_cpu()}\n")
    print("| mode | source | posts/s (median) | runs | of the CSV's |\n| --- | --- | --- | --- | --- |")
    for mode, by_source in runs.items():
        csv_median = statistics.median(r["posts_per_second"] for r in by_source["csv"])
        for source, source_runs in by_source.items():
            median = statistics.median(r["posts_per_second"] for r in source_runs)
            spread = ", ".join(f"{r['posts_per_second']:,.0f}" for r in source_runs)
            print(f"| {mode} | {source} | {median:,.0f} | {spread} | {median / csv_median:.0%} |")
    if args.out:
        args.out.write_text(json.dumps({"cpu": describe_cpu(), "rows": args.rows, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
