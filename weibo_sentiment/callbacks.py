"""Callbacks that write results: the prediction file and the best adapter in peft's own format.

Both write to a temporary name and rename, so a file or folder appears complete or not at all.
"""

from __future__ import annotations

import contextlib
import csv
import heapq
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from collections.abc import Iterable
from typing import IO, Any, Optional

import lightning.pytorch as pl
import torch
import matplotlib

matplotlib.use("Agg")  # figures are written to files and TensorBoard, never shown
import matplotlib.pyplot as plt  # noqa: E402
from lightning.pytorch.callbacks import BasePredictionWriter, Callback, ModelCheckpoint  # noqa: E402
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402
from lightning.pytorch.plugins.io import TorchCheckpointIO  # noqa: E402
from lightning.pytorch.utilities import rank_zero_info

from weibo_sentiment.data import DELIMITER, Post
from weibo_sentiment.emoticons import EmoticonTags
from weibo_sentiment.errors import UserError

SENTIMENTS = ("negative", "positive")
"""The name of each label: 0 = negative, 1 = positive."""
EMPTY = "empty"
"""The sentiment of a prediction row whose post has no text to classify."""
OUTPUT_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl"}


def _with_default_permissions(path: str, directory: bool = False) -> None:
    """mkstemp/mkdtemp create private (0600/0700) entries; give the renamed result the usual umask-based mode."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if directory else 0o666) & ~umask)


def staging_file(target: Path, suffix: str, mode: str = "w") -> tuple[IO, str]:
    """A new hidden file beside ``target`` (same file system, so renaming it over ``target`` is atomic), open in
    ``mode``, with the permissions an ordinary new file would get."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, path = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    _with_default_permissions(path)
    if "b" in mode:
        return os.fdopen(handle, mode), path
    return os.fdopen(handle, mode, encoding="utf-8", newline=""), path


def prediction_columns(text_column: str, with_id: bool) -> list[str]:
    """The columns of a prediction row, in order."""
    return (["id"] if with_id else []) + [text_column, "label", "sentiment", "confidence", "prob_positive", "emoticons"]


def prediction_rows(
    posts: list[Post], probabilities: torch.Tensor, text_column: str, emoticons: EmoticonTags, with_id: bool = False
) -> list[dict[str, Any]]:
    """One output row per post: [id,] text, label, sentiment, confidence, prob_positive, emoticons.

    ``emoticons`` lists the post's tags (``[哈哈][泪]``) so a reader can see which predictions may rest on them.
    A post that was not classified (NaN probabilities: it has no text) keeps its row, marked ``sentiment``
    ``empty`` with no label, confidence or probability, so the rows after it never shift.
    """
    confidence, labels = probabilities.max(dim=-1)
    rows = []
    for post, label, conf, probs in zip(posts, labels.tolist(), confidence.tolist(), probabilities.tolist()):
        row: dict[str, Any] = {"id": post.id} if with_id else {}
        row[text_column] = post.text
        if math.isnan(probs[0]):
            row.update({"label": None, "sentiment": EMPTY, "confidence": None, "prob_positive": None})
        else:
            row.update(
                {
                    "label": label,
                    "sentiment": SENTIMENTS[label] if label < len(SENTIMENTS) else str(label),
                    "confidence": round(conf, 6),
                    "prob_positive": round(probs[1], 6),
                }
            )
        row["emoticons"] = "".join(emoticons.find(post.text))
        rows.append(row)
    return rows


class _RowFile:
    """Prediction rows appended to an open file as CSV, TSV or JSONL (the CSV/TSV header first)."""

    def __init__(self, file: IO[str], fmt: str, columns: list[str]) -> None:
        self.file = file
        self.csv = None if fmt == "jsonl" else csv.DictWriter(file, fieldnames=columns, delimiter=DELIMITER[fmt])
        if self.csv is not None:
            self.csv.writeheader()

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        if self.csv is None:
            self.file.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        else:
            self.csv.writerows(rows)


