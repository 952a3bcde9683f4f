"""Bad input, row by row: what `main.py fit` and `main.py predict` do with each kind of broken or odd input.

An *error* row expects: exit status 2; stderr exactly one line, ``error: <the file>: <the problem>[; what to do]``,
no traceback; nothing half-written (``predict``: no output file and no ``.part`` file beside it; both: no
``lightning_logs/version_*`` folder, as the README's "Mistakes get one line" promises). An *accepted* row expects
the documented result, checked exactly.

+---------+------------------------------------------------+------------------------------------------------------+
| command | row                                            | expected                                             |
+=========+================================================+======================================================+
| fit     | empty file (0 bytes)                           | error: <file>: the file is empty                     |
| fit     | header only                                    | error: <file>: has a header but no posts             |
| fit     | no ``label`` column                            | error: <file>: no 'label' column ... set the column  |
|         |                                                | name in the data config                              |
| fit     | no ``review`` column                           | error: <file>: no 'review' column ... (same)         |
| fit     | label ``2`` / ``-1`` / ``pos`` / empty,        | error: <file> line 4: label '2' is not one of 0, 1   |
|         | on line 4                                      |                                                      |
| fit     | GBK-encoded                                    | error: <file>: not UTF-8 ...; save the file as UTF-8 |
| fit     | a directory / a path that does not exist       | error: <path>: is a directory / no such file         |
| fit     | UTF-8 with BOM; CRLF line ends                 | accepted: every post and label read exactly          |
| fit     | quoted fields with newlines, commas, quotes    | accepted: each quoted field one post, read exactly   |
| fit     | NUL bytes inside a post                        | accepted (recorded): the post keeps its NUL          |
| fit     | a 100,000-character post                       | accepted: read whole, truncated to 128 tokens        |
| fit     | --ckpt_path truncated / random bytes           | error: <ckpt>: not a readable checkpoint; never      |
|         |                                                | advises weights_only=False                           |
| fit     | --ckpt_path a pickle whose __reduce__ calls    | error as above, and the marker file does not exist   |
|         | os.system                                      | (weights_only loading)                               |
| fit     | --ckpt_path trained on another base model      | error: <ckpt>: the checkpoint does not fit base      |
|         | (a GPT-2 48 wide, not 32)                      | model ...                                            |
| fit     | --model.adapter_path made on another base      | error: <adapter>: the adapter does not fit the base  |
|         |                                                | model                                                |
+---------+------------------------------------------------+------------------------------------------------------+
| predict | empty file (0 bytes)                           | error: <file>: the file is empty                     |
| predict | header only                                    | accepted: a header-only output, 0 rows               |
| predict | no ``review`` column                           | error: <file>: no 'review' column ...                |
| predict | GBK-encoded                                    | error: <file>: not UTF-8 ...; save the file as UTF-8 |
| predict | a directory / a path that does not exist       | error: <path>: is a directory / no such file         |
| predict | UTF-8 with BOM; CRLF line ends (.csv, .txt)    | accepted: the clean file's rows, ids, order, probs   |
| predict | quoted fields with newlines, commas, quotes    | accepted: 20 rows, ids/order/text exact              |
| predict | NUL bytes inside a post                        | accepted (recorded): classified, NUL kept in the     |
|         |                                                | output; a NUL-only post is classified, not "empty"   |
| predict | a 100,000-character post                       | accepted: its row in place, whole text, classified   |
| predict | emoji-only post                                | accepted (recorded): classified; its tokens are      |
|         |                                                | [UNK]                                                |
| predict | whitespace-only / empty posts                  | accepted: sentiment=empty in place, no label or      |
|         |                                                | probabilities; later rows not shifted                |
| predict | blank (and blank-looking) lines of a .txt file | accepted: skipped, one row per non-blank line        |
| predict | --ckpt_path truncated / random bytes /         | error: <ckpt>: not a readable checkpoint / no such   |
|         | a directory / missing                          | checkpoint file                                      |
| predict | --ckpt_path a pickle (torch.save'd or raw)     | error as above, and the marker file does not exist   |
|         | whose __reduce__ calls os.system               |                                                      |
| predict | --ckpt_path trained on another base model      | error: <ckpt>: the checkpoint does not fit ...       |
| predict | --ckpt_path lora_r=4 / num_labels=3 with its   | accepted (README): the checkpoint's values win, and  |
|         | hyper-parameters (config: r=8, 2 labels)       | "Using lora_r=4 from <ckpt>" is printed              |
| predict | --ckpt_path lora_r=4 / num_labels=3 without    | error: <ckpt>: the checkpoint does not fit ...       |
|         | hyper-parameters                               |                                                      |
| predict | --model.adapter_path made on another base      | error: <adapter>: the adapter does not fit the base  |
|         |                                                | model                                                |
| predict | --model.adapter_path with r=4 (config r=8)     | accepted (README): the adapter's own config wins     |
| predict | --model.adapter_path whose adapter_config.json | error: <adapter>: the adapter does not fit the base  |
|         | says r=8 but whose tensors are r=4             | model                                                |
+---------+------------------------------------------------+------------------------------------------------------+

Error rows (and the two accepted checkpoint rows) run the real ``main.py`` as a separate process (see ``main_py``),
so stderr is all a user would see; all of them fail before any training or prediction step. Accepted ``fit`` rows
run in-process with ``fast_dev_run`` (one batch holds every post), accepted ``predict`` rows in-process through
``main``.

A failing row raises the specific failure it shows (``NoisyStderr``, ``LeftBehind``, ``Unnamed``,
``UnsafeAdvice``), so a regression says at once what kind of promise it broke.
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from conftest import REPO, cli_args, read_predictions, real_rows, run_main, write_csv
from peft import LoraConfig, TaskType, get_peft_model
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from weibo_sentiment.cli import SentimentCLI, main
from weibo_sentiment.training.model import SentimentClassifier
from tools.tiny_models import build_gpt2

MAX_LENGTH = 128  # data.max_length of configs/quickstart.yaml


class NoisyStderr(AssertionError):
    """All else is right, but stderr holds more than the one ``error:`` line."""


class Unnamed(AssertionError):
    """The error line is right but does not name the file at fault."""


class LeftBehind(AssertionError):
    """The error was right, but a run folder (or an output file) was left behind."""


class UnsafeAdvice(AssertionError):
    """The error line tells the user to load the file with ``weights_only=False``, i.e. to let it run code."""


# ---- the inputs ----------------------------------------------------------------------------------------------------
def posts(n: int, offset: int = 0) -> list[dict[str, str]]:
    """Real labelled posts of the bundled sample (``label``, ``review``)."""
    return real_rows(n, offset=offset)


def csv_bytes(rows: list[dict[str, str]], columns: list[str], line_end: str = "\n") -> bytes:
    lines: list[str] = []
    writer = csv.DictWriter(_Lines(lines), fieldnames=columns, lineterminator=line_end)
    writer.writeheader()
    writer.writerows({c: row[c] for c in columns} for row in rows)
    return "".join(lines).encode("utf-8")


class _Lines:
    def __init__(self, lines: list[str]) -> None:
        self.write = lines.append


def with_ids(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{"id": f"p{i}", **row} for i, row in enumerate(rows)]


def long_post(chars: int = 100_000) -> str:
    """Real posts joined end to end, cut at exactly ``chars`` characters."""
    text, offset = "", 1000
    while len(text) < chars:
        text += "".join(row["review"] for row in posts(200, offset))
        offset += 200
    return text[:chars]


TRICKY = [
    "第一行\n第二行，还有\"引号\"和,逗号[哈哈]",
    '"整段都在引号里", 他说[泪]',
    "结尾换行\r\n再一行[哈哈]",
]


def tricky_rows() -> list[dict[str, str]]:
    """Real posts, three of them replaced by ones that need CSV quoting (newline, comma, quote, CRLF inside)."""
    rows = posts(20)
    for index, text in zip((2, 9, 15), TRICKY):
        rows[index] = {**rows[index], "review": text}
    return rows


def nul_rows() -> list[dict[str, str]]:
    rows = posts(20)
    rows[3] = {**rows[3], "review": rows[3]["review"][:5] + "\x00" + rows[3]["review"][5:]}
    rows[4] = {**rows[4], "review": "\x00\x00\x00"}
    return rows


def long_rows() -> list[dict[str, str]]:
    rows = posts(20)
    rows[7] = {**rows[7], "review": long_post()}
    return rows


# ---- shared checks -----------------------------------------------------------------------------------------------
def tail(result) -> str:
    return f"exit {result.returncode}\n--- stderr (tail) ---\n{result.stderr[-3000:]}"


def assert_one_error_line(result, *, path: object, says: str, hint: str | None = None) -> str:
    """Exit 2, no traceback, exactly one ``error:`` line that names ``path`` and says ``says`` (and ``hint``)."""
    assert result.returncode == 2, tail(result)
    assert "Traceback" not in result.stderr, tail(result)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, tail(result)
    line = errors[0]
    print(line)  # shown by pytest -rP: the matrix's actual messages
    assert says in line, f"expected {says!r} in: {line}"
    if hint is not None:
        assert hint in line, f"expected the remedy {hint!r} in: {line}"
    if str(path) not in line:
        raise Unnamed(f"the error does not name {path}: {line}")
    return line


def assert_stderr_is_that_line(result) -> None:
    """Checked last, so a NoisyStderr means everything else about the row was right."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if len(lines) != 1:
        raise NoisyStderr(f"{len(lines)} stderr lines, expected only the error line:\n" + "\n".join(lines[-15:]))


