"""The classes a model tells apart, the number each one's ``label`` carries, and how the labels written in a file
(numbers, class names, annotators' emotions) become those classes.

Two-class models: 0 = negative, 1 = positive (weibo_senti_100k's convention). Three-class models add 2 = neutral,
after them, so that 0 and 1 mean the same in every model, labelled file and labels table: a ``WHERE label = 1`` keeps
meaning positive when a three-class model labels the same table.

A labelled file's labels go through a label map: by default the numbers above, the class names, and the emotions of
SMP2020-EWECT (annotated by people at HIT-SCIR): happy -> positive; angry, sad, fear -> negative; neutral (the
official files spell it ``neural``) -> neutral; surprise, which can go either way, -> left out. ``data.label_map``
adds entries or overrides these (a label mapped to ``null`` is left out).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

from weibo_sentiment.errors import UserError

NEGATIVE, POSITIVE, NEUTRAL = "negative", "positive", "neutral"
CLASS_NAMES = (NEGATIVE, POSITIVE, NEUTRAL)
"""Every class, by label number."""
BINARY = (NEGATIVE, POSITIVE)
"""The two classes of the positive-versus-negative decision, labels 0 and 1 in every model."""

EMOTIONS: dict[str, Optional[str]] = {
    "happy": POSITIVE,
    "angry": NEGATIVE,
    "sad": NEGATIVE,
    "fear": NEGATIVE,
    "neutral": NEUTRAL,
    "neural": NEUTRAL,  # SMP2020-EWECT's official files spell neutral so
    "surprise": None,  # either way: left out unless data.label_map says otherwise
}
"""SMP2020-EWECT's emotions as classes (``None``: left out)."""

DEFAULT_LABEL_MAP: dict[str, Optional[str]] = {
    **{str(number): name for number, name in enumerate(CLASS_NAMES)},
    **{name: name for name in CLASS_NAMES},
    **EMOTIONS,
}
"""What a labelled file's label means unless ``data.label_map`` says otherwise (matched without case)."""


def class_names(num_labels: int) -> tuple[str, ...]:
    """The classes of a model with ``num_labels`` outputs, by label number."""
    if num_labels not in (2, 3):
        raise UserError(f"model.num_labels is 2 (negative, positive) or 3 (negative, positive, neutral); got {num_labels}")
    return CLASS_NAMES[:num_labels]


def check_label_map(label_map: Optional[Mapping[Any, Optional[str]]], what: str = "data.label_map") -> dict[str, Optional[str]]:
    """A label map's entries as the map matches them (raw labels as lower-case text), each checked to name a class or
    ``None``."""
    checked = {}
    for raw, name in (label_map or {}).items():
        if name is not None and name not in CLASS_NAMES:
            raise UserError(f"{what} maps {raw!r} to {name!r}: map labels to {', '.join(CLASS_NAMES)} or null (left out)")
        checked[str(raw).strip().lower()] = name
    return checked


def probability_columns(num_labels: int) -> list[str]:
    """The probability columns of a prediction row: ``prob_positive`` for two classes, every class's for three."""
    return ["prob_positive"] if num_labels == 2 else ["prob_negative", "prob_neutral", "prob_positive"]


class LabelMap:
    """Turns the label a file gives a post into the model's label number, or ``None`` for a post to leave out.

    ``overrides`` (``data.label_map``) add entries to :data:`DEFAULT_LABEL_MAP` or replace them: a raw label to a class
    name, or to ``None`` (left out). A name the model has no class for (neutral, for a two-class model) leaves the post
    out; a number it has no class for, or a label the map does not know, is an error (:meth:`__call__` raises
    ``KeyError``, and the reader says which file, row and label).
    """

    def __init__(self, num_labels: int, overrides: Optional[Mapping[str, Optional[str]]] = None) -> None:
        self.classes = class_names(num_labels)
        self.mapping = {**DEFAULT_LABEL_MAP, **check_label_map(overrides)}

    def __call__(self, raw: str) -> Optional[int]:
        key = raw.strip().lower()
        name = self.mapping[key]  # KeyError: a label the map does not know
        if name is None:
            return None
        if name not in self.classes:
            if key.isdigit():  # a class number of a bigger model: a mistake, not a post to leave out
                raise KeyError(key)
            return None
        return self.classes.index(name)

    def numbers(self) -> str:
        """``0, 1`` or ``0, 1, 2``: the label numbers a file may use."""
        return ", ".join(str(number) for number in range(len(self.classes)))

    def meaning(self) -> str:
        """``1 = positive, 0 = negative``, and ``2 = neutral`` for three classes."""
        return ", ".join(f"{number} = {name}" for number, name in reversed(list(enumerate(self.classes))))

    def left_out(self, key: str) -> str:
        """Why a post with this raw label was left out, for the run's report."""
        name = self.mapping.get(key.strip().lower())
        if name is None:
            return "data.label_map leaves it out"
        return f"the model has no {name} class (model.num_labels {len(self.classes)})"
