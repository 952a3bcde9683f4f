"""The Lightning callback that writes ``main.py predict``'s output: a file (rows in input order, written
atomically) or a labels table in the posts' database (a chunk per transaction), and says what the run found: one
line on the console, and the same in the run's TensorBoard folder."""

from __future__ import annotations

import contextlib
import heapq
import json
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import IO, Any, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from weibo_sentiment.atomic_files import staging_file
from weibo_sentiment.data.database import LABELS_TABLE, DatabasePosts, LabelsLocation, LabelsTable, describe, is_database_url
from weibo_sentiment.data.batching import truncated_posts
from weibo_sentiment.emoticons import EmoticonTags
from weibo_sentiment.errors import UserError
from weibo_sentiment.inference.outputs import OUTPUT_FORMATS, PredictionSummary, RowFile, prediction_columns, prediction_rows
from weibo_sentiment.training.reports import log_prediction_summary


class PredictionWriter(BasePredictionWriter):
    """Writes one row per input post, in input order, to CSV (default), TSV or JSONL (chosen by the suffix).

    Predict batches come sorted by length within windows of the input (see ``data.SortedPostBatches``); the rows of
    each window are put back in input order when its last batch is done. Rows are streamed to a temporary file
    beside the output and renamed at the end, so the output path holds a complete file or none (an interrupted
    run leaves any previous file untouched). Under several processes each rank writes its windows to its own
    part file and rank 0 merges them, in input order, into the one output.

    With a database URL as ``output_path`` (posts read from a database table), each window of posts is one chunk:
    its labels are written to the labels table in one transaction, by every process for its own rows.
    """

    def __init__(self, output_path: Optional[str] = None, table: str = LABELS_TABLE) -> None:
        """
        Args:
            output_path: where to write the predictions: a .csv, .tsv or .jsonl file, or a database URL (the labels go
                to ``table`` there, beside the posts; a password left out is taken from DB_PASSWORD);
                default: ``predictions.csv`` in ``trainer.default_root_dir``.
            table: with a database ``output_path``: the labels table (created if missing).
        """
        super().__init__(write_interval="batch")
        self.output_path = output_path
        self.table = table
        self._labels: Optional[LabelsTable] = None
        self._file: Optional[IO[str]] = None
        self._tmp_path: Optional[str] = None
        self.summary: Optional[PredictionSummary] = None

    def _target(self, trainer: pl.Trainer) -> Path:
        path = Path(self.output_path or Path(trainer.default_root_dir) / "predictions.csv")
        if path.suffix.lower() not in OUTPUT_FORMATS:
            raise UserError(f"{path}: predictions are written as .csv, .tsv or .jsonl; change the file's suffix")
        if path.is_dir():
            raise UserError(f"{path}: is a directory; give predict_writer.output_path a file name")
        return path

    def _temporary(self, suffix: str) -> tuple[IO[str], str]:
        """A new file beside the output, renamed into place (or deleted) at the end."""
        try:
            return staging_file(self.target, suffix)
        except OSError as err:
            raise UserError(f"{self.target}: cannot write the predictions here ({err.strerror})") from None

    def _temporary_dir(self) -> str:
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            return tempfile.mkdtemp(prefix=f".{self.target.name}.", suffix=".parts", dir=self.target.parent)
        except OSError as err:
            raise UserError(f"{self.target}: cannot write the predictions here ({err.strerror})") from None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Labels going to a database: the labels table is made (or checked) before any post is read, and the posts
        read are only those this model has not labelled yet."""
        if stage != "predict" or not is_database_url(self.output_path):
            return
        source = trainer.datamodule.datasets.get("predict") if trainer.datamodule is not None else None
        if not isinstance(source, DatabasePosts):
            raise UserError(f"{describe(self.output_path)}: labels go to a database beside posts read from one "
                            "(--data.predict_path URL --data.table TABLE); for posts from a file, write a file")  # fmt: skip
        # Which model labels is known once the checkpoint is loaded, after this hook: set at on_predict_start (and by
        # the data module when it builds the reader).
        location = LabelsLocation(self.output_path, self.table, model="")
        self._labels = LabelsTable(location, source.source_table, pl_module.settings.num_labels)
        if trainer.is_global_zero:
            self._labels.create()
        trainer.strategy.barrier("labels table ready")
        self._labels.check_columns()
        trainer.datamodule.only_unlabelled(location)

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.text_column = getattr(trainer.datamodule, "text_column", "review")
        self.emoticons = getattr(trainer.datamodule, "emoticons", None) or EmoticonTags()
        self.summary = PredictionSummary(self.text_column)
        self._window: list[tuple[int, dict[str, Any]]] = []  # (position, row) of the window being predicted
        if self._labels is not None:
            self._labels.location = replace(self._labels.location, model=pl_module.trained_model_id())
            self.with_id, self._rows = True, None
            self._follow = getattr(trainer.datamodule, "follow", None) is not None
            return
        self.target = self._target(trainer)
        self.format = OUTPUT_FORMATS[self.target.suffix.lower()]
        # An id column whenever the input may have one (empty where a post has none): fixed columns up front,
        # so the header is right even for an input with no posts or with ids on some posts only.
        self.with_id = getattr(trainer.datamodule, "id_column", None) is not None
        self.columns = prediction_columns(self.text_column, self.with_id, getattr(trainer.datamodule, "keep_columns", ()),
                                          pl_module.settings.num_labels)  # fmt: skip
        self._parts_dir: Optional[Path] = None
        if trainer.world_size == 1:
            self._file, self._tmp_path = self._temporary(".part")
            self._rows: Optional[RowFile] = RowFile(self._file, self.format, self.columns)
            return
        # Several processes: each writes [position, row] lines to its own part file for rank 0 to merge.
        parts_dir = self._temporary_dir() if trainer.is_global_zero else None
        self._parts_dir = Path(trainer.strategy.broadcast(parts_dir))
        self._tmp_path = str(self._parts_dir / f"rank{trainer.global_rank}.jsonl")
        self._file, self._rows = open(self._tmp_path, "w", encoding="utf-8"), None

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: torch.Tensor,
        batch_indices: Optional[Any],
        batch: dict[str, Any],
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        rows = prediction_rows(batch["posts"], prediction.float().cpu(), self.text_column, self.emoticons, self.with_id,
                               truncated_posts(batch), getattr(pl_module.settings, "neutral_band", None))  # fmt: skip
        self._window += zip(batch["positions"], rows)
        if batch["window_end"]:
            self._flush_window()

    def _flush_window(self) -> None:
        self._window.sort(key=lambda item: item[0])
        if self._labels is not None:
            rows = [row for _, row in self._window]
            self._labels.write_behind(rows)  # while the model labels the next window
            self._count(rows)
            if self._follow and rows:
                print(f"{self._labels.source_table}: {len(rows)} more posts labelled ({self.summary.posts} in all)",
                      flush=True)  # fmt: skip
        elif self._rows is not None:
            self._count([row for _, row in self._window])
            self._rows.write(row for _, row in self._window)
        else:
            self._file.writelines(json.dumps(item, ensure_ascii=False) + "\n" for item in self._window)
        self._window = []

    def _count(self, rows: list[dict[str, Any]]) -> None:
        self.summary.add(rows)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush_window()
        if self._labels is not None:
            self._end_labelling(trainer)
            return
        self._file.close()
        if trainer.world_size > 1:
            self._merge_parts(trainer)
        else:
            os.replace(self._tmp_path, self.target)
        self._file, self._tmp_path = None, None
        if trainer.is_global_zero:
            rank_zero_info(f"Wrote {self.target}: {self.summary.line()}")
            log_prediction_summary(trainer, self.summary)

    def _merge_parts(self, trainer: pl.Trainer) -> None:
        """Rank 0 interleaves every rank's part file by input position into the output, then deletes the parts."""
        trainer.strategy.barrier("prediction parts written")
        if trainer.is_global_zero:
            parts = [self._parts_dir / f"rank{rank}.jsonl" for rank in range(trainer.world_size)]
            out, out_path = self._temporary(".part")
            with out, contextlib.ExitStack() as stack:
                rows = RowFile(out, self.format, self.columns)
                streams = [map(json.loads, stack.enter_context(open(part, encoding="utf-8"))) for part in parts]
                for _, row in heapq.merge(*streams, key=lambda item: item[0]):
                    self._count([row])
                    rows.write([row])
            os.replace(out_path, self.target)
            shutil.rmtree(self._parts_dir, ignore_errors=True)
        trainer.strategy.barrier("predictions merged")

    def _end_labelling(self, trainer: pl.Trainer) -> None:
        """Labels in a database: every process wrote its own; rank 0 says what all of them labelled."""
        labels, self._labels = self._labels, None
        try:
            labels.finish()
        finally:
            labels.close()
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            summaries: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(summaries, self.summary)
            self.summary = PredictionSummary.merged(summaries)
        if trainer.is_global_zero:
            found = self.summary.line() if self.summary.posts else "every post had this model's label already"
            rank_zero_info(f"Labelled {self.summary.posts} posts of {labels.source_table} into "
                           f"{labels.location.table} ({describe(labels.location.url)}): {found}")
            log_prediction_summary(trainer, self.summary)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self._labels is not None:
            self._labels.close()
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tmp_path is not None:
            Path(self._tmp_path).unlink(missing_ok=True)
        if getattr(self, "_parts_dir", None) is not None and trainer.is_global_zero:
            shutil.rmtree(self._parts_dir, ignore_errors=True)


