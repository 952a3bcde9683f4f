"""Readers, split, tokenization and dynamic padding, on real Weibo posts."""

from __future__ import annotations

import io
import json
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from transformers import AutoTokenizer

from conftest import cli_args, real_rows, write_csv
from weibo_sentiment.data.batching import (
    LengthGroupedBatches,
    PadLabelled,
    SortedPostBatches,
    TokenizedPosts,
    padding_bounded_batches,
)
from weibo_sentiment.training.datamodule import WeiboDataModule
from weibo_sentiment.data.readers import Post, PostReader, read_labelled, stratified_split
from weibo_sentiment.data.tokenizer import Tokenize
from weibo_sentiment.emoticons import EmoticonTags
from weibo_sentiment.cli import main
from weibo_sentiment.errors import UserError

ROWS = real_rows(40)


def test_csv_with_bom_and_crlf_reads_like_plain_utf8(tmp_path: Path) -> None:
    plain = write_csv(tmp_path / "plain.csv", ROWS)
    bom_crlf = tmp_path / "bom.csv"
    bom_crlf.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    expected = [Post(row["review"], int(row["label"])) for row in ROWS]
    assert read_labelled(str(plain), "review", "label") == expected
    assert read_labelled(str(bom_crlf), "review", "label") == expected


def test_tsv_jsonl_and_custom_columns(tmp_path: Path) -> None:
    tsv = tmp_path / "posts.tsv"
    tsv.write_text("text\tsentiment\n" + "".join(f"{r['review']}\t{r['label']}\n" for r in ROWS[:5]), encoding="utf-8")
    jsonl = tmp_path / "posts.jsonl"
    jsonl.write_text("".join(json.dumps({"text": r["review"], "sentiment": int(r["label"])}) + "\n" for r in ROWS[:5]))
    for path in (tsv, jsonl):
        posts = read_labelled(str(path), "text", "sentiment")
        assert [p.text for p in posts] == [r["review"] for r in ROWS[:5]]
        assert [p.label for p in posts] == [int(r["label"]) for r in ROWS[:5]]


def test_quoted_fields_with_newlines_commas_and_quotes(tmp_path: Path) -> None:
    text = '第一行,有逗号\n第二行 "引号" [哈哈]'
    path = write_csv(tmp_path / "q.csv", [{"label": "1", "review": text}, {"label": "0", "review": "坏"}])
    assert [p.text for p in read_labelled(str(path), "review", "label")] == [text, "坏"]


def test_prediction_inputs_keep_ids_and_order(tmp_path: Path) -> None:
    rows = [{"id": f"x{i}", "review": r["review"]} for i, r in enumerate(ROWS[:7])]
    posts = list(PostReader(str(write_csv(tmp_path / "p.csv", rows))))
    assert [(p.id, p.text) for p in posts] == [(r["id"], r["review"]) for r in rows]
    assert all(p.label is None for p in posts)


def test_plain_text_is_one_post_per_line_and_skips_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "posts.txt"
    path.write_text("好开心[哈哈]\n\n   \r\n太难过了[泪]\r\n", encoding="utf-8")
    assert [p.text for p in PostReader(str(path))] == ["好开心[哈哈]", "太难过了[泪]"]


def test_standard_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("好开心\n难过\n".encode())))
    assert [p.text for p in PostReader("-")] == ["好开心", "难过"]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO('{"review": "好", "id": 7}\n'.encode())))
    assert list(PostReader("-", fmt="jsonl")) == [Post("好", None, "7")]


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("posts.csv", 'id,review\r\n1,"第一行\n第二行"\r\n\r\n2,\r\n3,"引号 ""里"", 逗号"\n'),  # quoted line break, blank row
        ("posts.tsv", "review\n好\n\n坏\n"),
        ("posts.jsonl", '{"review": "好"}\n\n   \n{"review": "坏"}\n'),
        ("posts.txt", "好开心[哈哈]\n\n   \r\n太难过了[泪]\r独占一行\n"),  # a lone \r ends a line as well
    ],
)
def test_a_count_of_posts_agrees_with_reading_them(tmp_path: Path, name: str, content: str) -> None:
    """predict's progress bar takes its total from this count, made before labelling."""
    path = tmp_path / name
    path.write_text(content, encoding="utf-8", newline="")
    reader = PostReader(str(path))
    assert reader.count() == len(list(reader)) > 1


def test_standard_input_cannot_be_counted_ahead(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("好开心\n难过\n".encode())))
    reader = PostReader("-")
    assert reader.count() is None
    assert [p.text for p in reader] == ["好开心", "难过"]  # nothing was read from it


