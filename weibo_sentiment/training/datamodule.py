"""The LightningDataModule: which posts each stage reads, and the loaders that batch them."""

from __future__ import annotations

import os
from dataclasses import asdict, replace
from typing import Any, Literal, Optional

from lightning.pytorch import LightningDataModule
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from weibo_sentiment.data.batching import (
    CrossesAsArrays,
    classes_of,
    LengthGroupedBatches,
    PadLabelled,
    SortedPostBatches,
    TokenizedPosts,
    as_tensors,
)
from weibo_sentiment.data.database import DatabasePosts, LabelsLocation, is_database_url, same_database
from weibo_sentiment.data.readers import STDIN, Post, PostReader, read_labelled, stratified_split
from weibo_sentiment.data.tokenizer import Tokenize, load_tokenizer
from weibo_sentiment.emoticons import EmoticonTags
from weibo_sentiment.errors import UserError
from weibo_sentiment.processes import dataloader_worker_init
from weibo_sentiment.settings import DataSettings, LabelledSource


class WeiboDataModule(LightningDataModule):
    """Weibo posts for fit/validate/test (labelled CSV/TSV/JSONL) and predict (CSV/TSV/JSONL/JSON/text/stdin, or a
    database table: ``data.database``).

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
        table: Optional[str] = None,
        query: Optional[str] = None,
        text_column: str = DataSettings.text_column,
        label_column: str = DataSettings.label_column,
        label_map: Optional[dict[str, Optional[str]]] = None,
        train_weight: float = DataSettings.train_weight,
        train_sources: Optional[list[LabelledSource]] = None,
        human_val: Optional[LabelledSource] = None,
        id_column: Optional[str] = DataSettings.id_column,
        keep_columns: Optional[list[str]] = None,
        follow: Optional[float] = None,
        val_fraction: float = DataSettings.val_fraction,
        split_seed: int = DataSettings.split_seed,
        max_length: int = DataSettings.max_length,
        emoticon_pattern: str = DataSettings.emoticon_pattern,
        emoticon_dropout: float = DataSettings.emoticon_dropout,
        emoticon_views: Literal[1, 2] = DataSettings.emoticon_views,
        batch_size: int = DataSettings.batch_size,
        eval_batch_size: int = DataSettings.eval_batch_size,
        predict_window: int = DataSettings.predict_window,
        num_workers: int = DataSettings.num_workers,
        tokenizer_name_or_path: str = DataSettings.tokenizer_name_or_path,
        num_labels: int = DataSettings.num_labels,
    ) -> None:
        """The ``data:`` section of a config; each argument is described (and checked) in
        :class:`weibo_sentiment.settings.DataSettings`, which the API, the console and the export read too."""
        settings = {name: value for name, value in locals().items() if name in DataSettings.__dataclass_fields__}
        settings["keep_columns"] = keep_columns or []
        settings["train_sources"] = train_sources or []
        super().__init__()
        s = self.settings = DataSettings(**settings)
        self.save_hyperparameters(asdict(s))
        self.train_path, self.val_path, self.test_path = s.train_path, s.val_path, s.test_path
        self.predict_path, self.predict_format = s.predict_path, s.predict_format
        self.text_column, self.label_column, self.id_column = s.text_column, s.label_column, s.id_column
        self.val_fraction, self.split_seed, self.max_length = s.val_fraction, s.split_seed, s.max_length
        self.batch_size, self.eval_batch_size, self.num_workers = s.batch_size, s.eval_batch_size, s.num_workers
        self.predict_window = s.predict_window
        self.keep_columns = s.keep_columns
        self.follow = s.follow
        self._labels: Optional[LabelsLocation] = None  # set by a writer whose labels go to the posts' database
        self.tokenizer_name_or_path, self.num_labels = s.tokenizer_name_or_path, s.num_labels
        self.emoticon_dropout = s.emoticon_dropout
        self.emoticon_views = s.emoticon_views
        self.emoticons = EmoticonTags(s.emoticon_pattern)
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
            self._add_training_set(train)
            if val:
                self._add_evaluation_set("val", val)
            self._add_human_validation_set()
        elif stage == "validate":
            val = self._labelled(self.val_path) if self.val_path else self._train_and_val(stage)[1]
            if val:
                self._add_evaluation_set("val", val)
            self._add_human_validation_set()
        elif stage == "test":
            self._add_evaluation_set("test", self._labelled(self._required("test_path", stage)))
        elif stage == "predict":
            path, s = self._required("predict_path", stage), self.settings
            if is_database_url(path):  # the database, table and columns are checked here, before any work
                self.datasets["predict"] = DatabasePosts.open(path, s.table, s.query, self.text_column,
                                                              s.id_column, s.keep_columns, s.follow)  # fmt: skip
            else:
                reader = PostReader(path, self.text_column, None, self.id_column, self.predict_format,
                                    keep_columns=s.keep_columns)  # fmt: skip
                if reader.path != STDIN:
                    next(iter(reader), None)  # header and first record: their errors surface here, before any work
                self.datasets["predict"] = reader
        self._ready_stages.add(stage)

    def _add_training_set(self, corpus: list[Post]) -> None:
        """The training posts: ``train_path``'s (less its validation split) and every ``train_sources`` file's, each
        with its emoticon dropout, weight and the classes its loss is over (``classes_of``)."""
        s = self.settings
        parts = [(corpus, s.emoticon_dropout, s.train_weight)] if corpus else []
        for source in s.train_sources:
            dropout = source.emoticon_dropout if source.emoticon_dropout is not None else s.emoticon_dropout
            parts.append((self._read(source), dropout, source.weight))
        if not parts:
            raise UserError("'fit' needs posts to train on: pass --data.train_path FILE or data.train_sources")
        posts = [post for part, _, _ in parts for post in part]
        classes = [classes_of(part, self.num_labels) for part, _, _ in parts]
        train = self.datasets["train"] = TokenizedPosts(posts, self.tokenize, self.emoticons,
                                                        [c for part, c in zip(parts, classes) for _ in part[0]])  # fmt: skip
        self._draws = {"emoticon_dropout": [dropout for part, dropout, _ in parts for _ in part],
                       "sources": [number for number, (part, _, _) in enumerate(parts) for _ in part],
                       "weights": [weight for _, _, weight in parts]}  # fmt: skip
        if len(parts) > 1:
            drawn = ", ".join(f"{len(part):,} x {weight:g} ({'train_path' if number == 0 and corpus else 'source'} "
                              f"{number})" for number, (part, _, weight) in enumerate(parts))  # fmt: skip
            rank_zero_info(f"Training on {len(train):,} posts of {len(parts)} sources, drawn per epoch: {drawn}")

    def _add_human_validation_set(self) -> None:
        if self.settings.human_val is not None:
            self._add_evaluation_set("val_human", self._read(self.settings.human_val))

    def _add_evaluation_set(self, split: str, posts: list[Post]) -> None:
        dataset = self.datasets[split] = TokenizedPosts(posts, self.tokenize, self.emoticons,
                                                        classes_of(posts, self.num_labels))  # fmt: skip
        if dataset.tags_only and split != "val_human":
            rank_zero_info(
                f"{dataset.tags_only} of {len(dataset)} {split} posts are nothing but emoticon tags: "
                f"left out of {split}_f1_text"
            )

    def evaluation_sets(self, stage: str) -> list[str]:
        """The datasets a validation (``val``, ``val_human``) or a test (``test``) scores, in dataloader order."""
        names = ("val", "val_human") if stage == "val" else (stage,)
        return [name for name in names if name in self.datasets]

    def _required(self, name: str, stage: str) -> str:
        path = getattr(self, name)
        if path is None:
            also = " (or --data.val_path FILE)" if stage == "validate" else ""
            raise UserError(f"'{stage}' needs posts to work on: pass --data.{name} FILE{also}, or set it in the config")
        return path

    def _read(self, source: LabelledSource) -> list[Post]:
        """A labelled file's posts, read with its own columns and label map (else the data section's); the posts its
        label map leaves out are said once."""
        s = self.settings
        return read_labelled(source.path, source.text_column or s.text_column, source.label_column or s.label_column,
                             self.num_labels, source.label_map if source.label_map is not None else s.label_map,
                             say=rank_zero_info)  # fmt: skip

    def _labelled(self, path: str) -> list[Post]:
        return self._read(LabelledSource(path))

    def _train_and_val(self, stage: str) -> tuple[list[Post], list[Post]]:
        """Training and validation posts: ``val_path``'s, or the held-out split of ``train_path``. With only
        ``train_sources`` to train on, ``val_path``'s (or none: ``human_val`` validates)."""
        s = self.settings
        if self.train_path is None and (s.human_val is not None or (stage == "fit" and s.train_sources)):
            return [], self._labelled(self.val_path) if self.val_path else []
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

    def _evaluation_loaders(self, stage: str) -> DataLoader | list[DataLoader]:
        """One loader per evaluation set (``evaluation_sets``); a lone set's loader as it is."""
        loaders = [self._evaluation_loader(split) for split in self.evaluation_sets(stage)]
        return loaders[0] if len(loaders) == 1 else loaders

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
            collate_fn=CrossesAsArrays(PadLabelled(self.tokenizer.pad_token_id)),
            persistent_workers=self.num_workers > 0,
            worker_init_fn=dataloader_worker_init,
        )

    def train_dataloader(self) -> DataLoader:
        train = self.datasets["train"]
        rank, world_size = self._rank_and_world()
        # seed_everything (the config's seed_everything) records the run's seed here, for every process.
        seed = int(os.environ.get("PL_GLOBAL_SEED", "0"))
        epoch = (lambda: self.trainer.current_epoch) if self.trainer is not None else None
        batches = LengthGroupedBatches(train.lengths(), train.stripped_lengths(), self.batch_size, seed=seed,
                                       rank=rank, world_size=world_size, current_epoch=epoch,
                                       views=self.emoticon_views, **self._draws)  # fmt: skip
        if self._resume_at is not None:
            batches.resume(*self._resume_at)
            self._resume_at = None
        return DataLoader(
            train,
            batch_sampler=batches,
            num_workers=self.num_workers,
            collate_fn=CrossesAsArrays(PadLabelled(self.tokenizer.pad_token_id)),
            persistent_workers=self.num_workers > 0,
            worker_init_fn=dataloader_worker_init,
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

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        return self._evaluation_loaders("val")

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        return self._evaluation_loaders("test")

    def only_unlabelled(self, labels: LabelsLocation) -> None:
        """Read only the posts that ``labels.model`` has not labelled yet: a prediction writer whose labels go to a
        table in the posts' own database calls this before predict reads (posts from elsewhere are all read)."""
        source = self.datasets.get("predict")
        if isinstance(source, DatabasePosts) and same_database(source.url, labels.url):
            self._labels = labels

    def _predict_source(self) -> Any:
        """The posts this process reads: a database's rows are shared between processes by key, and only the
        unlabelled ones read when the labels go beside them; a file's windows are shared in ``SortedPostBatches``."""
        source = self.datasets["predict"]
        if isinstance(source, DatabasePosts):
            source = source.of_rank(*self._rank_and_world())
            if self._labels is not None:  # by the model that labels now, its checkpoint loaded
                source = source.unlabelled_by(replace(self._labels, model=self.trainer.lightning_module.trained_model_id()))
        return source

    def _predict_batches(self) -> SortedPostBatches:
        source = self._predict_source()
        rank, world_size = (0, 1) if isinstance(source, DatabasePosts) else self._rank_and_world()
        return SortedPostBatches(source, self.tokenize, self.tokenizer.pad_token_id,
                                 self.eval_batch_size, self.predict_window, rank, world_size)  # fmt: skip

    def predict_dataloader(self) -> DataLoader:
        # One background process reads and tokenizes while the model works (one keeps the windows in order);
        # standard input stays in this process, which owns it.
        from_stdin = self.predict_path == STDIN
        return DataLoader(self._predict_batches(), batch_size=None, num_workers=0 if from_stdin else 1,
                          collate_fn=CrossesAsArrays(), worker_init_fn=dataloader_worker_init)  # fmt: skip

    def predict_posts_of_this_process(self) -> Optional[int]:
        """How many posts this process labels (its share under several), counted in the input before labelling;
        ``None`` when the posts come from standard input, which cannot be read twice."""
        source = self._predict_source()
        total = source.count()
        if total is None or isinstance(source, DatabasePosts):
            return total
        return self._predict_batches().posts_of_this_rank(total)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Batches from worker processes hold numpy arrays where they held tensors (see CrossesAsArrays).
        return as_tensors(batch)
