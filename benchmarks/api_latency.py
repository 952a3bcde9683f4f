"""Requests/s and p50/p99 latency of a running sentiment API, for several client counts and texts per request.

    python -m weibo_sentiment.serve --config configs/quickstart.yaml --ckpt_path <last.ckpt> &
    python benchmarks/api_latency.py --url http://127.0.0.1:8000/api/sentiment --clients 1 16 --texts 1 64

Each client sends requests back to back (real posts from data/sample/posts.csv); the figures are over
--requests requests per setting, after a short warm-up.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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
