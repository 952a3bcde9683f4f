"""``StepTimer``: a Lightning callback that times the steady-state work of ``main.py fit`` and ``predict``.

Added from the command line, so the pipeline runs through its real entry point with nothing else changed::

    PYTHONPATH=benchmarks python main.py fit ... \
        --trainer.callbacks+=speed_meter.StepTimer --trainer.callbacks.report_path=timing.json

Start-up (imports, model loading, tokenizing the training set) is outside what it times; ``benchmarks/speed.py``
reads the JSON it writes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback


def batch_size_and_tokens(batch: Any) -> tuple[int, int, int]:
    """(samples, real tokens, padded tokens) of a batch holding ``input_ids`` and ``attention_mask``."""
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    # A predict batch keeps every post for the writer, including those without text that never reach the model.
    samples = len(batch["posts"]) if "posts" in batch else int(input_ids.shape[0])
    return samples, int(attention_mask.sum()), int(input_ids.numel())


class StepTimer(Callback):
    """Per-batch wall time of training, and the wall time of the whole prediction loop, with sample and token counts.

    Training: a batch's time runs from its ``on_train_batch_start`` to the next batch's, so it includes fetching
    and collating the next batch, the optimizer step and the callbacks, as a long run pays them; the first
    ``warmup_steps`` batches (allocator and oneDNN warm-up) and the last one (no next start to close it) are left
    out. Prediction: from ``on_predict_epoch_start`` to ``on_predict_epoch_end``, every batch included (a
    streamed prediction has no steady state to pick out: reading, sorting and writing are the work).
    """

    def __init__(self, report_path: str, warmup_steps: int = 3) -> None:
        """
        Args:
            report_path: where to write the JSON report at the end of ``fit`` or ``predict``.
            warmup_steps: training batches left out at the start.
        """
        self.report_path = Path(report_path)
        self.warmup_steps = warmup_steps
        self.train_batches: list[dict[str, float]] = []
        self._open: Optional[tuple[float, int, tuple[int, int, int]]] = None  # start, index, counts of the last batch
        self.predict: dict[str, float] = {}

    # ---- training --------------------------------------------------------------------------------------------
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._open is not None:
            start, index, (samples, real, padded) = self._open
            if index >= self.warmup_steps:
                self.train_batches.append(
                    {"seconds": now - start, "samples": samples, "real_tokens": real, "padded_tokens": padded}
                )
        # Counted from the timer's own view: Lightning's batch_idx restarts each epoch.
        index = 0 if self._open is None else self._open[1] + 1
        self._open = (now, index, batch_size_and_tokens(batch))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        batches = self.train_batches
        self._write(
            "fit",
            {
                "warmup_steps": self.warmup_steps,
                "timed_batches": len(batches),
                **{key: sum(b[key] for b in batches) for key in ("seconds", "samples", "real_tokens", "padded_tokens")},
                "batches": batches,
            },
        )

    # ---- prediction ------------------------------------------------------------------------------------------
    def on_predict_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.predict = {"start": time.perf_counter(), "posts": 0, "real_tokens": 0, "padded_tokens": 0, "batches": 0}

    def on_predict_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        samples, real, padded = batch_size_and_tokens(batch)
        self.predict["posts"] += samples
        self.predict["real_tokens"] += real
        self.predict["padded_tokens"] += padded
        self.predict["batches"] += 1

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.predict["seconds"] = time.perf_counter() - self.predict.pop("start")
        self._write("predict", self.predict)

    def _write(self, stage: str, figures: dict[str, Any]) -> None:
        self.report_path.parent.mkdir(parents=True, exist_ok=True)
        report = {"stage": stage, "torch_threads": torch.get_num_threads(), **figures}
        self.report_path.write_text(json.dumps(report, indent=1), encoding="utf-8")
