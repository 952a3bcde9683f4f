"""Every inference mode end to end, through the real entry points, on the quickstart's own small GPT-2: main.py
predict in each runtime and precision, the export and predicting from it, and the API and console giving the rows
that main.py predict gives."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import QUICKSTART, REPO, quickstart_args, read_predictions, run_main, run_together

pytestmark = pytest.mark.e2e  # every test here starts processes of ours (see pyproject.toml)

MODES = {
    "torch fp32": [],
    "onnxruntime fp32": ["--model.runtime", "onnxruntime"],
    "onnxruntime int8": ["--model.quantize", "int8"],
    "torch bf16": ["--trainer.precision", "bf16-mixed"],
}


def predict_args(quickstart: dict, root: Path, out: Path, *extra: str) -> list[str]:
    """``main.py predict`` of the quickstart's posts into ``out``, run folder ``root``."""
    return quickstart_args("predict", root, "--data.predict_path", str(quickstart["posts"]),
                           "--predict_writer.output_path", str(out), *extra)  # fmt: skip


def predict(quickstart: dict, out: Path, *extra: str) -> list[dict[str, str]]:
    result = run_main(predict_args(quickstart, quickstart["root"], out, *extra))
    assert result.returncode == 0, result.stderr[-3000:]
    return read_predictions(out)


@pytest.fixture(scope="module")
def rows_by_mode(quickstart: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, str]]]:
    """``main.py predict`` of the same posts in every mode (the runs at once: independent, and mostly start-up)."""
    out = tmp_path_factory.mktemp("modes")
    commands = {mode: [sys.executable, "main.py", *predict_args(quickstart, out / str(number), out / f"{number}.csv",
                                                                "--ckpt_path", quickstart["ckpt"], *args)]
                for number, (mode, args) in enumerate(MODES.items())}  # fmt: skip
    rows = {}
    for number, (mode, result) in enumerate(run_together(commands).items()):
        assert result.returncode == 0, (mode, result.stderr[-3000:])
        rows[mode] = read_predictions(out / f"{number}.csv")
    return rows


def probabilities(rows: list[dict[str, str]]) -> list[float]:
    return [float(row["prob_positive"]) for row in rows if row["prob_positive"]]


def test_every_mode_writes_rows_of_the_same_shape_and_order(rows_by_mode: dict) -> None:
    default = rows_by_mode["torch fp32"]
    assert len(default) == 60 and default[7]["sentiment"] == "empty"
    for mode, rows in rows_by_mode.items():
        assert list(rows[0]) == list(default[0]), mode
        assert [(r["id"], r["review"], r["emoticons"]) for r in rows] == [(r["id"], r["review"], r["emoticons"])
                                                                          for r in default], mode  # fmt: skip
        assert rows[7]["sentiment"] == "empty" and rows[7]["label"] == "", mode


def test_onnxruntime_fp32_gives_torch_fp32_labels_and_probabilities_within_1e_4(rows_by_mode: dict) -> None:
    torch_rows, onnx_rows = rows_by_mode["torch fp32"], rows_by_mode["onnxruntime fp32"]
    assert [r["label"] for r in onnx_rows] == [r["label"] for r in torch_rows]
    assert max(abs(a - b) for a, b in zip(probabilities(onnx_rows), probabilities(torch_rows))) < 1e-4


@pytest.mark.parametrize("mode", ["onnxruntime int8", "torch bf16"])
def test_fast_modes_stay_close_to_fp32(rows_by_mode: dict, mode: str) -> None:
    fp32, fast = rows_by_mode["torch fp32"], rows_by_mode[mode]
    same = sum(a["label"] == b["label"] for a, b in zip(fp32, fast))
    assert same >= len(fp32) - 1  # the README's agreement figures come from thousands of posts, in benchmarks
    assert max(abs(a - b) for a, b in zip(probabilities(fast), probabilities(fp32))) < 0.1
    assert probabilities(fast) != probabilities(fp32)  # it did run in other arithmetic


