"""Sentiment over time: labelled posts counted by hour, day or week of a time column, optionally by a group column.

    weibo-sentiment-trend --input predictions.csv --time_column create_time --by day --group_column source_keyword \\
        --output_dir trend/
    weibo-sentiment-trend --input sqlite:///crawl.db --table weibo_note --id_column note_id \\
        --time_column create_time --by day --output_dir trend/

The input is a file written by ``main.py predict`` (CSV, TSV or JSONL; the time and group columns carried with
``--data.keep_columns``), or a database whose labels table (``weibo_sentiment_labels``) is joined with the posts'
table on the id column. Times are ``create_time`` in seconds or milliseconds since the epoch (read in
``--utc_offset`` hours, China's +8 by default) or a ``create_date_time`` text (``2026-11-01 08:00:00``, as written).

Writes ``trend.csv`` (period, group, posts, positive, neutral, negative, positive_share, negative_share,
mean_confidence), ``trend.json`` (the same rows and a report-ready summary of all of them) and ``trend.png``
(the shares of negative and positive posts over time, a line per group, with the post counts).
"""

from __future__ import annotations

import csv
import datetime
import json
import sys
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from weibo_sentiment.data.database import LABELS_TABLE, is_database_url
from weibo_sentiment.errors import UserError, exit_on_user_error
from weibo_sentiment.classes import NEGATIVE, NEUTRAL, POSITIVE
from weibo_sentiment.inference.outputs import EMPTY, PredictionSummary, sentiment_of
from weibo_sentiment.settings import checked_neutral_band

PERIODS = ("hour", "day", "week")
COLUMNS = ["period", "group", "posts", "positive", "neutral", "negative", "positive_share", "negative_share",
           "mean_confidence"]  # fmt: skip
ALL = "all"  # the group of every post when there is no group column


@dataclass
class Labelled:
    """One labelled post as the trend reads it."""

    time: Any
    group: str
    sentiment: str
    confidence: Optional[float]
    prob_positive: Optional[float]
    label: Optional[int]
    text: str = ""
    three_class: bool = False  # labelled by a three-class model: its neutral is the model's, no band applies


