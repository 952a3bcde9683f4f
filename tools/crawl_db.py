"""A crawl database to try database labelling on: MindSpider's ``weibo_note`` and ``weibo_note_comment`` tables,
filled with the bundled real posts, in SQLite, PostgreSQL or MySQL/MariaDB.

    python tools/crawl_db.py sqlite:///crawl.db                        # 200 posts and 200 comments
    python tools/crawl_db.py postgresql+psycopg://crawler@127.0.0.1:5432/mindspider --notes 10000

The tables have the columns of MindSpider's own models (``MindSpider/schema/models_bigdata.py``) that labelling and
counting over time use: an auto-increment ``id`` primary key, ``note_id`` / ``comment_id``, ``content``,
``create_time`` (milliseconds since the epoch), ``create_date_time``, ``source_keyword`` (and ``note_id`` on
comments). As the crawler stores them, the posts' emoticon tags are gone (it strips the ``<img alt=[笑cry]>`` HTML
around them); a post left with no text keeps its row, with an empty ``content``. Existing tables of those names are
left as they are and the posts appended (``--replace`` drops them first).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NOTES = ROOT / "data" / "sample" / "posts.csv"
COMMENTS = ROOT / "data" / "sample" / "weibo_senti_4k.csv"
KEYWORDS = ("春运", "高考", "双十一", "世界杯")
FIRST_DAY = datetime.datetime(2026, 11, 1, 8, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=8)))


def tables(metadata: Any) -> tuple[Any, Any]:
    """``weibo_note`` and ``weibo_note_comment`` as MindSpider defines them (the columns used here)."""
    import sqlalchemy as sa

    note = sa.Table(
        "weibo_note", metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("note_id", sa.BigInteger, index=True, nullable=True),
        sa.Column("content", sa.Text, nullable=True),
        sa.Column("create_time", sa.BigInteger, index=True, nullable=True),
        sa.Column("create_date_time", sa.String(255), index=True, nullable=True),
        sa.Column("liked_count", sa.Text, nullable=True),
        sa.Column("source_keyword", sa.Text, nullable=True),
    )  # fmt: skip
    comment = sa.Table(
        "weibo_note_comment", metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("comment_id", sa.BigInteger, index=True, nullable=True),
        sa.Column("note_id", sa.BigInteger, index=True, nullable=True),
        sa.Column("content", sa.Text, nullable=True),
        sa.Column("create_time", sa.BigInteger, nullable=True),
        sa.Column("create_date_time", sa.String(255), index=True, nullable=True),
        sa.Column("source_keyword", sa.Text, nullable=True),
    )  # fmt: skip
    return note, comment


def read_texts(path: Path, column: str) -> list[str]:
    with open(path, encoding="utf-8", newline="") as f:
        return [row[column] for row in csv.DictReader(f)]


def without_tags(text: str) -> str:
    """The post as the crawler stores it: emoticon tags removed, spaces trimmed."""
    from weibo_sentiment.emoticons import EmoticonTags

    return EmoticonTags().strip(text).strip()


def note_rows(texts: list[str], count: int, first: int = 0) -> list[dict[str, Any]]:
    """``count`` rows of ``weibo_note`` (the texts in turn), numbered from ``first``: a post every 97 minutes from
    ``FIRST_DAY``, keywords in turn."""
    rows = []
    for number in range(first, first + count):
        text = texts[number % len(texts)]
        created = FIRST_DAY + datetime.timedelta(minutes=97 * number)
        rows.append({"note_id": 4_900_000_000_000_000 + number, "content": without_tags(text),
                     "create_time": int(created.timestamp() * 1000),
                     "create_date_time": created.strftime("%Y-%m-%d %H:%M:%S"), "liked_count": str(number % 97),
                     "source_keyword": KEYWORDS[number % len(KEYWORDS)]})  # fmt: skip
    return rows


def comment_rows(texts: list[str], count: int, notes: int) -> list[dict[str, Any]]:
    rows = []
    for number in range(count):
        text = texts[number % len(texts)]
        created = FIRST_DAY + datetime.timedelta(minutes=97 * number + 41)
        rows.append({"comment_id": 5_100_000_000_000_000 + number, "note_id": 4_900_000_000_000_000 + number % notes,
                     "content": without_tags(text), "create_time": int(created.timestamp() * 1000),
                     "create_date_time": created.strftime("%Y-%m-%d %H:%M:%S"),
                     "source_keyword": KEYWORDS[number % len(KEYWORDS)]})  # fmt: skip
    return rows


def fill(url: str, notes: int = 200, comments: int = 200, replace: bool = False) -> None:
    """Create the two tables in the database at ``url`` (if missing) and append ``notes`` posts and ``comments``
    comments to them."""
    import sqlalchemy as sa

    from weibo_sentiment.data.database import connection_url

    engine = sa.create_engine(connection_url(url))
    metadata = sa.MetaData()
    note, comment = tables(metadata)
    try:
        if replace:
            metadata.drop_all(engine)
        metadata.create_all(engine)
        with engine.begin() as connection:
            first = connection.execute(sa.select(sa.func.count()).select_from(note)).scalar_one()
            if notes:
                connection.execute(sa.insert(note), note_rows(read_texts(NOTES, "review"), notes, first))
            if comments:
                connection.execute(sa.insert(comment), comment_rows(read_texts(COMMENTS, "review"), comments,
                                                                    max(notes, 1)))  # fmt: skip
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the database: sqlite:///crawl.db, postgresql+psycopg://user@host:port/db, ...")
    parser.add_argument("--notes", type=int, default=200, help="rows to add to weibo_note (the 200 bundled posts, "
                        "in turn)")  # fmt: skip
    parser.add_argument("--comments", type=int, default=200, help="rows to add to weibo_note_comment")
    parser.add_argument("--replace", action="store_true", help="drop the two tables first")
    args = parser.parse_args()
    from weibo_sentiment.data.database import describe

    fill(args.url, args.notes, args.comments, args.replace)
    print(f"{describe(args.url)}: {args.notes} rows added to weibo_note, {args.comments} to weibo_note_comment", file=sys.stderr)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
