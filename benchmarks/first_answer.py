"""Time from process start to the first labelled post, through every entry point and for every kind of model.

    python benchmarks/first_answer.py                 # the quickstart model, trained here first (~2 minutes)
    python benchmarks/first_answer.py --repeats 5 --quantize int8

Trains the quickstart model once (``main.py fit --config configs/quickstart.yaml``) and exports it, then times, from
the moment the process is started until the first post's label is there:

- ``main.py predict`` on a one-post file (until it has written its file and exited),
- the HTTP API (``python -m weibo_sentiment.serve``): until ``/health`` answers 200, and until the answer to the
  first ``POST /api/sentiment``,
- the Python API (``SentimentAnalyzer.load(...)`` + the first ``predict``),

each for the checkpoint on its first run (an empty ONNX cache: onnxruntime exports the model first), the checkpoint
again (from the cache) and the exported directory. Prints the CPU beside the figures; medians of ``--repeats``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = "configs/quickstart.yaml"
POST = "排队两小时，太失望了"
PYTHON_API = """
import sys, time
from weibo_sentiment import SentimentAnalyzer
model, config, quantize = sys.argv[1], sys.argv[2] or None, sys.argv[3] or None
analyzer = SentimentAnalyzer.load(model, config=config, quantize=quantize)
analyzer.predict([sys.argv[4]])
print("ANSWERED", time.time(), flush=True)
"""


def environment(cache: Path) -> dict[str, str]:
    return {**os.environ, "WEIBO_SENTIMENT_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}


def main_py_predict(model_args: list[str], work: Path, env: dict[str, str]) -> float:
    (work / "one.csv").write_text(f"review\n{POST}\n", encoding="utf-8")
    start = time.time()
    subprocess.run([sys.executable, "main.py", "predict", *model_args, "--data.predict_path", str(work / "one.csv"),
                    "--predict_writer.output_path", str(work / "one-out.csv"), "--trainer.default_root_dir",
                    str(work / "runs"), "--trainer.enable_progress_bar", "false"],
                   cwd=ROOT, env=env, check=True, capture_output=True)  # fmt: skip
    return time.time() - start


def python_api(model: str, config: str, quantize: str, env: dict[str, str]) -> float:
    start = time.time()
    done = subprocess.run([sys.executable, "-c", PYTHON_API, model, config, quantize, POST], cwd=ROOT, env=env,
                          check=True, capture_output=True, text=True)  # fmt: skip
    answered = next(float(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("ANSWERED"))
    return answered - start


def http_api(serve_args: list[str], env: dict[str, str]) -> tuple[float, float]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    start = time.time()
    server = subprocess.Popen([sys.executable, "-m", "weibo_sentiment.serve", *serve_args, "--serve.port", str(port)],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)  # fmt: skip
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                if server.poll() is not None:
                    sys.exit(f"error: the API server stopped (exit {server.returncode})")
                time.sleep(0.05)
        ready = time.time() - start
        request = urllib.request.Request(f"{url}/api/sentiment", json.dumps({"texts": [POST]}).encode(),
                                         {"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=120) as response:
            json.load(response)
        return ready, time.time() - start
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each measurement (medians)")
    parser.add_argument("--quantize", choices=["int8", "int8-dynamic"], help="int8 mode (default: onnxruntime fp32)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from weibo_sentiment.hardware import describe_cpu

    work = Path(tempfile.mkdtemp(prefix="first-answer-"))
    try:
        print(f"CPU: {describe_cpu()}")
        print("training the quickstart model and exporting it ...", flush=True)
        env = environment(work / "cache-unused")
        subprocess.run([sys.executable, "main.py", "fit", "--config", CONFIG, "--trainer.default_root_dir",
                        str(work / "fit"), "--trainer.enable_progress_bar", "false"],
                       cwd=ROOT, env=env, check=True, capture_output=True)  # fmt: skip
        checkpoint = str(next((work / "fit").rglob("last.ckpt")))
        quantize = ["--quantize", args.quantize] if args.quantize else []
        exported = str(work / "exported")
        subprocess.run([sys.executable, "main.py", "export", "--config", CONFIG, "--ckpt_path", checkpoint,
                        "--output_dir", exported, *quantize], cwd=ROOT, env=env, check=True, capture_output=True)
        mode = ["--model.quantize", args.quantize] if args.quantize else ["--model.runtime", "onnxruntime"]
        kinds = {
            "checkpoint, first run (exports)": (["--config", CONFIG, "--ckpt_path", checkpoint], checkpoint, CONFIG),
            "checkpoint, from the cache": (["--config", CONFIG, "--ckpt_path", checkpoint], checkpoint, CONFIG),
            "exported directory": (["--model.model_name_or_path", exported], exported, ""),
        }
        figures: dict[str, dict[str, list[float]]] = {kind: {} for kind in kinds}
        for repeat in range(args.repeats):
            for kind, (model_args, model, config) in kinds.items():
                cache = work / f"cache-{repeat}"
                if kind.endswith("(exports)"):
                    shutil.rmtree(cache, ignore_errors=True)  # every entry point below starts from an empty cache
                env = environment(cache)
                runs = figures[kind]
                for name, measure in (
                    ("main.py predict", lambda: main_py_predict([*model_args, *mode], work, env)),
                    ("Python API load + predict", lambda: python_api(model, config, args.quantize or "", env)),
                ):
                    if kind.endswith("(exports)"):
                        shutil.rmtree(cache, ignore_errors=True)
                    runs.setdefault(name, []).append(measure())
                if kind.endswith("(exports)"):
                    shutil.rmtree(cache, ignore_errors=True)
                serve_mode = ["--quantize", args.quantize] if args.quantize else ["--runtime", "onnxruntime"]
                ready, answered = http_api([*model_args, *serve_mode], env)
                runs.setdefault("API /health ready", []).append(ready)
                runs.setdefault("API first answer", []).append(answered)
                print(f"  round {repeat + 1}, {kind}: " + ", ".join(f"{n} {v[-1]:.1f} s" for n, v in runs.items()),
                      flush=True)  # fmt: skip
        print(f"\nseconds from process start, medians of {args.repeats}; mode: onnxruntime "
              f"{args.quantize or 'fp32'}; CPU: {describe_cpu()}\n")
        names = list(next(iter(figures.values())))
        print("| model | " + " | ".join(names) + " |")
        print("| --- |" + " --- |" * len(names))
        for kind, runs in figures.items():
            print(f"| {kind} | " + " | ".join(f"{statistics.median(runs[name]):.1f}" for name in names) + " |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
