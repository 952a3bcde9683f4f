"""The public Python API: the README's example as written, what importing it loads, the models it accepts, and
Hugging Face interop of an exported model."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, quickstart_args, read_predictions, run_main, run_together

pytestmark = pytest.mark.e2e  # every test here starts processes of ours (see pyproject.toml)


def readme_python_example() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def project_copy(quickstart: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder laid out as a user's clone after the quickstart: configs/, assets/, data/ and lightning_logs/."""
    folder = tmp_path_factory.mktemp("clone")
    for name in ("configs", "assets", "data"):
        (folder / name).symlink_to(REPO / name)
    (folder / "lightning_logs").symlink_to(quickstart["root"] / "lightning_logs")
    return folder


def test_the_readme_python_example_runs_as_written(project_copy: Path) -> None:
    result = subprocess.run([sys.executable, "-c", readme_python_example()], cwd=project_copy, capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    assert lines[0].split()[0] in ("positive", "negative") and lines[0].endswith("今天真开心[哈哈]")
    assert re.fullmatch(r"2 posts: .*0 empty; mean confidence 0\.\d{3}", lines[2])
    assert result.stderr == ""  # nothing but the answers: no library notes, no warnings


def test_importing_the_package_loads_no_training_library() -> None:
    code = ("import sys, weibo_sentiment\nfrom weibo_sentiment import SentimentAnalyzer, SentimentRow, summarize\n"
            "print(sorted(m for m in ('lightning', 'torchmetrics', 'matplotlib', 'pytorch_lightning') if m in sys.modules))\n"
            "print(sorted(weibo_sentiment.__all__))")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[]", "['ModelSource', 'SentimentAnalyzer', 'SentimentRow', 'summarize']"]


def test_every_kind_of_model_gives_the_rows_of_main_py_predict(quickstart: dict, tmp_path: Path) -> None:
    from weibo_sentiment import SentimentAnalyzer

    out = tmp_path / "predictions.csv"
    result = run_main(quickstart_args("predict", tmp_path, "--ckpt_path", quickstart["ckpt"], "--data.predict_path",
                                      str(quickstart["posts"]), "--predict_writer.output_path", str(out)))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    expected = read_predictions(out)
    texts = [row["review"] for row in expected]
    adapter = Path(quickstart["ckpt"]).parent.parent / "adapter"
    for model, options in [(quickstart["ckpt"], {"config": REPO / "configs" / "quickstart.yaml"}),
                           (quickstart["ckpt"], {}),  # the checkpoint's own base model and max_length
                           (str(adapter), {}),  # the adapter's own base model
                           (quickstart["ckpt"], {"config": REPO / "configs" / "quickstart.yaml", "runtime": "onnxruntime"})]:  # fmt: skip
        with SentimentAnalyzer.load(model, **options) as analyzer:
            rows = analyzer.predict(texts)
        assert [row.sentiment for row in rows] == [row["sentiment"] for row in expected], (model, options)
        for row, want in zip(rows, expected):
            if want["prob_positive"]:
                assert row.prob_positive == pytest.approx(float(want["prob_positive"]), abs=1e-5)


def test_a_wrong_model_is_one_clear_error(tmp_path: Path) -> None:
    from weibo_sentiment import SentimentAnalyzer
    from weibo_sentiment.errors import UserError

    with pytest.raises(UserError, match="no such checkpoint, adapter or exported model"):
        SentimentAnalyzer.load(tmp_path / "missing.ckpt")
    with pytest.raises(UserError, match="neither an exported model"):
        SentimentAnalyzer.load(tmp_path)


def test_a_hugging_face_export_labels_as_main_py_predict_in_a_transformers_pipeline(quickstart: dict,
                                                                                    tmp_path: Path) -> None:
    from transformers import pipeline

    posts = REPO / "data" / "sample" / "posts.csv"  # the 200 bundled posts
    out, exported = tmp_path / "predictions.csv", tmp_path / "hf"
    for args in (quickstart_args("predict", tmp_path, "--ckpt_path", quickstart["ckpt"], "--data.predict_path",
                                 str(posts), "--predict_writer.output_path", str(out)),
                 ["export", "--config", str(REPO / "configs" / "quickstart.yaml"), "--ckpt_path", quickstart["ckpt"],
                  "--output_dir", str(exported), "--format", "hf"]):  # fmt: skip
        result = run_main(args)
        assert result.returncode == 0, result.stderr[-3000:]
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= {p.name for p in exported.iterdir()}
    expected = read_predictions(out)
    classifier = pipeline("text-classification", model=str(exported))
    answers = classifier([row["review"] for row in expected], truncation=True, batch_size=1)
    assert [answer["label"] for answer in answers] == [row["sentiment"] for row in expected]
    for answer, row in zip(answers, expected):
        assert answer["score"] == pytest.approx(float(row["confidence"]), abs=1e-5)


def test_last_is_the_same_checkpoint_for_predict_the_api_the_console_and_the_export(quickstart: dict,
                                                                                   tmp_path: Path) -> None:
    """With ``trainer.default_root_dir`` set, ``last`` is the newest last.ckpt under it for every entry point, not
    the one under the current directory (which is newer still here, to catch a search in the wrong place)."""
    import shutil
    import time

    from test_stopping import free_port, output, start, stopped, wait_for, _health

    root, workdir = tmp_path / "runs", tmp_path / "work"
    for folder, version in ((root, 0), (root, 1), (workdir, 0)):
        target = folder / "lightning_logs" / f"version_{version}" / "checkpoints" / "last.ckpt"
        target.parent.mkdir(parents=True)
        shutil.copy(quickstart["ckpt"], target)
        time.sleep(0.05)  # modification times in this order: root's version_1 is its newest
    expected = str(root / "lightning_logs" / "version_1" / "checkpoints" / "last.ckpt")
    settings = tmp_path / "runs.yaml"
    settings.write_text(f"trainer:\n  default_root_dir: {root}\n", encoding="utf-8")
    common = ["--config", str(REPO / "configs" / "quickstart.yaml"), "--config", str(settings),
              "--model.model_name_or_path", str(REPO / "assets" / "tiny-gpt2-chinese"), "--ckpt_path", "last"]  # fmt: skip
    main_py = [sys.executable, str(REPO / "main.py")]
    runs = {
        "predict": main_py + ["predict", *common, "--data.predict_path", str(quickstart["posts"]),
                              "--predict_writer.output_path", str(tmp_path / "p.csv")],
        "export": main_py + ["export", *common, "--output_dir", str(tmp_path / "exported")],
        "console": [sys.executable, "-m", "weibo_sentiment.console", *common],
    }  # fmt: skip
    port = free_port()
    server = start([sys.executable, "-m", "weibo_sentiment.serve", *common, "--serve.port", str(port)],
                   tmp_path / "server-logs", cwd=workdir, env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    try:
        results = run_together(runs, input="好开心\n", cwd=workdir, env={**os.environ, "PYTHONPATH": str(REPO)})
        for name, result in results.items():
            assert result.returncode == 0, (name, result.stderr[-2000:])
            assert expected in result.stdout + result.stderr, name
        wait_for(lambda: _health(f"http://127.0.0.1:{port}", {}) == 200, server)
        assert expected in output(server)[0]
    finally:
        exit_code = stopped(server, signal.SIGTERM)[0]
    assert exit_code == 0
