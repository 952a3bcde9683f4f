"""End to end through the real entry points: fit -> validate -> predict, resume, adapters, and user mistakes."""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from conftest import BATCH, EPOCHS, REPO, TRAIN_POSTS, cli_args, read_predictions, run_main
from test_model import gpt2_trainable_keys
from weibo_sentiment import SentimentAnalyzer
from weibo_sentiment.cli import SentimentCLI, main
from weibo_sentiment.inference.model_source import locate_checkpoint
from weibo_sentiment.emoticons import EmoticonTags

def test_fit_writes_adapter_only_checkpoints_the_adapter_and_logs(trained: dict) -> None:
    saved = torch.load(trained["best"], weights_only=True)["state_dict"]
    assert f"trainable params: {sum(t.numel() for t in saved.values()):,} " in trained["stdout"]  # printed by fit
    for path in (trained["best"], trained["last"]):
        checkpoint = torch.load(path, weights_only=True)
        assert set(checkpoint["state_dict"]) == gpt2_trainable_keys()
        assert checkpoint["global_step"] % math.ceil(TRAIN_POSTS / BATCH) == 0  # saved after an epoch's validation
        assert path.stat().st_size < 200_000  # the frozen backbone alone is 2.7 MB
    assert torch.load(trained["last"], weights_only=True)["global_step"] == EPOCHS * math.ceil(TRAIN_POSTS / BATCH)
    run_dir = trained["run_dir"]
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (run_dir / "adapter").iterdir()}
    assert (run_dir / "config.yaml").is_file()
    events = EventAccumulator(str(run_dir))
    events.Reload()
    expected = {"train_loss_step", "train_loss_epoch", "train_acc", "train_f1", "val_loss", "val_acc", "val_f1",
                "val_f1_text", "val_f1_mean", "lr-AdamW", "hp/val_f1", "hp/val_f1_text"}  # fmt: skip
    assert expected <= set(events.Tags()["scalars"])


def test_validate_on_the_best_checkpoint_reproduces_its_score(trained: dict, tiny_gpt2: str) -> None:
    cli = SentimentCLI(args=cli_args("validate", tiny_gpt2, trained["root"], "--data.train_path",
                                     str(trained["train_csv"]), "--ckpt_path", str(trained["best"])))  # fmt: skip
    checkpoint = torch.load(trained["best"], weights_only=True)
    (callback_state,) = [v for k, v in checkpoint["callbacks"].items() if k.startswith("AdapterCheckpoint")]
    assert callback_state["monitor"] == "val_f1_mean"
    assert cli.trainer.callback_metrics["val_f1_mean"].item() == pytest.approx(callback_state["best_model_score"].item())
    assert f"val_f1={cli.trainer.callback_metrics['val_f1'].item():.4f}" in trained["best"].name


def test_predict_writes_one_row_per_post_in_input_order(trained: dict, tiny_gpt2: str, posts_csv: Path,
                                                        tmp_path: Path) -> None:  # fmt: skip
    out = tmp_path / "predictions.csv"
    main(cli_args("predict", tiny_gpt2, trained["root"], "--ckpt_path", str(trained["best"]),
                  "--data.predict_path", str(posts_csv), "--predict_writer.output_path", str(out)))  # fmt: skip
    rows, inputs = read_predictions(out), read_predictions(posts_csv)
    assert [(r["id"], r["review"]) for r in rows] == [(r["id"], r["review"]) for r in inputs]
    assert list(rows[0]) == ["id", "review", "label", "sentiment", "confidence", "prob_positive", "emoticons", "truncated"]
    assert all(row["emoticons"] == "".join(EmoticonTags().find(row["review"])) for row in rows)
    assert sum(bool(row["emoticons"]) for row in rows) > 40  # nearly every Weibo post carries a tag
    for row in rows:
        p = float(row["prob_positive"])
        assert row["label"] == str(int(p > 0.5)) and row["sentiment"] == ("positive" if p > 0.5 else "negative")
        assert float(row["confidence"]) == pytest.approx(max(p, 1 - p), abs=2e-6)  # both rounded to 1e-6
    assert len({r["label"] for r in rows}) == 2  # a trained model, not a constant


