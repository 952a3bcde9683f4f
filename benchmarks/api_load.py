"""A long load on the HTTP API: does it stay up, as fast and as small, for ten minutes of real posts?

    python main.py fit --config configs/quickstart.yaml          # a model to serve, if there is none yet
    python benchmarks/api_load.py --minutes 10 --clients 8 -- --config configs/quickstart.yaml --ckpt_path last

Starts the API (``python -m weibo_sentiment.serve`` with the flags after ``--``, on a free port, in a session of its
own), then ``--clients`` threads, each on one keep-alive connection, post 1 to 32 real posts at a time (drawn from
data/sample/weibo_senti_4k.csv, a seeded random count each request) back to back. Every minute it prints the
requests and texts per second, failed requests (anything but a 200 with one result per post, or a broken
connection), p50/p99 latency, and the resident memory (RSS) of the server's whole process tree: its main process,
HTTP servers, model workers and LitServe's manager, summed. At the end it says whether the run held: no failure,
p99 of the last minute within 1.5x of the second minute's, RSS growth after the first minute under 5 %.
"""

from __future__ import annotations

import argparse
import csv
import http.client
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POSTS = ROOT / "data" / "sample" / "weibo_senti_4k.csv"
API_PATH = "/api/sentiment"
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from harness import descendants_and_self, rss_kb, stop_group  # noqa: E402
from weibo_sentiment.hardware import describe_cpu  # noqa: E402

# What the run must hold to pass (issue 29): p99 of the last minute against the second's (the first warms up),
# and the tree's RSS at the end against the end of the first minute.
MAX_P99_RATIO = 1.5
MAX_RSS_GROWTH = 0.05


@dataclass
class Minute:
    """What the clients saw in one minute of the run."""

    latencies: list[float] = field(default_factory=list)
    texts: int = 0
    failures: int = 0
    failure_examples: list[str] = field(default_factory=list)


