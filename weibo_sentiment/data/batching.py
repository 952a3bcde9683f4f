"""Token ids to batches: length-grouped training batches, labelled evaluation batches, and length-sorted windows of
posts to label, each batch padded only to its own longest post."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, Sampler, get_worker_info

from weibo_sentiment.classes import CLASS_NAMES, NEUTRAL
from weibo_sentiment.data.readers import Post
from weibo_sentiment.data.tokenizer import Tokenize, pad_to_longest
from weibo_sentiment.emoticons import EmoticonTags


class TokenizedPosts(Dataset):
    """Labelled posts, tokenized once up front (not per item, per epoch), with and without their emoticon tags.

    An integer index gives the post as written plus its tag-free version (``text_input_ids``, ``None`` when
    nothing but tags is left) for the text-only metric. An ``(index, strip)`` pair, as the
    :class:`LengthGroupedBatches` yields them, gives one version: tag-free when ``strip`` (and something is left),
    with the post's index (``post``) so that two views of one post can be paired in a batch.

    ``classes`` (one per post, or one for all) says which classes a post's loss is over: a three-class model learns
    from a source whose posts are labelled only negative or positive (a corpus labelled from emoticons) over those
    two alone, so that it is not taught that nothing is neutral (``classes_of``); ``None``: every class.
    """

    def __init__(self, posts: Sequence[Post], tokenize: Tokenize, emoticons: EmoticonTags,
                 classes: Optional[tuple[bool, ...]] | Sequence[Optional[tuple[bool, ...]]] = None) -> None:  # fmt: skip
        self.posts = list(posts)
        self.classes = list(classes) if isinstance(classes, list) else [classes] * len(self.posts)
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
            return {"input_ids": ids or self.input_ids[index], "label": self.posts[index].label, "post": index,
                    "stripped": ids is not None, "classes": self.classes[index]}  # fmt: skip
        ids = self.input_ids[key]
        return {"input_ids": ids, "text_input_ids": self.text_input_ids[key], "label": self.posts[key].label,
                "classes": self.classes[key]}  # fmt: skip


def classes_of(posts: Sequence[Post], num_labels: int) -> Optional[tuple[bool, ...]]:
    """The classes a loss over these posts may use: ``None`` (all) unless the model has a neutral class that none of
    the posts carries; then negative and positive alone. Negative and positive are never masked: a source of one
    class only would otherwise teach nothing."""
    if num_labels < 3 or any(post.label == NEUTRAL_LABEL for post in posts):
        return None
    return tuple(label != NEUTRAL_LABEL for label in range(num_labels))


NEUTRAL_LABEL = CLASS_NAMES.index(NEUTRAL)


class LengthGroupedBatches(Sampler[list[tuple[int, bool]]]):
    """Training batches of posts of similar length, shuffled anew each epoch; some posts lose their emoticon tags.

    Each epoch shuffles all posts, cuts the order into groups of ``group_batches`` batches, sorts each group by
    token count and slices it into batches, then shuffles the batches: every batch pads to a length close to its
    own posts' (Weibo posts average ~66 tokens; padding every post to 128 doubles the work) while the batch
    contents and order stay random. Yields lists of ``(index, strip)`` pairs, ``strip`` drawn with probability
    ``emoticon_dropout`` for posts that have tags to remove; with ``views=2`` every post that has tags to remove
    comes twice in its batch, as written and without its tags (two-view training), the others once.

    Posts from several sources (``sources``: each post's source number) are drawn per epoch by their source's
    weight (``weights``): 1.0 takes each post once, 0.25 a quarter of them (drawn anew each epoch), 2.5 each twice
    and half of them a third time; ``emoticon_dropout`` may be one probability or one per post (each source's).

    Everything is a function of the seed and the epoch, so a resumed run sees the same batches: :meth:`resume`
    skips the batches a checkpoint had already trained on (the data module's ``state_dict`` records them). Under several processes each rank takes every
    ``world_size``-th batch, all ranks the same number.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        stripped_lengths: Sequence[Optional[int]],
        batch_size: int,
        emoticon_dropout: float | Sequence[float] = 0.0,
        seed: int = 0,
        group_batches: int = 50,
        rank: int = 0,
        world_size: int = 1,
        current_epoch: Optional[Callable[[], int]] = None,
        views: int = 1,
        sources: Optional[Sequence[int]] = None,
        weights: Optional[Sequence[float]] = None,
    ) -> None:
        self.lengths = torch.tensor(list(lengths))
        # A post whose tags cannot be removed (none, or nothing but tags) keeps its own length when "stripped".
        self.stripped_lengths = torch.tensor([s if s is not None else n for s, n in zip(stripped_lengths, lengths)])
        self.strippable = torch.tensor([s is not None for s in stripped_lengths], dtype=torch.bool)
        self.emoticon_dropout = torch.as_tensor(emoticon_dropout, dtype=torch.float32)
        self.batch_size, self.seed = batch_size, seed
        self.group_batches, self.rank, self.world_size, self.views = group_batches, rank, world_size, views
        self.epoch, self._skip = 0, (0, 0)  # (epoch, batches) to skip once, set by resume()
        self.current_epoch = current_epoch  # the trainer's epoch, when there is a trainer (else set_epoch's)
        # Each source's posts and weight; none when every post is drawn once per epoch (the order then stays what
        # one source always gave).
        self._sources: list[tuple[torch.Tensor, float]] = []
        if sources is not None and weights is not None and any(weight != 1.0 for weight in weights):
            source_of = torch.tensor(list(sources))
            self._sources = [(torch.nonzero(source_of == number).flatten(), float(weight))
                             for number, weight in enumerate(weights)]  # fmt: skip

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, batches_done: int) -> None:
        """Continue ``epoch`` after its first ``batches_done`` batches (those a checkpoint had trained on)."""
        self.epoch, self._skip = epoch, (epoch, batches_done)

    def posts_per_epoch(self) -> int:
        if not self._sources:
            return len(self.lengths)
        return sum(round(weight * len(posts)) for posts, weight in self._sources)

    def __len__(self) -> int:
        return math.ceil(self.posts_per_epoch() / self.batch_size) // self.world_size

    def _drawn(self, generator: torch.Generator) -> torch.Tensor:
        """This epoch's posts, by their source's weight: ``floor(weight)`` times each, and a random share of them for
        the fraction."""
        drawn = []
        for posts, weight in self._sources:
            whole, extra = int(weight), round(weight * len(posts)) - int(weight) * len(posts)
            drawn += [posts] * whole + [posts[torch.randperm(len(posts), generator=generator)[:extra]]]
        return torch.cat(drawn)

    def batches(self, epoch: int) -> list[list[tuple[int, bool]]]:
        """This rank's batches of ``epoch``, in training order."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        if self._sources:
            drawn = self._drawn(generator)
            order = drawn[torch.randperm(len(drawn), generator=generator)]
        else:
            order = torch.randperm(len(self.lengths), generator=generator)
        # One draw per post (not per drawn copy): a post drawn twice in an epoch is stripped both times or neither.
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
        if self.views == 2:
            return [[(index, stripped) for index in batches[b]
                     for stripped in ((False, True) if self.strippable[index] else (False,))] for b in mine]  # fmt: skip
        return [[(index, bool(strip[index])) for index in batches[b]] for b in mine]

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        # Lightning fetches an epoch's first batch before it calls set_epoch: asked, the trainer knows the epoch.
        epoch = self.current_epoch() if self.current_epoch is not None else self.epoch
        skip = self._skip[1] if self._skip[0] == epoch else 0
        self._skip = (0, 0)
        yield from self.batches(epoch)[skip:]


class PadLabelled:
    """Collate for labelled batches: dynamic padding plus ``labels``; for evaluation a ``text_only`` sub-batch of
    the posts that keep some text without their emoticon tags; for two-view training ``view_pairs``, the rows
    (as written, without tags) of each post that comes twice."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def _padded(self, sequences: list[list[int]], labels: list[int]) -> dict[str, torch.Tensor]:
        batch = pad_to_longest(sequences, self.pad_token_id)
        batch["labels"] = torch.tensor(labels, dtype=torch.long)
        return batch

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = self._padded([item["input_ids"] for item in items], [item["label"] for item in items])
        if any(item.get("classes") is not None for item in items):
            batch["class_mask"] = class_mask([item.get("classes") for item in items])
        text_only = [item for item in items if item.get("text_input_ids") is not None]
        if text_only:
            batch["text_only"] = self._padded([i["text_input_ids"] for i in text_only], [i["label"] for i in text_only])
            if "class_mask" in batch:
                batch["text_only"]["class_mask"] = class_mask([i.get("classes") for i in text_only])
        rows: dict[int, dict[bool, int]] = {}
        for row, item in enumerate(items):
            if "post" in item:
                rows.setdefault(item["post"], {})[item["stripped"]] = row
        pairs = [(views[False], views[True]) for views in rows.values() if len(views) == 2]
        if pairs:
            batch["view_pairs"] = torch.tensor(pairs, dtype=torch.long)
        return batch


def class_mask(classes: list[Optional[tuple[bool, ...]]]) -> torch.Tensor:
    """The classes each row's loss is over (``TokenizedPosts``), as a ``[rows, classes]`` bool tensor; ``None``: all."""
    width = len(next(c for c in classes if c is not None))
    return torch.tensor([c if c is not None else (True,) * width for c in classes], dtype=torch.bool)


class CrossesAsArrays:
    """A DataLoader ``collate_fn`` (around ``collate``, or alone where the dataset yields whole batches) whose
    batches leave a worker process with numpy arrays where they hold tensors; ``as_tensors`` turns them back in the
    main process (``WeiboDataModule.on_before_batch_transfer``). In the main process the batch stays as it is.

    Why: a tensor leaves a worker as a file descriptor, handed over by multiprocessing's resource-sharer thread in a
    handshake of its own for each tensor. When a stop (SIGTERM, Ctrl-C) ends the main process in the middle of one,
    the worker's thread fails (connection reset, EOF) and Python prints its traceback: seen in 2 of 15 stopped
    predicts. A numpy array is pickled into the worker's queue with the rest of the batch: one message, nothing to
    fail half-way.
    """

    def __init__(self, collate: Optional[Callable[[Any], dict[str, Any]]] = None) -> None:
        self.collate = collate

    def __call__(self, items: Any) -> dict[str, Any]:
        batch = self.collate(items) if self.collate is not None else items
        return as_arrays(batch) if get_worker_info() is not None else batch


def as_arrays(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch with its tensors (also in nested batches, such as ``text_only``) as numpy arrays, sharing memory."""
    return {key: value.numpy() if isinstance(value, torch.Tensor) else as_arrays(value) if isinstance(value, dict)
            else value for key, value in batch.items()}  # fmt: skip


def as_tensors(batch: Any) -> Any:
    """Undoes ``as_arrays``: numpy arrays become tensors again, sharing memory; anything but a dict stays as it is."""
    if not isinstance(batch, dict):
        return batch
    return {key: torch.from_numpy(value) if isinstance(value, np.ndarray) else as_tensors(value)
            for key, value in batch.items()}  # fmt: skip


MAX_PADDING_SHARE = 0.05
"""A predict batch ends early rather than let padding exceed this share of its tokens. Measured on 300 real posts
with the full-size model (onnxruntime, 2 cores): batches of 64 by count padded 16 % of their tokens and labelled
12.9 posts/s; cut at 5 % padding, 3 %, and 16.0 posts/s (int8: 37.5 and 46.6)."""


def padding_bounded_batches(order: Sequence[int], lengths: Sequence[int], batch_size: int,
                            max_padding: float = MAX_PADDING_SHARE) -> list[list[int]]:  # fmt: skip
    """Cut ``order`` (indices sorted shortest first) into batches of at most ``batch_size``, starting a new batch
    where adding the next post would make more than ``max_padding`` of the batch's tokens padding."""
    batches: list[list[int]] = []
    current: list[int] = []
    tokens = 0
    for index in order:
        length = lengths[index]
        padded = (len(current) + 1) * length
        if current and (len(current) == batch_size or padded - (tokens + length) > max_padding * padded):
            batches.append(current)
            current, tokens = [], 0
        current.append(index)
        tokens += length
    return batches + [current] if current else batches


class SortedPostBatches(IterableDataset):
    """Posts to label, streamed from the file a window at a time: each window of ``window`` posts is tokenized in
    one call and cut into batches of similar length, shortest first (at most ``batch_size`` posts, at most 5 %
    padding: ``padding_bounded_batches``), so no post pays for padding to a much longer one. Every batch carries
    its posts' positions in the input (``positions``), which of its classified posts were longer than the model reads
    (``truncated``), and whether it ends its window (``window_end``), so the writer
    can put the rows back in input order a window at a time. Memory stays constant whatever the input's size.

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
        for number, window in enumerate(self._windows()):
            if number % self.world_size == self.rank:
                yield from self.window_batches(window, first_position=number * self.window)

    def _windows(self) -> Iterator[list[Post]]:
        """The input cut into windows of ``window`` posts; a source that knows better cuts its own (a database
        table being followed ends a window whenever it has no more rows for now)."""
        if hasattr(self.reader, "windows"):
            yield from self.reader.windows(self.window)
            return
        posts = iter(self.reader)
        while window := list(itertools.islice(posts, self.window)):
            yield window

    def posts_of_this_rank(self, total: int) -> int:
        """How many of an input's ``total`` posts this rank labels: those of its windows (see ``__iter__``)."""
        starts = range(self.rank * self.window, total, self.world_size * self.window)
        return sum(min(self.window, total - start) for start in starts)

    def window_batches(self, posts: list[Post], first_position: int = 0) -> Iterator[dict[str, Any]]:
        """One window's batches, shortest posts first; an empty window is one empty batch (see ``DatabasePosts``)."""
        if not posts:
            batch = pad_to_longest([[self.pad_token_id]], self.pad_token_id)
            yield {**batch, "classified": torch.zeros(0, dtype=torch.long), "truncated": [], "posts": [],
                   "positions": [], "window_end": True}  # fmt: skip
            return
        classified = [index for index, post in enumerate(posts) if post.text.strip()]
        input_ids: list[list[int]] = [[] for _ in posts]
        truncated = [False] * len(posts)
        if classified:
            ids, cut = self.tokenize.marking_truncated([posts[i].text for i in classified])
            for index, post_ids, post_cut in zip(classified, ids, cut):
                input_ids[index], truncated[index] = post_ids, post_cut
        order = sorted(range(len(posts)), key=lambda index: len(input_ids[index]))
        groups = padding_bounded_batches(order, [len(ids) for ids in input_ids], self.batch_size)
        for number, members in enumerate(groups):
            rows = [row for row, index in enumerate(members) if input_ids[index]]
            batch: dict[str, Any] = pad_to_longest([input_ids[members[row]] for row in rows] or [[self.pad_token_id]],
                                                   self.pad_token_id)  # fmt: skip
            batch["classified"] = torch.tensor(rows, dtype=torch.long)
            batch["truncated"] = [truncated[members[row]] for row in rows]  # of the classified posts, in their order
            batch["posts"] = [posts[i] for i in members]
            batch["positions"] = [first_position + i for i in members]
            batch["window_end"] = number == len(groups) - 1
            yield batch


def truncated_posts(batch: dict[str, Any]) -> list[bool]:
    """For each post of a predict batch (``batch["posts"]``), whether it was longer than the model reads."""
    flags = [False] * len(batch["posts"])
    for row, cut in zip(batch["classified"].tolist(), batch["truncated"]):
        flags[row] = cut
    return flags
