"""weibo-sentiment: label Weibo posts positive or negative with a LoRA-tuned Chinese GPT-2.

    from weibo_sentiment import SentimentAnalyzer, summarize
    analyzer = SentimentAnalyzer.load("lightning_logs/version_0/checkpoints/last.ckpt", config="configs/quickstart.yaml")
    rows = analyzer.predict(["今天真开心[哈哈]", "排队两小时，太失望了"])
    print(summarize(rows).line())

Importing the package is cheap and has no side effect: torch, transformers and onnxruntime load when a model does,
and Lightning, torchmetrics and matplotlib (training) never load on this path.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["ModelSource", "SentimentAnalyzer", "SentimentRow", "summarize"]

_WHERE = {
    "ModelSource": "weibo_sentiment.inference.model_source",
    "SentimentAnalyzer": "weibo_sentiment.inference.analyzer",
    "SentimentRow": "weibo_sentiment.inference.analyzer",
    "summarize": "weibo_sentiment.inference.outputs",
}

if TYPE_CHECKING:
    from weibo_sentiment.inference.analyzer import SentimentAnalyzer, SentimentRow
    from weibo_sentiment.inference.model_source import ModelSource
    from weibo_sentiment.inference.outputs import summarize


def __getattr__(name: str) -> Any:
    """The public names, imported when first used (PEP 562), so ``import weibo_sentiment`` loads no model library."""
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'weibo_sentiment' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