def run_folders(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "lightning_logs").glob("version_*"))


def assert_nothing_written(root: Path, out: Path | None = None) -> None:
    if run_folders(root):
        raise LeftBehind(f"a run folder was left behind: {sorted(map(str, (root / 'lightning_logs').rglob('*')))}")
    if out is not None:
        leftovers = list(out.parent.iterdir()) if out.parent.exists() else []
        if leftovers:
            raise LeftBehind(f"the output or a half-written file beside it was left: {leftovers}")


# ---- running main.py --------------------------------------------------------------------------------------------
# Importing the stack (torch, Lightning, transformers, peft) is ~8 s of CPU per `python main.py`; what a row does
# after that takes ~1 s. So one helper process imports what main.py imports, once, and forks a child per row that
# runs the real main.py (runpy, as `python main.py ARGS` would) with its own stdout/stderr files. Nothing has run in
# the helper before it forks, so each child starts as fresh as a new interpreter (warn-once state included).
# BAD_INPUT_FRESH_PROCESS=1 runs every row as a new `python main.py` through conftest's run_main instead.
FORK_SERVER = r"""
import atexit, json, os, runpy, signal, sys, time, traceback
import weibo_sentiment.cli  # noqa: F401 - what main.py imports: the slow part, done once
for line in iter(sys.stdin.readline, ""):
    request = json.loads(line)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
                os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
            sys.stdin = open(0, closefd=False)
            sys.argv = ["main.py", *request["args"]]
            try:
                runpy.run_path("main.py", run_name="__main__")
                code = 0
            except SystemExit as exit:
                if exit.code is None or isinstance(exit.code, int):
                    code = exit.code or 0
                else:
                    print(exit.code, file=sys.stderr)
            except BaseException:
                traceback.print_exc()
            atexit._run_exitfuncs()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    deadline = time.monotonic() + request["timeout"]
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            code = 124
            break
        time.sleep(0.02)
    print(json.dumps({"returncode": code}), flush=True)
"""


