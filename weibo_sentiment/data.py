"""Weibo posts from files to padded batches: readers, datasets, collate and the LightningDataModule.

Every file problem (missing file, wrong column, bad label, wrong encoding) is found in the readers here and
reported as a :class:`UserError` naming the file and line; nothing downstream parses files.
"""

from __future__ import annotations

import csv
import functools
import io
import itertools
import json
import math
import os
import random
import re
import sys
from collections import defaultdict
from contextlib import contextmanager
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Optional

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from weibo_sentiment.emoticons import DEFAULT_PATTERN, EmoticonTags
from weibo_sentiment.errors import UserError, explain_load_error

STDIN = "-"
FORMAT_BY_SUFFIX = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".txt": "txt"}
DELIMITER = {"csv": ",", "tsv": "\t"}
# Posts are short, but one pasted article must not stop a run: allow fields far longer than csv's 128 KiB default.
csv.field_size_limit(64 * 1024 * 1024)


class Post(NamedTuple):
    """One record of an input file: the text, its label when the file has one, and its id when it has one."""

    text: str
    label: Optional[int] = None
    id: Optional[str] = None


def detect_format(path: str, fmt: Optional[str] = None) -> str:
    """The file format: ``fmt`` when given, else from the suffix; standard input is plain text unless told."""
    if fmt is not None:
        if fmt not in DELIMITER and fmt not in ("jsonl", "txt"):
            raise UserError(f"unknown format {fmt!r} for {path}: use csv, tsv, jsonl or txt")
        return fmt
    if path == STDIN:
        return "txt"
    suffix = Path(path).suffix.lower()
    if suffix not in FORMAT_BY_SUFFIX:
        raise UserError(f"{path}: cannot tell the format from the suffix {suffix!r}; name the file .csv, .tsv, .jsonl or .txt")
    return FORMAT_BY_SUFFIX[suffix]


class PostReader:
    """Streams :class:`Post` records from a CSV/TSV/JSONL/plain-text file or standard input (``-``).

    Files are read as UTF-8 (a leading BOM and CRLF line ends are fine). CSV/TSV need a header row; JSONL needs one
    object per line. Plain text is one post per line, blank lines skipped. With ``label_column`` set, every record
    must carry a label in ``0 .. num_labels-1``. Memory stays constant whatever the file's size.
    """

    def __init__(
        self,
        path: str,
        text_column: str = "review",
        label_column: Optional[str] = None,
        id_column: Optional[str] = "id",
        fmt: Optional[str] = None,
        num_labels: int = 2,
    ) -> None:
        self.path = str(path)
        if self.path != STDIN:
            file = Path(self.path)
            if not file.exists():
                raise UserError(f"{self.path}: no such file")
            if file.is_dir():
                raise UserError(f"{self.path}: is a directory, not a file")
        self.fmt = detect_format(self.path, fmt)
        self.text_column = text_column
        self.label_column = label_column
        self.id_column = id_column
        self.num_labels = num_labels
        if self.label_column is not None and self.fmt == "txt":
            raise UserError(f"{self.path}: labelled data needs a CSV, TSV or JSONL file with a {label_column!r} column")

    def __iter__(self) -> Iterator[Post]:
        with self._open() as stream:
            records = self._records(stream)
            try:
                yield from records
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

    def _records(self, stream: io.TextIOBase) -> Iterator[Post]:
        if self.fmt == "txt":
            for line in stream:
                text = line.rstrip("\r\n")
                if text.strip():
                    yield Post(text)
            return
        if self.fmt == "jsonl":
            for line_no, line in enumerate(stream, start=1):
                if line.strip():
                    yield self._post(self._json_object(line, line_no), line_no)
            return
        reader = csv.DictReader(stream, delimiter=DELIMITER[self.fmt])
        if reader.fieldnames is None:
            header = ",".join(column for column in (self.label_column, self.text_column) if column)
            raise UserError(f"{self.path}: the file is empty; expected a header row such as '{header}'")
        for column in (self.text_column, self.label_column):
            if column is not None and column not in reader.fieldnames:
                raise UserError(
                    f"{self.path}: no {column!r} column (the header has {', '.join(map(repr, reader.fieldnames))}); "
                    "rename it or set the column name in the data config"
                )
        for row in reader:
            yield self._post(row, reader.line_num)

    def _json_object(self, line: str, line_no: int) -> dict[str, Any]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{self.path} line {line_no}: not valid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise UserError(f"{self.path} line {line_no}: expected a JSON object with a {self.text_column!r} field")
        return record

    def _post(self, record: dict[str, Any], line_no: int) -> Post:
        text = record.get(self.text_column)
        if not isinstance(text, str):
            raise UserError(f"{self.path} line {line_no}: no {self.text_column!r} text")
        post_id = record.get(self.id_column) if self.id_column else None
        label = None if self.label_column is None else self._label(record.get(self.label_column), line_no)
        return Post(text, label, None if post_id is None else str(post_id))

    def _label(self, value: Any, line_no: int) -> int:
        allowed = range(self.num_labels)
        text = str(value).strip() if value is not None else ""
        if re.fullmatch(r"-?[0-9]+", text) and int(text) in allowed:
            return int(text)
        raise UserError(
            f"{self.path} line {line_no}: label {text!r} is not one of {', '.join(map(str, allowed))} "
            f"(column {self.label_column!r}; 1 = positive, 0 = negative)"
        )