@pytest.fixture(scope="module")
def exported(quickstart: dict) -> Path:
    out = quickstart["root"] / "exported"
    result = run_main(["export", "--config", QUICKSTART, "--ckpt_path", quickstart["ckpt"], "--output_dir", str(out),
                       "--quantize", "int8"])  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Exported" in result.stdout
    return out


def test_the_export_holds_onnx_models_and_the_tokenizer_and_no_base_model(exported: Path) -> None:
    files = {path.name for path in exported.iterdir()}
    assert {"model.onnx", "model.int8.onnx", "tokenizer.json", "weibo_sentiment_export.json"} <= files
    assert not files & {"model.safetensors", "adapter_model.safetensors", "config.json"}
    manifest = json.loads((exported / "weibo_sentiment_export.json").read_text(encoding="utf-8"))
    assert manifest["num_labels"] == 2 and manifest["files"] == {"fp32": "model.onnx", "int8": "model.int8.onnx"}


@pytest.mark.parametrize(("mode", "extra"), [("onnxruntime fp32", []), ("onnxruntime int8", ["--model.quantize", "int8"])])
def test_predicting_from_the_export_equals_predicting_from_the_checkpoint(
    quickstart: dict, exported: Path, rows_by_mode: dict, tmp_path: Path, mode: str, extra: list[str]
) -> None:
    rows = predict(quickstart, tmp_path / "out.csv", "--model.model_name_or_path", str(exported), *extra)
    from_checkpoint = rows_by_mode[mode]
    assert [r["label"] for r in rows] == [r["label"] for r in from_checkpoint]
    assert max(abs(a - b) for a, b in zip(probabilities(rows), probabilities(from_checkpoint))) < 1e-6


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--ckpt_path", "{tmp}/none.ckpt", "--output_dir", "{tmp}/out"], "{tmp}/none.ckpt: no such checkpoint file"),
        (["--ckpt_path", "{ckpt}", "--output_dir", "/proc/exported"], "/proc/exported: cannot write the export here"),
        (["--ckpt_path", "{ckpt}", "--output_dir", "{tmp}/file.txt"], "is a file; give --output_dir a directory"),
        (["--ckpt_path", "{ckpt}", "--output_dir", "{tmp}"], "holds other files; give --output_dir a new or empty"),
        (["--output_dir", "{tmp}/out"], "export what? pass --ckpt_path"),
    ],
)
def test_export_mistakes_are_one_line_and_leave_nothing(quickstart: dict, tmp_path: Path, args: list[str], says: str) -> None:
    (tmp_path / "file.txt").write_text("keep me", encoding="utf-8")
    fill = {"tmp": str(tmp_path), "ckpt": quickstart["ckpt"]}
    result = run_main(["export", "--config", QUICKSTART, *[a.format(**fill) for a in args]])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says.format(**fill) in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]  # nothing half-written


