"""Posts that live in a database, and labels written beside them: SQLite, PostgreSQL and MySQL/MariaDB through
SQLAlchemy.

    python main.py predict --config configs/quickstart.yaml --ckpt_path last \\
        --data.predict_path sqlite:///crawl.db --data.table weibo_note --data.text_column content \\
        --data.id_column note_id --predict_writer.output_path sqlite:///crawl.db

- **Reading** (:class:`DatabasePosts`): a table (or a SELECT) is read in pages in the order of its key (the table's
  primary key, else the id column), never whole; only rows that this model has not labelled yet, when the labels go
  to the same database; under several processes each takes the rows whose integer key modulo the process count is
  its rank. A NULL or empty text gives a row marked empty, as files do.
- **Writing** (:class:`LabelsTable`): one row per post in a table of its own (``weibo_sentiment_labels``), never in
  the crawler's tables, a chunk of posts per transaction: a stopped or killed run keeps every chunk it committed,
  and the same command again labels the rest, each row exactly once (primary key source_table, source_id, model).
- **Passwords** never leave the process: a URL is shown and saved with its password as ``***``
  (:func:`hide_password`), and a URL without one takes it from the environment variable ``DB_PASSWORD``, as
  BettaFish's ``.env`` names it, so that it need not be on the command line at all.

Every problem (a wrong URL, an unreachable server, a missing table or column, no permission, a server that goes away
mid-run) is a :class:`UserError` naming the database by dialect, host and name, never by its password.
"""

from __future__ import annotations

import datetime
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Optional

from weibo_sentiment.data.readers import Post
from weibo_sentiment.errors import UserError, first_line

LABELS_TABLE = "weibo_sentiment_labels"
"""The default name of the table that labels go to."""
PASSWORD_VARIABLE = "DB_PASSWORD"
"""The environment variable a URL without a password takes it from (BettaFish's ``.env`` name)."""
PAGE_ROWS = 1000
"""Rows fetched per query: small enough to hold, large enough that one query per page costs little."""
_DATABASE_URL = re.compile(r"^(sqlite|postgresql|postgres|mysql|mariadb)(\+\w+)?://", re.IGNORECASE)
_DRIVER_EXTRA = {"postgresql": "postgresql", "mysql": "mysql", "mariadb": "mysql"}
_HIDDEN = "***"
_URLS_AS_GIVEN: dict[str, str] = {}  # hidden form -> the URL as given, in this process (and its forked workers) only


def is_database_url(text: Any) -> bool:
    """Whether a ``predict_path`` or ``output_path`` names a database (``sqlite:///...``, ``postgresql://...``, ...)."""
    return isinstance(text, str) and bool(_DATABASE_URL.match(text))


def _parse(url: str) -> Any:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url)
    except ArgumentError:
        raise UserError(f"{_shown_unparsed(url)}: not a database URL; write it as "
                        "dialect+driver://user@host:port/database (e.g. postgresql+psycopg://crawler@127.0.0.1:5432/"
                        "mindspider) or sqlite:///crawl.db") from None  # fmt: skip


def _shown_unparsed(url: str) -> str:
    """A URL that SQLAlchemy cannot parse, with anything between ``user:`` and ``@`` hidden all the same."""
    return re.sub(r"(://[^:/@]*):[^@]*@", rf"\1:{_HIDDEN}@", url)


def hide_password(url: str) -> str:
    """The URL as it may be shown, logged and saved (its password as ``***``); the URL as given is remembered in this
    process, where :func:`connection_url` finds it again. A URL without a password comes back as it is."""
    if not is_database_url(url):
        return url
    parsed = _parse(url)
    if not parsed.password or parsed.password == _HIDDEN:
        return url
    hidden = parsed.render_as_string(hide_password=True)
    _URLS_AS_GIVEN[hidden] = url
    return hidden