def test_a_neutral_band_marks_posts_inside_it_and_the_run_leaves_a_report(trained: dict, tiny_gpt2: str,
                                                                          posts_csv: Path, tmp_path: Path) -> None:  # fmt: skip
    out = tmp_path / "predictions.csv"
    main(cli_args("predict", tiny_gpt2, tmp_path, "--ckpt_path", str(trained["best"]), "--model.neutral_band",
                  "[0.45,0.55]", "--data.predict_path", str(posts_csv), "--predict_writer.output_path", str(out)))  # fmt: skip
    rows = read_predictions(out)
    for row in rows:
        p = float(row["prob_positive"])
        assert row["label"] == str(int(p > 0.5))  # the model's label, whatever the band
        assert (row["sentiment"] == "neutral") == (0.45 <= p <= 0.55)
    report = json.loads((tmp_path / "lightning_logs" / "version_0" / "predict_report.json").read_text(encoding="utf-8"))
    counts = {name: sum(row["sentiment"] == name for row in rows) for name in ("positive", "neutral", "negative")}
    assert report["counts"] == counts and report["posts"] == len(rows)
    assert report["sentence"] == "情感分布比例（" + "、".join(
        f"{zh}{round(100 * counts[name] / len(rows), 1)}%" for name, zh in (("positive", "正面"), ("neutral", "中性"),
                                                                           ("negative", "负面"))) + "）"  # fmt: skip


def test_predict_from_the_exported_adapter_equals_predict_from_the_checkpoint(
    trained: dict, tiny_gpt2: str, posts_csv: Path, tmp_path: Path
) -> None:
    common = ("--data.predict_path", str(posts_csv))
    main(cli_args("predict", tiny_gpt2, trained["root"], *common, "--ckpt_path", str(trained["best"]),
                  "--predict_writer.output_path", str(tmp_path / "ckpt.csv")))  # fmt: skip
    main(cli_args("predict", tiny_gpt2, trained["root"], *common, "--model.adapter_path",
                  str(trained["run_dir"] / "adapter"), "--predict_writer.output_path", str(tmp_path / "a.jsonl")))  # fmt: skip
    from_ckpt = read_predictions(tmp_path / "ckpt.csv")
    from_adapter = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in from_adapter] == [r["id"] for r in from_ckpt]
    for a, c in zip(from_adapter, from_ckpt):
        assert a["prob_positive"] == pytest.approx(float(c["prob_positive"]), abs=2e-6)  # both rounded to 1e-6


def test_predict_accepts_an_adapter_saved_by_another_peft_script(tiny_gpt2: str, posts_csv: Path,
                                                                 tmp_path: Path) -> None:  # fmt: skip
    base = AutoModelForSequenceClassification.from_pretrained(tiny_gpt2, num_labels=2, pad_token_id=0)
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True)
    theirs = get_peft_model(base, config)
    torch.manual_seed(1)
    for parameter in theirs.parameters():
        if parameter.requires_grad:
            torch.nn.init.normal_(parameter, std=0.2)
    theirs.save_pretrained(str(tmp_path / "their_adapter"))
    out = tmp_path / "out.csv"
    main(cli_args("predict", tiny_gpt2, tmp_path, "--model.adapter_path", str(tmp_path / "their_adapter"),
                  "--data.predict_path", str(posts_csv), "--predict_writer.output_path", str(out)))  # fmt: skip
    texts = [r["review"] for r in read_predictions(posts_csv)]
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2)
    fresh = AutoModelForSequenceClassification.from_pretrained(tiny_gpt2, num_labels=2, pad_token_id=0)
    reference = PeftModel.from_pretrained(fresh, str(tmp_path / "their_adapter")).eval()
    with torch.no_grad():
        probs = [reference(**tokenizer(t, return_token_type_ids=False, return_tensors="pt", truncation=True,
                                       max_length=128)).logits.softmax(-1)[0, 1].item() for t in texts]  # fmt: skip
    ours = [float(r["prob_positive"]) for r in read_predictions(out)]
    assert ours == pytest.approx(probs, abs=1e-5)


def test_fit_resumes_from_last_in_the_same_run_folder(tiny_gpt2: str, train_csv: Path, tmp_path: Path) -> None:
    data = ("--data.train_path", str(train_csv))
    SentimentCLI(args=cli_args("fit", tiny_gpt2, tmp_path, *data, "--trainer.max_epochs", "1"))
    cli = SentimentCLI(args=cli_args("fit", tiny_gpt2, tmp_path, *data, "--ckpt_path", "last"))
    assert cli.trainer.global_step == EPOCHS * math.ceil(TRAIN_POSTS / BATCH)
    assert cli.trainer.current_epoch == EPOCHS
    checkpoints = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == cli.trainer.global_step
    assert len(list(checkpoints.glob("best-*.ckpt"))) == 1  # the restored top-k bookkeeping still applies
    assert not list((tmp_path / "lightning_logs").glob("version_1"))