def read_labelled(path: str, text_column: str, label_column: str, num_labels: int = 2) -> list[Post]:
    """All labelled posts of a training/validation/test file; an empty file is an error."""
    posts = list(PostReader(path, text_column, label_column, id_column=None, num_labels=num_labels))
    if not posts:
        raise UserError(f"{path}: has a header but no posts")
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


@functools.lru_cache(maxsize=4)
def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """The backbone's own tokenizer (a hub id or a model directory), with a pad token.

    Cached: the model (for its pad id), the data module and the inference loader each ask for it, and it is only
    read, never changed.
    """
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load the tokenizer of {name_or_path!r}: {explain_load_error(name_or_path, err)}") from None
    if tokenizer.pad_token_id is None:
        raise UserError(f"the tokenizer of {name_or_path!r} has no pad token; this project needs one to pad batches")
    return tokenizer


def pad_to_longest(sequences: Sequence[Sequence[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad token ids to the batch's longest sequence (not to ``max_length``): ``input_ids`` + ``attention_mask``."""
    longest = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


class Tokenize:
    """The backbone's tokenizer, truncating to ``max_length``; never returns ``token_type_ids``.

    GPT-2 has no segment embeddings: given BertTokenizer's all-zero ``token_type_ids`` it would add the embedding
    of token 0 (``[PAD]``) to every position.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, texts: list[str]) -> list[list[int]]:
        encoded = self.tokenizer(
            texts,
            truncation=True,
            max_length=self.max_length,
            return_token_type_ids=False,
            return_attention_mask=False,
        )
        return encoded["input_ids"]


class TokenizedPosts(Dataset):
    """Labelled posts, tokenized once up front (not per item, per epoch), with and without their emoticon tags.

    An integer index gives the post as written plus its tag-free version (``text_input_ids``, ``None`` when
    nothing but tags is left) for the text-only metric. An ``(index, strip)`` pair, as the
    :class:`LengthGroupedBatches` yields them, gives one version: tag-free when ``strip`` (and something is left).
    """

    def __init__(self, posts: Sequence[Post], tokenize: Tokenize, emoticons: EmoticonTags) -> None:
        self.posts = list(posts)
        self.input_ids = tokenize([post.text for post in self.posts])
        stripped = [emoticons.strip(post.text) for post in self.posts]
        changed = [i for i, (post, text) in enumerate(zip(self.posts, stripped)) if text != post.text]
        self.text_input_ids: list[Optional[list[int]]] = list(self.input_ids)
        for index, ids in zip(changed, tokenize([stripped[i] for i in changed]) if changed else []):
            self.text_input_ids[index] = ids if stripped[index].strip() else None
        self.tags_only = sum(ids is None for ids in self.text_input_ids)

    def __len__(self) -> int:
        return len(self.posts)

    def lengths(self) -> list[int]:
        """Each post's token count."""
        return [len(ids) for ids in self.input_ids]

    def stripped_lengths(self) -> list[Optional[int]]:
        """Each post's token count without its emoticon tags; ``None`` where removing them changes nothing or
        leaves no text."""
        return [None if ids is None or ids is raw else len(ids) for ids, raw in zip(self.text_input_ids, self.input_ids)]

    def __getitem__(self, key: int | tuple[int, bool]) -> dict[str, Any]:
        if isinstance(key, tuple):
            index, strip = key
            ids = self.text_input_ids[index] if strip and self.text_input_ids[index] is not None else None
            return {"input_ids": ids or self.input_ids[index], "label": self.posts[index].label}
        ids = self.input_ids[key]
        return {"input_ids": ids, "text_input_ids": self.text_input_ids[key], "label": self.posts[key].label}


class LengthGroupedBatches(Sampler[list[tuple[int, bool]]]):
    """Training batches of posts of similar length, shuffled anew each epoch; some posts lose their emoticon tags.

    Each epoch shuffles all posts, cuts the order into groups of ``group_batches`` batches, sorts each group by
    token count and slices it into batches, then shuffles the batches: every batch pads to a length close to its
    own posts' (Weibo posts average ~66 tokens; padding every post to 128 doubles the work) while the batch
    contents and order stay random. Yields lists of ``(index, strip)`` pairs, ``strip`` drawn with probability
    ``emoticon_dropout`` for posts that have tags to remove.

    Everything is a function of the seed and the epoch, so a resumed run sees the same batches: :meth:`resume`
    skips the batches a checkpoint had already trained on (the data module's ``state_dict`` records them). Under several processes each rank takes every
    ``world_size``-th batch, all ranks the same number.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        stripped_lengths: Sequence[Optional[int]],
        batch_size: int,
        emoticon_dropout: float = 0.0,
        seed: int = 0,
        group_batches: int = 50,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.lengths = torch.tensor(list(lengths))
        # A post whose tags cannot be removed (none, or nothing but tags) keeps its own length when "stripped".
        self.stripped_lengths = torch.tensor([s if s is not None else n for s, n in zip(stripped_lengths, lengths)])
        self.strippable = torch.tensor([s is not None for s in stripped_lengths], dtype=torch.bool)
        self.batch_size, self.emoticon_dropout, self.seed = batch_size, emoticon_dropout, seed
        self.group_batches, self.rank, self.world_size = group_batches, rank, world_size
        self.epoch, self._skip = 0, (0, 0)  # (epoch, batches) to skip once, set by resume()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, batches_done: int) -> None:
        """Continue ``epoch`` after its first ``batches_done`` batches (those a checkpoint had trained on)."""
        self.epoch, self._skip = epoch, (epoch, batches_done)

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size) // self.world_size

    def batches(self, epoch: int) -> list[list[tuple[int, bool]]]:
        """This rank's batches of ``epoch``, in training order."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(len(self.lengths), generator=generator)
        strip = (torch.rand(len(self.lengths), generator=generator) < self.emoticon_dropout) & self.strippable
        lengths = torch.where(strip, self.stripped_lengths, self.lengths)
        group = self.batch_size * self.group_batches
        batches = []
        for start in range(0, len(order), group):
            members = order[start : start + group]
            members = members[torch.argsort(lengths[members], stable=True)].tolist()
            batches += [members[i : i + self.batch_size] for i in range(0, len(members), self.batch_size)]
        shuffled = torch.randperm(len(batches), generator=generator).tolist()
        mine = shuffled[self.rank :: self.world_size][: len(self)]
        return [[(index, bool(strip[index])) for index in batches[b]] for b in mine]

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        # Lightning creates the iterator before it calls set_epoch; reading the epoch lazily, at the first batch,
        # picks up the right one.
        epoch = self.epoch
        skip = self._skip[1] if self._skip[0] == epoch else 0
        self._skip = (0, 0)
        yield from self.batches(epoch)[skip:]


class PadLabelled:
    """Collate for labelled batches: dynamic padding plus ``labels``, and for evaluation a ``text_only`` sub-batch
    of the posts that keep some text without their emoticon tags."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def _padded(self, sequences: list[list[int]], labels: list[int]) -> dict[str, torch.Tensor]:
        batch = pad_to_longest(sequences, self.pad_token_id)
        batch["labels"] = torch.tensor(labels, dtype=torch.long)
        return batch

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = self._padded([item["input_ids"] for item in items], [item["label"] for item in items])
        text_only = [item for item in items if item.get("text_input_ids") is not None]
        if text_only:
            batch["text_only"] = self._padded([i["text_input_ids"] for i in text_only], [i["label"] for i in text_only])
        return batch


class SortedPostBatches(IterableDataset):
    """Posts to label, streamed from the file a window at a time: each window of ``window`` posts is tokenized in
    one call and cut into batches of similar length, shortest first, so no post pays for padding to a much longer
    one. Every batch carries its posts' positions in the input (``positions``) and whether it ends its window
    (``window_end``), so the writer can put the rows back in input order a window at a time. Memory stays
    constant whatever the input's size.

    Posts with no text (empty or only spaces) cannot be classified: they keep their place in ``posts`` but only
    the others (``classified``, their indices in the batch) go to the model. Under several processes rank ``r``
    takes windows ``r``, ``r + world_size``, ...
    """

    def __init__(
        self,
        reader: Iterable[Post],
        tokenize: Tokenize,
        pad_token_id: int,
        batch_size: int,
        window: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.reader, self.tokenize, self.pad_token_id = reader, tokenize, pad_token_id
        self.batch_size, self.window, self.rank, self.world_size = batch_size, max(window, 1), rank, world_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        posts = iter(self.reader)
        for number in itertools.count():
            window = list(itertools.islice(posts, self.window))
            if not window:
                return
            if number % self.world_size == self.rank:
                yield from self.window_batches(window, first_position=number * self.window)

    def window_batches(self, posts: list[Post], first_position: int = 0) -> Iterator[dict[str, Any]]:
        """One window's batches, shortest posts first."""
        classified = [index for index, post in enumerate(posts) if post.text.strip()]
        input_ids: list[list[int]] = [[] for _ in posts]
        for index, ids in zip(classified, self.tokenize([posts[i].text for i in classified]) if classified else []):
            input_ids[index] = ids
        order = sorted(range(len(posts)), key=lambda index: len(input_ids[index]))
        for start in range(0, len(order), self.batch_size):
            members = order[start : start + self.batch_size]
            rows = [row for row, index in enumerate(members) if input_ids[index]]
            batch: dict[str, Any] = pad_to_longest([input_ids[members[row]] for row in rows] or [[self.pad_token_id]],
                                                   self.pad_token_id)  # fmt: skip
            batch["classified"] = torch.tensor(rows, dtype=torch.long)
            batch["posts"] = [posts[i] for i in members]
            batch["positions"] = [first_position + i for i in members]
            batch["window_end"] = start + self.batch_size >= len(order)
            yield batch


class WeiboDataModule(LightningDataModule):
    """Weibo posts for fit/validate/test (labelled CSV/TSV/JSONL) and predict (CSV/TSV/JSONL/text/stdin).

    Without ``val_path`` the validation set is a stratified ``val_fraction`` of ``train_path``, the same every run
    for the same ``split_seed`` (so ``validate`` on a checkpoint sees the posts its ``fit`` held out).
    """

    def __init__(
        self,
        train_path: Optional[str] = None,
        val_path: Optional[str] = None,
        test_path: Optional[str] = None,
        predict_path: Optional[str] = None,
        predict_format: Optional[str] = None,
        text_column: str = "review",
        label_column: str = "label",
        id_column: Optional[str] = "id",
        val_fraction: float = 0.1,
        split_seed: int = 42,
        max_length: int = 128,
        emoticon_pattern: str = DEFAULT_PATTERN,
        emoticon_dropout: float = 0.0,
        batch_size: int = 16,
        eval_batch_size: int = 64,
        predict_window: int = 2048,
        num_workers: int = 0,
        tokenizer_name_or_path: str = "uer/gpt2-chinese-cluecorpussmall",
        num_labels: int = 2,
    ) -> None:
        """
        Args:
            train_path: labelled training posts (header ``label,review`` by default).
            val_path: labelled validation posts; default: a stratified split of ``train_path``.
            test_path: labelled posts for ``test``.
            predict_path: posts to label for ``predict``: CSV/TSV/JSONL/TXT, or ``-`` for standard input.
            predict_format: ``csv``, ``tsv``, ``jsonl`` or ``txt`` when the suffix does not tell (default: by suffix).
            text_column: the column (or JSON field) holding the post.
            label_column: the column holding the label (1 = positive, 0 = negative).
            id_column: a column copied to the predictions so they can be joined back, if the file has it.
            val_fraction: share of ``train_path`` held out for validation when there is no ``val_path``.
            split_seed: seed of that split.
            max_length: tokens kept per post (longer posts are truncated).
            emoticon_pattern: regular expression of an emoticon tag (see ``weibo_sentiment.emoticons``).
            emoticon_dropout: probability that a training post has its emoticon tags removed, drawn anew each
                epoch from the run's seed; validation, test and prediction never alter posts. 0: the original recipe.
            batch_size: training batch size.
            eval_batch_size: batch size for validate, test and predict.
            predict_window: posts that predict reads ahead and sorts by length before batching them (a bigger window
                pads less and holds more posts in memory); 1 keeps batches in input order.
            num_workers: DataLoader worker processes for fit, validate and test (posts are tokenized up front, so
                0 is usually fastest); predict always reads and tokenizes in one background process.
            tokenizer_name_or_path: linked from ``model.model_name_or_path``: the backbone's own tokenizer.
            num_labels: linked from ``model.num_labels``: labels must lie in ``0 .. num_labels-1``.
        """
        super().__init__()
        self.save_hyperparameters()
        self.train_path, self.val_path, self.test_path = train_path, val_path, test_path
        self.predict_path, self.predict_format = predict_path, predict_format
        self.text_column, self.label_column, self.id_column = text_column, label_column, id_column
        self.val_fraction, self.split_seed, self.max_length = val_fraction, split_seed, max_length
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.predict_window = predict_window
        self.tokenizer_name_or_path, self.num_labels = tokenizer_name_or_path, num_labels
        if not 0.0 <= emoticon_dropout <= 1.0:
            raise UserError(f"data.emoticon_dropout is a probability, between 0 and 1; got {emoticon_dropout}")
        self.emoticon_dropout = emoticon_dropout
        self.emoticons = EmoticonTags(emoticon_pattern)
        self.datasets: dict[str, Dataset] = {}
        self._ready_stages: set[str] = set()
        self._resume_at: Optional[tuple[int, int]] = None  # (epoch, batches done) from a checkpoint

    def setup(self, stage: str) -> None:
        # The CLI calls this before the trainer creates its run folder, so bad data leaves nothing behind;
        # the trainer's own call then finds the stage ready.
        if stage in self._ready_stages:
            return
        self.tokenizer = load_tokenizer(self.tokenizer_name_or_path)
        self.tokenize = Tokenize(self.tokenizer, self.max_length)
        if stage == "fit":
            train, val = self._train_and_val(stage)
            self.datasets["train"] = TokenizedPosts(train, self.tokenize, self.emoticons)
            self._add_evaluation_set("val", val)
        elif stage == "validate":
            self._add_evaluation_set("val", self._labelled(self.val_path) if self.val_path else self._train_and_val(stage)[1])
        elif stage == "test":
            self._add_evaluation_set("test", self._labelled(self._required("test_path", stage)))
        elif stage == "predict":
            reader = PostReader(
                self._required("predict_path", stage), self.text_column, None, self.id_column, self.predict_format
            )
            if reader.path != STDIN:
                next(iter(reader), None)  # header and first record: their errors surface here, before any work
            self.datasets["predict"] = reader
        self._ready_stages.add(stage)

    def _add_evaluation_set(self, split: str, posts: list[Post]) -> None:
        dataset = self.datasets[split] = TokenizedPosts(posts, self.tokenize, self.emoticons)
        if dataset.tags_only:
            rank_zero_info(
                f"{dataset.tags_only} of {len(dataset)} {split} posts are nothing but emoticon tags: "
                f"left out of {split}_f1_text"
            )

    def _required(self, name: str, stage: str) -> str:
        path = getattr(self, name)
        if path is None:
            also = " (or --data.val_path FILE)" if stage == "validate" else ""
            raise UserError(f"'{stage}' needs posts to work on: pass --data.{name} FILE{also}, or set it in the config")
        return path

    def _labelled(self, path: str) -> list[Post]:
        return read_labelled(path, self.text_column, self.label_column, self.num_labels)

    def _train_and_val(self, stage: str) -> tuple[list[Post], list[Post]]:
        """Training and validation posts: ``val_path``'s, or the held-out split of ``train_path``."""
        posts = self._labelled(self._required("train_path", stage))
        if self.val_path is not None:
            return posts, self._labelled(self.val_path)
        train_idx, val_idx = stratified_split([post.label for post in posts], self.val_fraction, self.split_seed)
        if not val_idx or not train_idx:
            raise UserError(
                f"{self.train_path}: {len(posts)} posts are too few to hold out {self.val_fraction:.0%} for "
                "validation; add posts, change data.val_fraction or pass data.val_path"
            )
        return [posts[i] for i in train_idx], [posts[i] for i in val_idx]

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _evaluation_loader(self, split: str) -> DataLoader:
        rank, world_size = self._rank_and_world()
        dataset = self.datasets[split]
        # Under several processes each rank evaluates its own share, every post exactly once (Lightning's default
        # DistributedSampler would repeat posts to even the shares out, and so change the metrics).
        sampler = UnrepeatedDistributedSampler(dataset, world_size, rank, shuffle=False) if world_size > 1 else None
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=PadLabelled(self.tokenizer.pad_token_id),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        train = self.datasets["train"]
        rank, world_size = self._rank_and_world()
        # seed_everything (the config's seed_everything) records the run's seed here, for every process.
        seed = int(os.environ.get("PL_GLOBAL_SEED", "0"))
        batches = LengthGroupedBatches(train.lengths(), train.stripped_lengths(), self.batch_size,
                                       self.emoticon_dropout, seed, rank=rank, world_size=world_size)  # fmt: skip
        if self._resume_at is not None:
            batches.resume(*self._resume_at)
            self._resume_at = None
        return DataLoader(
            train,
            batch_sampler=batches,
            num_workers=self.num_workers,
            collate_fn=PadLabelled(self.tokenizer.pad_token_id),
            persistent_workers=self.num_workers > 0,
        )

    # Where training stands goes into every checkpoint, so a run resumed mid-epoch continues with the next unseen
    # batch. (Lightning's own route, a stateful DataLoader, loads too late here: configure_optimizers asks for the
    # number of steps, which makes Lightning start the training loader before it restores the loops.)
    def state_dict(self) -> dict[str, int]:
        trainer = self.trainer
        if trainer is None or trainer.state.fn != "fit":
            return {}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if done >= trainer.num_training_batches:
            return {"epoch": trainer.current_epoch + 1, "batches_done": 0}
        return {"epoch": trainer.current_epoch, "batches_done": done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state:
            self._resume_at = (state["epoch"], state["batches_done"])

    def val_dataloader(self) -> DataLoader:
        return self._evaluation_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._evaluation_loader("test")

    def predict_dataloader(self) -> DataLoader:
        rank, world_size = self._rank_and_world()
        dataset = SortedPostBatches(self.datasets["predict"], self.tokenize, self.tokenizer.pad_token_id,
                                    self.eval_batch_size, self.predict_window, rank, world_size)  # fmt: skip
        # One background process reads and tokenizes while the model works (one keeps the windows in order);
        # standard input stays in this process, which owns it.
        from_stdin = self.predict_path == STDIN
        return DataLoader(dataset, batch_size=None, num_workers=0 if from_stdin else 1)
