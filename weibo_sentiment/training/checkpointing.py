"""Checkpointing: adapter-only checkpoints written atomically and read weights-only, ``last.ckpt`` kept current
for resuming (also when a stop signal ends the run), and each new best model exported as a peft adapter."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info

from weibo_sentiment.atomic_files import staged_directory, staging_file
from weibo_sentiment.compat import (
    save_last_checkpoint,
    saves_after_training_epochs,
    skips_saving_now,
    without_recording_the_step,
)
from weibo_sentiment.stopping import STOP, Interrupted


def export_adapter(peft_model: Any, out_dir: Path) -> None:
    """Save a peft model's adapter (``adapter_config.json`` + ``adapter_model.safetensors``) to ``out_dir``, atomically.

    The folder is written beside the target and swapped in, so ``out_dir`` always holds one complete adapter.
    """
    with staged_directory(out_dir) as staging:
        peft_model.save_pretrained(str(staging))


def fine_tunes_the_backbone(module: pl.LightningModule) -> bool:
    """Whether the model trains its backbone's own weights too (``model.backbone_learning_rate``)."""
    settings = getattr(module, "settings", None)
    return getattr(settings, "backbone_learning_rate", None) is not None


VALIDATION_METRIC_IN_NAME = re.compile(r"[-_]?\{(val_\w+)(?::[^}]*)?\}")
"""A validation metric in a checkpoint file name template (``-{val_f1:.4f}``), with the separator before it."""


class AdapterCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that also exports each new best model as a peft adapter in the run's folder, keeps
    ``last.ckpt`` current, and writes it when a stop signal ends training (see ``stopping``).

    The adapter lands in ``<run folder>/adapter`` (beside ``checkpoints/``), loadable with plain
    ``PeftModel.from_pretrained(base, path)`` or ``main.py predict --model.adapter_path``; not with full fine-tuning
    (``model.backbone_learning_rate``), whose trained backbone only a checkpoint holds.
    """

    def __init__(
        self, *args: Any, adapter_dirname: str = "adapter", last_every_n_train_steps: int = 200, **kwargs: Any
    ) -> None:
        """
        Args:
            adapter_dirname: name of the adapter folder, beside the checkpoint folder.
            last_every_n_train_steps: also write ``last.ckpt`` every this many optimizer steps (with ``save_last``),
                so a crash loses at most that much work; 0: only after each validation (and when stopped).
            *args, **kwargs: as for ``ModelCheckpoint``.
        """
        super().__init__(*args, **kwargs)
        self.adapter_dirname = adapter_dirname
        self.last_every_n_train_steps = last_every_n_train_steps
        self._stopped_after_step = False  # set when a stop signal ended training after a step, here

    def name_only_reported_metrics(self, reported: set[str]) -> None:
        """Drop from the file name template each validation metric this run does not report: Lightning would write
        0 for it (``val_f1_human_3class=0.0000`` in a two-class model's name), which reads as a score."""
        if self.filename:
            kept = VALIDATION_METRIC_IN_NAME.sub(lambda m: m[0] if m[1] in reported else "", self.filename)
            self.filename = kept.strip("-_") or "{epoch}-{step}"

    @property
    def adapter_dir(self) -> Path:
        return Path(self.dirpath).parent / self.adapter_dirname

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._fitting = stage == "fit"  # setup runs before a checkpoint is restored

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # validate, test and predict read a checkpoint for its weights: which checkpoints the run that wrote it kept,
        # and where, is training state they never use (and Lightning would warn that the folder changed).
        if getattr(self, "_fitting", True):
            super().load_state_dict(state_dict)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if fine_tunes_the_backbone(pl_module):
            rank_zero_info("Full fine-tuning (model.backbone_learning_rate): each checkpoint holds the whole model, "
                           f"and no adapter is exported to {self.adapter_dir}; predict, serve and export take "
                           "--ckpt_path")  # fmt: skip
        STOP.finish_step = True  # from now on a stop signal lets the training step in progress finish

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_start(trainer, pl_module)
        STOP.finish_step = False  # a validation stops at once: resuming from last.ckpt repeats it

    # Lightning 2.6 writes last.ckpt only when a top-k checkpoint was saved at the same step, so with save_top_k=1
    # a run whose score stops improving would resume from its best epoch, not its last. Write it after every
    # validation (or training epoch, whichever Lightning checkpoints on), as `save_last` promises.
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        best_before = self.best_model_path
        super().on_validation_end(trainer, pl_module)
        if not saves_after_training_epochs(self, trainer):
            self._save_last_if_stale(trainer)
        self._export_a_new_best(trainer, best_before)
        STOP.finish_step = trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kwargs: Any) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        every = self.last_every_n_train_steps
        if every and trainer.global_step % every == 0 and self.save_last and not skips_saving_now(self, trainer):
            with without_recording_the_step(self):
                save_last_checkpoint(self, trainer)
        self._stop_if_asked(trainer)

    def _stop_if_asked(self, trainer: pl.Trainer) -> None:
        """After a training step, if a stop was asked for (on any process): write last.ckpt here, where periodic
        checkpoints are written and from where Lightning resumes exactly, then stop."""
        stop = STOP.signum is not None
        if trainer.world_size > 1:  # every process stops after the same step
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop:
            return
        STOP.signum = STOP.signum or signal.SIGTERM  # a process told by another stops as if signalled itself
        self._stopped_after_step = True
        if self.save_last:
            save_last_checkpoint(self, trainer)
            rank_zero_info(f"Stopped by {signal.Signals(STOP.signum).name} after step {trainer.global_step}: wrote "
                           f"{self.last_model_path}; continue with the same command and --ckpt_path last")  # fmt: skip
        raise Interrupted(STOP.signum)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        STOP.finish_step = False
        super().on_exception(trainer, pl_module, exception)
        if STOP.signum is not None and trainer.state.fn == TrainerFn.FITTING and not self._stopped_after_step:
            # Stopped outside a training step (in a validation): the last checkpoint written is where to resume.
            name = signal.Signals(STOP.signum).name
            if self.last_model_path:
                rank_zero_info(f"Stopped by {name} outside a training step, after step {trainer.global_step}: "
                               f"--ckpt_path last resumes from {self.last_model_path}")  # fmt: skip
            else:
                rank_zero_info(f"Stopped by {name} before any checkpoint was written: run the same command again "
                               "(without --ckpt_path) to start over")  # fmt: skip

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        best_before = self.best_model_path
        super().on_train_epoch_end(trainer, pl_module)
        if saves_after_training_epochs(self, trainer):
            self._save_last_if_stale(trainer)
        self._export_a_new_best(trainer, best_before)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        STOP.finish_step = False
        super().on_train_end(trainer, pl_module)

    def _save_last_if_stale(self, trainer: pl.Trainer) -> None:
        if self.save_last and not skips_saving_now(self, trainer):
            save_last_checkpoint(self, trainer)

    def _export_a_new_best(self, trainer: pl.Trainer, best_before: str) -> None:
        """A new best checkpoint was just saved (best_model_path changed) from the weights the module holds now:
        export them as the run's adapter too."""
        if self.best_model_path and self.best_model_path != best_before and trainer.is_global_zero:
            if fine_tunes_the_backbone(trainer.lightning_module):
                return  # an adapter would lose the backbone's trained weights: the checkpoint is the model
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


