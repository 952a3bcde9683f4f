"""Prediction rows and the files they go to: one row per post (label, sentiment, confidence, prob_positive,
emoticons), written as CSV, TSV or JSONL. Shared by ``main.py predict``, the HTTP API and the console; nothing here
knows of Lightning."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable
from typing import IO, Any

import torch

from weibo_sentiment.data.readers import DELIMITER, Post
from weibo_sentiment.emoticons import EmoticonTags

SENTIMENTS = ("negative", "positive")
"""The name of each label: 0 = negative, 1 = positive."""
EMPTY = "empty"
"""The sentiment of a prediction row whose post has no text to classify."""
OUTPUT_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl"}


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


class RowFile:
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


