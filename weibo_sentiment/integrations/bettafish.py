"""A drop-in for BettaFish's sentiment analyzer (``InsightEngine/tools/sentiment_analyzer.py``): the same methods,
result types and dict keys, labelling with this project's model, in real batches, in any runtime.

In BettaFish, the one line that changes (``InsightEngine/tools/sentiment_analyzer.py`` or where the agent takes it)::

    from weibo_sentiment.integrations.bettafish import WeiboSentimentAnalyzer
    multilingual_sentiment_analyzer = WeiboSentimentAnalyzer()   # WEIBO_SENTIMENT_MODEL, WEIBO_SENTIMENT_CONFIG

or with arguments: ``WeiboSentimentAnalyzer(model="lightning_logs/version_0/checkpoints/last.ckpt",
config="configs/gpt2_chinese_lora.yaml", quantize="int8", neutral_band=(0.35, 0.65))``.

As BettaFish's own, it never raises into the agent: a missing model or dependency disables it with a reason
(``is_disabled``, ``disable_reason``) and every call then passes the texts through, marked as not analysed; an
empty text gives a failed result. Labels are Chinese: ``正面``, ``负面``, and ``中性`` inside a neutral band.
Nothing heavy (torch, transformers, onnxruntime) is imported before :meth:`WeiboSentimentAnalyzer.initialize`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

MODEL_VARIABLE, CONFIG_VARIABLE = "WEIBO_SENTIMENT_MODEL", "WEIBO_SENTIMENT_CONFIG"
LABELS = {"negative": "负面", "positive": "正面", "neutral": "中性"}
NOT_PERFORMED = "情感分析未执行"
PROGRESS_CHUNK = 2048  # posts per progress line of analyze_batch: sorted by length together, as main.py predict sorts a window
TEXT_FIELDS = ("title_or_content", "content", "title", "text")  # tried after text_field, as BettaFish's own does


@dataclass
class SentimentResult:
    """One text's result, with BettaFish's fields (``result.__dict__`` is what its agent returns)."""

    text: str
    sentiment_label: str
    confidence: float
    probability_distribution: dict[str, float]
    success: bool = True
    error_message: Optional[str] = None
    analysis_performed: bool = True


@dataclass
class BatchSentimentResult:
    """Several texts' results, with BettaFish's fields."""

    results: list[SentimentResult]
    total_processed: int
    success_count: int
    failed_count: int
    average_confidence: float
    analysis_performed: bool = True


def _distribution(row: Any) -> dict[str, float]:
    """A row's probabilities by Chinese label: 负面 and 正面, and 中性 for a three-class model (whose neutral is its own)."""
    if row.prob_neutral is None:
        return {LABELS["negative"]: 1.0 - row.prob_positive, LABELS["positive"]: row.prob_positive}
    return {LABELS["negative"]: row.prob_negative, LABELS["neutral"]: row.prob_neutral, LABELS["positive"]: row.prob_positive}


def _not_performed(text: str, label: str, reason: str) -> SentimentResult:
    return SentimentResult(text=text, sentiment_label=label, confidence=0.0, probability_distribution={},
                           success=False, error_message=reason, analysis_performed=False)  # fmt: skip