class ForkedMain:
    """``run_main`` for many rows: the real main.py, forked from one process that has already imported the stack."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.count = 0
        self.server = subprocess.Popen([sys.executable, "-c", FORK_SERVER], cwd=REPO, stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True)  # fmt: skip

    def __call__(self, args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
        self.count += 1
        out, err = self.workdir / f"{self.count}.out", self.workdir / f"{self.count}.err"
        request = {"args": [str(a) for a in args], "stdout": str(out), "stderr": str(err), "timeout": timeout}
        assert self.server.stdin is not None and self.server.stdout is not None
        self.server.stdin.write(json.dumps(request) + "\n")
        self.server.stdin.flush()
        reply = self.server.stdout.readline()
        assert reply, "the main.py fork server died"
        return subprocess.CompletedProcess(["main.py", *args], json.loads(reply)["returncode"],
                                           out.read_text(encoding="utf-8", errors="replace"),
                                           err.read_text(encoding="utf-8", errors="replace"))  # fmt: skip

    def close(self) -> None:
        assert self.server.stdin is not None
        self.server.stdin.close()
        self.server.wait(timeout=60)


@pytest.fixture(scope="module")
def main_py(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[list[str]], subprocess.CompletedProcess]]:
    """Runs ``python main.py ARGS`` and returns its exit status, stdout and stderr."""
    if os.environ.get("BAD_INPUT_FRESH_PROCESS") == "1":
        yield run_main
        return
    forked = ForkedMain(tmp_path_factory.mktemp("main-py-runs"))
    yield forked
    forked.close()


# ---- fixtures ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gpt2_48(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Another base model: a GPT-2 of the same vocabulary, 48 wide instead of 32."""
    return str(build_gpt2(tmp_path_factory.mktemp("gpt2-48"), n_embd=48, n_layer=2, n_head=2))


@pytest.fixture(scope="module")
def clean_posts_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 real posts to label, with ids, as a clean UTF-8 CSV."""
    return write_csv(tmp_path_factory.mktemp("clean") / "posts.csv", with_ids(posts(20, 500)), ["id", "review"])


class RceMarker:
    """A pickle that, when unpickled without ``weights_only``, runs ``os.system`` to create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def checkpoint_variant(trained: dict, base: str, out: Path, keep_hparams: bool, **hparams) -> Path:
    """The trained checkpoint with the tensors of a model built with ``hparams`` (and those hparams, or none)."""
    checkpoint = torch.load(trained["best"], weights_only=True)
    module = SentimentClassifier(model_name_or_path=base, **hparams)
    checkpoint["state_dict"] = module.state_dict()
    if keep_hparams:
        checkpoint["hyper_parameters"] = dict(module.hparams)
    else:
        del checkpoint["hyper_parameters"]
    torch.save(checkpoint, out)
    return out