class PredictionWriter(BasePredictionWriter):
    """Writes one row per input post, in input order, to CSV (default), TSV or JSONL (chosen by the suffix).

    Predict batches come sorted by length within windows of the input (see ``data.SortedPostBatches``); the rows of
    each window are put back in input order when its last batch is done. Rows are streamed to a temporary file
    beside the output and renamed at the end, so the output path holds a complete file or none (an interrupted
    run leaves any previous file untouched). Under several processes each rank writes its windows to its own
    part file and rank 0 merges them, in input order, into the one output.
    """

    def __init__(self, output_path: Optional[str] = None) -> None:
        """
        Args:
            output_path: where to write the predictions (.csv, .tsv or .jsonl);
                default: ``predictions.csv`` in ``trainer.default_root_dir``.
        """
        super().__init__(write_interval="batch")
        self.output_path = output_path
        self._file: Optional[IO[str]] = None
        self._tmp_path: Optional[str] = None
        self.rows_written = self.empty_posts = 0

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

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.target = self._target(trainer)
        self.format = OUTPUT_FORMATS[self.target.suffix.lower()]
        self.text_column = getattr(trainer.datamodule, "text_column", "review")
        self.emoticons = getattr(trainer.datamodule, "emoticons", None) or EmoticonTags()
        # An id column whenever the input may have one (empty where a post has none): fixed columns up front,
        # so the header is right even for an input with no posts or with ids on some posts only.
        self.with_id = getattr(trainer.datamodule, "id_column", None) is not None
        self.columns = prediction_columns(self.text_column, self.with_id)
        self.rows_written = self.empty_posts = 0
        self._parts_dir: Optional[Path] = None
        self._window: list[tuple[int, dict[str, Any]]] = []  # (position, row) of the window being predicted
        if trainer.world_size == 1:
            self._file, self._tmp_path = self._temporary(".part")
            self._rows: Optional[_RowFile] = _RowFile(self._file, self.format, self.columns)
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
        rows = prediction_rows(batch["posts"], prediction.float().cpu(), self.text_column, self.emoticons, self.with_id)
        self._window += zip(batch["positions"], rows)
        if batch["window_end"]:
            self._flush_window()

    def _flush_window(self) -> None:
        self._window.sort(key=lambda item: item[0])
        if self._rows is not None:
            self._count([row for _, row in self._window])
            self._rows.write(row for _, row in self._window)
        else:
            self._file.writelines(json.dumps(item, ensure_ascii=False) + "\n" for item in self._window)
        self._window = []

    def _count(self, rows: list[dict[str, Any]]) -> None:
        self.rows_written += len(rows)
        self.empty_posts += sum(row["sentiment"] == EMPTY for row in rows)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush_window()
        self._file.close()
        if trainer.world_size > 1:
            self._merge_parts(trainer)
        else:
            os.replace(self._tmp_path, self.target)
        self._file, self._tmp_path = None, None
        empty = f" ({self.empty_posts} posts without text marked sentiment={EMPTY})" if self.empty_posts else ""
        rank_zero_info(f"Wrote {self.rows_written} predictions to {self.target}{empty}")

    def _merge_parts(self, trainer: pl.Trainer) -> None:
        """Rank 0 interleaves every rank's part file by input position into the output, then deletes the parts."""
        trainer.strategy.barrier("prediction parts written")
        if trainer.is_global_zero:
            parts = [self._parts_dir / f"rank{rank}.jsonl" for rank in range(trainer.world_size)]
            out, out_path = self._temporary(".part")
            with out, contextlib.ExitStack() as stack:
                rows = _RowFile(out, self.format, self.columns)
                streams = [map(json.loads, stack.enter_context(open(part, encoding="utf-8"))) for part in parts]
                for _, row in heapq.merge(*streams, key=lambda item: item[0]):
                    self._count([row])
                    rows.write([row])
            os.replace(out_path, self.target)
            shutil.rmtree(self._parts_dir, ignore_errors=True)
        trainer.strategy.barrier("predictions merged")

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tmp_path is not None:
            Path(self._tmp_path).unlink(missing_ok=True)
        if getattr(self, "_parts_dir", None) is not None and trainer.is_global_zero:
            shutil.rmtree(self._parts_dir, ignore_errors=True)