def test_a_moved_base_model_is_taken_from_the_command_line_not_the_checkpoint(
    trained: dict, tiny_gpt2: str, posts_csv: Path, tmp_path: Path
) -> None:
    moved = tmp_path / "moved-model"
    shutil.copytree(tiny_gpt2, moved)
    cli = SentimentCLI(args=cli_args("predict", str(moved), tmp_path, "--ckpt_path", str(trained["best"]),
                                     "--data.predict_path", str(posts_csv), "--model.lora_r", "4",
                                     "--predict_writer.output_path", str(tmp_path / "p.csv")))  # fmt: skip
    assert cli.model.hparams.model_name_or_path == str(moved)
    assert cli.model.hparams.lora_r == 8  # shapes the saved tensors, so the checkpoint's value wins
    assert len(read_predictions(tmp_path / "p.csv")) == 50


@pytest.mark.e2e
def test_predict_reads_standard_input_through_main_py(trained: dict, tiny_gpt2: str, tmp_path: Path) -> None:
    out = tmp_path / "stdin.jsonl"
    result = run_main(cli_args("predict", tiny_gpt2, tmp_path, "--ckpt_path", str(trained["best"]),
                               "--data.predict_path", "-", "--predict_writer.output_path", str(out)),
                      input="好开心[哈哈]\n\n今天真倒霉[泪]\n")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["review"] for r in rows] == ["好开心[哈哈]", "今天真倒霉[泪]"]


