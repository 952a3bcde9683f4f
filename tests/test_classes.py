"""Classes and labels: the label map (numbers, class names, SMP2020-EWECT's emotions), human-labelled files as they are
distributed, several training sources drawn by weight, and the loss of a three-class model over a source's classes."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from conftest import REPO
from weibo_sentiment.classes import LabelMap, class_names, probability_columns
from weibo_sentiment.data.batching import LengthGroupedBatches, PadLabelled, classes_of
from weibo_sentiment.data.readers import Post, PostReader, read_labelled
from weibo_sentiment.errors import UserError
from weibo_sentiment.settings import DataSettings, LabelledSource, ModelSettings
from weibo_sentiment.training.model import within_classes

HUMAN_EVAL = REPO / "data" / "sample" / "smp2020_usual_eval_400.csv"


def human_rows(path: Path = HUMAN_EVAL) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_labels_are_numbered_the_same_in_every_model() -> None:
    assert class_names(2) == ("negative", "positive")
    assert class_names(3) == ("negative", "positive", "neutral")  # 0 and 1 keep their meaning
    assert probability_columns(2) == ["prob_positive"]
    assert probability_columns(3) == ["prob_negative", "prob_neutral", "prob_positive"]
    with pytest.raises(UserError, match="model.num_labels is 2 .* or 3"):
        class_names(4)


def test_the_default_label_map_reads_numbers_names_and_smp2020_emotions() -> None:
    two, three = LabelMap(2), LabelMap(3)
    for raw, label in {"0": 0, "1": 1, "negative": 0, "Positive": 1, "happy": 1, "angry": 0, "sad": 0, "fear": 0}.items():
        assert two(raw) == label and three(raw) == label, raw
    assert [three(raw) for raw in ("2", "neutral", "neural")] == [2, 2, 2]  # the official files spell it neural
    assert [two(raw) for raw in ("neutral", "neural", "surprise")] == [None, None, None]  # left out, not errors
    assert three("surprise") is None
    for raw in ("2", "-1", "pos", "", "joy"):  # a number a two-class model has no class for is a mistake
        with pytest.raises(KeyError):
            two(raw)


def test_a_label_map_adds_and_overrides_entries_and_is_checked() -> None:
    custom = LabelMap(3, {"surprise": "positive", "sad": None, 5: "negative"})
    assert (custom("surprise"), custom("sad"), custom("5"), custom("happy")) == (1, None, 0, 1)
    with pytest.raises(UserError, match="data.label_map maps 'joy' to 'glad': map labels to negative, positive, neutral"):
        LabelMap(2, {"joy": "glad"})
    with pytest.raises(UserError, match="the label_map of x.csv maps"):
        LabelledSource("x.csv", label_map={"joy": "glad"})


def test_smp2020_as_distributed_a_json_array_in_a_txt_file_is_read_with_its_emotions(tmp_path: Path) -> None:
    rows = human_rows()[:40]
    official = [{"id": int(row["id"]), "content": row["text"],
                 "label": "neural" if row["emotion"] == "neutral" else row["emotion"]} for row in rows]  # fmt: skip
    path = tmp_path / "usual_eval.txt"
    path.write_text(json.dumps(official, ensure_ascii=False), encoding="utf-8")
    said: list[str] = []
    posts = read_labelled(str(path), "content", "label", num_labels=3, say=said.append)
    kept = [row for row in rows if row["emotion"] != "surprise"]
    expected = {"happy": 1, "angry": 0, "sad": 0, "fear": 0, "neutral": 2}
    assert [(post.text, post.label) for post in posts] == [(row["text"], expected[row["emotion"]]) for row in kept]
    surprise = len(rows) - len(kept)
    assert said == [f"{path}: {surprise} posts left out: {surprise} labelled 'surprise' (data.label_map leaves it out)"]
    two_class = read_labelled(str(path), "content", "label", num_labels=2, say=said.append)
    assert len(two_class) == sum(row["emotion"] not in ("surprise", "neutral") for row in rows)
    assert "labelled 'neural' (the model has no neutral class (model.num_labels 2))" in said[-1]


def test_an_unknown_label_names_the_file_the_row_and_the_label(tmp_path: Path) -> None:
    rows = human_rows()[:5]
    rows[3]["emotion"] = "joy"
    path = tmp_path / "human.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(UserError) as caught:
        read_labelled(str(path), "text", "emotion", num_labels=3)
    assert str(caught.value).startswith(f"{path} line 5: label 'joy' is not one of 0, 1, 2 (column 'emotion'; "
                                        "2 = neutral, 1 = positive, 0 = negative)")  # fmt: skip
    json_path = tmp_path / "human.json"
    json_path.write_text(json.dumps([{"content": "好", "label": "happy"}, {"content": "坏", "label": 7}]), "utf-8")
    with pytest.raises(UserError, match=r"human.json object 2: label '7' is not one of 0, 1 "):
        read_labelled(str(json_path), "content", "label")
    everything_left_out = tmp_path / "surprises.csv"
    everything_left_out.write_text("text,emotion\n哇,surprise\n", encoding="utf-8")
    with pytest.raises(UserError, match="1 posts left out: 1 labelled 'surprise' .*, so none is left"):
        read_labelled(str(everything_left_out), "text", "emotion")


def test_sources_are_drawn_each_epoch_by_their_weight() -> None:
    lengths = [5 + i % 7 for i in range(300)]
    sources = [0] * 200 + [1] * 100  # a corpus of 200 posts drawn a quarter, people's 100 posts each twice
    batches = LengthGroupedBatches(lengths, [None] * 300, 10, seed=3, sources=sources, weights=[0.25, 2.0])
    assert len(batches) == (50 + 200) // 10
    drawn = [[index for batch in batches.batches(epoch) for index, _ in batch] for epoch in (0, 1)]
    for epoch in drawn:
        counts = Counter(epoch)
        assert sum(1 for index in counts if index < 200) == 50 and all(counts[index] == 1 for index in counts if index < 200)
        assert all(counts[index] == 2 for index in range(200, 300))
    assert {i for i in drawn[0] if i < 200} != {i for i in drawn[1] if i < 200}  # a new quarter each epoch
    assert batches.batches(1) == LengthGroupedBatches(lengths, [None] * 300, 10, seed=3, sources=sources,
                                                      weights=[0.25, 2.0]).batches(1)  # fmt: skip
    # Every weight 1: exactly the batches one source always gave.
    plain = LengthGroupedBatches(lengths, [None] * 300, 10, seed=3)
    assert LengthGroupedBatches(lengths, [None] * 300, 10, seed=3, sources=sources, weights=[1.0, 1.0]).batches(0) == \
        plain.batches(0)  # fmt: skip


def test_each_source_strips_emoticons_with_its_own_probability() -> None:
    lengths, stripped = [10] * 200, [6] * 200
    batches = LengthGroupedBatches(lengths, stripped, 20, emoticon_dropout=[1.0] * 100 + [0.0] * 100, seed=1)
    strips = {index: strip for batch in batches.batches(0) for index, strip in batch}
    assert all(strips[i] for i in range(100)) and not any(strips[i] for i in range(100, 200))


def test_a_three_class_model_learns_from_a_two_class_source_over_its_two_classes() -> None:
    corpus, people = [Post("好", 1), Post("坏", 0)], [Post("好", 1), Post("嗯", 2)]
    assert classes_of(corpus, 3) == (True, True, False) and classes_of(people, 3) is None
    assert classes_of(corpus, 2) is None
    batch = PadLabelled(0)([{"input_ids": [5, 6], "label": 1, "classes": (True, True, False)},
                            {"input_ids": [7], "label": 2, "classes": None}])  # fmt: skip
    assert batch["class_mask"].tolist() == [[True, True, False], [True, True, True]]
    logits = torch.tensor([[0.2, 1.5, 3.0], [0.1, 0.3, 2.0]], requires_grad=True)
    loss = torch.nn.functional.cross_entropy(within_classes(logits, batch["class_mask"]), batch["labels"], reduction="none")
    assert loss[0].item() == pytest.approx(torch.nn.functional.cross_entropy(logits[:1, :2], batch["labels"][:1]).item())
    assert loss[1].item() == pytest.approx(torch.nn.functional.cross_entropy(logits[1:], batch["labels"][1:]).item())
    loss[0].backward()
    assert logits.grad[0, 2] == 0  # the corpus post says nothing about neutral
    assert "class_mask" not in PadLabelled(0)([{"input_ids": [5], "label": 1, "classes": None}])


def test_settings_keep_bands_to_two_class_models_and_sources_checked() -> None:
    with pytest.raises(UserError, match="neutral_band is for two-class models"):
        ModelSettings(num_labels=3, neutral_band=[0.3, 0.7])
    with pytest.raises(UserError, match="model.num_labels is 2"):
        ModelSettings(num_labels=5)
    settings = DataSettings(train_sources=[{"path": "a.csv", "weight": 0.5, "emoticon_dropout": 1.0}],
                            human_val={"path": "b.txt", "text_column": "content"})  # fmt: skip
    assert settings.train_sources == [LabelledSource("a.csv", weight=0.5, emoticon_dropout=1.0)]
    assert settings.human_val == LabelledSource("b.txt", text_column="content")
    with pytest.raises(UserError, match="weight is the share of its posts drawn each epoch, above 0"):
        DataSettings(train_sources=[{"path": "a.csv", "weight": 0}])
    with pytest.raises(UserError, match="a labelled source is .*; got"):
        DataSettings(human_val={"file": "b.csv"})


def test_a_csv_with_an_emotion_column_is_read_as_people_labelled_it() -> None:
    rows = human_rows()
    posts = list(PostReader(str(HUMAN_EVAL), "text", "emotion", num_labels=3))
    assert len(posts) == sum(row["emotion"] != "surprise" for row in rows)
    assert Counter(post.label for post in posts)[2] == sum(row["emotion"] == "neutral" for row in rows)