def peft_adapter(base: str, out: Path, r: int) -> Path:
    """An adapter saved by plain peft (LoRA ``r`` on c_attn and c_proj, the head trained) on ``base``."""
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=2, pad_token_id=0)
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=r, lora_alpha=2 * r, target_modules=["c_attn", "c_proj"],
                        fan_in_fan_out=True)  # fmt: skip
    get_peft_model(model, config).save_pretrained(str(out))
    return out


# ---- fit: training files that must be refused ----------------------------------------------------------------------
def _label_on_line_4(value: str) -> Callable[[], bytes]:
    def content() -> bytes:
        rows = posts(20)
        rows[2] = {**rows[2], "label": value}
        return csv_bytes(rows, ["label", "review"])

    return content


FIT_FILE_ERRORS = [
    pytest.param("train.csv", lambda: b"", "the file is empty", None, id="empty-0-bytes"),
    pytest.param("train.csv", lambda: b"label,review\n", "has a header but no posts", None, id="header-only"),
    pytest.param("train.csv", lambda: csv_bytes(posts(20), ["review"]), "no 'label' column",
                 "set the column name in the data config", id="no-label-column"),
    pytest.param("train.csv", lambda: csv_bytes([{**r, "text": r["review"]} for r in posts(20)], ["label", "text"]),
                 "no 'review' column", "set the column name in the data config", id="no-review-column"),
    pytest.param("train.csv", _label_on_line_4("2"), "line 4: label '2' is not one of 0, 1", None, id="label-2"),
    pytest.param("train.csv", _label_on_line_4("-1"), "line 4: label '-1' is not one of 0, 1", None, id="label--1"),
    pytest.param("train.csv", _label_on_line_4("pos"), "line 4: label 'pos' is not one of 0, 1", None,
                 id="label-pos"),
    pytest.param("train.csv", _label_on_line_4(""), "line 4: label '' is not one of 0, 1", None, id="label-empty"),
    pytest.param("train.csv", lambda: csv_bytes(posts(20), ["label", "review"]).decode("utf-8").encode("gbk"),
                 "not UTF-8", "save the file as UTF-8", id="gbk"),
    pytest.param("a_directory.csv", None, "is a directory", None, id="directory"),
    pytest.param("missing.csv", None, "no such file", None, id="does-not-exist"),
]  # fmt: skip


def make_input(tmp_path: Path, name: str, content: Callable[[], bytes] | None) -> Path:
    """The row's input: a file with ``content``, a directory (``a_directory.csv``), or nothing (``content`` None)."""
    path = tmp_path / name
    if name == "a_directory.csv":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content())
    return path


@pytest.mark.parametrize(("name", "content", "says", "hint"), FIT_FILE_ERRORS)
def test_fit_refuses(name: str, content: Callable[[], bytes] | None, says: str, hint: str | None, tiny_gpt2: str,
                     main_py: Callable, tmp_path: Path) -> None:  # fmt: skip
    path = make_input(tmp_path, name, content)
    root = tmp_path / "root"
    result = main_py(cli_args("fit", tiny_gpt2, root, "--data.train_path", str(path)))
    assert_one_error_line(result, path=path, says=says, hint=hint)
    assert_nothing_written(root)
    assert_stderr_is_that_line(result)


# ---- fit: training files that are accepted -----------------------------------------------------------------------
def _fit_in_process(tiny_gpt2: str, root: Path, train: Path) -> SentimentCLI:
    """One fast_dev_run step over one batch holding every training post, and one over every validation post."""
    return SentimentCLI(args=cli_args("fit", tiny_gpt2, root, "--data.train_path", str(train),
                                      "--trainer.fast_dev_run", "true", "--data.batch_size", "64"))  # fmt: skip


def _read_posts(cli: SentimentCLI) -> list[tuple[str, int]]:
    datasets = cli.datamodule.datasets
    return sorted((post.text, post.label) for split in ("train", "val") for post in datasets[split].posts)


def _expected(rows: list[dict[str, str]]) -> list[tuple[str, int]]:
    return sorted((row["review"], int(row["label"])) for row in rows)


FIT_ACCEPTED = [
    pytest.param(lambda: b"\xef\xbb\xbf" + csv_bytes(posts(20), ["label", "review"]), posts(20), id="utf8-bom"),
    pytest.param(lambda: csv_bytes(posts(20), ["label", "review"], line_end="\r\n"), posts(20), id="crlf"),
    pytest.param(lambda: csv_bytes(tricky_rows(), ["label", "review"]), tricky_rows(), id="quoted-newline-comma-quote"),
    pytest.param(lambda: csv_bytes(nul_rows(), ["label", "review"]), nul_rows(), id="nul-bytes"),
    pytest.param(lambda: csv_bytes(long_rows(), ["label", "review"]), long_rows(), id="100k-char-post"),
]  # fmt: skip


