"""The progress bar: Lightning's own (Rich), with ``predict`` counted in posts against the size of its input."""

from __future__ import annotations

from typing import Any, Optional

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar


class PostsProgressBar(RichProgressBar):
    """Lightning's default bar for fit, validate and test; for predict it counts posts, not batches.

    A file's posts are counted before labelling (``WeiboDataModule.predict_posts_of_this_process``), so the bar
    shows ``n/N`` and the time left; standard input cannot be counted ahead: the bar shows ``n/--`` and its
    description says why. Under several processes each labels its own share of the posts and only rank 0 shows a
    bar (Lightning disables the others'): its ``N`` is rank 0's share. The bar ends with the predict loop, before
    the prediction writer prints its summary line, so that line comes after the bar, not above it.
    """

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_predict_start(trainer, pl_module)
        self._posts_total: Optional[int] = None
        self._posts_done = 0
        if self.is_enabled:  # counting reads the input once more: only for a bar that shows it
            self._posts_total = trainer.datamodule.predict_posts_of_this_process()

    def _predict_description(self, trainer: pl.Trainer) -> str:
        if self._posts_total is None:
            source = "following the table" if getattr(trainer.datamodule, "follow", None) else "stdin"
            return f"{self.predict_description} ({source}, no total)"
        if trainer.world_size > 1:
            return f"{self.predict_description} (rank {trainer.global_rank}'s share)"
        return self.predict_description

    def on_predict_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int,
                               dataloader_idx: int = 0) -> None:  # fmt: skip
        if self.is_disabled or not self.has_dataloader_changed(dataloader_idx):
            return
        total = float("inf") if self._posts_total is None else self._posts_total  # inf: Rich's "no total"
        description = self._predict_description(trainer)
        if self.theme.description:  # a Rich style, written as markup
            description = f"[{self.theme.description}]{description}"
        self.predict_progress_bar_id = self.progress.add_task(description, total=total)
        self.refresh()

    def on_predict_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:  # fmt: skip
        if self.is_disabled or self.predict_progress_bar_id is None:
            return
        self._posts_done += len(batch["posts"])
        self.progress.update(self.predict_progress_bar_id, completed=self._posts_done)
        self.refresh()

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Every callback's on_predict_epoch_end runs before any on_predict_end, where the writer prints its summary.
        if self.progress is not None:
            self.progress.stop()  # Rich's own stop; Lightning's at on_predict_end then finds it stopped


def use_posts_progress_bar(trainer: pl.Trainer) -> None:
    """Put a :class:`PostsProgressBar`, with the same settings, where Lightning put its default bar (or a config
    named a plain ``RichProgressBar``); any other bar a config chose, or none, stays as it is."""
    for index, callback in enumerate(trainer.callbacks):
        if type(callback) is RichProgressBar:
            trainer.callbacks[index] = PostsProgressBar(refresh_rate=callback.refresh_rate, theme=callback.theme)