def period_of(value: Any, by: str, utc_offset: float) -> Optional[str]:
    """The period (``2026-11-01 08:00``, ``2026-11-01``, ``2026-W44``) a time value falls in; ``None`` if empty."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    moment: datetime.datetime
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        try:
            moment = datetime.datetime.fromisoformat(text.replace("/", "-"))
        except ValueError:
            raise UserError(f"time {text!r}: neither seconds or milliseconds since the epoch nor a date and time "
                            "(2026-11-01 08:00:00); name another --time_column") from None  # fmt: skip
    else:
        seconds = number / 1000 if number > 1e11 else number  # later than 5138 in seconds: milliseconds
        zone = datetime.timezone(datetime.timedelta(hours=utc_offset))
        moment = datetime.datetime.fromtimestamp(seconds, zone)
    if by == "hour":
        return moment.strftime("%Y-%m-%d %H:00")
    if by == "day":
        return moment.strftime("%Y-%m-%d")
    year, week, _ = moment.isocalendar()
    return f"{year}-W{week:02d}"


@dataclass
class Cell:
    """The posts of one period and group."""

    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    confidence_sum: float = 0.0

    def add(self, post: Labelled) -> None:
        self.counts[post.sentiment] += 1
        if post.sentiment != EMPTY and post.confidence is not None:
            self.confidence_sum += post.confidence

    def row(self, period: str, group: str) -> dict[str, Any]:
        positive, neutral, negative = (self.counts[name] for name in (POSITIVE, NEUTRAL, NEGATIVE))
        classified = positive + neutral + negative
        share = (lambda n: round(n / classified, 6)) if classified else (lambda n: None)
        return {"period": period, "group": group, "posts": sum(self.counts.values()), "positive": positive,
                "neutral": neutral, "negative": negative, "positive_share": share(positive),
                "negative_share": share(negative),
                "mean_confidence": round(self.confidence_sum / classified, 6) if classified else None}  # fmt: skip


def trend_rows(posts: Iterable[Labelled], by: str, utc_offset: float = 8.0,
               neutral_band: Optional[tuple[float, float]] = None) -> tuple[list[dict[str, Any]], PredictionSummary, int]:  # fmt: skip
    """The rows of the trend (by period, then group), the summary of every post, and how many had no time."""
    cells: dict[tuple[str, str], Cell] = defaultdict(Cell)
    summary = PredictionSummary("text")
    untimed = 0
    for post in posts:
        if neutral_band is not None and post.sentiment != EMPTY and post.prob_positive is not None and not post.three_class:
            post.sentiment = sentiment_of(int(post.label), post.prob_positive, neutral_band)
        summary.add([{"sentiment": post.sentiment, "confidence": post.confidence,
                      "prob_positive": post.prob_positive}], [post.text])  # fmt: skip
        period = period_of(post.time, by, utc_offset)
        if period is None:
            untimed += 1
            continue
        cells[(period, post.group)].add(post)
    return [cells[key].row(*key) for key in sorted(cells)], summary, untimed


# ---- reading labelled posts ---------------------------------------------------------------------------------------
def _number(value: Any) -> Optional[float]:
    return None if value in (None, "") else float(value)


def from_file(path: Path, time_column: str, group_column: Optional[str]) -> Iterator[Labelled]:
    """The rows of a ``main.py predict`` output file."""
    from weibo_sentiment.data.readers import detect_format

    fmt = detect_format(str(path))
    if fmt not in ("csv", "tsv", "jsonl"):
        raise UserError(f"{path}: a trend reads what main.py predict writes: a .csv, .tsv or .jsonl file")
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    with open(path, encoding="utf-8-sig", newline="") as f:
        records: Iterable[dict[str, Any]] = (csv.DictReader(f, delimiter="\t" if fmt == "tsv" else ",")
                                             if fmt != "jsonl" else (json.loads(line) for line in f if line.strip()))  # fmt: skip
        for number, record in enumerate(records, start=1):
            for column in (time_column, group_column, "sentiment", "prob_positive"):
                if column is not None and column not in record:
                    raise UserError(f"{path} row {number}: no {column!r} column (a predictions file has it when "
                                    "predict ran with --data.keep_columns naming it)")  # fmt: skip
            text = next((str(record[name]) for name in ("review", "content", "text") if record.get(name)), "")
            label = record.get("label")
            yield Labelled(record[time_column], str(record[group_column]) if group_column else ALL,
                           record["sentiment"], _number(record.get("confidence")), _number(record["prob_positive"]),
                           None if label in (None, "") else int(label), text, "prob_neutral" in record)  # fmt: skip


def from_database(url: str, table: str, id_column: str, time_column: str, group_column: Optional[str],
                  labels_table: str = LABELS_TABLE, model: Optional[str] = None,
                  text_column: str = "content") -> Iterator[Labelled]:  # fmt: skip
    """The labels of a table's posts, joined with the table for their time and group (one model's labels: the
    one given, else the model that labelled most of the table's posts)."""
    import sqlalchemy as sa

    from weibo_sentiment.data.database import database_error, describe, labels_table_definition, open_database

    engine = open_database(url, must_exist=True)
    try:
        metadata = sa.MetaData()
        inspector = sa.inspect(engine)
        for name in (table, labels_table):
            if not inspector.has_table(name):
                what = "labels table" if name == labels_table else "table"
                raise UserError(f"{describe(url)}: no {what} {name!r}" + (" (label the posts first: main.py predict "
                                "with this database as --predict_writer.output_path)" if name == labels_table else ""))  # fmt: skip
        posts = sa.Table(table, metadata, autoload_with=engine)
        for column in (id_column, time_column, group_column):
            if column is not None and column not in posts.c:
                raise UserError(f"{describe(url)}: the table {table} has no column {column!r}")
        three_class = "prob_neutral" in {column["name"] for column in inspector.get_columns(labels_table)}
        labels = labels_table_definition(labels_table, metadata, 3 if three_class else 2)
        with engine.connect() as connection:
            if model is None:
                model = connection.execute(
                    sa.select(labels.c.model).where(labels.c.source_table == table).group_by(labels.c.model)
                    .order_by(sa.func.count().desc()).limit(1)).scalar()  # fmt: skip
                if model is None:
                    raise UserError(f"{describe(url)}: no post of {table} is labelled yet; label them first "
                                    f"(main.py predict --data.table {table} ...)")  # fmt: skip
            text = posts.c[text_column] if text_column in posts.c else sa.literal("")
            group = posts.c[group_column] if group_column else sa.literal(ALL)
            neutral = labels.c.prob_neutral if three_class else sa.literal(None)
            query = (sa.select(posts.c[time_column], group, labels.c.sentiment, labels.c.confidence,
                               labels.c.prob_positive, labels.c.label, text, neutral)
                     .join_from(posts, labels, sa.and_(labels.c.source_table == table, labels.c.model == model,
                                                       labels.c.source_id == sa.cast(posts.c[id_column], sa.String))))  # fmt: skip
            for row in connection.execution_options(stream_results=True, yield_per=5000).execute(query):
                yield Labelled(row[0], str(row[1]) if row[1] is not None else "", row[2], row[3], row[4], row[5],
                               row[6] or "", row[7] is not None)  # fmt: skip
    except sa.exc.DBAPIError as err:
        raise database_error(url, err, f"reading the labels of {table}") from None
    finally:
        engine.dispose()