@pytest.mark.parametrize(("content", "rows"), FIT_ACCEPTED)
def test_fit_accepts(content: Callable[[], bytes], rows: list[dict[str, str]], tiny_gpt2: str, tmp_path: Path) -> None:
    train = tmp_path / "train.csv"
    train.write_bytes(content())
    cli = _fit_in_process(tiny_gpt2, tmp_path, train)
    assert cli.trainer.state.finished and cli.trainer.global_step == 1
    assert _read_posts(cli) == _expected(rows)
    for split in ("train", "val"):
        dataset = cli.datamodule.datasets[split]
        for post, ids in zip(dataset.posts, dataset.input_ids):
            assert len(ids) <= MAX_LENGTH
            if len(post.text) == 100_000:
                assert len(ids) == MAX_LENGTH  # read whole, truncated by the tokenizer


# ---- predict: input files that must be refused -------------------------------------------------------------------
PREDICT_FILE_ERRORS = [
    pytest.param("posts.csv", lambda: b"", "the file is empty", None, id="empty-0-bytes"),
    pytest.param("posts.csv", lambda: csv_bytes(with_ids(posts(20)), ["id", "label"]), "no 'review' column",
                 "set the column name in the data config", id="no-review-column"),
    pytest.param("posts.csv", lambda: csv_bytes(with_ids(posts(20)), ["id", "review"]).decode().encode("gbk"),
                 "not UTF-8", "save the file as UTF-8", id="gbk"),
    pytest.param("a_directory.csv", None, "is a directory", None, id="directory"),
    pytest.param("missing.csv", None, "no such file", None, id="does-not-exist"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "content", "says", "hint"), PREDICT_FILE_ERRORS)
def test_predict_refuses(name: str, content: Callable[[], bytes] | None, says: str, hint: str | None, trained: dict,
                         tiny_gpt2: str, main_py: Callable, tmp_path: Path) -> None:  # fmt: skip
    path = make_input(tmp_path, name, content)
    root, out = tmp_path / "root", tmp_path / "out" / "predictions.csv"
    result = main_py(cli_args("predict", tiny_gpt2, root, "--ckpt_path", str(trained["best"]),
                               "--data.predict_path", str(path), "--predict_writer.output_path", str(out)))  # fmt: skip
    assert_one_error_line(result, path=path, says=says, hint=hint)
    assert_nothing_written(root, out)
    assert_stderr_is_that_line(result)


# ---- predict: input files that are accepted ----------------------------------------------------------------------
def _predict(trained: dict, tiny_gpt2: str, tmp_path: Path, source: Path, *extra: str) -> list[dict[str, str]]:
    out = tmp_path / "out" / "predictions.csv"
    main(cli_args("predict", tiny_gpt2, tmp_path / "root", "--ckpt_path", str(trained["best"]), "--data.predict_path",
                  str(source), "--predict_writer.output_path", str(out), *extra))  # fmt: skip
    assert sorted(p.name for p in out.parent.iterdir()) == ["predictions.csv"]  # no .part file left over
    return read_predictions(out)


def _classified(row: dict[str, str]) -> bool:
    p = float(row["prob_positive"])
    return row["sentiment"] == ("positive" if p > 0.5 else "negative") and row["label"] == str(int(p > 0.5))


def test_predict_header_only_writes_a_header_only_file(trained: dict, tiny_gpt2: str, tmp_path: Path) -> None:
    source = tmp_path / "posts.csv"
    source.write_bytes(b"id,review\n")
    assert _predict(trained, tiny_gpt2, tmp_path, source) == []
    header = (tmp_path / "out" / "predictions.csv").read_text(encoding="utf-8").splitlines()
    assert header == ["id,review,label,sentiment,confidence,prob_positive,emoticons,truncated"]


@pytest.mark.parametrize(
    ("suffix", "transform"),
    [
        pytest.param(".csv", lambda data: b"\xef\xbb\xbf" + data, id="csv-utf8-bom"),
        pytest.param(".csv", lambda data: data.replace(b"\n", b"\r\n"), id="csv-crlf"),
        pytest.param(".txt", lambda data: b"\xef\xbb\xbf" + data, id="txt-utf8-bom"),
        pytest.param(".txt", lambda data: data.replace(b"\n", b"\r\n"), id="txt-crlf"),
    ],
)
def test_predict_reads_bom_and_crlf_as_the_clean_file(suffix: str, transform: Callable[[bytes], bytes], trained: dict,
                                                      tiny_gpt2: str, clean_posts_csv: Path,
                                                      tmp_path: Path) -> None:  # fmt: skip
    rows = read_predictions(clean_posts_csv)
    if suffix == ".csv":
        clean = clean_posts_csv.read_bytes()
        expected = [(r["id"], r["review"]) for r in rows]
    else:
        clean = "".join(r["review"] + "\n" for r in rows).encode("utf-8")
        expected = [("", r["review"]) for r in rows]
    source = tmp_path / f"posts{suffix}"
    source.write_bytes(transform(clean))
    reference = tmp_path / "reference" / f"posts{suffix}"
    reference.parent.mkdir()
    reference.write_bytes(clean)
    got = _predict(trained, tiny_gpt2, tmp_path, source)
    want = _predict(trained, tiny_gpt2, tmp_path / "reference", reference)
    assert [(r["id"], r["review"]) for r in got] == expected
    assert [r["prob_positive"] for r in got] == [r["prob_positive"] for r in want]


