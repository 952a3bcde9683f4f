"""Files to posts: CSV, TSV, JSONL, JSON arrays (MediaCrawler's exports), plain text and standard input.

Every file problem (missing file, wrong column, bad label, wrong encoding) is found here and reported as a
:class:`UserError` naming the file and line; nothing downstream parses files.
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple, Optional

from weibo_sentiment.classes import LabelMap
from weibo_sentiment.errors import UserError

STDIN = "-"
FORMAT_BY_SUFFIX = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "json", ".txt": "txt"}
DELIMITER = {"csv": ",", "tsv": "\t"}
# Posts are short, but one pasted article must not stop a run: allow fields far longer than csv's 128 KiB default.
csv.field_size_limit(64 * 1024 * 1024)


class Post(NamedTuple):
    """One record of an input: the text, its label and its id when the input has them, and the input's other
    columns that the output carries (``data.keep_columns``)."""

    text: str
    label: Optional[int] = None
    id: Optional[str] = None
    kept: Optional[dict[str, Any]] = None


def detect_format(path: str, fmt: Optional[str] = None) -> str:
    """The file format: ``fmt`` when given, else from the suffix; standard input is plain text unless told."""
    if fmt is not None:
        if fmt not in DELIMITER and fmt not in ("jsonl", "json", "txt"):
            raise UserError(f"unknown format {fmt!r} for {path}: use csv, tsv, jsonl, json or txt")
        return fmt
    if path == STDIN:
        return "txt"
    suffix = Path(path).suffix.lower()
    if suffix not in FORMAT_BY_SUFFIX:
        raise UserError(f"{path}: cannot tell the format from the suffix {suffix!r}; name the file .csv, .tsv, .jsonl, .json or .txt")
    return FORMAT_BY_SUFFIX[suffix]


def _json_inside(path: Path) -> Optional[str]:
    """``json`` or ``jsonl`` for a file whose text starts as a JSON array or object does, else ``None``."""
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            start = f.read(256).lstrip()
    except OSError:
        return None
    return "json" if start.startswith("[") else "jsonl" if start.startswith("{") else None


class PostReader:
    """Streams :class:`Post` records from a CSV/TSV/JSONL/JSON/plain-text file or standard input (``-``).

    Files are read as UTF-8 (a leading BOM and CRLF line ends are fine). CSV/TSV need a header row; JSONL needs one
    object per line; JSON (MediaCrawler's export) is one array of objects. Plain text is one post per line, blank
    lines skipped. With ``label_column`` set, every record must carry a label that ``label_map`` knows (a
    :class:`~weibo_sentiment.classes.LabelMap`: a label number of the model, a class name or an annotator's emotion);
    a post whose label the map leaves out (surprise; neutral for a two-class model) is skipped and counted in
    ``left_out``. ``keep_columns`` are carried in each post (``Post.kept``), a missing one is an error. Memory stays constant
    whatever the file's size, except for a JSON array, which is parsed whole.
    """

    def __init__(
        self,
        path: str,
        text_column: str = "review",
        label_column: Optional[str] = None,
        id_column: Optional[str] = "id",
        fmt: Optional[str] = None,
        num_labels: int = 2,
        keep_columns: Sequence[str] = (),
        label_map: Optional[Mapping[str, Optional[str]]] = None,
    ) -> None:
        self.path = str(path)
        if self.path != STDIN:
            file = Path(self.path)
            if not file.exists():
                raise UserError(f"{self.path}: no such file")
            if file.is_dir():
                raise UserError(f"{self.path}: is a directory, not a file")
        self.fmt = detect_format(self.path, fmt)
        if self.fmt == "txt" and fmt is None and label_column is not None and self.path != STDIN:
            # Labelled posts are never plain text: SMP2020-EWECT ships its JSON array as usual_train.txt.
            self.fmt = _json_inside(file) or self.fmt
        self.text_column = text_column
        self.label_column = label_column
        self.id_column = id_column
        self.labels = LabelMap(num_labels, label_map)
        self.left_out: Counter[str] = Counter()  # raw label -> posts skipped for it (``LabelMap``)
        self.keep_columns = tuple(keep_columns)
        if self.fmt == "txt" and (self.label_column is not None or self.keep_columns):
            what = f"a {label_column!r} column" if label_column is not None else "the columns to keep"
            raise UserError(f"{self.path}: plain text has no columns; {what} needs a CSV, TSV, JSONL or JSON file")

    def __iter__(self) -> Iterator[Post]:
        self.left_out.clear()
        with self._reading() as records:
            for record, line_no in records:
                post = self._as_post(record, line_no)
                if post is not None:
                    yield post

    def count(self) -> Optional[int]:
        """How many posts iterating yields, in a quick pass that splits the file into records as iterating does
        (blank lines, quoted line breaks) but checks none of them; ``None`` for standard input, read only once."""
        if self.path == STDIN:
            return None
        with self._reading() as records:
            return sum(1 for _ in records)

    @contextmanager
    def _reading(self) -> Iterator[Iterator[tuple[Any, int]]]:
        """The records of the file as read (``_split``), with encoding and CSV errors said in one line."""
        with self._open() as stream:
            try:
                yield self._split(stream)
            except UnicodeDecodeError as err:
                raise UserError(f"{self.path}: not UTF-8 text ({err.reason}); save the file as UTF-8") from None
            except csv.Error as err:
                raise UserError(f"{self.path}: malformed CSV ({err})") from None

    @contextmanager
    def _open(self) -> Iterator[io.TextIOBase]:
        if self.path == STDIN:
            stream = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8-sig", newline="")
            try:
                yield stream
            finally:
                stream.detach()  # leave standard input open for whoever reads it next
            return
        try:
            stream = open(self.path, encoding="utf-8-sig", newline="")
        except OSError as err:
            raise UserError(f"{self.path}: cannot open ({err.strerror})") from None
        with stream:
            yield stream

    def _split(self, stream: io.TextIOBase) -> Iterator[tuple[Any, int]]:
        """Each record, not yet checked, with its line number: a text line (blank ones are not posts), a JSON line,
        or a CSV/TSV row as a dict (after the header is checked)."""
        if self.fmt == "txt":
            for line_no, line in enumerate(stream, start=1):
                text = line.rstrip("\r\n")
                if text.strip():
                    yield text, line_no
            return
        if self.fmt == "jsonl":
            for line_no, line in enumerate(stream, start=1):
                if line.strip():
                    yield line, line_no
            return
        if self.fmt == "json":
            yield from self._json_array(stream)
            return
        reader = csv.DictReader(stream, delimiter=DELIMITER[self.fmt])
        if reader.fieldnames is None:
            header = ",".join(column for column in (self.label_column, self.text_column) if column)
            raise UserError(f"{self.path}: the file is empty; expected a header row such as '{header}'")
        for column in (self.text_column, self.label_column, *self.keep_columns):
            if column is not None and column not in reader.fieldnames:
                raise UserError(
                    f"{self.path}: no {column!r} column (the header has {', '.join(map(repr, reader.fieldnames))}); "
                    "rename it or set the column name in the data config"
                )
        for row in reader:
            yield row, reader.line_num

    def _json_array(self, stream: io.TextIOBase) -> Iterator[tuple[Any, int]]:
        """The objects of a JSON array (MediaCrawler's ``--save_data_option json`` files), numbered from 1."""
        try:
            records = json.load(stream)
        except json.JSONDecodeError as err:
            raise UserError(f"{self.path} line {err.lineno}: not valid JSON ({err.msg})") from None
        if not isinstance(records, list):
            raise UserError(f"{self.path}: expected a JSON array of objects (one per post); for one object per line "
                            "name the file .jsonl")  # fmt: skip
        for number, record in enumerate(records, start=1):
            yield record, number

    def _as_post(self, record: Any, line_no: int) -> Optional[Post]:
        if self.fmt == "txt":
            return Post(record)
        if self.fmt == "jsonl":
            record = self._json_object(record, line_no)
        elif self.fmt == "json" and not isinstance(record, dict):
            raise UserError(f"{self.path} object {line_no}: expected a JSON object with a {self.text_column!r} field")
        return self._post(record, line_no)

    def _json_object(self, line: str, line_no: int) -> dict[str, Any]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{self.path} line {line_no}: not valid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise UserError(f"{self.path} line {line_no}: expected a JSON object with a {self.text_column!r} field")
        return record

    def _post(self, record: dict[str, Any], line_no: int) -> Optional[Post]:
        where = f"{self.path} {'object' if self.fmt == 'json' else 'line'} {line_no}"
        text = record.get(self.text_column)
        if text is None and self.text_column in record:
            text = ""  # a JSON null: a post without text, marked empty like an empty CSV field
        if not isinstance(text, str):
            raise UserError(f"{where}: no {self.text_column!r} text")
        post_id = record.get(self.id_column) if self.id_column else None
        label = None
        if self.label_column is not None:
            label = self._label(record.get(self.label_column), line_no)
            if label is None:
                return None
        kept = None
        if self.keep_columns:
            missing = [column for column in self.keep_columns if column not in record]
            if missing:
                raise UserError(f"{where}: no {', '.join(map(repr, missing))} field to keep (--data.keep_columns)")
            kept = {column: record[column] for column in self.keep_columns}
        return Post(text, label, None if post_id is None else str(post_id), kept)

    def _label(self, value: Any, line_no: int) -> Optional[int]:
        """The label number of a record's label, or ``None`` (counted in ``left_out``) when the map leaves it out."""
        text = str(value).strip() if value is not None else ""
        try:
            label = self.labels(text)
        except KeyError:
            where = f"{self.path} {'object' if self.fmt == 'json' else 'line'} {line_no}"
            raise UserError(
                f"{where}: label {text!r} is not one of {self.labels.numbers()} (column {self.label_column!r}; "
                f"{self.labels.meaning()}), nor a class name or emotion that data.label_map knows; map it there"
            ) from None
        if label is None:
            self.left_out[text] += 1
        return label


def read_labelled(path: str, text_column: str, label_column: str, num_labels: int = 2,
                  label_map: Optional[Mapping[str, Optional[str]]] = None,
                  say: Optional[Callable[[str], None]] = None) -> list[Post]:  # fmt: skip
    """All labelled posts of a training/validation/test file; ``say`` is given one line naming the posts left out for
    their label, if any was. A file without posts, or whose posts were all left out, is an error."""
    reader = PostReader(path, text_column, label_column, id_column=None, num_labels=num_labels, label_map=label_map)
    posts = list(reader)
    left_out = ""
    if reader.left_out:
        reasons = "; ".join(f"{count:,} labelled {label!r} ({reader.labels.left_out(label)})"
                            for label, count in reader.left_out.most_common())  # fmt: skip
        left_out = f"{path}: {sum(reader.left_out.values()):,} posts left out: {reasons}"
    if not posts:
        raise UserError(f"{path}: has a header but no posts" if not reader.left_out else f"{left_out}, so none is left")
    if left_out and say is not None:
        say(left_out)
    return posts


def stratified_split(labels: Sequence[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of (train, validation): ``val_fraction`` of each label's posts, the same for the same seed."""
    by_label: dict[int, list[int]] = defaultdict(list)
    for index, label in enumerate(labels):
        by_label[label].append(index)
    rng = random.Random(seed)
    train, val = [], []
    for label in sorted(by_label):
        indices = by_label[label]
        rng.shuffle(indices)
        n_val = round(len(indices) * val_fraction)
        val += indices[:n_val]
        train += indices[n_val:]
    return sorted(train), sorted(val)