# ---- writing ------------------------------------------------------------------------------------------------------
def write_outputs(rows: list[dict[str, Any]], summary: PredictionSummary, output_dir: Path, settings: dict[str, Any],
                  untimed: int) -> None:  # fmt: skip
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with open(output_dir / "trend.csv", "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        report = {**settings, "untimed_posts": untimed, "rows": rows, "report": summary.report()}
        (output_dir / "trend.json").write_text(json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8")
        draw(rows, output_dir / "trend.png", settings["by"])
    except OSError as err:
        raise UserError(f"{output_dir}: cannot write the trend here ({err.strerror})") from None


def chinese_font() -> Optional[str]:
    """A font with Chinese glyphs that matplotlib can find (Noto Sans CJK, as Debian's fonts-noto-cjk installs)."""
    from matplotlib import font_manager

    names = {font.name for font in font_manager.fontManager.ttflist}
    return next((name for name in ("Noto Sans CJK SC", "Noto Sans CJK JP", "Source Han Sans SC", "WenQuanYi Zen Hei",
                                   "SimHei", "Microsoft YaHei", "PingFang SC") if name in names), None)  # fmt: skip


def draw(rows: list[dict[str, Any]], path: Path, by: str) -> None:
    """The shares of negative (solid) and positive (dashed) posts per period, a colour per group, above the number
    of posts per period."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    font = chinese_font()
    if font:
        plt.rcParams["font.sans-serif"] = [font, *plt.rcParams["font.sans-serif"]]
    periods = sorted({row["period"] for row in rows})
    groups = sorted({row["group"] for row in rows})
    figure, (shares, counts) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True, height_ratios=(3, 1.3))
    position = {period: i for i, period in enumerate(periods)}
    bottom = [0] * len(periods)
    for number, group in enumerate(groups):
        colour = f"C{number % 10}"
        mine = [row for row in rows if row["group"] == group and row["negative_share"] is not None]
        x = [position[row["period"]] for row in mine]
        label = "" if group == ALL else f"{group}: "
        one = len(groups) == 1  # one group: the page's colours for the two sentiments
        shares.plot(x, [100 * row["negative_share"] for row in mine], "-o", color="#b8322b" if one else colour,
                    markersize=3, label=f"{label}负面 negative")  # fmt: skip
        shares.plot(x, [100 * row["positive_share"] for row in mine], "--", color="#1a7f52" if one else colour,
                    alpha=0.8, label=f"{label}正面 positive")  # fmt: skip
        heights = [0] * len(periods)
        for row in rows:
            if row["group"] == group:
                heights[position[row["period"]]] = row["posts"]
        counts.bar(range(len(periods)), heights, bottom=bottom, color="#6b6f76" if len(groups) == 1 else colour,
                   label=group)  # fmt: skip
        bottom = [b + h for b, h in zip(bottom, heights)]
    shares.set_ylabel("share of posts 占比 (%)")
    shares.set_ylim(0, 100)
    shares.grid(alpha=0.3)
    shares.legend(fontsize=8, ncol=2 if len(groups) > 1 else 1, loc="upper left", bbox_to_anchor=(1.01, 1))
    shares.set_title(f"情感趋势 Sentiment by {by}")
    counts.set_ylabel("posts 帖子数")
    step = max(1, len(periods) // 12)
    counts.set_xticks(range(0, len(periods), step), [periods[i] for i in range(0, len(periods), step)], rotation=30,
                      ha="right", fontsize=8)  # fmt: skip
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: Optional[list[str]] = None) -> None:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=str, required=True,
                        help="a predictions file (.csv, .tsv, .jsonl) or a database URL (sqlite:///crawl.db, ...)")  # fmt: skip
    parser.add_argument("--table", type=Optional[str], default=None, help="with a database: the posts' table")
    parser.add_argument("--id_column", type=Optional[str], default=None,
                        help="with a database: the table's column the labels' source_id holds (note_id)")  # fmt: skip
    parser.add_argument("--time_column", type=str, default="create_time",
                        help="create_time (seconds or milliseconds since the epoch) or create_date_time")  # fmt: skip
    parser.add_argument("--by", type=Literal["hour", "day", "week"], default="day")
    parser.add_argument("--group_column", type=Optional[str], default=None, help="e.g. source_keyword, topic_id")
    parser.add_argument("--neutral_band", type=Optional[list[float]], default=None,
                        help="[low, high] on prob_positive: posts inside it count as neutral")  # fmt: skip
    parser.add_argument("--utc_offset", type=float, default=8.0, help="hours east of UTC that epoch times are read in")
    parser.add_argument("--labels_table", type=str, default=LABELS_TABLE)
    parser.add_argument("--model", type=Optional[str], default=None,
                        help="with a database: whose labels (the labels table's model; default: the one with most)")  # fmt: skip
    parser.add_argument("--output_dir", type=str, default="trend")
    with exit_on_user_error():
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
        band = checked_neutral_band(args.neutral_band)
        if is_database_url(args.input):
            if not args.table or not args.id_column:
                raise UserError("a database input needs --table (the posts' table) and --id_column (the column the "
                                "labels' source_id holds, e.g. note_id)")  # fmt: skip
            posts = from_database(args.input, args.table, args.id_column, args.time_column, args.group_column,
                                  args.labels_table, args.model)  # fmt: skip
        else:
            posts = from_file(Path(args.input), args.time_column, args.group_column)
        rows, summary, untimed = trend_rows(posts, args.by, args.utc_offset, band)
        if not rows:
            raise UserError(f"{args.input}: no labelled post with a {args.time_column!r} time to count")
        settings = {"by": args.by, "time_column": args.time_column, "group_column": args.group_column,
                    "neutral_band": list(band) if band else None, "utc_offset": args.utc_offset}  # fmt: skip
        write_outputs(rows, summary, Path(args.output_dir), settings, untimed)
    periods = len({row["period"] for row in rows})
    print(f"Wrote trend.csv, trend.json and trend.png to {args.output_dir}: {summary.posts} posts over {periods} "
          f"{args.by}s ({summary.line()})" + (f"; {untimed} without a time, left out" if untimed else ""))


if __name__ == "__main__":
    main()
