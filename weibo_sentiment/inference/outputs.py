"""Prediction rows and the files they go to: one row per post (label, sentiment, confidence, prob_positive,
emoticons), written as CSV, TSV or JSONL, and the summary of a run's rows. Shared by ``main.py predict``, the HTTP
API and the console; nothing here knows of Lightning."""

from __future__ import annotations

import csv
import heapq
import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import IO, Any, Optional

import torch

from weibo_sentiment.classes import BINARY, CLASS_NAMES, NEGATIVE, NEUTRAL, POSITIVE, class_names, probability_columns
from weibo_sentiment.data.readers import DELIMITER, Post
from weibo_sentiment.emoticons import EmoticonTags

EMPTY = "empty"
"""The sentiment of a prediction row whose post has no text to classify."""
OUTPUT_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl"}


def prediction_columns(text_column: str, with_id: bool, keep_columns: Sequence[str] = (), num_labels: int = 2) -> list[str]:
    """The columns of a prediction row, in order: the id, the kept input columns, the text, then the model's (a
    three-class model's rows carry every class's probability)."""
    kept = [column for column in keep_columns if column not in ("id", text_column)]
    return (["id"] if with_id else []) + kept + [text_column, "label", "sentiment", "confidence",
                                                 *probability_columns(num_labels), "emoticons", "truncated"]  # fmt: skip


def prediction_rows(
    posts: list[Post],
    probabilities: torch.Tensor,
    text_column: str,
    emoticons: EmoticonTags,
    with_id: bool = False,
    truncated: Optional[list[bool]] = None,
    neutral_band: Optional[Sequence[float]] = None,
) -> list[dict[str, Any]]:
    """One output row per post: [id,] [kept columns,] text, label, sentiment, confidence, prob_positive, emoticons,
    truncated; a three-class model's rows have prob_negative, prob_neutral, prob_positive.

    ``emoticons`` lists the post's tags (``[哈哈][泪]``) so a reader can see which predictions may rest on them;
    ``truncated`` says the post was longer than the model reads (``max_length`` tokens) and was read up to there.
    A post that was not classified (NaN probabilities: it has no text) keeps its row, marked ``sentiment``
    ``empty`` with no label, confidence or probability, so the rows after it never shift. With a ``neutral_band``
    ``[low, high]`` (two-class models), a post whose ``prob_positive`` lies in it (both ends included) is ``neutral``.
    """
    num_labels = probabilities.shape[-1]
    columns = probability_columns(num_labels)
    class_columns = [f"prob_{name}" for name in class_names(num_labels)]  # by label number
    confidence, labels = probabilities.max(dim=-1)
    truncated = truncated or [False] * len(posts)
    rows = []
    for post, label, conf, probs, cut in zip(posts, labels.tolist(), confidence.tolist(), probabilities.tolist(),
                                             truncated):  # fmt: skip
        row: dict[str, Any] = {"id": post.id} if with_id else {}
        row.update(post.kept or {})
        row[text_column] = post.text
        if math.isnan(probs[0]):
            row.update({"label": None, "sentiment": EMPTY, "confidence": None, **dict.fromkeys(columns)})
        else:
            by_column = dict(zip(class_columns, probs))
            row.update({"label": label, "sentiment": sentiment_of(label, probs[1], neutral_band, num_labels),
                        "confidence": round(conf, 6), **{column: round(by_column[column], 6) for column in columns}})  # fmt: skip
        row["emoticons"] = "".join(emoticons.find(post.text))
        row["truncated"] = cut
        rows.append(row)
    return rows


def sentiment_of(label: int, prob_positive: float, neutral_band: Optional[Sequence[float]] = None,
                 num_labels: int = 2) -> str:  # fmt: skip
    """The class name of a label (``negative``, ``positive``, ``neutral``); for a two-class model, ``neutral`` when
    ``prob_positive`` lies in the band."""
    if num_labels == 2 and neutral_band is not None and neutral_band[0] <= prob_positive <= neutral_band[1]:
        return NEUTRAL
    return CLASS_NAMES[label]


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