def test_predict_quoted_fields_are_one_post_each(trained: dict, tiny_gpt2: str, tmp_path: Path) -> None:
    rows = with_ids(tricky_rows())
    source = tmp_path / "posts.csv"
    source.write_bytes(csv_bytes(rows, ["id", "review"]))
    got = _predict(trained, tiny_gpt2, tmp_path, source)
    assert [(r["id"], r["review"]) for r in got] == [(r["id"], r["review"]) for r in rows]  # 20 rows, in order
    assert [r["review"] for r in got if r["id"] in ("p2", "p9", "p15")] == TRICKY
    assert all(_classified(r) for r in got)


def test_predict_nul_bytes_are_read_and_classified(trained: dict, tiny_gpt2: str, tmp_path: Path) -> None:
    """Current behaviour, recorded: a NUL is kept in the post and its output row; the tokenizer drops it, so a post
    of NULs only is classified as the empty token sequence ([CLS] [SEP]), not marked ``empty``."""
    rows = with_ids(nul_rows())
    source = tmp_path / "posts.csv"
    source.write_bytes(csv_bytes(rows, ["id", "review"]))
    got = _predict(trained, tiny_gpt2, tmp_path, source)
    assert [(r["id"], r["review"]) for r in got] == [(r["id"], r["review"]) for r in rows]
    assert all(_classified(r) for r in got)
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2)
    assert tokenizer.convert_ids_to_tokens(tokenizer("\x00\x00\x00")["input_ids"]) == ["[CLS]", "[SEP]"]


def test_predict_a_100k_character_post_keeps_its_row(trained: dict, tiny_gpt2: str, tmp_path: Path) -> None:
    rows = with_ids(long_rows())
    source = tmp_path / "posts.csv"
    source.write_bytes(csv_bytes(rows, ["id", "review"]))
    got = _predict(trained, tiny_gpt2, tmp_path, source)
    assert [(r["id"], r["review"]) for r in got] == [(r["id"], r["review"]) for r in rows]
    assert len(got[7]["review"]) == 100_000 and _classified(got[7])
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2)
    longer = [len(tokenizer(row["review"])["input_ids"]) > MAX_LENGTH for row in got]  # counted on their own
    assert [row["truncated"] for row in got] == [str(flag) for flag in longer] and longer[7]
    assert len(tokenizer(got[7]["review"], truncation=True, max_length=MAX_LENGTH)["input_ids"]) == MAX_LENGTH


def test_predict_emoji_and_whitespace_only_posts(trained: dict, tiny_gpt2: str, tmp_path: Path) -> None:
    """Emoji-only: classified; the tokenizer reads these emoji as [UNK] (recorded). Whitespace-only or empty:
    ``sentiment=empty`` with no label or probabilities, in place; the rows after it keep their ids and texts."""
    texts = [r["review"] for r in posts(6, 700)]
    reviews = [texts[0], "😀😂👍", texts[1], "   ", texts[2], "\t \u3000", texts[3], "", texts[4]]
    rows = [{"id": f"p{i}", "review": t} for i, t in enumerate(reviews)]
    source = tmp_path / "posts.csv"
    source.write_bytes(csv_bytes(rows, ["id", "review"]))
    got = _predict(trained, tiny_gpt2, tmp_path, source)
    assert [(r["id"], r["review"]) for r in got] == [(r["id"], r["review"]) for r in rows]
    blank = {"p3", "p5", "p7"}
    for row in got:
        if row["id"] in blank:
            assert (row["label"], row["sentiment"], row["confidence"], row["prob_positive"]) == ("", "empty", "", "")
        else:
            assert _classified(row), row
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2)
    assert set(tokenizer.tokenize("😀😂👍")) == {"[UNK]"}


def test_predict_txt_skips_blank_lines(trained: dict, tiny_gpt2: str, tmp_path: Path) -> None:
    texts = [r["review"] for r in posts(4, 800)]
    source = tmp_path / "posts.txt"
    source.write_text(f"\n{texts[0]}\n\n{texts[1]}\n   \n\t\n{texts[2]}\n\n\n{texts[3]}\n\n", encoding="utf-8")
    got = _predict(trained, tiny_gpt2, tmp_path, source)
    assert [(r["id"], r["review"]) for r in got] == [("", t) for t in texts]
    assert all(_classified(r) for r in got)


