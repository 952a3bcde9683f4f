"""Posts labelled by people: a model trained on the corpus and on SMP2020-EWECT's posts together, validated on
people's labels (``val_f1_human``, which can choose the checkpoint), tested on a human-labelled file, and a three-class
model (negative, positive, neutral) through every entry point: ``main.py predict`` into a file and a database table,
the Python API, the HTTP API, ``weibo-sentiment-trend`` and the BettaFish analyzer."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import REPO, cli_args, read_predictions, real_rows, run_main, write_csv
from tools.crawl_db import fill

pytestmark = pytest.mark.e2e  # every test here starts processes of ours (see pyproject.toml)

HUMAN_TRAIN = REPO / "data" / "sample" / "smp2020_usual_train_1200.csv"
HUMAN_EVAL = REPO / "data" / "sample" / "smp2020_usual_eval_400.csv"
PEOPLE = "{path: %s, text_column: text, label_column: emotion}"
NAMES = ("negative", "positive", "neutral")


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.fixture(scope="session")
def three_class(tmp_path_factory: pytest.TempPathFactory, tiny_gpt2: str, train_csv: Path) -> dict:
    """``main.py fit`` of a three-class model on 300 corpus posts and 1,200 posts labelled by people, validated on
    400 other such posts and choosing its checkpoint by their three-class F1; and 60 posts to label."""
    root = tmp_path_factory.mktemp("three-class")
    result = run_main(cli_args("fit", tiny_gpt2, root, "--data.train_path", str(train_csv), "--model.num_labels", "3",
                               "--data.train_sources", f"[{PEOPLE % HUMAN_TRAIN}]", "--data.human_val",
                               PEOPLE % HUMAN_EVAL, "--checkpoint.monitor", "val_f1_human_3class",
                               "--trainer.max_epochs", "3"))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = root / "lightning_logs" / "version_0"
    (best,) = run_dir.glob("checkpoints/best-*.ckpt")
    rows = [{"id": f"p{i}", "review": row["review"]} for i, row in enumerate(real_rows(60, offset=1000))]
    rows[4]["review"] = ""
    return {"root": root, "run_dir": run_dir, "best": best, "stdout": result.stdout, "tiny_gpt2": tiny_gpt2,
            "posts": write_csv(root / "posts.csv", rows)}  # fmt: skip


@pytest.fixture(scope="session")
def predicted(three_class: dict) -> dict:
    """``main.py predict`` of the three-class model on its 60 posts, once: the rows every other entry point must
    give, and what it printed."""
    out = three_class["root"] / "predictions.csv"
    result = run_main(cli_args("predict", three_class["tiny_gpt2"], three_class["root"], "--ckpt_path",
                               str(three_class["best"]), "--data.predict_path", str(three_class["posts"]),
                               "--predict_writer.output_path", str(out)))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_predictions(out)
    return {"rows": rows, "classified": [row for row in rows if row["sentiment"] != "empty"], "stdout": result.stdout}


def test_people_validate_every_epoch_and_choose_the_checkpoint(three_class: dict) -> None:
    logged = scalars(three_class["run_dir"])
    for name in ("val_f1", "val_f1_text", "val_f1_human", "val_f1_human_3class", "val_acc_human"):
        assert len(logged[name]) == 3, name  # one per epoch, in TensorBoard
    assert "val_f1_3class" not in logged  # the corpus has no neutral posts: nothing three-class to score there
    by_epoch = [value for _, value in logged["val_f1_human_3class"]]
    best_epoch = by_epoch.index(max(by_epoch))
    assert three_class["best"].name.startswith(f"best-epoch={best_epoch}-")
    stdout = three_class["stdout"]
    assert "smp2020_usual_train_1200.csv: 93 posts left out: 93 labelled 'surprise'" in stdout
    assert "Training on 1,377 posts of 2 sources" in stdout  # 270 corpus posts (30 held out) and 1,107 of people's


def test_main_py_test_scores_a_file_labelled_by_people(three_class: dict, trained: dict, tiny_gpt2: str,
                                                       tmp_path: Path) -> None:  # fmt: skip
    human = ["--data.test_path", str(HUMAN_EVAL), "--data.text_column", "text", "--data.label_column", "emotion"]
    for model, root, three in ((three_class["best"], tmp_path / "three", True), (trained["best"], tmp_path / "two", False)):
        result = run_main(cli_args("test", tiny_gpt2, root, "--ckpt_path", str(model), *human))
        assert result.returncode == 0, result.stderr[-3000:]
        report = json.loads(next(root.glob("lightning_logs/version_0/test_metrics.json")).read_text(encoding="utf-8"))
        assert 0 <= report["metrics"]["test_f1"] <= 1
        assert ("test_f1_3class" in report["metrics"]) == three
        assert report["posts"] == 364 if three else 281  # surprise left out; neutral too for two classes
        if not three:
            assert "83 labelled 'neutral' (the model has no neutral class (model.num_labels 2))" in result.stdout


def test_predictions_of_a_three_class_model_carry_every_class(predicted: dict) -> None:
    rows = predicted["rows"]
    assert list(rows[0]) == ["id", "review", "label", "sentiment", "confidence", "prob_negative", "prob_neutral",
                             "prob_positive", "emoticons", "truncated"]  # fmt: skip
    assert rows[4]["sentiment"] == "empty" and rows[4]["prob_neutral"] == ""
    classified = [row for row in rows if row["sentiment"] != "empty"]
    for row in classified:
        probabilities = [float(row[f"prob_{name}"]) for name in NAMES]
        assert sum(probabilities) == pytest.approx(1, abs=1e-5)
        assert row["sentiment"] == NAMES[int(row["label"])]
        assert float(row["confidence"]) == max(probabilities) and probabilities[int(row["label"])] == max(probabilities)
    counts = {name: sum(row["sentiment"] == name for row in classified) for name in NAMES}
    assert counts["neutral"] > 0  # the model's own neutral, trained on people's neutral posts
    assert f"{counts['negative']} negative" in predicted["stdout"] and f"{counts['neutral']} neutral" in predicted["stdout"]


def test_the_python_api_and_a_database_labels_table_carry_every_class(three_class: dict, predicted: dict,
                                                                     tmp_path: Path) -> None:  # fmt: skip
    from weibo_sentiment import SentimentAnalyzer
    from weibo_sentiment.errors import UserError

    expected = predicted["rows"]
    texts = [row["review"] for row in expected]
    with SentimentAnalyzer.load(three_class["best"], base_model=three_class["tiny_gpt2"]) as analyzer:
        rows = [row.to_dict() for row in analyzer.predict(texts)]
        url = f"sqlite:///{tmp_path / 'crawl.db'}"
        fill(url, notes=200, comments=0)
        summary = analyzer.label_database(url, "weibo_note", id_column="note_id")
    for row, want in zip(rows, expected):
        assert list(row) == ["label", "sentiment", "confidence", "prob_negative", "prob_neutral", "prob_positive",
                             "emoticons", "truncated"]  # fmt: skip
        in_file = lambda value: "" if value is None else str(value)  # noqa: E731  (the file leaves None empty)
        assert (in_file(row["label"]), row["sentiment"]) == (want["label"], want["sentiment"])
        for name in NAMES:  # the file holds 6 decimals
            wanted = want[f"prob_{name}"]
            assert row[f"prob_{name}"] == (None if wanted == "" else pytest.approx(float(wanted), abs=2e-6))
    with sqlite3.connect(tmp_path / "crawl.db") as db:
        stored = db.execute("SELECT label, sentiment, prob_negative, prob_neutral, prob_positive, confidence "
                            "FROM weibo_sentiment_labels WHERE sentiment != 'empty'").fetchall()  # fmt: skip
    assert len(stored) == summary.classified > 0 and summary.counts["neutral"] == sum(r[1] == "neutral" for r in stored)
    for label, sentiment, *probabilities, confidence in stored:
        assert sentiment == NAMES[label] and confidence == pytest.approx(max(probabilities), abs=1e-6)
        assert sum(probabilities) == pytest.approx(1, abs=1e-5)
    with pytest.raises(UserError, match="neutral_band is for two-class models"):
        SentimentAnalyzer.load(three_class["best"], base_model=three_class["tiny_gpt2"], neutral_band=(0.4, 0.6))


def test_main_py_labels_a_table_and_the_trend_counts_the_models_neutral(three_class: dict, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'crawl.db'}"
    fill(url, notes=200, comments=0)
    table = ["--data.predict_path", url, "--data.table", "weibo_note", "--data.text_column", "content",
             "--data.id_column", "note_id"]  # fmt: skip
    result = run_main(cli_args("predict", three_class["tiny_gpt2"], three_class["root"], "--ckpt_path",
                               str(three_class["best"]), *table, "--predict_writer.output_path", url))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    with sqlite3.connect(tmp_path / "crawl.db") as db:
        by_sentiment = dict(db.execute("SELECT sentiment, count(*) FROM weibo_sentiment_labels GROUP BY 1"))
        assert db.execute("SELECT count(*) FROM weibo_sentiment_labels WHERE label = 2 AND prob_neutral IS NOT NULL "
                          "AND sentiment = 'neutral'").fetchone()[0] == by_sentiment.get("neutral", 0) > 0  # fmt: skip
    trend = subprocess.run([sys.executable, "-m", "weibo_sentiment.integrations.trend", "--input", url, "--table", "weibo_note",
                            "--id_column", "note_id", "--by", "week", "--neutral_band", "[0.0, 1.0]", "--output_dir",
                            str(tmp_path / "trend")], cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert trend.returncode == 0, trend.stderr[-3000:]
    rows = json.loads((tmp_path / "trend" / "trend.json").read_text(encoding="utf-8"))["rows"]
    # The model's neutral counted as it said; a band (here: all of [0, 1]) applies to two-class labels only.
    for name in NAMES:
        assert sum(row[name] for row in rows) == by_sentiment.get(name, 0)


def test_the_http_api_answers_every_class(three_class: dict, predicted: dict, tmp_path: Path) -> None:
    from test_serve import post
    from test_stopping import start_server, stopped

    expected = predicted["classified"]
    process, base = start_server(["--model.model_name_or_path", three_class["tiny_gpt2"], "--ckpt_path",
                                  str(three_class["best"])], tmp_path)  # fmt: skip
    try:
        status, answer = post(f"{base}/api/sentiment", {"texts": [row["review"] for row in expected]})
        single = post(f"{base}/api/sentiment", {"text": expected[0]["review"]})[1]
    finally:
        assert stopped(process, signal.SIGTERM)[0] == 0
    assert status == 200
    assert set(single) == {"label", "sentiment", "confidence", "prob_negative", "prob_neutral", "prob_positive",
                           "emoticons", "truncated"}  # fmt: skip
    for result, row in zip(answer["results"], expected):
        assert (result["label"], result["sentiment"]) == (int(row["label"]), row["sentiment"])
        assert result["prob_neutral"] == pytest.approx(float(row["prob_neutral"]), abs=1e-5)
    neutral = sum(row["sentiment"] == "neutral" for row in expected)
    assert answer["summary"]["neutral"] == neutral and answer["report"]["counts"]["neutral"] == neutral


def test_the_bettafish_analyzer_says_the_models_neutral(three_class: dict, predicted: dict) -> None:
    from weibo_sentiment.integrations.bettafish import WeiboSentimentAnalyzer

    expected = predicted["classified"]
    analyzer = WeiboSentimentAnalyzer(model=str(three_class["best"]))  # the default band: for two-class models only
    assert analyzer.initialize(), analyzer.disable_reason
    results = analyzer.analyze_batch([row["review"] for row in expected], show_progress=False).results
    chinese = {"negative": "负面", "positive": "正面", "neutral": "中性"}
    for result, row in zip(results, expected):
        assert result.sentiment_label == chinese[row["sentiment"]]
        assert set(result.probability_distribution) == {"负面", "中性", "正面"}
        assert result.probability_distribution["中性"] == pytest.approx(float(row["prob_neutral"]), abs=1e-5)
        assert sum(result.probability_distribution.values()) == pytest.approx(1, abs=1e-5)
    info = analyzer.get_model_info()
    assert info["sentiment_levels"] == ["负面", "中性", "正面"] and info["neutral_band"] is None
    banded = WeiboSentimentAnalyzer(model=str(three_class["best"]), neutral_band=(0.4, 0.6))
    assert not banded.initialize() and "neutral_band is for two-class models" in banded.disable_reason


def test_a_checkpoint_watching_a_metric_the_run_does_not_report_is_one_line_before_training(
        tiny_gpt2: str, train_csv: Path, tmp_path: Path) -> None:  # fmt: skip
    for flags, says in (
        (["--data.human_val", "null", "--checkpoint.monitor", "val_f1_human"], "(it needs data.human_val"),
        (["--data.human_val", "{path: data/sample/smp2020_usual_eval_400.csv, text_column: text, label_column: emotion}",
          "--checkpoint.monitor", "val_f1_human_3class"], "(it needs model.num_labels 3"),
    ):
        result = run_main(cli_args("fit", tiny_gpt2, tmp_path, "--data.train_path", str(train_csv), *flags))
        assert result.returncode == 2
        assert result.stderr.startswith(f"error: checkpoint monitors {flags[-1]}, which this run's validation does "
                                        f"not report {says}")  # fmt: skip
        assert len(result.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "lightning_logs").exists()


def test_a_two_class_checkpoint_name_shows_only_metrics_its_run_reports(tiny_gpt2: str, train_csv: Path,
                                                                        tmp_path: Path) -> None:  # fmt: skip
    """The human config's file name shows val_f1_human_3class; a two-class model trained with it reports no such
    metric, and its checkpoint's name must not read as a three-class score of 0."""
    config = yaml.safe_load((REPO / "configs" / "gpt2_chinese_lora_human.yaml").read_text(encoding="utf-8"))
    template = config["checkpoint"]["filename"]
    assert "{val_f1_human_3class:.4f}" in template
    result = run_main(cli_args("fit", tiny_gpt2, tmp_path, "--data.train_path", str(train_csv), "--trainer.max_epochs",
                               "1", "--data.human_val", PEOPLE % HUMAN_EVAL, "--checkpoint.monitor", "val_f1_human",
                               "--checkpoint.filename", template))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (best,) = tmp_path.glob("lightning_logs/version_0/checkpoints/best-*.ckpt")
    assert re.fullmatch(r"best-epoch=0-step=\d+-val_f1_human=[01]\.\d{4}\.ckpt", best.name), best.name