def export_adapter(peft_model: Any, out_dir: Path) -> None:
    """Save a peft model's adapter (``adapter_config.json`` + ``adapter_model.safetensors``) to ``out_dir``, atomically.

    The folder is written beside the target and swapped in, so ``out_dir`` always holds one complete adapter.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    _with_default_permissions(str(staging), directory=True)
    peft_model.save_pretrained(str(staging))
    old = out_dir.with_name(f".{out_dir.name}.old")
    if out_dir.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out_dir, old)
    os.replace(staging, out_dir)
    shutil.rmtree(old, ignore_errors=True)


class AdapterCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that also exports each new best model as a peft adapter in the run's folder.

    The adapter lands in ``<run folder>/adapter`` (beside ``checkpoints/``), loadable with plain
    ``PeftModel.from_pretrained(base, path)`` or ``main.py predict --model.adapter_path``.
    """

    def __init__(
        self, *args: Any, adapter_dirname: str = "adapter", last_every_n_train_steps: int = 200, **kwargs: Any
    ) -> None:
        """
        Args:
            adapter_dirname: name of the adapter folder, beside the checkpoint folder.
            last_every_n_train_steps: also write ``last.ckpt`` every this many optimizer steps (with ``save_last``),
                so a crash loses at most that much work; 0: only after each validation.
            *args, **kwargs: as for ``ModelCheckpoint``.
        """
        super().__init__(*args, **kwargs)
        self.adapter_dirname = adapter_dirname
        self.last_every_n_train_steps = last_every_n_train_steps

    @property
    def adapter_dir(self) -> Path:
        return Path(self.dirpath).parent / self.adapter_dirname

    # Lightning 2.6 writes last.ckpt only when a top-k checkpoint was saved at the same step, so with save_top_k=1
    # a run whose score stops improving would resume from its best epoch, not its last. Write it after every
    # validation (or training epoch, whichever Lightning checkpoints on), as `save_last` promises.
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_stale(trainer)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kwargs: Any) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        every = self.last_every_n_train_steps
        if every and trainer.global_step % every == 0 and self.save_last and not self._should_skip_saving_checkpoint(trainer):
            # A save records its step, and ModelCheckpoint skips any later save at that step; this one must not
            # keep a validation at the same step from choosing the best checkpoint.
            saved_step = self._last_global_step_saved
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            self._last_global_step_saved = saved_step

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_stale(trainer)

    def _save_last_if_stale(self, trainer: pl.Trainer) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        # ModelCheckpoint funnels every save (top-k, last, on exception) through here; a new best has just been
        # recorded in best_model_path when the file being saved is that one, and the module holds its weights.
        super()._save_checkpoint(trainer, filepath)
        if filepath == self.best_model_path and trainer.is_global_zero:
            export_adapter(trainer.lightning_module.model, self.adapter_dir)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint files written whole or not at all, and read without unpickling code.

    Each checkpoint goes to a temporary file beside its target, is flushed to disk and renamed over the target: a
    kill mid-save leaves the previous ``last.ckpt`` intact. (Lightning stages a save in the system's temporary
    folder; when that is another file system, the final move is a copy, which a kill can cut short.) Files are
    loaded with ``weights_only=True``: tensors and plain values only, never arbitrary pickled objects.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        path = Path(path)
        file, staging = staging_file(path, ".tmp", "wb")
        try:
            with file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(staging, path)
        except BaseException:
            Path(staging).unlink(missing_ok=True)
            raise
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a power cut
        finally:
            os.close(directory)

    def load_checkpoint(
        self, path: Any, map_location: Optional[Any] = None, weights_only: Optional[bool] = None
    ) -> dict[str, Any]:
        return super().load_checkpoint(path, map_location or (lambda storage, _: storage), weights_only=True)