def test_the_console_and_the_api_give_the_rows_of_main_py_predict(quickstart: dict, exported: Path, tmp_path: Path) -> None:
    """From the exported directory: the console (fp32) and the API (int8) answer as main.py predict does in the same
    mode: the same engine. (int8 quantises each post's activations on their own: the API's one request of all the
    posts and predict's length-sorted batches give the same numbers.)"""
    from test_serve import call, free_port, post

    base = ["--config", QUICKSTART, "--model.model_name_or_path", str(exported)]
    texts = [row["review"] for row in read_predictions(quickstart["posts"]) if row["review"].strip()]
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "weibo_sentiment.serve", *base, "--quantize", "int8",
                               "--serve.port", str(port)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)  # fmt: skip
    try:
        command = lambda mode, *extra: [sys.executable, "main.py", *predict_args(  # noqa: E731
            quickstart, tmp_path / mode, tmp_path / f"{mode}.csv", *base[2:], *extra)]  # fmt: skip
        runs = run_together({"fp32": command("fp32"), "int8": command("int8", "--model.quantize", "int8"),
                             "console": [sys.executable, "-m", "weibo_sentiment.console", *base, "--runtime",
                                         "onnxruntime"]}, input="\n".join(texts) + "\n")  # fmt: skip
        for name, result in runs.items():
            assert result.returncode == 0, (name, result.stderr[-2000:])
        fp32, int8 = ([row for row in read_predictions(tmp_path / f"{mode}.csv") if row["prob_positive"]]
                      for mode in ("fp32", "int8"))  # fmt: skip
        assert [row["review"] for row in fp32] == texts
        said = [line.split() for line in runs["console"].stdout.splitlines()]
        assert [words[0] for words in said] == [row["sentiment"] for row in fp32]
        assert all(abs(float(words[2]) - float(row["confidence"])) <= 0.0051 for words, row in zip(said, fp32))

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and server.poll() is None:
            try:
                if call(f"http://127.0.0.1:{port}/health")[0] == 200:
                    break
            except OSError:
                time.sleep(0.3)
        status, answer = post(f"http://127.0.0.1:{port}/api/sentiment", {"texts": texts})
        assert status == 200, answer
        assert [r["label"] for r in answer["results"]] == [int(row["label"]) for row in int8]
        got = [r["prob_positive"] for r in answer["results"]]
        assert max(abs(a - float(row["prob_positive"])) for a, row in zip(got, int8)) < 1e-5
    finally:
        server.send_signal(signal.SIGTERM)  # SIGINT stays ignored under a background shell
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def test_an_export_labels_without_transformers_peft_or_lightning(exported: Path) -> None:
    """The exported directory's first answer needs onnxruntime, tokenizers and torch only (README Speed: under 3 s)."""
    script = ("import sys\nfrom weibo_sentiment import SentimentAnalyzer\n"
              f"rows = SentimentAnalyzer.load({str(exported)!r}, quantize='int8').predict(['排队两小时，太失望了'])\n"
              "print(rows[0].label, sorted(m for m in ('transformers', 'peft', 'lightning', 'torchmetrics') "
              "if m in sys.modules))\n")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split(maxsplit=1)[1].strip() == "[]"


def test_the_saved_tokenizer_read_without_transformers_gives_transformers_ids(exported: Path) -> None:
    from conftest import real_rows

    from weibo_sentiment.data.tokenizer import SerializedTokenizer, Tokenize, load_tokenizer

    texts = [row["review"] for row in real_rows(1000)] + ["哈" * 300, "Ｈｅｌｌｏ ÀÉ ８８ 😀 [哈哈] http://t.cn/x", ""]
    fast, reference = Tokenize(SerializedTokenizer(exported), 64), Tokenize(load_tokenizer(str(exported)), 64)
    ids, cut = fast.marking_truncated(texts)
    assert (ids, cut) == reference.marking_truncated(texts) and any(cut)  # the same ids, the same truncation
    assert fast.pad_token_id == reference.pad_token_id == 0


def test_an_earlier_exports_int8_is_refused_as_batch_dependent_with_one_line(exported: Path, tmp_path: Path) -> None:
    """Format 1's model.int8.onnx scaled each batch as a whole: it runs as int8-dynamic, and int8 says to re-export."""
    import shutil

    old = tmp_path / "old-export"
    shutil.copytree(exported, old)
    manifest = json.loads((old / "weibo_sentiment_export.json").read_text(encoding="utf-8"))
    (old / "weibo_sentiment_export.json").write_text(json.dumps({**manifest, "format": 1}), encoding="utf-8")
    posts = tmp_path / "posts.csv"
    posts.write_text("review\n排队两小时，太失望了\n", encoding="utf-8")
    args = ["predict", "--model.model_name_or_path", str(old), "--data.predict_path", str(posts),
            "--predict_writer.output_path", str(tmp_path / "out.csv"), "--trainer.default_root_dir", str(tmp_path)]
    refused = run_main([*args, "--model.quantize", "int8"])
    assert refused.returncode != 0 and "export it again for int8" in refused.stderr
    assert "Traceback" not in refused.stderr and not (tmp_path / "out.csv").exists()
    assert run_main([*args, "--model.quantize", "int8-dynamic"]).returncode == 0