def describe(url: str) -> str:
    """The database in words, for messages: ``postgresql database 'crawl' on 127.0.0.1:5432``; never a password."""
    parsed = _parse(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return f"SQLite database {parsed.database or ':memory:'}"
    where = f"{parsed.host or 'localhost'}" + (f":{parsed.port}" if parsed.port else "")
    return f"{backend} database {parsed.database!r} on {where}"


def connection_url(url: str) -> Any:
    """The SQLAlchemy URL to connect with: the URL as given (also when only its hidden form reached here), its
    password from ``DB_PASSWORD`` when it names a user and no password."""
    parsed = _parse(_URLS_AS_GIVEN.get(url, url))
    if parsed.get_backend_name() == "sqlite":
        return parsed
    if parsed.password == _HIDDEN:
        raise UserError(f"{describe(url)}: the URL's password was hidden; pass the URL with its password, or set "
                        f"{PASSWORD_VARIABLE}")  # fmt: skip
    if parsed.username and not parsed.password and os.environ.get(PASSWORD_VARIABLE):
        parsed = parsed.set(password=os.environ[PASSWORD_VARIABLE])
    return parsed


def same_database(url: str, other: str) -> bool:
    """Whether two URLs name the same database (driver and password aside)."""
    a, b = connection_url(url), connection_url(other)
    return (a.get_backend_name(), a.host, a.port, a.database) == (b.get_backend_name(), b.host, b.port, b.database)


def _without_secret(message: str, url: str) -> str:
    """A driver's message with the URL's password (or DB_PASSWORD's), should it quote it, replaced by ``***``."""
    for secret in {connection_url(url).password, os.environ.get(PASSWORD_VARIABLE)}:
        if secret:
            message = message.replace(str(secret), _HIDDEN)
    return message


def database_error(url: str, err: BaseException, doing: str) -> UserError:
    """One line for a database error met while ``doing`` something (``reading weibo_note``): which database, what
    its driver said (first line, password removed)."""
    reason = _without_secret(first_line(getattr(err, "orig", None) or err), url)
    return UserError(f"{describe(url)}: {doing} failed ({reason})")


def open_database(url: str, must_exist: bool = False) -> Any:
    """A SQLAlchemy engine for ``url``, connected once to check it: a missing driver, a wrong host, port, user,
    password or database name is one line here. ``must_exist``: a SQLite file is read, not created."""
    import sqlalchemy as sa

    parsed = connection_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite" and must_exist:
        path = parsed.database
        if not path or path == ":memory:" or not os.path.isfile(path):
            raise UserError(f"{describe(url)}: no such file (a SQLite URL names a file: sqlite:///crawl.db is "
                            "crawl.db here, sqlite:////data/crawl.db an absolute path)")  # fmt: skip
    try:
        # pool_pre_ping: a connection the server closed while idle (a restart) is replaced, not used and failed.
        engine = sa.create_engine(parsed, pool_pre_ping=True,
                                  **({"connect_args": {"timeout": 30}} if backend == "sqlite" else {}))  # fmt: skip
    except (sa.exc.NoSuchModuleError, ImportError) as err:
        extra = _DRIVER_EXTRA.get(backend)
        hint = f": pip install 'weibo-sentiment[{extra}]'" if extra else ""
        raise UserError(f"{describe(url)}: no driver for {parsed.drivername} ({first_line(err)}){hint}") from None
    try:
        with engine.connect():
            pass
    except sa.exc.DBAPIError as err:
        engine.dispose()
        hint = "; check the URL's host, port, user and database" + (
            f", and the password ({PASSWORD_VARIABLE})" if backend != "sqlite" else "")
        raise UserError(str(database_error(url, err, "connecting")) + hint) from None
    return engine


# ---- the labels table -------------------------------------------------------------------------------------------
def labels_table_definition(name: str, metadata: Any, num_labels: int = 2) -> Any:
    """The labels table: one row per (source table, source row, model); a three-class model's labels table also has
    every class's probability (a two-class model's is the table it always was)."""
    import sqlalchemy as sa

    three_class = [sa.Column(column, sa.Double, nullable=True) for column in THREE_CLASS_COLUMNS] if num_labels == 3 else []
    return sa.Table(
        name, metadata,
        sa.Column("source_table", sa.String(128), primary_key=True),  # the table the post lives in
        sa.Column("source_id", sa.String(255), primary_key=True),  # its id column's value, as text
        sa.Column("model", sa.String(64), primary_key=True),  # the trained model (engine.trained_model_id)
        sa.Column("label", sa.SmallInteger, nullable=True),  # 0 negative, 1 positive, 2 neutral; NULL: no text
        sa.Column("sentiment", sa.String(16), nullable=False),  # negative, positive, neutral or empty
        sa.Column("confidence", sa.Double, nullable=True),
        sa.Column("prob_positive", sa.Double, nullable=True),
        sa.Column("labelled_at", sa.DateTime(timezone=True), nullable=False),  # UTC
        *three_class,
    )  # fmt: skip


THREE_CLASS_COLUMNS = ("prob_negative", "prob_neutral")
"""The labels table's columns that only a three-class model fills (NULL in a two-class model's rows)."""


@dataclass(frozen=True)
class LabelsLocation:
    """Where a run's labels go, and by which model: what a source needs to read only the rows not labelled yet."""

    url: str
    table: str
    model: str


class LabelsTable:
    """A labels table (created if missing) that takes a chunk of rows per transaction.

    A row whose key is already there (the same post labelled by the same model, by another process or an earlier
    run) is left as it is, so a chunk never fails half-way for one row.
    """

    def __init__(self, location: LabelsLocation, source_table: str, num_labels: int = 2) -> None:
        import sqlalchemy as sa

        self.location, self.source_table, self.num_labels = location, source_table, num_labels
        self.engine = open_database(location.url)
        self._executor: Any = None
        self._pending: Any = None
        self.table = labels_table_definition(location.table, sa.MetaData(), num_labels)

    def create(self) -> None:
        """Create the table if it is missing (the one write before labelling: no permission is said here); a table
        made by a two-class model gets the columns a three-class one fills (nullable: its rows keep NULL there)."""
        import sqlalchemy as sa

        try:
            self.table.create(self.engine, checkfirst=True)
            if self.num_labels == 3:
                self._add_three_class_columns()
        except sa.exc.DBAPIError as err:
            raise database_error(self.location.url, err, f"creating the labels table {self.location.table}") from None
        self.check_columns()

    def _add_three_class_columns(self) -> None:
        import sqlalchemy as sa

        found = {column["name"] for column in sa.inspect(self.engine).get_columns(self.location.table)}
        if not {"label", "sentiment", "prob_positive"} <= found:
            return  # not a labels table: check_columns says so
        table = self.engine.dialect.identifier_preparer.quote(self.location.table)
        with self.engine.begin() as connection:
            for column in self.table.columns:
                if column.name in THREE_CLASS_COLUMNS and column.name not in found:
                    type_ = column.type.compile(dialect=self.engine.dialect)
                    connection.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN {column.name} {type_}"))

    def check_columns(self) -> None:
        import sqlalchemy as sa

        found = {column["name"] for column in sa.inspect(self.engine).get_columns(self.location.table)}
        missing = [column.name for column in self.table.columns if column.name not in found]
        if missing:
            raise UserError(f"{describe(self.location.url)}: the table {self.location.table} has no column "
                            f"{', '.join(missing)}: it is not a labels table; name another with "
                            "--predict_writer.table")  # fmt: skip

    def _insert(self) -> Any:
        import sqlalchemy as sa

        dialect = self.engine.dialect.name
        if dialect in ("postgresql", "sqlite"):
            module = __import__(f"sqlalchemy.dialects.{dialect}", fromlist=["insert"])
            return module.insert(self.table).on_conflict_do_nothing()
        if dialect in ("mysql", "mariadb"):
            return sa.insert(self.table).prefix_with("IGNORE")
        return sa.insert(self.table)

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        """One transaction: every prediction row of the chunk (with its post's ``id``) is stored, or (stopped, the
        server gone) none is."""
        import sqlalchemy as sa

        if not rows:
            return
        now = datetime.datetime.now(datetime.timezone.utc)
        values = [{"source_table": self.source_table, "source_id": row["id"], "model": self.location.model,
                   "label": row["label"], "sentiment": row["sentiment"], "confidence": row["confidence"],
                   "prob_positive": row["prob_positive"], "labelled_at": now,
                   **{column: row[column] for column in THREE_CLASS_COLUMNS if self.num_labels == 3}}
                  for row in rows]  # fmt: skip
        try:
            with self.engine.begin() as connection:
                connection.execute(self._insert(), values)
        except sa.exc.DBAPIError as err:
            raise UserError(f"{database_error(self.location.url, err, f'writing labels to {self.location.table}')}; "
                            "the chunks written before are kept: run the same command again to label the rest") from None

    def write_behind(self, rows: Sequence[dict[str, Any]]) -> None:
        """:meth:`write` in a thread of its own, so the model labels the next chunk meanwhile; first waits for the
        chunk before (raising its error, if it failed). :meth:`finish` waits for the last. A stopped run's chunk in
        hand is still one transaction: the interpreter waits for the thread at exit (committed whole), a killed
        process's connection drops (rolled back whole)."""
        self.finish()
        if self._executor is None:
            from concurrent.futures import ThreadPoolExecutor

            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="labels-writer")
        self._pending = self._executor.submit(self.write, list(rows))

    def finish(self) -> None:
        """Wait for the chunk being written; its error, if it failed."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self.engine.dispose()


def _query_columns(connection: Any, query: str) -> list[str]:
    """The column names a SELECT gives, asked of the database without reading a row."""
    import sqlalchemy as sa

    return list(connection.execute(sa.text(f"SELECT * FROM ({query}) AS posts WHERE 1 = 0")).keys())


# ---- reading posts ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatabasePosts:
    """The posts of a database table (or of a SELECT), read a page at a time in key order; iterating yields
    :class:`Post` records (id as text, ``kept`` columns as they are), :meth:`windows` lists of them.

    Built with :meth:`open`, which checks the database, the table and the columns, then picklable (a DataLoader
    worker reads it with a connection of its own). ``unlabelled_by`` restricts it to rows without a label from a
    model in a labels table of the same database; ``of_rank`` to one process's share; ``follow`` keeps polling.
    """

    url: str
    table: Optional[str]
    query: Optional[str]
    text_column: str
    id_column: str
    key_column: str
    keep_columns: tuple[str, ...] = ()
    labels: Optional[LabelsLocation] = None
    rank: int = 0
    world_size: int = 1
    follow: Optional[float] = None
    integer_key: bool = True

    @property
    def source_table(self) -> str:
        """The name recorded as ``source_table`` in the labels table: the table's (also for a SELECT of some of its
        rows, given with its table), else ``query``."""
        return self.table or "query"

    @classmethod
    def open(cls, url: str, table: Optional[str], query: Optional[str], text_column: str, id_column: Optional[str],
             keep_columns: Sequence[str] = (), follow: Optional[float] = None) -> DatabasePosts:  # fmt: skip
        """Check that the database answers and has the table (or that the SELECT runs) and the columns."""
        import sqlalchemy as sa

        if table is None and query is None:
            raise UserError(f"{describe(url)}: name the posts' table (--data.table weibo_note) or give a SELECT "
                            "(--data.query)")  # fmt: skip
        engine = open_database(url, must_exist=True)
        try:
            columns, primary_key, types = cls._columns(engine, url, table, query)
        finally:
            engine.dispose()  # the DataLoader worker connects anew: a connection must not cross a fork
        where = "the query" if query else f"the table {table}"
        needed = [text_column, *([id_column] if id_column else []), *keep_columns]
        missing = [column for column in needed if column not in columns]
        if missing:
            raise UserError(f"{describe(url)}: {where} has no column {', '.join(map(repr, missing))} (it has "
                            f"{', '.join(columns)}); set --data.text_column, --data.id_column or "
                            "--data.keep_columns")  # fmt: skip
        key = primary_key if primary_key else id_column
        if key is None:
            raise UserError(f"{describe(url)}: {where} has no primary key to read it in order by: name a unique "
                            "column with --data.id_column")  # fmt: skip
        integer_key = isinstance(types.get(key), sa.Integer)
        return cls(url, table, query, text_column, id_column or key, key, tuple(keep_columns), follow=follow,
                   integer_key=integer_key)  # fmt: skip

    @staticmethod
    def _columns(engine: Any, url: str, table: Optional[str], query: Optional[str]) -> tuple[list[str], Optional[str], dict]:
        """The column names, the single-column primary key (if any) and the column types of a table or query."""
        import sqlalchemy as sa

        try:
            if query is None:
                inspector = sa.inspect(engine)
                if not inspector.has_table(table):
                    names = inspector.get_table_names()
                    raise UserError(f"{describe(url)}: no table {table!r} (it has {', '.join(names) or 'none'}); "
                                    "name it with --data.table")  # fmt: skip
                columns = inspector.get_columns(table)
                primary = inspector.get_pk_constraint(table).get("constrained_columns") or []
                return ([c["name"] for c in columns], primary[0] if len(primary) == 1 else None,
                        {c["name"]: c["type"] for c in columns})  # fmt: skip
            with engine.connect() as connection:
                names = _query_columns(connection, query)
            return names, None, {}
        except sa.exc.DBAPIError as err:
            raise database_error(url, err, "running the query" if query else f"reading the table {table}") from None

    def unlabelled_by(self, labels: LabelsLocation) -> DatabasePosts:
        """Only the rows that ``labels.model`` has not labelled in that labels table (in this database)."""
        return replace(self, labels=labels)

    def of_rank(self, rank: int, world_size: int) -> DatabasePosts:
        """Process ``rank``'s share of the rows: those whose key modulo ``world_size`` is ``rank``."""
        if world_size > 1 and not self.integer_key:
            raise UserError(f"{describe(self.url)}: sharing rows between {world_size} processes needs an integer "
                            f"key, and {self.source_table}'s is {self.key_column!r}; label with one process")  # fmt: skip
        return replace(self, rank=rank, world_size=world_size)

    # -- queries --
    def _selectable(self, metadata: Any, connection: Any) -> Any:
        import sqlalchemy as sa

        if self.query is None:
            return sa.Table(self.table, metadata, autoload_with=connection)
        names = _query_columns(connection, self.query)
        return sa.text(self.query).columns(*[sa.column(name) for name in names]).subquery("posts")

    def _queries(self, connection: Any) -> dict[str, Any]:
        """The statements a run reads with: ``first`` and ``next`` (a page of keys and ids, after the key bound as
        ``:after``), ``labelled`` (which of a page's ids this model has labelled), ``posts`` (the rows of some keys),
        ``count`` (how many rows the run reads).

        Which rows are labelled is asked per page, by id, of the labels table's primary key, rather than in one
        anti-join (``NOT EXISTS``) with the page: PostgreSQL planned that join as a hash of every label per page,
        10 times slower than reading the page itself (3.0 s against 0.23 s for 10,000 rows, half of them labelled).
        The texts are then read for the unlabelled rows only."""
        import sqlalchemy as sa

        metadata = sa.MetaData()
        source = self._selectable(metadata, connection)
        key, post_id, text = source.c[self.key_column], source.c[self.id_column], source.c[self.text_column]
        conditions = []
        if self.id_column != self.key_column:
            conditions.append(post_id.is_not(None))  # a row without an id cannot be told apart in the labels table
        if self.world_size > 1:
            conditions.append(key % self.world_size == self.rank)
        labels = None
        if self.labels is not None and sa.inspect(connection).has_table(self.labels.table):
            labels = labels_table_definition(self.labels.table, metadata)
        columns = (key, post_id) if labels is not None else (key, post_id, text, *[source.c[n] for n in self.keep_columns])
        page = sa.select(*columns).order_by(key).limit(PAGE_ROWS)
        queries = {"first": page.where(*conditions), "next": page.where(*conditions, key > sa.bindparam("after"))}
        counted = list(conditions)
        if labels is not None:
            mine = (labels.c.source_table == self.source_table, labels.c.model == self.labels.model)
            queries["labelled"] = sa.select(labels.c.source_id).where(
                *mine, labels.c.source_id.in_(sa.bindparam("ids", expanding=True)))  # fmt: skip
            queries["posts"] = (sa.select(key, post_id, text, *[source.c[n] for n in self.keep_columns])
                                .where(key.in_(sa.bindparam("keys", expanding=True))).order_by(key))  # fmt: skip
            counted.append(~sa.exists().where(*mine, labels.c.source_id == sa.cast(post_id, sa.String)))
        queries["count"] = sa.select(sa.func.count()).select_from(source).where(*counted)
        return queries

    def _page(self, connection: Any, queries: dict[str, Any], after: Any) -> tuple[list[Any], Any, bool]:
        """The next page's rows not labelled yet (key, id, text, kept columns), the page's last key, and whether
        the page was full (if not, the reader has caught up with the table)."""
        page = connection.execute(queries["first"] if after is None else queries["next"], {"after": after}).all()
        full = len(page) == PAGE_ROWS
        if not page or "labelled" not in queries:
            return page, page[-1][0] if page else after, full
        ids = [str(row[1]) for row in page]
        done = set(connection.execute(queries["labelled"], {"ids": ids}).scalars())
        keys = [row[0] for row, post in zip(page, ids) if post not in done]
        rows = connection.execute(queries["posts"], {"keys": keys}).all() if keys else []
        return rows, page[-1][0], full

    def count(self) -> Optional[int]:
        """How many rows a run reads (this process's share, not labelled yet); ``None`` when following a crawl."""
        import sqlalchemy as sa

        if self.follow is not None:
            return None
        engine = open_database(self.url)
        try:
            with engine.connect() as connection:
                return int(connection.execute(self._queries(connection)["count"]).scalar_one())
        except sa.exc.DBAPIError as err:
            raise database_error(self.url, err, f"counting the rows of {self.source_table}") from None
        finally:
            engine.dispose()

    def __iter__(self) -> Iterator[Post]:
        for window in self.windows(PAGE_ROWS):
            yield from window

    def windows(self, size: int) -> Iterator[list[Post]]:
        """Lists of at most ``size`` posts in key order; when following, also a shorter one whenever the reader has
        caught up with the table, so that new rows are labelled without waiting for ``size`` more."""
        import sqlalchemy as sa

        engine = open_database(self.url)
        parent = os.getppid()
        doing = f"reading {self.source_table}"
        try:
            with engine.connect() as connection:
                queries = self._queries(connection)
            after: Any = None
            window: list[Post] = []
            while True:
                try:
                    with engine.connect() as connection:
                        rows, after, full = self._page(connection, queries, after)
                except sa.exc.DBAPIError as err:
                    raise UserError(f"{database_error(self.url, err, doing)}; the labels written so far are kept: "
                                    "run the same command again to label the rest") from None  # fmt: skip
                window += [Post(row[2] or "", None, str(row[1]), dict(zip(self.keep_columns, row[3:]))) for row in rows]
                while len(window) >= size:
                    yield window[:size]
                    window = window[size:]
                if not full:  # caught up with the table
                    if window:
                        yield window
                        window = []
                        if self.follow is not None:
                            # An empty window after it: Lightning holds one batch back until the next arrives (to
                            # know which is the last), so the window's last batch, and its labels, would otherwise
                            # wait for the crawler's next rows.
                            yield []
                    if self.follow is None or not self._wait(self.follow, parent):
                        return
        finally:
            engine.dispose()

    @staticmethod
    def _wait(seconds: float, parent: int) -> bool:
        """Sleep before polling again; ``False`` if the process that reads this one's batches has gone."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if os.getppid() != parent:
                return False
            time.sleep(min(1.0, max(deadline - time.monotonic(), 0.0)))
        return True
