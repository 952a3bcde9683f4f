"""Requests/s and p50/p99 latency of a running sentiment API, for several client counts and texts per request.

    python -m weibo_sentiment.serve --config configs/quickstart.yaml --ckpt_path <last.ckpt> &
    python benchmarks/api_latency.py --url http://127.0.0.1:8000/api/sentiment --clients 1 16 --texts 1 64

Each client sends requests back to back (real posts from data/sample/posts.csv); the figures are over
--requests requests per setting, after a short warm-up. ``api_throughput`` starts the server itself in two modes
and measures each (``speed.py``'s stage ``api``).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness import Runner

POSTS = Path(__file__).resolve().parent.parent / "data" / "sample" / "posts.csv"


def send(url: str, body: bytes) -> float:
    start = time.perf_counter()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.status == 200
        response.read()
    return time.perf_counter() - start


def measure(url: str, clients: int, texts_per_request: int, requests: int, posts: list[str],
            warmup: int | None = None) -> dict[str, float]:  # fmt: skip
    """Requests/s, texts/s, p50 and p99 of ``requests`` sent by ``clients`` at once, after ``warmup`` (default: one
    per client) sent one by one."""
    bodies = []
    for i in range(requests):
        chunk = [posts[(i * texts_per_request + j) % len(posts)] for j in range(texts_per_request)]
        payload = {"text": chunk[0]} if texts_per_request == 1 else {"texts": chunk}
        bodies.append(json.dumps(payload, ensure_ascii=False).encode())
    for body in bodies[: clients if warmup is None else warmup]:  # warm-up
        send(url, body)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        latencies = sorted(pool.map(lambda body: send(url, body), bodies))
    elapsed = time.perf_counter() - start
    return {
        "requests/s": requests / elapsed,
        "texts/s": requests * texts_per_request / elapsed,
        "p50 ms": 1000 * statistics.median(latencies),
        "p99 ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
    }


def api_throughput(runner: Runner, work: Path, model_dir: str, adapter: str, load: tuple[int, int, int],
                   repeats: int) -> dict[str, Any]:  # fmt: skip
    """texts/s of the HTTP API under ``load`` (texts per request, clients, requests): the server in today's mode
    (torch fp32) and in the fastest (onnxruntime int8), started in turn, ``repeats`` times each, on the same model.
    Run by ``speed.py`` (stage ``api``)."""
    import socket

    from harness import CONFIG, ROOT, read_rows, stop_group
    from harness import POSTS as LABELLED_POSTS

    posts = [text for _, text in read_rows(LABELLED_POSTS)]
    modes = {"torch fp32": [], "onnxruntime int8": ["--quantize", "int8"]}
    figures: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    texts, clients, requests = load
    print(f"API: {texts} texts x {clients} clients, {requests} requests")
    for repeat in range(repeats):
        for mode, extra in modes.items():
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            # A burst of clients x texts can queue for minutes on a slow mode: no request may time out meanwhile.
            command = [sys.executable, "-m", "weibo_sentiment.serve", "--config", str(CONFIG),
                       "--model.model_name_or_path", model_dir, "--model.adapter_path", adapter,
                       "--serve.port", str(port), "--serve.request_timeout", "3600", *extra]  # fmt: skip
            log = open(work / f"api-{repeat}-{mode.replace(' ', '-')}.log", "w", encoding="utf-8")
            # A session of its own: the server and its worker processes are stopped together, as a group.
            server = subprocess.Popen(command, cwd=ROOT, env=runner.environment(runner.threads), stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
            url = f"http://127.0.0.1:{port}"
            try:
                deadline = time.monotonic() + 600
                while time.monotonic() < deadline:
                    try:
                        with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                            if response.status == 200:
                                break
                    except OSError:
                        time.sleep(0.5)
                    if server.poll() is not None:
                        sys.exit(f"error: the API server ({mode}) stopped; see {log.name}")
                result = measure(f"{url}/api/sentiment", clients, texts, requests, posts, warmup=2)
            finally:
                stop_group(server)
                log.close()
            print(f"  API {mode}: {result['texts/s']:.1f} texts/s, p50 {result['p50 ms']:.0f} ms")
            figures[mode].append(result)
    return {mode: {key: statistics.median(r[key] for r in runs) for key in runs[0]} for mode, runs in figures.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000/api/sentiment")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--texts", type=int, nargs="+", default=[1, 64], help="texts per request")
    parser.add_argument("--requests", type=int, default=400)
    args = parser.parse_args()
    with open(POSTS, encoding="utf-8", newline="") as f:
        posts = [row["review"] for row in csv.DictReader(f)]
    print("| texts per request | clients | requests/s | texts/s | p50 ms | p99 ms |\n| --- | --- | --- | --- | --- | --- |")
    for texts in args.texts:
        for clients in args.clients:
            requests = args.requests if texts == 1 else max(args.requests // 8, 4 * clients)
            m = measure(args.url, clients, texts, requests, posts)
            print(f"| {texts} | {clients} | {m['requests/s']:.1f} | {m['texts/s']:.0f} | {m['p50 ms']:.1f} | "
                  f"{m['p99 ms']:.1f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