class PredictionSummary:
    """What a prediction run found, in constant memory whatever its size: posts by sentiment, mean confidence, a
    histogram of ``prob_positive`` and the posts each class was surest of."""

    BINS = 20  # of prob_positive, 0.05 wide

    def __init__(self, text_column: str, most_confident: int = 10) -> None:
        self.text_column, self.keep = text_column, most_confident
        self.counts: Counter[str] = Counter()
        self.confidence_sum = self.prob_sum = self.prob_sum_of_squares = 0.0
        self.histogram = [0] * self.BINS
        self._surest: dict[str, list[tuple[float, int, str]]] = {}  # sentiment -> min-heap (confidence, -order, text)

    def add(self, rows: Iterable[Any], texts: Optional[Iterable[str]] = None) -> None:
        """Count rows: prediction-file rows (dicts holding their text) or :class:`SentimentRow` objects, whose texts
        may come beside them (for the posts each class was surest of)."""
        texts = iter(texts) if texts is not None else None
        for row in rows:
            row = row if isinstance(row, dict) else row.to_dict()
            text = next(texts) if texts is not None else row.get(self.text_column, "")
            self.counts[row["sentiment"]] += 1
            if row["sentiment"] == EMPTY:
                continue
            prob = row["prob_positive"]
            self.confidence_sum += row["confidence"]
            self.prob_sum += prob
            self.prob_sum_of_squares += prob * prob
            self.histogram[min(int(prob * self.BINS), self.BINS - 1)] += 1
            heap = self._surest.setdefault(row["sentiment"], [])
            item = (row["confidence"], -self.posts, text)  # earlier rows win ties
            if len(heap) < self.keep:
                heapq.heappush(heap, item)
            elif item > heap[0]:
                heapq.heapreplace(heap, item)

    @classmethod
    def merged(cls, summaries: Sequence[PredictionSummary]) -> PredictionSummary:
        """One summary of the rows that several summaries counted (the processes of a run)."""
        whole = cls(summaries[0].text_column, summaries[0].keep)
        for part in summaries:
            whole.counts.update(part.counts)
            whole.confidence_sum += part.confidence_sum
            whole.prob_sum += part.prob_sum
            whole.prob_sum_of_squares += part.prob_sum_of_squares
            whole.histogram = [a + b for a, b in zip(whole.histogram, part.histogram)]
            for sentiment, heap in part._surest.items():
                whole._surest[sentiment] = heapq.nlargest(whole.keep, whole._surest.get(sentiment, []) + heap)
                heapq.heapify(whole._surest[sentiment])
        return whole

    @property
    def posts(self) -> int:
        return sum(self.counts.values())

    @property
    def classified(self) -> int:
        return self.posts - self.counts[EMPTY]

    @property
    def mean_confidence(self) -> float:
        return self.confidence_sum / self.classified if self.classified else math.nan

    def sentiments(self) -> list[str]:
        """The sentiments found, known ones first."""
        known = (NEGATIVE, NEUTRAL, POSITIVE)
        return [name for name in known if self.counts[name]] + sorted(
            name for name in self.counts if name not in known and name != EMPTY)

    def surest(self, sentiment: str) -> list[tuple[float, str]]:
        """(confidence, post) of the posts labelled ``sentiment`` with the highest confidence, highest first."""
        return [(confidence, text) for confidence, _, text in sorted(self._surest.get(sentiment, []), reverse=True)]

    def as_dict(self) -> dict[str, Any]:
        """The counts as the API answers them: posts, each sentiment's count and share of the classified posts, posts
        without text, mean confidence (shares and mean are ``None`` when no post was classified)."""
        names = list(dict.fromkeys([*BINARY, *self.sentiments()]))
        share = (lambda n: round(n / self.classified, 6)) if self.classified else (lambda n: None)
        return {"count": self.posts, **{name: self.counts[name] for name in names}, EMPTY: self.counts[EMPTY],
                **{f"{name}_share": share(self.counts[name]) for name in names},
                "mean_confidence": round(self.mean_confidence, 6) if self.classified else None}  # fmt: skip

    def report(self, most: int = 5) -> dict[str, Any]:
        """The figures a report quotes, as BettaFish's report prompts phrase them: each class's share of the
        classified posts in percent (正面X%、负面Y%、中性Z%), the dominant sentiment, and the posts each side was
        surest of (``most`` of them), with the sentence an LLM-writing step can quote as it stands."""
        shares = {name: round(100 * self.counts[name] / self.classified, 1) if self.classified else None
                  for name in (POSITIVE, NEUTRAL, NEGATIVE)}  # fmt: skip
        dominant = max(shares, key=lambda name: self.counts[name]) if self.classified else None
        zh = dict(zip((POSITIVE, NEUTRAL, NEGATIVE), ("正面", "中性", "负面")))
        sentence = ("情感分布比例（" + "、".join(f"{zh[name]}{share}%" for name, share in shares.items()) + "）"
                    if self.classified else "没有可分析的内容")  # fmt: skip
        surest = {side: [{"text": text, "confidence": round(confidence, 4)}
                         for confidence, text in self.surest(side)[:most]] for side in BINARY}  # fmt: skip
        return {"posts": self.posts, "classified": self.classified, "empty": self.counts[EMPTY],
                "counts": {name: self.counts[name] for name in shares}, "shares_percent": shares,
                "dominant_sentiment": dominant, "dominant_sentiment_zh": zh.get(dominant),
                "mean_confidence": round(self.mean_confidence, 4) if self.classified else None,
                "most_negative_posts": surest[NEGATIVE], "most_positive_posts": surest[POSITIVE],
                "sentence": sentence}  # fmt: skip

    def line(self) -> str:
        """``N posts: P positive (x %), Q negative (y %), E empty; mean confidence c``."""
        shares = [f"{self.counts[name]} {name} ({self.counts[name] / self.classified:.1%})" for name in self.sentiments()]
        return (f"{self.posts} posts: {', '.join(shares) or 'none classified'}, {self.counts[EMPTY]} {EMPTY}"
                + (f"; mean confidence {self.mean_confidence:.3f}" if self.classified else ""))


def summarize(rows: Iterable[Any], texts: Optional[Iterable[str]] = None) -> PredictionSummary:
    """What a set of rows says: counts and shares per sentiment, posts without text, mean confidence, the posts
    each class was surest of (when ``texts`` are given); ``.line()`` says it in one line, ``.as_dict()`` as JSON.
    ``main.py predict``, the API's answers and the page use the same."""
    summary = PredictionSummary("text")
    summary.add(rows, texts)
    return summary
