"""The LightningDataModule: which posts each stage reads, and the loaders that batch them."""

from __future__ import annotations

import os
from typing import Optional

from lightning.pytorch import LightningDataModule
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from weibo_sentiment.data.batching import LengthGroupedBatches, PadLabelled, SortedPostBatches, TokenizedPosts
from weibo_sentiment.data.readers import STDIN, Post, PostReader, read_labelled, stratified_split
from weibo_sentiment.data.tokenizer import Tokenize, load_tokenizer
from weibo_sentiment.emoticons import DEFAULT_PATTERN, EmoticonTags
from weibo_sentiment.errors import UserError


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
