"""The BettaFish drop-in, called the way BettaFish's InsightEngine agent calls its analyzer (``_perform_sentiment_analysis``
and ``analyze_sentiment_only``), over rows shaped like its crawler's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, cli_args, read_predictions, real_rows, run_main, write_csv
from weibo_sentiment.integrations.bettafish import BatchSentimentResult, SentimentResult, WeiboSentimentAnalyzer

pytestmark = pytest.mark.e2e  # every test here starts processes of ours (see pyproject.toml)

RESULT_FIELDS = {"text", "sentiment_label", "confidence", "probability_distribution", "success", "error_message",
                 "analysis_performed"}  # fmt: skip


def crawler_rows() -> list[dict]:
    """Search results as the agent hands them over: content, platform, author, url, publish_time; two empty."""
    rows = [{"content": row["review"], "platform": "weibo", "author": f"user{i}", "url": f"https://weibo.com/{i}",
             "publish_time": f"2026-11-{1 + i % 28:02d} 08:00:00"} for i, row in enumerate(real_rows(40, offset=900))]
    rows[5]["content"], rows[17]["content"] = "", "   "
    return rows


def perform_sentiment_analysis(analyzer: WeiboSentimentAnalyzer, rows: list[dict]) -> dict:
    """What InsightEngine's agent does with search results (in our words)."""
    if not analyzer.is_initialized and not analyzer.is_disabled:
        analyzer.initialize()
    return analyzer.analyze_query_results(query_results=rows, text_field="content", min_confidence=0.5)["sentiment_analysis"]


def test_the_agents_two_call_sites_get_its_keys_types_and_counts_with_main_pys_probabilities(
        trained: dict, tiny_gpt2: str, tmp_path: Path) -> None:  # fmt: skip
    rows = crawler_rows()
    texts = [row["content"] for row in rows if row["content"].strip()]
    write_csv(tmp_path / "texts.csv", [{"id": str(i), "review": text} for i, text in enumerate(texts)])
    result = run_main(cli_args("predict", tiny_gpt2, tmp_path, "--ckpt_path", str(trained["last"]),
                               "--data.predict_path", str(tmp_path / "texts.csv"),
                               "--predict_writer.output_path", str(tmp_path / "predictions.csv")))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    expected = read_predictions(tmp_path / "predictions.csv")

    analyzer = WeiboSentimentAnalyzer(model=str(trained["last"]), neutral_band=False)  # two classes, as main.py's
    assert not analyzer.is_initialized and not analyzer.is_disabled
    analysis = perform_sentiment_analysis(analyzer, rows)
    assert analyzer.is_initialized
    assert set(analysis) == {"total_analyzed", "success_rate", "average_confidence", "sentiment_distribution",
                             "high_confidence_results", "summary"}  # fmt: skip
    assert analysis["total_analyzed"] == 38 and analysis["success_rate"] == "38/38"
    assert set(analysis["sentiment_distribution"]) <= {"正面", "负面"}
    assert sum(analysis["sentiment_distribution"].values()) == 38
    negatives = sum(row["sentiment"] == "negative" for row in expected)
    assert analysis["sentiment_distribution"].get("负面", 0) == negatives
    confident = [row for row in expected if float(row["confidence"]) >= 0.5]
    assert len(analysis["high_confidence_results"]) == len(confident)
    for item in analysis["high_confidence_results"]:
        assert set(item) == {"original_data", "sentiment", "confidence", "text_preview"}
        assert item["original_data"] in rows and isinstance(item["confidence"], float)
    assert analysis["summary"].startswith("共分析38条内容，主要情感倾向为")
    assert isinstance(analysis["average_confidence"], float)

    # analyze_sentiment_only: one text, then a list, each result as a dict
    single = analyzer.analyze_single_text(texts[0])
    assert set(single.__dict__) == RESULT_FIELDS and single.success and single.analysis_performed
    batch = analyzer.analyze_batch([row["content"] for row in rows], show_progress=True)
    assert isinstance(batch, BatchSentimentResult)
    assert (batch.total_processed, batch.success_count, batch.failed_count) == (40, 38, 2)
    assert not batch.results[5].success and batch.results[5].error_message  # an empty text fails, never raises
    labelled = [r for r in batch.results if r.success]
    for result, want in zip(labelled, expected):
        assert set(result.__dict__) == RESULT_FIELDS
        distribution = result.probability_distribution
        assert set(distribution) == {"负面", "正面"} and sum(distribution.values()) == pytest.approx(1.0)
        assert distribution["正面"] == pytest.approx(float(want["prob_positive"]), abs=1e-6)
        assert result.confidence == pytest.approx(float(want["confidence"]), abs=1e-6)
        assert result.sentiment_label == {"negative": "负面", "positive": "正面"}[want["sentiment"]]
    assert batch.average_confidence == pytest.approx(sum(r.confidence for r in labelled) / 38)
    json.dumps([r.__dict__ for r in batch.results], ensure_ascii=False)  # the agent returns them as JSON

    for band, (low, high) in (((0.45, 0.55), (0.45, 0.55)), (None, (0.3, 0.7))):  # asked for; the default
        banded = WeiboSentimentAnalyzer(model=str(trained["last"]), neutral_band=band)
        assert banded.initialize() and banded.get_model_info()["neutral_band"] == (low, high)
        for result in banded.analyze_batch(texts, show_progress=False).results:
            inside = low <= result.probability_distribution["正面"] <= high
            assert (result.sentiment_label == "中性") == inside
        assert "中性" in banded.get_model_info()["sentiment_levels"]


def test_a_missing_model_disables_it_with_a_reason_and_texts_pass_through(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.delenv("WEIBO_SENTIMENT_MODEL", raising=False)
    nothing = WeiboSentimentAnalyzer()
    assert nothing.is_disabled and "WEIBO_SENTIMENT_MODEL" in nothing.disable_reason
    monkeypatch.setenv("WEIBO_SENTIMENT_MODEL", str(tmp_path / "missing.ckpt"))
    analyzer = WeiboSentimentAnalyzer()
    assert analyzer.is_disabled and "missing.ckpt" in analyzer.disable_reason
    assert perform_sentiment_analysis(analyzer, crawler_rows())["available"] is False
    analysis = analyzer.analyze_query_results(crawler_rows())["sentiment_analysis"]
    assert analysis["reason"] == analyzer.disable_reason and analysis["total_analyzed"] == 0
    assert len(analysis["original_texts"]) == 38 and analysis["success_rate"] == "0/38"
    single = analyzer.analyze_single_text("很好")
    assert isinstance(single, SentimentResult) and not single.success and not single.analysis_performed
    batch = analyzer.analyze_batch(["很好", "很差"])
    assert not batch.analysis_performed and batch.failed_count == 2
    assert analyzer.initialize() is False and analyzer.enable() is False

    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"not a checkpoint")
    damaged = WeiboSentimentAnalyzer(model=str(broken))
    assert not damaged.is_disabled  # it exists: found unusable only when loading
    assert damaged.initialize() is False and damaged.is_disabled and "模型加载失败" in damaged.disable_reason


def test_importing_and_creating_it_loads_no_model_library() -> None:
    code = ("import sys\nfrom weibo_sentiment.integrations.bettafish import WeiboSentimentAnalyzer, analyze_sentiment\n"
            "WeiboSentimentAnalyzer(model='nowhere.ckpt')\n"
            "print(sorted(m for m in ('torch', 'transformers', 'onnxruntime', 'lightning') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