def test_prediction_reader_streams_instead_of_loading_the_file(tmp_path: Path) -> None:
    path = tmp_path / "posts.jsonl"
    path.write_text('{"review": "第一条"}\nnot json\n', encoding="utf-8")
    stream = iter(PostReader(str(path)))
    assert next(stream).text == "第一条"  # read before the broken second line is reached
    with pytest.raises(UserError, match=r"posts.jsonl line 2: not valid JSON"):
        next(stream)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the file is empty"),
        (b"label,review\n", "has a header but no posts"),
        (b"lab,review\n1,x\n", "no 'label' column"),
        (b"label,text\n1,x\n", "no 'review' column"),
        (b"label,review\n1,ok\n2,x\n", "line 3: label '2' is not one of 0, 1"),
        (b"label,review\n-1,x\n", "label '-1' is not one of"),
        (b"label,review\npos,x\n", "label 'pos' is not one of"),
        (b"label,review\n,x\n", "label '' is not one of"),
        ("label,review\n²,x\n".encode(), "label '²' is not one of"),
        ("label,review\n1,你好\n".encode("gbk"), "not UTF-8 text"),
    ],
)
def test_bad_labelled_files_name_the_file_and_the_problem(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message) as err:
        read_labelled(str(path), "review", "label")
    assert str(path) in str(err.value)


