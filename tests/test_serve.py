"""The HTTP API on a real server (a subprocess on a free loopback port) and the console on piped input."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import QUICKSTART, REPO, cli_args, read_predictions
from weibo_sentiment.cli import main


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def call(url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict | str]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, payload = response.status, response.read()
    except urllib.error.HTTPError as err:
        status, payload = err.code, err.read()
    try:
        return status, json.loads(payload)
    except ValueError:
        return status, payload.decode()


def post(url: str, payload: object) -> tuple[int, dict | str]:
    return call(url, json.dumps(payload, ensure_ascii=False).encode())


@pytest.fixture(scope="module")
def server(trained: dict, tiny_gpt2: str, tmp_path_factory: pytest.TempPathFactory):
    from test_stopping import start_server, stopped, tiny_model  # here: test_stopping imports this module's helpers

    process, base = start_server(tiny_model(trained, tiny_gpt2), tmp_path_factory.mktemp("server"),
                                 "--serve.max_texts", "64", "--serve.max_chars", "500")  # fmt: skip
    yield {"url": f"{base}/api/sentiment", "base": base, "process": process}
    assert stopped(process, signal.SIGTERM)[0] == 0


def test_answers_equal_main_py_predict_under_50_concurrent_requests(
    server: dict, trained: dict, tiny_gpt2: str, posts_csv: Path, tmp_path: Path
) -> None:
    out = tmp_path / "predictions.csv"
    main(cli_args("predict", tiny_gpt2, trained["root"], "--ckpt_path", str(trained["best"]),
                  "--data.predict_path", str(posts_csv), "--predict_writer.output_path", str(out)))  # fmt: skip
    expected = read_predictions(out)
    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(lambda row: post(server["url"], {"text": row["review"]}), expected))
    for (status, answer), row in zip(answers, expected):
        assert status == 200, answer
        assert set(answer) == {"label", "sentiment", "confidence", "prob_positive", "emoticons", "truncated"}
        assert str(answer["label"]) == row["label"] and answer["sentiment"] == row["sentiment"]
        assert answer["prob_positive"] == pytest.approx(float(row["prob_positive"]), abs=1e-5)  # LoRA merged here
        assert answer["emoticons"] == row["emoticons"]


def test_a_list_of_texts_is_answered_in_order_with_a_summary(server: dict, posts_csv: Path) -> None:
    texts = [row["review"] for row in read_predictions(posts_csv)][:20]
    status, answer = post(server["url"], {"texts": texts})
    assert status == 200
    singles = [post(server["url"], {"text": text})[1] for text in texts]
    assert answer["results"] == singles
    positive = sum(result["label"] == 1 for result in singles)
    mean_confidence = round(sum(result["confidence"] for result in singles) / 20, 6)
    assert answer["summary"] == {"count": 20, "negative": 20 - positive, "positive": positive, "empty": 0,
                                 "negative_share": (20 - positive) / 20, "positive_share": positive / 20,
                                 "mean_confidence": pytest.approx(mean_confidence, abs=2e-6)}  # fmt: skip


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b"not json", 400, "not JSON"),
        (b"{}", 422, '"text"'),
        (b'{"text": 5}', 422, "must be a string"),
        (b'{"texts": "one"}', 422, "must be a string"),
        (b'{"text": "   "}', 422, "text is empty"),
        (b'{"texts": []}', 422, "is empty"),
        (json.dumps({"texts": ["好"] * 65}).encode(), 413, "at most 64"),
        (json.dumps({"text": "好" * 501}).encode(), 413, "at most 500"),
        (json.dumps({"texts": ["好", ""]}).encode(), 422, "texts[1] is empty"),
    ],
)
def test_bad_requests_get_a_json_error_and_the_server_keeps_serving(
    server: dict, body: bytes, status: int, says: str
) -> None:
    got_status, answer = call(server["url"], body)
    assert got_status == status and says in answer["detail"]
    assert post(server["url"], {"text": "好开心"})[0] == 200
    assert call(f"{server['base']}/health")[0] == 200


def test_a_text_longer_than_the_model_window_is_marked_truncated(server: dict) -> None:
    assert post(server["url"], {"text": "好" * 400})[1]["truncated"] is True
    assert post(server["url"], {"text": "好开心"})[1]["truncated"] is False
    assert post(server["url"], {"text": "好" * 126})[1]["truncated"] is False  # [CLS] + 126 + [SEP]: exactly fits
    assert post(server["url"], {"text": "好" * 127})[1]["truncated"] is True


@pytest.mark.e2e
def test_the_console_labels_piped_posts_until_q(trained: dict, tiny_gpt2: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "weibo_sentiment.console", "--config", QUICKSTART, "--model.model_name_or_path", tiny_gpt2,
         "--ckpt_path", str(trained["best"])],
        input="好开心[哈哈]\n\n   \n今天真倒霉[泪]\nq\n没读到\n", cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 4
    assert lines[0].split()[0] in ("positive", "negative") and "confidence" in lines[0] and "[哈哈]" in lines[0]
    assert lines[1] == lines[2] == "empty post: type some text, or q to quit"
    assert "[泪]" in lines[3]


@pytest.mark.e2e
def test_the_console_and_server_refuse_a_missing_checkpoint_in_one_line(tiny_gpt2: str, tmp_path: Path) -> None:
    for module in ("weibo_sentiment.console", "weibo_sentiment.serve"):
        result = subprocess.run(
            [sys.executable, "-m", module, "--config", QUICKSTART, "--model.model_name_or_path", tiny_gpt2,
             "--ckpt_path", str(tmp_path / "none.ckpt")],
            cwd=REPO, capture_output=True, text=True, input="",
        )  # fmt: skip
        assert result.returncode == 2
        assert result.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'none.ckpt'}: no such checkpoint file"


@pytest.mark.e2e
def test_an_unknown_serve_setting_is_one_line(tiny_gpt2: str, trained: dict, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text((REPO / "configs" / "quickstart.yaml").read_text(encoding="utf-8") + "  prot: 8001\n", "utf-8")
    result = subprocess.run([sys.executable, "-m", "weibo_sentiment.serve", "--config", str(config),
                             "--model.model_name_or_path", tiny_gpt2, "--ckpt_path", str(trained["best"])],
                            cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "prot" in result.stderr
