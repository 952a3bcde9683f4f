"""Two processes on CPU (Lightning's DDP over gloo), launched by `main.py` itself as a user would."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import cli_args, read_predictions, run_main

pytestmark = pytest.mark.e2e  # every test here starts processes of ours (see pyproject.toml)

DDP = ["--trainer.accelerator", "cpu", "--trainer.strategy", "ddp", "--trainer.devices", "2"]


def metrics(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "val_metrics.json").read_text("utf-8"))["metrics"]


def test_validation_metrics_with_two_processes_equal_one_process(trained: dict, tiny_gpt2: str, tmp_path: Path) -> None:
    """torchmetrics syncs the metric states (confusion counts), so F1 is computed once over all posts, not averaged
    per rank; each rank scores its own half and no post is repeated to even the halves out."""
    scores = {}
    for name, extra in (("one", []), ("two", DDP)):
        root = tmp_path / name
        result = run_main(cli_args("validate", tiny_gpt2, root, "--data.train_path", str(trained["train_csv"]),
                                   "--ckpt_path", str(trained["last"]), *extra))  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        scores[name] = metrics(root / "lightning_logs" / "version_0")
    for key in ("val_acc", "val_f1", "val_f1_text", "val_f1_mean"):
        assert scores["two"][key] == pytest.approx(scores["one"][key], abs=1e-6), key
    assert 0 < scores["one"]["val_f1"] < 1


def test_fit_with_two_processes_trains_and_only_rank_zero_writes(trained: dict, tiny_gpt2: str, tmp_path: Path) -> None:
    result = run_main(cli_args("fit", tiny_gpt2, tmp_path, "--data.train_path", str(trained["train_csv"]),
                               "--trainer.max_epochs", "1", *DDP))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in (tmp_path / "lightning_logs").iterdir()] == ["version_0"]
    checkpoints = sorted(p.name for p in (tmp_path / "lightning_logs" / "version_0" / "checkpoints").iterdir())
    # 270 posts in batches of 16 make 17 batches: each rank trains on 8 of them per step -> 8 optimizer steps.
    assert len(checkpoints) == 2 and checkpoints[0].startswith("best-epoch=0-step=8-") and checkpoints[1] == "last.ckpt"
    assert (tmp_path / "lightning_logs" / "version_0" / "adapter" / "adapter_model.safetensors").is_file()


def test_predict_with_two_processes_writes_one_file_in_input_order(trained: dict, tiny_gpt2: str, posts_csv: Path,
                                                                   tmp_path: Path) -> None:  # fmt: skip
    outputs = {}
    for name, extra in (("one", []), ("two", DDP)):
        outputs[name] = tmp_path / f"{name}.csv"
        # Small windows and batches, so each rank gets several windows to interleave.
        result = run_main(cli_args("predict", tiny_gpt2, tmp_path / name, "--ckpt_path", str(trained["best"]),
                                   "--data.predict_path", str(posts_csv), "--data.predict_window", "8",
                                   "--data.eval_batch_size", "4", "--predict_writer.output_path", str(outputs[name]),
                                   *extra))  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
    one, two = read_predictions(outputs["one"]), read_predictions(outputs["two"])
    assert [row["id"] for row in two] == [f"p{i}" for i in range(50)]  # every post once, in input order
    assert [row["label"] for row in two] == [row["label"] for row in one]
    assert max(abs(float(a["prob_positive"]) - float(b["prob_positive"])) for a, b in zip(one, two)) < 1e-5
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["one.csv", "two.csv"]  # no parts left
