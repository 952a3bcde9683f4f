"""The scores of an evaluation set: what ``validate``, ``test`` and every validation during ``fit`` report.

Each set is scored on its own, with names that end in the set's suffix: the corpus's validation posts (``val_f1``,
``val_f1_text``), posts labelled by people (``val_f1_human``, ``data.human_val``) and test's (``test_f1``):

- ``*_f1``: macro-F1 of the positive-versus-negative decision on the set's positive and negative posts. For a
  two-class model, the model's own labels; for a three-class one, the likelier of its negative and positive
  classes (so that corpus posts, labelled from emoticons and never neutral, score what they can tell).
- ``*_f1_3class``: a three-class model's macro-F1 over all three classes, on a set that has neutral posts.
- ``*_f1_text``: ``*_f1`` on the same posts with their emoticon tags removed (not for posts labelled by people:
  98 % of SMP2020-EWECT's carry no tag).
- ``*_acc``: the share of posts whose label the model gave, every class counted.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torchmetrics import Metric
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecisionRecallCurve,
)

from weibo_sentiment.classes import BINARY


class EvaluationMetrics(torch.nn.Module):
    """The metrics of one evaluation set (``split``: ``val``, ``val_human`` or ``test``) for a model of
    ``num_labels`` classes, with the pictures ``reports.EvaluationReport`` draws (confusion matrix, precision-recall
    curves)."""

    def __init__(self, split: str, num_labels: int) -> None:
        super().__init__()
        self.split, self.num_labels = split, num_labels
        self.stage, _, self.suffix = split.partition("_")
        self.acc = MulticlassAccuracy(num_classes=num_labels, average="micro")
        self.f1 = MulticlassF1Score(num_classes=len(BINARY), average="macro")
        self.f1_text = MulticlassF1Score(num_classes=len(BINARY), average="macro")
        self.f1_3class = MulticlassF1Score(num_classes=3, average="macro") if num_labels == 3 else None
        self.confusion = MulticlassConfusionMatrix(num_classes=num_labels)
        self.pr_curve = MulticlassPrecisionRecallCurve(num_classes=num_labels, thresholds=100)

    def name(self, metric: str) -> str:
        """The logged name of a metric of this set: ``val_f1``, ``val_f1_human``, ``test_f1_3class``."""
        if metric == "f1_3class":
            return f"{self.name('f1')}_3class"
        return f"{self.stage}_{metric}" + (f"_{self.suffix}" if self.suffix else "")

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Count one batch; returns its class probabilities."""
        probabilities = logits.detach().float().softmax(dim=-1)
        predicted = probabilities.argmax(dim=-1)
        self.acc.update(predicted, labels)
        _update_binary(self.f1, logits, labels)
        if self.f1_3class is not None:
            self.f1_3class.update(predicted, labels)
        self.confusion.update(predicted, labels)
        self.pr_curve.update(probabilities, labels)
        return probabilities

    def update_text_only(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        _update_binary(self.f1_text, logits, labels)

    def logged(self, has_neutral: bool) -> Iterator[tuple[str, Metric]]:
        """The metrics a step logs, by name; the three-class F1 only for a set with neutral posts (a set's class mask
        says so the same on every process, so all of them log the same names)."""
        yield self.name("acc"), self.acc
        yield self.name("f1"), self.f1
        if self.f1_3class is not None and has_neutral:
            yield self.name("f1_3class"), self.f1_3class

    def names(self, has_neutral: bool) -> list[str]:
        """Every name an evaluation of this set logs (``val_f1_mean`` aside: the model logs it from the corpus's)."""
        names = [name for name, _ in self.logged(has_neutral)] + [self.name("loss")]
        return names + ([self.name("f1_text")] if self.split != "val_human" else [])

    def in_progress_bar(self, name: str) -> bool:
        return "_f1" in name or self.split == self.stage

    def reset_pictures(self) -> None:
        # Not logged, so Lightning never resets them (e.g. after the sanity check).
        self.confusion.reset()
        self.pr_curve.reset()


def _update_binary(metric: MulticlassF1Score, logits: torch.Tensor, labels: torch.Tensor) -> None:
    """The positive-versus-negative decision (labels 0 and 1 in every model) on the posts labelled so."""
    binary = labels < len(BINARY)
    if binary.any():
        metric.update(logits[binary, : len(BINARY)].argmax(dim=-1), labels[binary])
