"""Pictures of every evaluation (confusion matrix, precision-recall curves and the misclassified posts, in
TensorBoard and, for ``validate`` and ``test``, as files in the run's folder) and of every prediction run (counts,
a histogram of prob_positive and the surest posts of each class, in TensorBoard)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import matplotlib
import torch

matplotlib.use("Agg")  # figures are written to files and TensorBoard, never shown
import matplotlib.pyplot as plt  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402
from lightning.pytorch.utilities import rank_zero_info  # noqa: E402

from weibo_sentiment.classes import POSITIVE, class_names  # noqa: E402
from weibo_sentiment.inference.outputs import EMPTY, PredictionSummary  # noqa: E402


class EvaluationReport(Callback):
    """Pictures of every validation and test: a confusion matrix, a precision-recall curve and the misclassified
    posts the model was surest of, in TensorBoard; ``validate`` and ``test`` also write them into the run's folder
    (``{stage}_confusion_matrix.png``, ``{stage}_pr_curve.png``, ``{stage}_metrics.json``). At the end of ``fit``
    the hyper-parameters are logged with the final metrics, for TensorBoard's HParams view."""

    def __init__(self, misclassified_shown: int = 20) -> None:
        self.misclassified_shown = misclassified_shown

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            for split in ("val", "val_human"):
                self._report(trainer, pl_module, split, write_files=trainer.state.fn == "validate")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report(trainer, pl_module, "test", write_files=True)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        final = {f"hp/{k}": float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val_")}
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger) and final:
                logger.log_hyperparams(pl_module.hparams, final)

    def _report(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str, write_files: bool) -> None:
        """The pictures of one evaluation set (``val``, ``val_human``, ``test``), named after it."""
        metrics = pl_module.evaluation[split]
        confusion, pr_curve = metrics.confusion, metrics.pr_curve
        if not confusion.update_count:
            return
        names = list(class_names(pl_module.hparams.num_labels))
        pr_figure, pr_axes = pr_curve.plot()
        pr_axes.legend(names)
        pr_axes.set_title(f"Precision-recall per class ({split})")
        figures = {"confusion_matrix": confusion.plot(labels=names)[0], "pr_curve": pr_figure}
        metrics.reset_pictures()
        misclassified = self._misclassified(trainer, pl_module, split)
        # log_dir is agreed between processes (a collective call): every rank asks, rank 0 writes.
        run_dir = Path(trainer.log_dir or trainer.default_root_dir) if write_files else None
        if trainer.logger is None:  # no run folder of its own: log_dir is a folder of the user's, files and all
            run_dir = None
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    for name, figure in figures.items():
                        logger.experiment.add_figure(f"{split}/{name}", figure, trainer.global_step, close=False)
                    logger.experiment.add_text(f"{split}/misclassified", _markdown_table(misclassified),
                                               trainer.global_step)  # fmt: skip
            if run_dir is not None:
                self._write_files(trainer, run_dir, split, figures, misclassified)
        for figure in figures.values():
            plt.close(figure)

    def _misclassified(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str) -> list[dict[str, Any]]:
        """The wrongly labelled posts, surest first. Skipped under several processes (each sees a shard)."""
        dataset = getattr(trainer.datamodule, "datasets", {}).get(split)
        probabilities = pl_module.evaluation_probabilities.get(split)
        if trainer.world_size > 1 or dataset is None or not probabilities:
            return []
        probabilities = torch.cat(probabilities)
        if len(probabilities) != len(dataset):  # limit_val_batches and the like: a partial pass
            return []
        three_classes = probabilities.shape[1] == 3  # what it said instead is no longer the other label
        wrong = [
            {"text": post.text, "label": post.label, **({"predicted": int(p.argmax())} if three_classes else {}),
             "prob_positive": round(float(p[1]), 4), "confidence": round(float(p.max()), 4)}
            for post, p in zip(dataset.posts, probabilities) if int(p.argmax()) != post.label
        ]  # fmt: skip
        return sorted(wrong, key=lambda row: -row["confidence"])[: self.misclassified_shown]

    def _write_files(self, trainer: pl.Trainer, run_dir: Path, split: str, figures: dict, misclassified: list) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        for name, figure in figures.items():
            figure.savefig(run_dir / f"{split}_{name}.png", dpi=100, bbox_inches="tight")
        dataset = trainer.datamodule.datasets[split]
        stage = split.partition("_")[0]
        report = {
            "stage": stage,
            "ckpt_path": trainer.ckpt_path,
            "posts": len(dataset),
            "posts_without_text_after_removing_emoticons": dataset.tags_only,
            "metrics": {k: float(v) for k, v in sorted(trainer.callback_metrics.items()) if k.startswith(stage)
                        and k.endswith(("_human", "_human_3class")) == (split != stage)},
            "misclassified": misclassified,
        }
        (run_dir / f"{split}_metrics.json").write_text(json.dumps(report, ensure_ascii=False, indent=2), "utf-8")
        rank_zero_info(f"Wrote {split}_metrics.json and the {split} figures to {run_dir}")


def _markdown_table(rows: list[dict[str, Any]], columns: tuple[str, ...] = ("text", "label", "prob_positive")) -> str:
    if not rows:
        return "(none)"
    lines = [f"| {' | '.join(columns)} |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(str(row[c]).replace("|", "/").replace(chr(10), " ") for c in columns) + " |"
              for row in rows]  # fmt: skip
    return "\n".join(lines)


def log_prediction_summary(trainer: pl.Trainer, summary: PredictionSummary) -> None:
    """A prediction run in TensorBoard: posts per sentiment and shares as scalars (``predict/*``), the histogram of
    ``prob_positive`` and a table of the posts each class was surest of (Text: ``predict/most_confident``); and its
    report-ready summary (``PredictionSummary.report``) as ``predict_report.json`` in the run's folder."""
    # The logger's own folder (Trainer.log_dir would be a collective call, and only rank 0 comes here); without a
    # logger there is no run folder: nothing is written into the user's.
    log_dir = getattr(trainer.logger, "log_dir", None) if trainer.logger is not None else None
    if log_dir:
        run_dir = Path(log_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "predict_report.json").write_text(json.dumps(summary.report(), ensure_ascii=False, indent=2),
                                                     encoding="utf-8")  # fmt: skip
    for logger in trainer.loggers:
        if not isinstance(logger, TensorBoardLogger):
            continue
        writer = logger.experiment
        scalars = {"posts": summary.posts, EMPTY: summary.counts[EMPTY], **{name: summary.counts[name]
                   for name in summary.sentiments()}}  # fmt: skip
        if summary.classified:
            scalars["positive_share"] = summary.counts[POSITIVE] / summary.classified
            scalars["mean_confidence"] = summary.mean_confidence
            limits = [(i + 1) / summary.BINS for i in range(summary.BINS)]
            writer.add_histogram_raw("predict/prob_positive", min=0.0, max=1.0, num=summary.classified,
                                     sum=summary.prob_sum, sum_squares=summary.prob_sum_of_squares,
                                     bucket_limits=limits, bucket_counts=summary.histogram, global_step=0)  # fmt: skip
        for name, value in scalars.items():
            writer.add_scalar(f"predict/{name}", value, 0)
        tables = [f"**{name}**, surest first\n\n" + _markdown_table(
            [{"text": text, "confidence": round(confidence, 4)} for confidence, text in summary.surest(name)],
            ("text", "confidence")) for name in summary.sentiments()]  # fmt: skip
        writer.add_text("predict/most_confident", "\n\n".join(tables) or "(no post classified)", 0)
        writer.add_text("predict/summary", summary.line(), 0)
        writer.flush()