class EvaluationReport(Callback):
    """Pictures of every validation and test: a confusion matrix, a precision-recall curve and the misclassified
    posts the model was surest of, in TensorBoard; ``validate`` and ``test`` also write them into the run's folder
    (``{stage}_confusion_matrix.png``, ``{stage}_pr_curve.png``, ``{stage}_metrics.json``). At the end of ``fit``
    the hyper-parameters are logged with the final metrics, for TensorBoard's HParams view."""

    def __init__(self, misclassified_shown: int = 20) -> None:
        self.misclassified_shown = misclassified_shown

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._report(trainer, pl_module, "val", write_files=trainer.state.fn == "validate")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report(trainer, pl_module, "test", write_files=True)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        final = {f"hp/{k}": float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val_")}
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger) and final:
                logger.log_hyperparams(pl_module.hparams, final)

    def _report(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str, write_files: bool) -> None:
        confusion, pr_curve = getattr(pl_module, f"{stage}_confusion"), getattr(pl_module, f"{stage}_pr_curve")
        if not confusion.update_count:
            return
        names = list(SENTIMENTS[: pl_module.hparams.num_labels])
        pr_figure, pr_axes = pr_curve.plot()
        pr_axes.legend(names)
        pr_axes.set_title(f"Precision-recall per class ({stage})")
        figures = {"confusion_matrix": confusion.plot(labels=names)[0], "pr_curve": pr_figure}
        confusion.reset()
        pr_curve.reset()
        misclassified = self._misclassified(trainer, pl_module, stage)
        # log_dir is agreed between processes (a collective call): every rank asks, rank 0 writes.
        run_dir = Path(trainer.log_dir or trainer.default_root_dir) if write_files else None
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    for name, figure in figures.items():
                        logger.experiment.add_figure(f"{stage}/{name}", figure, trainer.global_step, close=False)
                    logger.experiment.add_text(f"{stage}/misclassified", _markdown_table(misclassified),
                                               trainer.global_step)  # fmt: skip
            if run_dir is not None:
                self._write_files(trainer, run_dir, stage, figures, misclassified)
        for figure in figures.values():
            plt.close(figure)

    def _misclassified(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> list[dict[str, Any]]:
        """The wrongly labelled posts, surest first. Skipped under several processes (each sees a shard)."""
        dataset = getattr(trainer.datamodule, "datasets", {}).get(stage)
        if trainer.world_size > 1 or dataset is None or not pl_module.evaluation_probabilities:
            return []
        probabilities = torch.cat(pl_module.evaluation_probabilities)
        if len(probabilities) != len(dataset):  # limit_val_batches and the like: a partial pass
            return []
        wrong = [
            {"text": post.text, "label": post.label, "prob_positive": round(float(p[1]), 4),
             "confidence": round(float(p.max()), 4)}
            for post, p in zip(dataset.posts, probabilities) if int(p.argmax()) != post.label
        ]  # fmt: skip
        return sorted(wrong, key=lambda row: -row["confidence"])[: self.misclassified_shown]

    def _write_files(self, trainer: pl.Trainer, run_dir: Path, stage: str, figures: dict, misclassified: list) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        for name, figure in figures.items():
            figure.savefig(run_dir / f"{stage}_{name}.png", dpi=100, bbox_inches="tight")
        dataset = trainer.datamodule.datasets[stage]
        report = {
            "stage": stage,
            "ckpt_path": trainer.ckpt_path,
            "posts": len(dataset),
            "posts_without_text_after_removing_emoticons": dataset.tags_only,
            "metrics": {k: float(v) for k, v in sorted(trainer.callback_metrics.items()) if k.startswith(stage)},
            "misclassified": misclassified,
        }
        (run_dir / f"{stage}_metrics.json").write_text(json.dumps(report, ensure_ascii=False, indent=2), "utf-8")
        rank_zero_info(f"Wrote {stage}_metrics.json and the {stage} figures to {run_dir}")


def _markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(none)"
    lines = ["| text | label | prob_positive |", "| --- | --- | --- |"]
    lines += [f"| {row['text'].replace('|', '/').replace(chr(10), ' ')} | {row['label']} | {row['prob_positive']} |"
              for row in rows]  # fmt: skip
    return "\n".join(lines)