class Load:
    """The clients' shared record, by minute since the start; ``stop`` ends every client after its request."""

    def __init__(self, minutes: int) -> None:
        self.started = time.monotonic()
        self.minutes = [Minute() for _ in range(minutes)]
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def record(self, seconds: float, texts: int, failure: str | None) -> None:
        minute = int((time.monotonic() - self.started) // 60)
        if minute >= len(self.minutes):
            return
        with self.lock:
            entry = self.minutes[minute]
            if failure is None:
                entry.latencies.append(seconds)
                entry.texts += texts
            else:
                entry.failures += 1
                if len(entry.failure_examples) < 3:
                    entry.failure_examples.append(failure)


def client(port: int, posts: list[str], seed: int, max_texts: int, load: Load) -> None:
    """One keep-alive connection posting 1 to ``max_texts`` posts per request until ``load.stop``; a broken
    connection counts as a failure and is opened again."""
    rng = random.Random(seed)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    while not load.stop.is_set():
        texts = rng.sample(posts, rng.randint(1, max_texts))
        body = json.dumps({"texts": texts}, ensure_ascii=False).encode()
        started = time.perf_counter()
        failure = None
        try:
            connection.request("POST", API_PATH, body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            answer = response.read()
            if response.status != 200:
                failure = f"HTTP {response.status}: {answer[:200]!r}"
            elif len(json.loads(answer)["results"]) != len(texts):
                failure = "a result missing"
        except (OSError, http.client.HTTPException, ValueError, KeyError) as err:
            failure = f"{type(err).__name__}: {err}"
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        load.record(time.perf_counter() - started, len(texts), failure)
    connection.close()


def tree_rss_mib(root_pid: int) -> float:
    """Resident memory of ``root_pid`` and all its descendants, each process's RSS summed, in MiB."""
    return sum(rss_kb(pid) for pid in descendants_and_self(root_pid)) / 1024


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(serve_flags: list[str], port: int, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "weibo_sentiment.serve", *serve_flags, "--serve.port",
                                   str(port)], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"error: the API stopped before it answered; see {log}")
        try:
            probe = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            probe.request("GET", "/health")
            if probe.getresponse().status == 200:
                return server
        except OSError:
            pass
        time.sleep(0.2)
    os.killpg(server.pid, signal.SIGKILL)
    sys.exit(f"error: the API did not answer /health within 300 s; see {log}")


def p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-texts", type=int, default=32, help="posts per request: 1 to this many")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log", type=Path, default=Path("api_load_server.log"), help="the server's output")
    parser.add_argument("--out", type=Path, help="the figures as JSON")
    parser.add_argument("serve_flags", nargs=argparse.REMAINDER, help="-- then the API's flags (--config, --ckpt_path)")
    args = parser.parse_args()
    serve_flags = args.serve_flags[1:] if args.serve_flags[:1] == ["--"] else args.serve_flags
    if args.minutes < 2:
        parser.error("--minutes must be at least 2: the first minute warms up")
    with open(POSTS, encoding="utf-8", newline="") as f:
        posts = [row["review"] for row in csv.DictReader(f)]
    port = free_port()
    server = start_server(serve_flags, port, args.log)
    print(f"CPU: {describe_cpu()}; {os.cpu_count()} cores; API pid {server.pid} on port {port}; {args.clients} "
          f"keep-alive clients, 1-{args.max_texts} posts a request, {args.minutes} min", flush=True)  # fmt: skip
    load = Load(args.minutes)
    threads = [threading.Thread(target=client, args=(port, posts, args.seed + n, args.max_texts, load), daemon=True)
               for n in range(args.clients)]  # fmt: skip
    rows = []
    print("| minute | requests/s | texts/s | failed | p50 ms | p99 ms | server tree RSS MiB |\n| --- | --- | --- | --- | "
          "--- | --- | --- |", flush=True)  # fmt: skip
    try:
        for thread in threads:
            thread.start()
        for number, minute in enumerate(load.minutes, start=1):
            time.sleep(max(0.0, load.started + 60 * number - time.monotonic()))
            if server.poll() is not None:
                sys.exit(f"error: the API died in minute {number} (exit {server.returncode}); see {args.log}")
            with load.lock:
                latencies, texts, failures = list(minute.latencies), minute.texts, minute.failures
            row = {"minute": number, "requests_per_s": (len(latencies) + failures) / 60, "texts_per_s": texts / 60,
                   "failed": failures, "p50_ms": 1000 * statistics.median(latencies) if latencies else float("nan"),
                   "p99_ms": 1000 * p99(latencies), "rss_mib": tree_rss_mib(server.pid),
                   "failure_examples": minute.failure_examples}  # fmt: skip
            rows.append(row)
            print(f"| {number} | {row['requests_per_s']:.1f} | {row['texts_per_s']:.0f} | {failures} | "
                  f"{row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['rss_mib']:.0f} |", flush=True)  # fmt: skip
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(timeout=70)
        stop_group(server)
    failed = sum(row["failed"] for row in rows)
    p99_ratio = rows[-1]["p99_ms"] / rows[1]["p99_ms"]
    rss_growth = rows[-1]["rss_mib"] / rows[0]["rss_mib"] - 1
    verdicts = {"no failed request": failed == 0, f"p99 last/second minute {p99_ratio:.2f} <= {MAX_P99_RATIO}":
                p99_ratio <= MAX_P99_RATIO, f"RSS growth after minute 1 {rss_growth:+.1%} < {MAX_RSS_GROWTH:.0%}":
                rss_growth < MAX_RSS_GROWTH}  # fmt: skip
    for what, held in verdicts.items():
        print(f"{'held' if held else 'FAILED'}: {what}")
    for row in rows:
        for example in row["failure_examples"]:
            print(f"failure in minute {row['minute']}: {example}")
    if args.out:
        args.out.write_text(json.dumps({"cpu": describe_cpu(), "clients": args.clients, "max_texts": args.max_texts,
                                        "minutes": rows, "verdicts": verdicts}, indent=1), encoding="utf-8")  # fmt: skip
    sys.exit(0 if all(verdicts.values()) else 1)


if __name__ == "__main__":
    main()