def test_missing_paths_directories_and_unknown_formats(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file"):
        PostReader(str(tmp_path / "nope.csv"))
    with pytest.raises(UserError, match="is a directory"):
        PostReader(str(tmp_path))
    (tmp_path / "posts.xlsx").write_text("x")
    with pytest.raises(UserError, match="cannot tell the format"):
        PostReader(str(tmp_path / "posts.xlsx"))


def test_split_is_stratified_and_identical_run_to_run() -> None:
    labels = [int(r["label"]) for r in real_rows(1000)]
    train, val = stratified_split(labels, 0.1, seed=42)
    assert (train, val) == stratified_split(labels, 0.1, seed=42)
    assert stratified_split(labels, 0.1, seed=7)[1] != val
    assert sorted(train + val) == list(range(1000))
    counts, val_counts = Counter(labels), Counter(labels[i] for i in val)
    for label in (0, 1):
        assert val_counts[label] == round(counts[label] * 0.1)


def test_batches_are_padded_to_their_longest_post_without_token_type_ids(tiny_gpt2: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2)
    tokenize = Tokenize(tokenizer, max_length=128)
    posts = [Post("好", 1), Post("今天天气真好[哈哈]", 0), Post("好" * 500, 1)]
    dataset = TokenizedPosts(posts, tokenize, EmoticonTags())
    batch = PadLabelled(tokenizer.pad_token_id)([dataset[0], dataset[1]])
    assert set(batch) == {"input_ids", "attention_mask", "labels", "text_only"}
    lengths = [len(dataset[0]["input_ids"]), len(dataset[1]["input_ids"])]
    assert batch["input_ids"].shape == (2, max(lengths)) and max(lengths) < 128
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths
    assert batch["input_ids"][0, lengths[0] :].eq(tokenizer.pad_token_id).all()
    assert batch["labels"].tolist() == [1, 0]
    assert len(dataset[2]["input_ids"]) == 128  # truncated
    predict = SortedPostBatches([], tokenize, tokenizer.pad_token_id, batch_size=2, window=8)
    same_length = [Post("好"), Post("坏")]
    (predict_batch,) = predict.window_batches(same_length)
    assert set(predict_batch) == {"input_ids", "attention_mask", "posts", "classified", "positions", "truncated",
                                 "window_end"}
    assert predict_batch["input_ids"].tolist() == tokenize([post.text for post in same_length])
    # Posts of very different lengths are not padded to each other: each goes in its own batch, shortest first.
    short, long = predict.window_batches(posts[:2])
    assert short["input_ids"].tolist() == [dataset[0]["input_ids"]] and long["input_ids"].tolist() == [dataset[1]["input_ids"]]
    assert (short["window_end"], long["window_end"]) == (False, True)
    blank, text = SortedPostBatches([], tokenize, tokenizer.pad_token_id, 3, 8).window_batches([Post(" "), Post("好"), Post("")])
    assert blank["classified"].tolist() == [] and len(blank["posts"]) == 2  # empty posts first, unclassified
    assert text["posts"] == [Post("好")] and sorted(blank["positions"] + text["positions"]) == [0, 1, 2]
    assert next(predict.window_batches([Post("")]))["classified"].tolist() == []


@pytest.mark.parametrize(
    ("lengths", "batch_size", "expected"),
    [
        ([10, 10, 10, 10], 3, [[0, 1, 2], [3]]),  # equal lengths: cut by count alone
        ([10, 10, 11, 40], 8, [[0, 1], [2], [3]]),  # 11 would pad 2 of 33 tokens (6 %): a new batch
        ([20, 20, 20, 20, 21], 8, [[0, 1, 2, 3, 4]]),  # 21 pads 4 of 105 tokens (3.8 %): kept
        ([0, 0, 5, 5], 8, [[0, 1], [2, 3]]),  # posts without text form their own batch
    ],
)
def test_predict_batches_end_where_padding_would_pass_five_percent(lengths, batch_size, expected) -> None:
    batches = padding_bounded_batches(range(len(lengths)), lengths, batch_size)
    assert batches == expected
    for members in batches:
        longest = max(lengths[i] for i in members)
        assert sum(longest - lengths[i] for i in members) <= 0.05 * longest * len(members)


def test_datamodule_holds_out_the_same_validation_posts_for_fit_and_validate(tiny_gpt2: str, train_csv: Path) -> None:
    def setup(stage: str) -> WeiboDataModule:
        dm = WeiboDataModule(train_path=str(train_csv), tokenizer_name_or_path=tiny_gpt2)
        dm.setup(stage)
        return dm

    fit, validate = setup("fit"), setup("validate")
    assert len(fit.datasets["train"]) == 270 and len(fit.datasets["val"]) == 30
    assert fit.datasets["val"].posts == validate.datasets["val"].posts
    assert not set(fit.datasets["train"].posts) & set(fit.datasets["val"].posts)


def test_stages_without_their_file_say_which_flag_to_pass(tiny_gpt2: str) -> None:
    dm = WeiboDataModule(tokenizer_name_or_path=tiny_gpt2)
    with pytest.raises(UserError, match="--data.test_path"):
        dm.setup("test")
    with pytest.raises(UserError, match="--data.predict_path"):
        dm.setup("predict")


def test_training_batches_are_length_grouped_random_and_resumable(tiny_gpt2: str, tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2)
    posts = [Post(r["review"], int(r["label"])) for r in real_rows(800)]
    dataset = TokenizedPosts(posts, Tokenize(tokenizer, 128), EmoticonTags())
    lengths = dataset.lengths()
    sampler = LengthGroupedBatches(lengths, dataset.stripped_lengths(), batch_size=16, seed=1)
    epoch0 = list(sampler)
    assert sorted(i for batch in epoch0 for i, _ in batch) == list(range(800)) and len(epoch0) == len(sampler) == 50
    padded = sum(len(batch) * max(lengths[i] for i, _ in batch) for batch in epoch0)
    assert padded < 1.1 * sum(lengths) < 0.7 * 800 * 128  # ~no padding, where the reference pads all to 128
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert [b[0] for b in epoch1] != [b[0] for b in epoch0]  # new batches each epoch...
    assert max(lengths[b[0][0]] for b in epoch0[:10]) > min(lengths[b[0][0]] for b in epoch0[:10])  # ...mixed lengths
    sampler.resume(1, batches_done=20)
    assert list(sampler) == epoch1[20:]  # a resumed epoch continues with the next unseen batch
    assert list(sampler) == epoch1  # ...once
    halves = [list(LengthGroupedBatches(lengths, dataset.stripped_lengths(), 16, seed=1, rank=r, world_size=2))
              for r in (0, 1)]  # fmt: skip
    assert len(halves[0]) == len(halves[1]) == 25 and sorted(halves[0] + halves[1]) == sorted(epoch0)
    dm = WeiboDataModule(train_path=str(write_csv(tmp_path / "t.csv", real_rows(300))),
                         tokenizer_name_or_path=tiny_gpt2)  # fmt: skip
    dm.setup("fit")
    for batch in dm.train_dataloader():  # each batch is padded to its own longest post
        assert batch["input_ids"].shape[1] == batch["attention_mask"].sum(dim=1).max()


def test_predict_batches_are_sorted_by_length_within_windows_and_know_their_positions(tiny_gpt2: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2)
    posts = [Post(r["review"]) for r in real_rows(300)]
    dataset = SortedPostBatches(posts, Tokenize(tokenizer, 128), tokenizer.pad_token_id, batch_size=16, window=100)
    batches = list(dataset)
    assert sorted(p for b in batches for p in b["positions"]) == list(range(300))
    assert [b["posts"] for b in batches][0] == [posts[p] for p in batches[0]["positions"]]
    assert sum(b["window_end"] for b in batches) == 3
    for start in range(0, 300, 100):  # within a window: shortest first, each batch padded to its longest
        window = [b for b in batches if start <= b["positions"][0] < start + 100]
        widths = [b["input_ids"].shape[1] for b in window]
        assert widths == sorted(widths) and widths[0] < widths[-1]
        assert all(b["input_ids"].shape[1] == b["attention_mask"].sum(dim=1).max() for b in window)
    ranks = [SortedPostBatches(posts, Tokenize(tokenizer, 128), 0, 16, 100, rank=r, world_size=2) for r in (0, 1)]
    shards = [list(rank) for rank in ranks]
    assert sorted(p for shard in shards for b in shard for p in b["positions"]) == list(range(300))
    assert {b["positions"][0] // 100 for b in shards[1]} == {1}  # rank 1 takes the second window
    # What each rank's progress bar counts to, before reading: 200 and 100 posts.
    assert [rank.posts_of_this_rank(300) for rank in ranks] == [sum(len(b["posts"]) for b in s) for s in shards] == [200, 100]


def test_predict_batches_leave_the_worker_process_without_tensors(tiny_gpt2: str, tmp_path: Path) -> None:
    """A tensor would leave the worker as a file descriptor, through a handshake that a stop (SIGTERM, Ctrl-C) can
    cut halfway, with a traceback from the worker's resource-sharer thread; numpy arrays go pickled with the batch."""
    path = write_csv(tmp_path / "posts.csv", [{"review": r["review"]} for r in real_rows(100)])
    dm = WeiboDataModule(predict_path=str(path), tokenizer_name_or_path=tiny_gpt2, predict_window=40)
    dm.setup("predict")
    loader = dm.predict_dataloader()
    assert loader.num_workers == 1
    expected = list(SortedPostBatches(PostReader(str(path)), dm.tokenize, dm.tokenizer.pad_token_id, 64, 40))
    received = list(loader)
    assert len(received) == len(expected) and dm.predict_posts_of_this_process() == 100
    for handed, own in zip(received, expected):
        assert not [key for key, value in handed.items() if isinstance(value, torch.Tensor)]
        batch = dm.on_before_batch_transfer(handed, 0)  # what the model gets
        assert set(batch) == set(own) and batch["posts"] == own["posts"]
        for key in ("input_ids", "attention_mask", "classified"):
            assert batch[key].dtype == torch.long and torch.equal(batch[key], own[key]), key


def test_labelled_batches_from_workers_cross_as_arrays_too(tiny_gpt2: str, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "train.csv", real_rows(200))
    loaders = {}
    for workers in (0, 1):
        dm = loaders[workers] = WeiboDataModule(train_path=str(path), tokenizer_name_or_path=tiny_gpt2, num_workers=workers)
        dm.setup("fit")
    for split in ("train_dataloader", "val_dataloader"):
        own, handed = (list(getattr(loaders[w], split)()) for w in (0, 1))
        assert len(own) == len(handed) >= 1
        for expected, batch in zip(own, handed):
            assert not isinstance(batch["input_ids"], torch.Tensor)
            batch = loaders[1].on_before_batch_transfer(batch, 0)
            assert set(batch) == set(expected)
            for key in ("input_ids", "attention_mask", "labels"):
                assert torch.equal(batch[key], expected[key]), key
            if "text_only" in expected:  # a batch within the batch
                assert torch.equal(batch["text_only"]["input_ids"], expected["text_only"]["input_ids"])


class FirstBatchOfEachEpoch(Callback):
    """Records the first training batch of every epoch of a real fit."""

    seen: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:  # noqa: ANN001
        if batch_idx == 0:
            FirstBatchOfEachEpoch.seen.append(batch["input_ids"].clone())


def test_a_real_fit_draws_new_batches_every_epoch(tiny_gpt2: str, train_csv: Path, tmp_path: Path) -> None:
    """Lightning fetches an epoch's first batch before it tells the sampler the epoch: the sampler must not repeat
    epoch 0's batches (it did, until the trainer's epoch was read directly)."""
    FirstBatchOfEachEpoch.seen = []
    main(cli_args("fit", tiny_gpt2, tmp_path, "--data.train_path", str(train_csv), "--trainer.max_epochs", "3",
                  "--trainer.callbacks+=test_data.FirstBatchOfEachEpoch"))  # fmt: skip
    first = FirstBatchOfEachEpoch.seen
    assert len(first) == 3
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[1], first[2])