def bad_csv(tmp_path: Path, content: bytes, name: str = "bad.csv") -> str:
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing train file", "nope.csv: no such file"),
        ("label 2", "label2.csv line 2: label '2' is not one of 0, 1"),
        ("missing column", "nolabel.csv: no 'label' column"),
        ("empty file", "empty.csv: the file is empty"),
        ("missing base model", "cannot load the tokenizer of"),
        ("missing adapter", "not an adapter directory"),
        ("corrupted checkpoint", "not a readable checkpoint"),
        ("checkpoint of another base", "is a layer of the base model"),
        ("missing checkpoint", "no such checkpoint file"),
    ],
)
def test_user_mistakes_give_one_line_and_exit_2_and_leave_nothing(
    case: str, message: str, trained: dict, tiny_gpt2: str, tiny_bert: str, tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:  # fmt: skip
    root = tmp_path / "root"
    data = ["--data.train_path", str(trained["train_csv"])]
    extra = {
        "missing train file": ["--data.train_path", str(tmp_path / "nope.csv")],
        "label 2": ["--data.train_path", bad_csv(tmp_path, b"label,review\n2,x\n", "label2.csv")],
        "missing column": ["--data.train_path", bad_csv(tmp_path, b"lab,review\n1,x\n", "nolabel.csv")],
        "empty file": ["--data.train_path", bad_csv(tmp_path, b"", "empty.csv")],
        "missing base model": [*data, "--model.model_name_or_path", str(tmp_path / "no-model")],
        "missing adapter": [*data, "--model.adapter_path", str(tmp_path)],
        "corrupted checkpoint": [*data, "--ckpt_path", bad_csv(tmp_path, trained["best"].read_bytes()[:5000], "cut.ckpt")],
        "checkpoint of another base": [*data, "--ckpt_path", str(trained["best"]), "--model.model_name_or_path",
                                       tiny_bert, "--model.target_modules", "[query,value]"],  # fmt: skip
        "missing checkpoint": [*data, "--ckpt_path", str(tmp_path / "none.ckpt")],
    }[case]
    with pytest.raises(SystemExit) as exit_info:
        main(cli_args("fit", tiny_gpt2, root, *extra))
    assert exit_info.value.code == 2
    error_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and message in error_lines[0]
    assert not (root / "lightning_logs").exists() or not any((root / "lightning_logs").rglob("*.ckpt"))


def test_a_failing_predict_leaves_no_output_file(trained: dict, tiny_gpt2: str, tmp_path: Path) -> None:
    posts = tmp_path / "posts.jsonl"
    posts.write_text("".join(json.dumps({"review": f"第{i}条"}) + "\n" for i in range(100)) + "{broken\n", "utf-8")
    out = tmp_path / "out" / "predictions.csv"
    with pytest.raises(SystemExit):
        main(cli_args("predict", tiny_gpt2, tmp_path, "--ckpt_path", str(trained["best"]), "--data.eval_batch_size",
                      "16", "--data.predict_window", "16", "--data.predict_path", str(posts),
                      "--predict_writer.output_path", str(out)))  # fmt: skip
    assert list(out.parent.iterdir()) == []  # the rows of the first 100 posts were written, then removed


@pytest.mark.parametrize(("config", "dropout"), [("gpt2_chinese_lora.yaml", "0.5"), ("quickstart.yaml", "0.8")])
def test_shipped_configs_parse_and_hold_the_reference_recipe(config: str, dropout: str,
                                                             capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(REPO / "configs" / config), "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    for line in ("lora_r: 8", "lora_alpha: 32", "lora_dropout: 0.1", "learning_rate: 0.0005", "warmup_ratio: 0.1",
                 "gradient_clip_val: 1.0", "batch_size: 16", "max_epochs: 3", "monitor: val_f1_mean", "- c_attn",
                 f"emoticon_dropout: {dropout}"):
        assert line in printed, line


def test_validate_and_test_on_their_own_files(trained: dict, tiny_gpt2: str, posts_csv: Path, tmp_path: Path) -> None:
    labelled = tmp_path / "labelled.csv"
    shutil.copy(trained["train_csv"], labelled)
    common = ("--ckpt_path", str(trained["best"]))
    validate = SentimentCLI(args=cli_args("validate", tiny_gpt2, tmp_path, *common, "--data.val_path", str(labelled)))
    test = SentimentCLI(args=cli_args("test", tiny_gpt2, tmp_path, *common, "--data.test_path", str(labelled)))
    for name in ("f1", "acc", "loss"):  # the same posts and weights give the same figures in either stage
        assert test.trainer.callback_metrics[f"test_{name}"].item() == pytest.approx(
            validate.trainer.callback_metrics[f"val_{name}"].item(), abs=1e-6)


def test_evaluations_draw_pictures_and_validate_writes_them_with_a_json_report(
    trained: dict, tiny_gpt2: str, tmp_path: Path
) -> None:
    events = EventAccumulator(str(trained["run_dir"]))
    events.Reload()
    assert {"val/confusion_matrix", "val/pr_curve"} <= set(events.Tags()["images"])
    assert "val/misclassified/text_summary" in events.Tags()["tensors"]
    cli = SentimentCLI(args=cli_args("validate", tiny_gpt2, tmp_path, "--data.train_path", str(trained["train_csv"]),
                                     "--ckpt_path", str(trained["best"])))  # fmt: skip
    run_dir = Path(cli.trainer.log_dir)
    assert (run_dir / "val_confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    assert (run_dir / "val_pr_curve.png").read_bytes()[:4] == b"\x89PNG"
    report = json.loads((run_dir / "val_metrics.json").read_text(encoding="utf-8"))
    assert report["posts"] == 30 and report["metrics"]["val_f1"] == pytest.approx(
        cli.trainer.callback_metrics["val_f1"].item())
    wrong = report["misclassified"]
    assert len(wrong) == round((1 - report["metrics"]["val_acc"]) * 30) or len(wrong) == 20
    assert all((r["prob_positive"] > 0.5) != (r["label"] == 1) for r in wrong)


def test_posts_without_text_are_marked_in_place_not_classified(trained: dict, tiny_gpt2: str, tmp_path: Path) -> None:
    texts = ["好开心[哈哈]", "", "   ", "😀😀", "太难过了[泪]"]
    posts = tmp_path / "posts.jsonl"
    posts.write_text("".join(json.dumps({"id": i, "review": t}, ensure_ascii=False) + "\n" for i, t in enumerate(texts)),
                     encoding="utf-8")  # fmt: skip
    out = tmp_path / "out.jsonl"
    main(cli_args("predict", tiny_gpt2, tmp_path, "--ckpt_path", str(trained["best"]), "--data.predict_path",
                  str(posts), "--predict_writer.output_path", str(out)))  # fmt: skip
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [(r["id"], r["review"]) for r in rows] == [(str(i), t) for i, t in enumerate(texts)]
    assert [r["sentiment"] for r in rows][1:3] == ["empty", "empty"]
    assert rows[1]["label"] is None and rows[1]["prob_positive"] is None
    assert all(r["sentiment"] in ("positive", "negative") for r in (rows[0], rows[3], rows[4]))  # emoji: classified


def test_prediction_columns_are_fixed_whatever_the_posts(trained: dict, tiny_gpt2: str, tmp_path: Path) -> None:
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('{"review": "好开心[哈哈]"}\n{"review": "难过[泪]", "id": 7}\n', encoding="utf-8")
    header_only = tmp_path / "header_only.csv"
    header_only.write_text("id,review\n", encoding="utf-8")
    for source, out in ((mixed, tmp_path / "mixed.csv"), (header_only, tmp_path / "none.csv")):
        main(cli_args("predict", tiny_gpt2, tmp_path, "--ckpt_path", str(trained["best"]), "--data.predict_path",
                      str(source), "--predict_writer.output_path", str(out)))  # fmt: skip
    assert [(r["id"], r["review"]) for r in read_predictions(tmp_path / "mixed.csv")] == [("", "好开心[哈哈]"),
                                                                                        ("7", "难过[泪]")]  # fmt: skip
    columns = "id,review,label,sentiment,confidence,prob_positive,emoticons,truncated"
    assert (tmp_path / "none.csv").read_text(encoding="utf-8").splitlines() == [columns]


def test_an_output_path_that_cannot_be_written_is_one_line(trained: dict, tiny_gpt2: str, posts_csv: Path,
                                                           tmp_path: Path, capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SystemExit):
        main(cli_args("predict", tiny_gpt2, tmp_path, "--ckpt_path", str(trained["best"]), "--data.predict_path",
                      str(posts_csv), "--predict_writer.output_path", str(tmp_path / "afile" / "out.csv")))  # fmt: skip
    assert "cannot write the predictions here" in capsys.readouterr().err


def test_last_finds_the_newest_last_checkpoint_including_versioned_names(tmp_path: Path) -> None:
    (tmp_path / "last.ckpt").write_bytes(b"old")
    time.sleep(0.01)
    (tmp_path / "last-v1.ckpt").write_bytes(b"new")
    assert locate_checkpoint("last", checkpoint_dir=str(tmp_path)).name == "last-v1.ckpt"


NOT_FOR_THIS_RUN = ("💡 Tip", "litlogger", "dirpath has changed", "best_model_score", "FutureWarning")
"""Lines a run must not print: Lightning's advertisement, its warning about training state that only fit uses, and
deprecation notes of the libraries underneath."""


@pytest.mark.e2e
def test_fit_and_predict_print_only_what_a_user_needs(trained: dict, tiny_gpt2: str, posts_csv: Path,
                                                      tmp_path: Path) -> None:  # fmt: skip
    # predict from a checkpoint of another run folder: that is where Lightning warned that the dirpath changed
    result = run_main(cli_args("predict", tiny_gpt2, tmp_path, "--ckpt_path", str(trained["last"]),
                               "--data.predict_path", str(posts_csv),
                               "--predict_writer.output_path", str(tmp_path / "p.csv")))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for printed in (trained["stdout"], result.stdout + result.stderr):
        assert not [line for line in printed.splitlines() if any(noise in line for noise in NOT_FOR_THIS_RUN)]


def test_a_config_yaml_of_the_users_in_the_working_directory_is_never_touched(
        trained: dict, tiny_gpt2: str, posts_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)  # each command runs in process, as main.py runs it, from the user's folder
    mine = workdir / "config.yaml"
    mine.write_text("# my own settings\nanswer: 42\n", "utf-8")
    base = ["--config", str(REPO / "configs" / "quickstart.yaml"), "--model.model_name_or_path", tiny_gpt2,
            "--trainer.enable_progress_bar", "false"]  # fmt: skip
    small = ["--data.train_path", str(trained["train_csv"]), "--trainer.limit_train_batches", "2",
             "--trainer.limit_val_batches", "2"]  # fmt: skip
    commands = {
        "fit": ["fit", *base, *small, "--trainer.max_epochs", "1", "--trainer.logger", "false"],
        "validate": ["validate", *base, *small, "--ckpt_path", str(trained["best"]), "--trainer.logger", "false"],
        "predict": ["predict", *base, "--ckpt_path", str(trained["best"]), "--trainer.logger", "false",
                    "--data.predict_path", str(posts_csv), "--predict_writer.output_path", "out.csv"],
        "predict with a run folder": ["predict", *base, "--ckpt_path", str(trained["best"]),
                                      "--data.predict_path", str(posts_csv), "--predict_writer.output_path", "o.csv"],
        "export": ["export", *base, "--ckpt_path", str(trained["best"]), "--output_dir", "exported"],
    }  # fmt: skip
    for name, args in commands.items():
        main(args)
        assert mine.read_text("utf-8") == "# my own settings\nanswer: 42\n", name
    # with a logger the run owns its folder, and its config is saved there
    assert (workdir / "lightning_logs" / "version_0" / "config.yaml").is_file()


def test_full_fine_tuning_trains_and_checkpoints_the_backbone_and_predicts_from_the_checkpoint(
    tiny_gpt2: str, train_csv: Path, posts_csv: Path, tmp_path: Path
) -> None:
    full = ("--model.backbone_learning_rate", "1e-3", "--model.learning_rate", "5e-3")
    fit = SentimentCLI(args=cli_args("fit", tiny_gpt2, tmp_path, "--data.train_path", str(train_csv),
                                     "--trainer.max_epochs", "1", *full))  # fmt: skip
    run_dir = tmp_path / "lightning_logs" / "version_0"
    (best,) = run_dir.glob("checkpoints/best-*.ckpt")
    checkpoint = torch.load(best, weights_only=True)
    saved = checkpoint["state_dict"]
    base = dict(AutoModelForSequenceClassification.from_pretrained(tiny_gpt2, num_labels=2).named_parameters())
    backbone = set(saved) - gpt2_trainable_keys()
    # every backbone weight is saved (peft's idle copy of the head is not), and it has moved from the base's
    assert gpt2_trainable_keys() < set(saved) and len(backbone) == len(base) - 1
    assert not any("original_module" in key for key in saved)
    key = "model.base_model.model.transformer.h.0.attn.c_attn.base_layer.weight"
    assert not torch.equal(saved[key], base["transformer.h.0.attn.c_attn.weight"])
    # two learning rates: LoRA and the head at learning_rate, the backbone at its own
    groups = checkpoint["optimizer_states"][0]["param_groups"]
    assert [group["initial_lr"] for group in groups] == [5e-3, 1e-3]
    assert [len(group["params"]) for group in groups] == [len(gpt2_trainable_keys()), len(backbone)]
    assert not (run_dir / "adapter").exists()  # an adapter would lose the trained backbone

    # predict from the checkpoint without the flag: the checkpoint says what it holds
    out = tmp_path / "predictions.csv"
    cli = SentimentCLI(args=cli_args("predict", tiny_gpt2, tmp_path, "--ckpt_path", str(best),
                                     "--data.predict_path", str(posts_csv), "--predict_writer.output_path", str(out)))
    assert cli.model.hparams.backbone_learning_rate == 1e-3
    assert len(read_predictions(out)) == 50
    module = fit.model.eval()
    batch = {"input_ids": torch.tensor([[101, 2769, 1599, 3614, 102]]), "attention_mask": torch.ones(1, 5).long()}
    cli.model.eval()
    with torch.no_grad():
        fitted = module(**batch).softmax(-1)
        loaded = cli.model(**batch).softmax(-1)
    assert torch.allclose(fitted, loaded, atol=1e-6)  # the whole model came back, not LoRA on the pretrained base
    # the Python API, through torch and through the ONNX export (LoRA merged into the fine-tuned backbone)
    texts, written = [row["review"] for row in read_predictions(posts_csv)], read_predictions(out)
    for runtime in ("torch", "onnxruntime"):
        with SentimentAnalyzer.load(best, runtime=runtime) as analyzer:
            rows = analyzer.predict(texts)
        assert [row.prob_positive for row in rows] == pytest.approx([float(r["prob_positive"]) for r in written],
                                                                    abs=1e-5)  # fmt: skip


def test_a_lora_checkpoint_written_before_full_fine_tuning_loads_under_a_config_that_asks_for_it(
    trained: dict, tiny_gpt2: str, posts_csv: Path, tmp_path: Path
) -> None:
    checkpoint = torch.load(trained["best"], weights_only=True)
    del checkpoint["hyper_parameters"]["backbone_learning_rate"]  # as written before the setting existed
    older = tmp_path / "older.ckpt"
    torch.save(checkpoint, older)
    out = tmp_path / "p.csv"
    cli = SentimentCLI(args=cli_args("predict", tiny_gpt2, tmp_path, "--ckpt_path", str(older),
                                     "--model.backbone_learning_rate", "1e-4", "--data.predict_path", str(posts_csv),
                                     "--predict_writer.output_path", str(out)))  # fmt: skip
    assert cli.model.hparams.backbone_learning_rate is None  # LoRA and the head alone, as the checkpoint holds
    assert len(read_predictions(out)) == 50