# ---- checkpoints and adapters that must be refused ------------------------------------------------------------------
def _truncated(trained: dict, tmp_path: Path) -> Path:
    data = trained["best"].read_bytes()
    path = tmp_path / "truncated.ckpt"
    path.write_bytes(data[: len(data) // 2])
    return path


def _random_bytes(trained: dict, tmp_path: Path) -> Path:
    path = tmp_path / "random.ckpt"
    path.write_bytes(random.Random(0).randbytes(150_000))
    return path


def _torch_saved_pickle(trained: dict, tmp_path: Path) -> Path:
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": RceMarker(tmp_path / "PWNED")}, path)
    return path


def _raw_pickle(trained: dict, tmp_path: Path) -> Path:
    path = tmp_path / "evil-raw.ckpt"
    path.write_bytes(pickle.dumps(RceMarker(tmp_path / "PWNED")))
    return path


def _a_directory(trained: dict, tmp_path: Path) -> Path:
    path = tmp_path / "a_directory.ckpt"
    path.mkdir()
    return path


def _missing(trained: dict, tmp_path: Path) -> Path:
    return tmp_path / "missing.ckpt"


UNREADABLE = "not a readable checkpoint"
CKPT_FILE_ERRORS = [
    pytest.param("fit", _truncated, UNREADABLE, id="fit-truncated"),
    pytest.param("fit", _random_bytes, UNREADABLE, id="fit-random-bytes"),
    pytest.param("fit", _torch_saved_pickle, UNREADABLE, id="fit-pickle-os-system"),
    pytest.param("predict", _truncated, UNREADABLE, id="predict-truncated"),
    pytest.param("predict", _random_bytes, UNREADABLE, id="predict-random-bytes"),
    pytest.param("predict", _torch_saved_pickle, UNREADABLE, id="predict-pickle-os-system"),
    pytest.param("predict", _raw_pickle, UNREADABLE, id="predict-raw-pickle-os-system"),
    pytest.param("predict", _a_directory, "no such checkpoint file (it is a directory)", id="predict-directory"),
    pytest.param("predict", _missing, "no such checkpoint file", id="predict-does-not-exist"),
]


@pytest.mark.parametrize(("command", "make", "says"), CKPT_FILE_ERRORS)
def test_unreadable_checkpoints_are_refused(command: str, make: Callable[[dict, Path], Path], says: str, trained: dict,
                                            tiny_gpt2: str, posts_csv: Path, main_py: Callable,
                                            tmp_path: Path) -> None:  # fmt: skip
    ckpt = make(trained, tmp_path)
    root, out = tmp_path / "root", tmp_path / "out" / "predictions.csv"
    data = ["--data.train_path", str(trained["train_csv"])] if command == "fit" else [
        "--data.predict_path", str(posts_csv), "--predict_writer.output_path", str(out)]  # fmt: skip
    result = main_py(cli_args(command, tiny_gpt2, root, "--ckpt_path", str(ckpt), *data))
    line = assert_one_error_line(result, path=ckpt, says=says)
    assert not (tmp_path / "PWNED").exists(), "unpickling the checkpoint ran code"
    if "weights_only" in line and "False" in line:
        raise UnsafeAdvice(f"the error suggests loading the file unsafely: {line}")
    assert_nothing_written(root, out if command == "predict" else None)
    assert_stderr_is_that_line(result)


def test_the_pickle_rows_would_run_code_if_unpickled_unsafely(tmp_path: Path) -> None:
    """The payload of the pickle rows is live: loaded without weights_only it creates the marker."""
    pickle.loads(pickle.dumps(RceMarker(tmp_path / "marker")))
    assert (tmp_path / "marker").exists()


MISFIT = "the checkpoint does not fit base model"
MISFIT_ADAPTER = "the adapter does not fit the base model"


def _other_base(trained: dict, tiny_gpt2: str, gpt2_48: str, tmp_path: Path) -> tuple[list[str], object, str]:
    return ["--ckpt_path", str(trained["best"]), "--model.model_name_or_path", gpt2_48], trained["best"], MISFIT


def _r4_without_hparams(trained: dict, tiny_gpt2: str, gpt2_48: str, tmp_path: Path) -> tuple[list[str], object, str]:
    ckpt = checkpoint_variant(trained, tiny_gpt2, tmp_path / "r4.ckpt", keep_hparams=False, lora_r=4)
    return ["--ckpt_path", str(ckpt)], ckpt, MISFIT


def _3_labels_without_hparams(trained: dict, tiny_gpt2: str, gpt2_48: str,
                              tmp_path: Path) -> tuple[list[str], object, str]:  # fmt: skip
    ckpt = checkpoint_variant(trained, tiny_gpt2, tmp_path / "3labels.ckpt", keep_hparams=False, num_labels=3)
    return ["--ckpt_path", str(ckpt)], ckpt, MISFIT


def _adapter_of_other_base(trained: dict, tiny_gpt2: str, gpt2_48: str,
                           tmp_path: Path) -> tuple[list[str], object, str]:  # fmt: skip
    adapter = peft_adapter(gpt2_48, tmp_path / "adapter-48", r=8)
    return ["--model.adapter_path", str(adapter)], adapter, MISFIT_ADAPTER


def _adapter_config_r_lies(trained: dict, tiny_gpt2: str, gpt2_48: str,
                           tmp_path: Path) -> tuple[list[str], object, str]:  # fmt: skip
    adapter = peft_adapter(tiny_gpt2, tmp_path / "adapter-r4", r=4)
    config_file = adapter / "adapter_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["r"] = 8
    config_file.write_text(json.dumps(config), encoding="utf-8")
    return ["--model.adapter_path", str(adapter)], adapter, MISFIT_ADAPTER


WEIGHTS_THAT_DO_NOT_FIT = [
    pytest.param("fit", _other_base, id="fit-ckpt-of-another-base"),
    pytest.param("fit", _adapter_of_other_base, id="fit-adapter-of-another-base"),
    pytest.param("predict", _other_base, id="predict-ckpt-of-another-base"),
    pytest.param("predict", _r4_without_hparams, id="predict-ckpt-r4-no-hparams"),
    pytest.param("predict", _3_labels_without_hparams, id="predict-ckpt-3-labels-no-hparams"),
    pytest.param("predict", _adapter_of_other_base, id="predict-adapter-of-another-base"),
    pytest.param("predict", _adapter_config_r_lies, id="predict-adapter-config-r-not-its-tensors"),
]


@pytest.mark.parametrize(("command", "make"), WEIGHTS_THAT_DO_NOT_FIT)
def test_weights_that_do_not_fit_the_model_are_refused(command: str, make: Callable, trained: dict, tiny_gpt2: str,
                                                       gpt2_48: str, posts_csv: Path, main_py: Callable,
                                                       tmp_path: Path) -> None:  # fmt: skip
    weights, named, says = make(trained, tiny_gpt2, gpt2_48, tmp_path)
    root, out = tmp_path / "root", tmp_path / "out" / "predictions.csv"
    data = ["--data.train_path", str(trained["train_csv"])] if command == "fit" else [
        "--data.predict_path", str(posts_csv), "--predict_writer.output_path", str(out)]  # fmt: skip
    result = main_py(cli_args(command, tiny_gpt2, root, *data, *weights))
    assert_one_error_line(result, path=named, says=says)
    assert_nothing_written(root, out if command == "predict" else None)
    assert_stderr_is_that_line(result)


# ---- checkpoints and adapters of another shape that are accepted (README: their own settings win) -------------------
@pytest.mark.parametrize(("setting", "value"), [("lora_r", 4), ("num_labels", 3)])
def test_a_checkpoint_with_another_shape_is_loaded_with_its_own_settings(setting: str, value: int, trained: dict,
                                                                         tiny_gpt2: str, posts_csv: Path,
                                                                         main_py: Callable, tmp_path: Path) -> None:  # fmt: skip
    """The README makes lora_r and num_labels the checkpoint's. A 3-class head labels posts 0, 1 or 2 (negative,
    positive, neutral: README, Classes) and ``prob_positive`` is class 1's probability."""
    ckpt = checkpoint_variant(trained, tiny_gpt2, tmp_path / f"{setting}.ckpt", keep_hparams=True, **{setting: value})
    out = tmp_path / "out" / "p.jsonl"
    result = main_py(cli_args("predict", tiny_gpt2, tmp_path / "root", "--ckpt_path", str(ckpt), "--data.predict_path",
                               str(posts_csv), "--predict_writer.output_path", str(out)))  # fmt: skip
    assert result.returncode == 0, tail(result)
    assert f"Using {setting}={value} from {ckpt}" in result.stdout + result.stderr
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == [f"p{i}" for i in range(50)]
    labels = (0, 1, 2) if setting == "num_labels" else (0, 1)
    for row in rows:
        assert row["label"] in labels and row["sentiment"] == ("negative", "positive", "neutral")[row["label"]]


def test_an_adapter_with_another_r_is_loaded_with_its_own(tiny_gpt2: str, posts_csv: Path, tmp_path: Path) -> None:
    adapter = peft_adapter(tiny_gpt2, tmp_path / "adapter-r4", r=4)
    out = tmp_path / "out" / "p.csv"
    main(cli_args("predict", tiny_gpt2, tmp_path / "root", "--model.adapter_path", str(adapter), "--model.lora_r", "8",
                  "--data.predict_path", str(posts_csv), "--predict_writer.output_path", str(out)))  # fmt: skip
    rows = read_predictions(out)
    assert [(r["id"], r["review"]) for r in rows] == [(r["id"], r["review"]) for r in read_predictions(posts_csv)]
    assert all(_classified(r) for r in rows)