@dataclass
class WeiboSentimentAnalyzer:
    """BettaFish's analyzer interface on this project's model (see the module's docstring).

    Args:
        model: a checkpoint written by ``main.py fit`` (its base model from ``config``, else from the checkpoint's
            saved hyper-parameters), a peft adapter directory, or a directory written by ``main.py export``;
            default: the environment variable ``WEIBO_SENTIMENT_MODEL``.
        config: a ``main.py`` YAML config (base model, max_length, runtime); default: ``WEIBO_SENTIMENT_CONFIG``.
        runtime: ``torch`` or ``onnxruntime``; quantize: ``int8``; device: ``cpu`` or ``cuda``.
        neutral_band: for a two-class model, ``(low, high)`` on the probability of positive: inside it a post is
            ``中性``; default: the config's ``model.neutral_band``, else ``settings.DEFAULT_NEUTRAL_BAND`` (0.3, 0.7:
            where the model is near chance, docs/predicting.md, Neutral band); ``False``: two classes only. A three-class model
            says 中性 itself and takes no band.
        batch_size: posts per forward pass at most.
    """

    model: Optional[str] = None
    config: Optional[str] = None
    runtime: Optional[str] = None
    quantize: Optional[str] = None
    device: Optional[str] = None
    neutral_band: Union[tuple[float, float], None, bool] = None
    batch_size: int = 64
    is_initialized: bool = field(default=False, init=False)
    is_disabled: bool = field(default=False, init=False)
    disable_reason: Optional[str] = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.model = self.model or os.environ.get(MODEL_VARIABLE) or None
        self.config = self.config or os.environ.get(CONFIG_VARIABLE) or None
        self._analyzer: Any = None
        self.enable()

    # ---- state, as BettaFish's analyzer has it -----------------------------------------------------------------
    def _missing(self) -> Optional[str]:
        """Why the model cannot load, found without loading anything; ``None`` if it may."""
        if not self.model:
            return f"未配置情感模型: 请设置环境变量 {MODEL_VARIABLE} (main.py fit 写的检查点、适配器目录或导出目录)"
        if self.model != "last" and not Path(self.model).exists():
            return f"情感模型不存在: {self.model}"
        if self.config and not Path(self.config).is_file():
            return f"配置文件不存在: {self.config}"
        return None

    def disable(self, reason: Optional[str] = None, drop_state: bool = False) -> None:
        """Stop analysing (texts pass through), optionally giving back the loaded model."""
        self.is_disabled = True
        self.disable_reason = reason or "Sentiment analysis disabled."
        if drop_state:
            if self._analyzer is not None:
                self._analyzer.close()
            self._analyzer = None
            self.is_initialized = False

    def enable(self) -> bool:
        """Analyse again, if the model can be loaded; ``False`` (and disabled, with the reason) if not."""
        reason = self._missing()
        if reason is not None:
            self.disable(reason)
            return False
        self.is_disabled, self.disable_reason = False, None
        return True

    def initialize(self) -> bool:
        """Load the model (once); ``False``, and disabled with the reason, if it cannot be loaded."""
        if self.is_disabled:
            return False
        if self.is_initialized:
            return True
        try:
            from weibo_sentiment import SentimentAnalyzer

            self._analyzer = SentimentAnalyzer.load(self.model, config=self.config, runtime=self.runtime,
                                                    quantize=self.quantize, batch_size=self.batch_size,
                                                    device=self.device or "cpu")  # fmt: skip
            self._analyzer.neutral_band = self._chosen_band(self._analyzer.neutral_band, self._analyzer.source.num_labels)
        except ImportError as err:
            self.disable(f"缺少依赖: {err.name or err}，情感分析已禁用。", drop_state=True)
            return False
        except Exception as err:  # noqa: BLE001 - BettaFish's contract: a model that fails to load disables, never raises
            from weibo_sentiment.errors import UserError, user_message

            detail = user_message(err) if isinstance(err, UserError) else f"{type(err).__name__}: {err}"
            self.disable(f"模型加载失败: {detail}", drop_state=True)
            return False
        self.is_initialized = True
        return True

    # ---- analysis ------------------------------------------------------------------------------------------
    def analyze_single_text(self, text: str) -> SentimentResult:
        """One text's result (a failed one, not an exception, for an empty text or a disabled analyzer)."""
        return self._analyze([text], show_progress=False)[0]

    def analyze_batch(self, texts: list[str], show_progress: bool = True) -> BatchSentimentResult:
        """Every text's result, labelled in length-sorted batches; a progress line per chunk of posts."""
        texts = list(texts)
        if not texts:
            return BatchSentimentResult([], 0, 0, 0, 0.0, analysis_performed=self.is_initialized and not self.is_disabled)
        results = self._analyze(texts, show_progress)
        succeeded = [result for result in results if result.success]
        performed = any(result.analysis_performed for result in results) or (self.is_initialized and not self.is_disabled)
        return BatchSentimentResult(results=results, total_processed=len(texts), success_count=len(succeeded),
                                    failed_count=len(texts) - len(succeeded),
                                    average_confidence=sum(r.confidence for r in succeeded) / len(succeeded)
                                    if succeeded else 0.0, analysis_performed=performed)  # fmt: skip

    def _analyze(self, texts: list[str], show_progress: bool) -> list[SentimentResult]:
        if self.is_disabled:
            return [_not_performed(text, NOT_PERFORMED, self.disable_reason or "情感分析功能已禁用") for text in texts]
        if not self.is_initialized:
            return [_not_performed(text, "未初始化", "模型未初始化，请先调用initialize() 方法") for text in texts]
        cleaned = [re.sub(r"\s+", " ", text.strip()) if isinstance(text, str) else "" for text in texts]
        results: list[Optional[SentimentResult]] = [None] * len(texts)
        to_label = [i for i, text in enumerate(cleaned) if text]
        for i in set(range(len(texts))) - set(to_label):
            results[i] = _not_performed(texts[i], "输入错误", "输入文本为空或无效内容")
        for start in range(0, len(to_label), PROGRESS_CHUNK):
            chunk = to_label[start : start + PROGRESS_CHUNK]
            try:
                rows = self._analyzer.predict([cleaned[i] for i in chunk])
            except Exception as err:  # noqa: BLE001 - reported per text, as BettaFish's analyzer does
                for i in chunk:
                    results[i] = SentimentResult(texts[i], "分析失败", 0.0, {}, False, f"预测时发生错误: {err}", False)
                continue
            for i, row in zip(chunk, rows):
                results[i] = SentimentResult(text=texts[i], sentiment_label=LABELS.get(row.sentiment, row.sentiment),
                                             confidence=row.confidence, probability_distribution=_distribution(row))
            if show_progress and len(texts) > 1:
                print(f"处理进度: {min(start + PROGRESS_CHUNK, len(to_label))}/{len(to_label)}", flush=True)
        return results  # type: ignore[return-value]

    def analyze_query_results(self, query_results: list[dict[str, Any]], text_field: str = "content",
                              min_confidence: float = 0.5) -> dict[str, Any]:  # fmt: skip
        """Search results (dicts) analysed: ``{"sentiment_analysis": {...}}`` with BettaFish's keys (distribution,
        high-confidence results with their original data, summary); the pass-through form when disabled."""
        if not query_results:
            return {"sentiment_analysis": {"total_analyzed": 0, "sentiment_distribution": {},
                                           "high_confidence_results": [], "summary": "没有内容需要分析"}}  # fmt: skip
        texts, originals = [], []
        for item in query_results:
            text = next((str(item[name]) for name in (text_field, *TEXT_FIELDS) if item.get(name)), "")
            if text.strip():
                texts.append(text)
                originals.append(item)
        if not texts:
            return {"sentiment_analysis": {"total_analyzed": 0, "sentiment_distribution": {},
                                           "high_confidence_results": [],
                                           "summary": "查询结果中没有找到可分析的文本内容"}}  # fmt: skip
        if self.is_disabled:
            return self._passthrough(originals, self.disable_reason or "情感分析模型不可用", texts)
        print(f"正在对{len(texts)}条内容进行情感分析...", flush=True)
        batch = self.analyze_batch(texts, show_progress=True)
        if not batch.analysis_performed:
            reason = next((r.error_message for r in batch.results if r.error_message), None) or NOT_PERFORMED
            return self._passthrough(originals, reason, texts, batch.results)
        distribution: dict[str, int] = {}
        confident = []
        for result, original in zip(batch.results, originals):
            if not result.success:
                continue
            distribution[result.sentiment_label] = distribution.get(result.sentiment_label, 0) + 1
            if result.confidence >= min_confidence:
                preview = result.text[:100] + "..." if len(result.text) > 100 else result.text
                confident.append({"original_data": original, "sentiment": result.sentiment_label,
                                  "confidence": result.confidence, "text_preview": preview})  # fmt: skip
        analysed = batch.success_count
        if analysed:
            label, count = max(distribution.items(), key=lambda item: item[1])
            summary = f"共分析{analysed}条内容，主要情感倾向为'{label}'({count}条，占{count / analysed * 100:.1f}%)"
        else:
            summary = "情感分析失败"
        return {"sentiment_analysis": {"total_analyzed": analysed, "success_rate": f"{analysed}/{batch.total_processed}",
                                       "average_confidence": round(batch.average_confidence, 4),
                                       "sentiment_distribution": distribution, "high_confidence_results": confident,
                                       "summary": summary}}  # fmt: skip

    @staticmethod
    def _passthrough(originals: list[dict[str, Any]], reason: str, texts: list[str],
                     results: Optional[list[SentimentResult]] = None) -> dict[str, Any]:  # fmt: skip
        analysis: dict[str, Any] = {"available": False, "reason": reason, "total_analyzed": 0,
                                    "success_rate": f"0/{len(texts)}", "average_confidence": 0.0,
                                    "sentiment_distribution": {}, "high_confidence_results": [],
                                    "summary": f"情感分析未执行：{reason}", "original_texts": originals,
                                    "passthrough_texts": texts}  # fmt: skip
        if results is not None:
            analysis["results"] = [result.__dict__ for result in results]
        return {"sentiment_analysis": analysis}

    def get_model_info(self) -> dict[str, Any]:
        """What labels: the model, its mode, the labels it gives, whether it is loaded."""
        three_class = self._analyzer is not None and self._analyzer.source.num_labels == 3
        levels = [LABELS["negative"], *([LABELS["neutral"]] if three_class or self._band() else []), LABELS["positive"]]
        return {"model_name": f"weibo-sentiment ({self.model})", "model": self.model, "config": self.config,
                "mode": self._analyzer.mode if self._analyzer is not None else None,
                "supported_languages": ["中文"], "sentiment_levels": levels, "neutral_band": self._band(),
                "is_initialized": self.is_initialized, "is_disabled": self.is_disabled,
                "device": self.device or "cpu"}  # fmt: skip

    def _chosen_band(self, configured: Optional[tuple[float, float]], num_labels: int = 2) -> Optional[tuple[float, float]]:
        """The band asked for, else the config's, else the default; none when asked for ``False``, and none for a
        three-class model, whose 中性 is its own (a band asked for with one is an error: the analyzer is disabled)."""
        from weibo_sentiment.errors import UserError
        from weibo_sentiment.settings import DEFAULT_NEUTRAL_BAND, checked_neutral_band

        if self.neutral_band is False:
            return None
        asked = self.neutral_band is not None and self.neutral_band is not True
        if num_labels == 3:
            if asked:
                raise UserError("neutral_band is for two-class models; this model has a neutral class (中性) of its own")
            return None
        if asked:
            return checked_neutral_band(self.neutral_band)
        return configured or DEFAULT_NEUTRAL_BAND

    def _band(self) -> Optional[tuple[float, float]]:
        return self._analyzer.neutral_band if self._analyzer is not None else self._chosen_band(None)


_default: Optional[WeiboSentimentAnalyzer] = None


def default_analyzer() -> WeiboSentimentAnalyzer:
    """The module's own analyzer, configured by ``WEIBO_SENTIMENT_MODEL`` and ``WEIBO_SENTIMENT_CONFIG``."""
    global _default
    if _default is None:
        _default = WeiboSentimentAnalyzer()
    return _default


def analyze_sentiment(text_or_texts: Union[str, list[str]],
                      initialize_if_needed: bool = True) -> Union[SentimentResult, BatchSentimentResult]:  # fmt: skip
    """One text's result, or a batch's, from the module's own analyzer (loaded on first use if asked)."""
    analyzer = default_analyzer()
    if initialize_if_needed and not analyzer.is_initialized and not analyzer.is_disabled:
        analyzer.initialize()
    if isinstance(text_or_texts, str):
        return analyzer.analyze_single_text(text_or_texts)
    return analyzer.analyze_batch(list(text_or_texts))
