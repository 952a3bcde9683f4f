"""Emoticon tags: the pattern on real posts, training-only emoticon dropout, and its determinism."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import assert_same_weights, real_rows, write_csv
from weibo_sentiment.data.batching import LengthGroupedBatches
from weibo_sentiment.training.datamodule import WeiboDataModule
from weibo_sentiment.emoticons import EmoticonTags
from weibo_sentiment.errors import UserError

TAGS = EmoticonTags()


def test_tags_of_real_posts_are_found_and_removed() -> None:
    post = "人生啊?不知哪一面就是最后一面了[悲伤]珍惜是福。"
    assert TAGS.find(post) == ["[悲伤]"]
    assert TAGS.strip(post) == "人生啊?不知哪一面就是最后一面了珍惜是福。"
    repost = "这这这[哈哈] //@璨璨:呀，一般都是人去世了再发这个呀[偷笑]"
    assert TAGS.find(repost) == ["[哈哈]", "[偷笑]"]
    assert TAGS.strip("[泪][泪][泪] [转]").strip() == ""  # nothing but tags
    assert TAGS.find("[good]加油[bm可爱]") == ["[good]", "[bm可爱]"]
    rows = real_rows(500)
    assert sum(bool(TAGS.find(r["review"])) for r in rows) > 450  # the corpus was labelled from these tags
    assert not any(TAGS.find(TAGS.strip(r["review"])) for r in rows)  # stripping leaves none behind


def test_ordinary_brackets_are_kept_as_documented() -> None:
    assert TAGS.find("[转]假如生活欺骗了你") == ["[转]"]  # Weibo's repost mark is a tag
    for text in ("数组 a[1] 和 [22]", "[这是一段超过十个字符的方括号内容啊]", "只有左括号[哈哈", "嵌套[[哈]"):
        assert TAGS.strip(text).count("[") == text.count("[") - (1 if text == "嵌套[[哈]" else 0), text


def test_the_pattern_is_configurable_and_checked(tiny_gpt2: str) -> None:
    assert EmoticonTags(r"\[哈哈\]").strip("[哈哈][泪]") == "[泪]"
    with pytest.raises(UserError, match="not a valid regular expression"):
        WeiboDataModule(emoticon_pattern="[", tokenizer_name_or_path=tiny_gpt2)
    with pytest.raises(UserError, match="emoticon_dropout is a probability"):
        WeiboDataModule(emoticon_dropout=1.5, tokenizer_name_or_path=tiny_gpt2)


def draws(dropout: float, seed: int = 42, epoch: int = 0) -> list[tuple[int, bool]]:
    strippable = [i % 4 != 0 for i in range(1000)]  # every fourth post has no tag to remove
    sampler = LengthGroupedBatches([20] * 1000, [10 if s else None for s in strippable], 16, dropout, seed)
    sampler.set_epoch(epoch)
    return [pair for batch in sampler for pair in batch]


def test_dropout_draws_are_seeded_per_epoch_and_only_touch_posts_with_tags() -> None:
    epoch0 = draws(0.5)
    assert sorted(i for i, _ in epoch0) == list(range(1000)) and [i for i, _ in epoch0] != list(range(1000))
    assert epoch0 == draws(0.5)  # same run, same draws
    assert draws(0.5, epoch=1) != epoch0  # drawn anew each epoch
    assert draws(0.5, seed=7) != epoch0
    stripped = [i for i, strip in epoch0 if strip]
    assert all(i % 4 != 0 for i in stripped) and 320 < len(stripped) < 430  # ~half of the 750 with tags
    assert not any(strip for _, strip in draws(0.0))
    assert sum(strip for _, strip in draws(1.0)) == 750


def test_dropout_alters_training_batches_only(tiny_gpt2: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PL_GLOBAL_SEED", "42")
    dm = WeiboDataModule(train_path=str(write_csv(tmp_path / "t.csv", real_rows(200))), emoticon_dropout=1.0,
                         tokenizer_name_or_path=tiny_gpt2)  # fmt: skip
    dm.setup("fit")
    decode = dm.tokenizer.decode
    train_texts = [decode(ids, skip_special_tokens=True) for batch in dm.train_dataloader() for ids in batch["input_ids"]]
    val_batches = list(dm.val_dataloader())
    val_texts = [decode(ids, skip_special_tokens=True) for b in val_batches for ids in b["input_ids"]]
    kept = sum(not TAGS.strip(p.text).strip() or "[" in TAGS.strip(p.text) for p in dm.datasets["train"].posts)
    assert sum("[" in text for text in train_texts) == kept  # tags gone, bar tag-only posts and stray brackets
    assert sum("[" in text for text in val_texts) > 0.9 * len(val_texts)  # validation posts stay as written
    text_only = [decode(ids, skip_special_tokens=True) for b in val_batches for ids in b["text_only"]["input_ids"]]
    assert text_only and not any("[" in text for text in text_only)


# ---- two-view training (data.emoticon_views 2) ------------------------------------------------------------------
def test_two_views_of_each_post_with_tags_sit_in_the_same_batch_and_are_aligned(tiny_gpt2: str, tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("PL_GLOBAL_SEED", "42")
    posts = real_rows(200)
    posts[0]["review"] = "[哈哈][哈哈]"  # nothing but tags: one view
    posts[1]["review"] = "没有表情的一句话"  # nothing to strip: one view
    dm = WeiboDataModule(train_path=str(write_csv(tmp_path / "t.csv", posts)), emoticon_views=2, val_fraction=0.05,
                         tokenizer_name_or_path=tiny_gpt2)  # fmt: skip
    dm.setup("fit")
    train = dm.datasets["train"]
    decode = dm.tokenizer.decode
    for batch in dm.train_dataloader():
        assert len(batch["labels"]) <= 2 * dm.batch_size
        raw_rows, stripped_rows = batch["view_pairs"].T.tolist()
        for raw, stripped in zip(raw_rows, stripped_rows):
            raw_text = decode(batch["input_ids"][raw], skip_special_tokens=True).replace(" ", "")
            stripped_text = decode(batch["input_ids"][stripped], skip_special_tokens=True).replace(" ", "")
            if batch["attention_mask"][raw].sum() < dm.max_length:  # not cut to the window: compare the whole post
                assert "[" in raw_text and TAGS.strip(raw_text) == stripped_text  # one post, with and without tags
            assert batch["labels"][raw] == batch["labels"][stripped]
    counts: dict[int, int] = {}
    for batch in dm.train_dataloader().batch_sampler.batches(0):
        for index, _ in batch:
            counts[index] = counts.get(index, 0) + 1
    strippable = {i for i, ids in enumerate(train.stripped_lengths()) if ids is not None}
    assert {i for i, n in counts.items() if n == 2} == strippable  # posts with tags to remove: twice
    assert set(counts) == set(range(len(train)))  # every post at least once, each epoch


def test_two_view_loss_is_both_views_cross_entropy_plus_lambda_times_symmetric_kl() -> None:
    import torch

    from weibo_sentiment.training.model import symmetric_kl

    logits = torch.tensor([[2.0, -1.0], [0.5, 0.2], [1.0, 1.0], [-3.0, 3.0]])
    pairs = torch.tensor([[0, 1], [2, 3]])
    p, q = logits.softmax(-1), logits.log_softmax(-1)
    expected = sum(0.5 * ((p[a] * (q[a] - q[b])).sum() + (p[b] * (q[b] - q[a])).sum()) for a, b in pairs.tolist()) / 2
    assert torch.allclose(symmetric_kl(logits, pairs), expected)
    assert symmetric_kl(torch.tensor([[1.0, 2.0], [1.0, 2.0]]), torch.tensor([[0, 1]])) == 0  # the views agree
    assert symmetric_kl(logits, torch.tensor([[0, 3]])) > symmetric_kl(logits, torch.tensor([[0, 1]])) > 0


@pytest.mark.e2e
def test_two_view_training_is_deterministic_and_resumes_mid_epoch_to_the_same_weights(
    tiny_gpt2: str, train_csv: Path, tmp_path: Path
) -> None:
    import signal
    import subprocess
    import sys

    import torch

    from conftest import REPO, cli_args, run_main

    def args(root: Path, *extra: str) -> list[str]:
        return cli_args("fit", tiny_gpt2, root, "--data.train_path", str(train_csv), "--data.emoticon_dropout", "0",
                        "--data.emoticon_views", "2", "--model.view_consistency", "0.5",
                        "--checkpoint.last_every_n_train_steps", "5", *extra)  # fmt: skip

    last = lambda root: root / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"  # noqa: E731
    result = run_main(args(tmp_path / "a"))
    assert result.returncode == 0, result.stderr[-3000:]
    a = torch.load(last(tmp_path / "a"), weights_only=True)
    # The same seed, killed mid-epoch and resumed, must end on the very same weights: the two views of each post,
    # their batches and dropout are drawn the same in both runs, and resuming restores where they stood.
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "main.py", *args(killed)], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    while not last(killed).exists():
        assert process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 0 < torch.load(last(killed), weights_only=True)["global_step"] < a["global_step"]
    assert run_main([*args(killed), "--ckpt_path", "last"]).returncode == 0
    resumed = torch.load(last(killed), weights_only=True)
    assert_same_weights(resumed["state_dict"], a["state_dict"])


def test_two_views_and_emoticon_dropout_do_not_mix(tiny_gpt2: str) -> None:
    with pytest.raises(UserError, match="emoticon_views 2 trains on every post with and without its tags"):
        WeiboDataModule(emoticon_views=2, emoticon_dropout=0.5, tokenizer_name_or_path=tiny_gpt2)
