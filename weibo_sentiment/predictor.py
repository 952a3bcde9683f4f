"""Transitional: the API labels through :class:`weibo_sentiment.SentimentAnalyzer` (``config.analyzer_for``)."""

from __future__ import annotations

from typing import Any

from jsonargparse import ArgumentParser, Namespace

from weibo_sentiment.config import analyzer_for


class SentimentPredictor:
    def __init__(self, analyzer: Any) -> None:
        self.analyzer, self.engine = analyzer, analyzer.engine

    def predict(self, texts: list[str]) -> list[dict[str, Any]]:
        return [row.to_dict() for row in self.analyzer.predict(texts)]


def load_predictor(parser: ArgumentParser, config: Namespace, device: str = "cpu") -> SentimentPredictor:
    return SentimentPredictor(analyzer_for(config, device=device))
