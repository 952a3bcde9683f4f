"""Run every stopping test of tests/test_stopping.py N times and count, per case, the runs that failed and the runs
whose stopped process printed a traceback: a stop that goes wrong one run in six shows here, not in one CI run.

    python benchmarks/stopping_loop.py                        # every case, 30 runs each (long: about 2 h on 2 cores)
    python benchmarks/stopping_loop.py --repeat 30 -k predict # the predict cases only
    python benchmarks/stopping_loop.py --repeat 5 -k "fit or validate or console or api"

It drives ``python -m pytest tests/test_stopping.py --repeat N`` (the ``--repeat`` option of tests/conftest.py) with
this file loaded as a pytest plugin: after each run the plugin reads the stderr of every process the test started
(the ``stderr.txt`` files under the test's ``tmp_path``) and records whether it holds a traceback, whether or not
the test itself looks for one. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS_ENV = "STOPPING_LOOP_RESULTS"  # where the plugin, inside pytest, appends one JSON line per run
RUN_SUFFIX = re.compile(r"\[run-\d+\]$|-run-\d+(?=\]$)")  # test[run-3] -> test, test[2-run-3] -> test[2]


# ---- the plugin, loaded into pytest with -p stopping_loop ---------------------------------------------------------
def first_traceback(text: str) -> str:
    """The first traceback of ``text`` up to its exception line (at most 30 lines), or ''."""
    lines = text.splitlines()
    for start, line in enumerate(lines):
        if "Traceback (most recent call last)" in line:
            block = lines[start : start + 30]
            # The exception line is the first one after the traceback's indented frames.
            end = next((i for i, text in enumerate(block[1:], 1) if not re.match(r"^(\[rank\d+\]: )?\s", text)), 29)
            return "\n".join(block[: end + 1])
    return ""


def pytest_runtest_makereport(item: Any, call: Any) -> None:
    if call.when != "call" and call.excinfo is None:  # setup and teardown count only when they fail
        return
    tmp_path = item.funcargs.get("tmp_path")
    stderr = [path.read_text(encoding="utf-8", errors="replace") for path in sorted(Path(tmp_path).rglob("stderr.txt"))] \
        if tmp_path is not None else []  # fmt: skip
    traceback = next((found for found in map(first_traceback, stderr) if found), "")
    record = {"run": item.nodeid.split("::", 1)[1], "when": call.when,
              "failed": call.excinfo is not None, "traceback": traceback, "seconds": round(call.duration, 2),
              "error": "" if call.excinfo is None else call.excinfo.exconly()[:300]}  # fmt: skip
    with open(os.environ[RESULTS_ENV], "a", encoding="utf-8") as results:
        results.write(json.dumps(record, ensure_ascii=False) + "\n")


# ---- the driver ------------------------------------------------------------------------------------------------------
def summarise(records: list[dict[str, Any]]) -> str:
    """Per case: runs, runs that failed (setup, test or teardown), runs that printed a traceback, median seconds,
    and each traceback's exception line with its count."""
    runs, failed, tracebacks = defaultdict(set), defaultdict(set), defaultdict(set)
    seconds, seen_tracebacks = defaultdict(list), defaultdict(Counter)
    for record in records:
        run = record["run"]
        case = RUN_SUFFIX.sub("", run)
        runs[case].add(run)
        if record["when"] == "call":
            seconds[case].append(record["seconds"])
        if record["failed"]:
            failed[case].add(run)
        if record["traceback"] and run not in tracebacks[case]:
            tracebacks[case].add(run)
            seen_tracebacks[case][record["traceback"].splitlines()[-1]] += 1
    width = max(map(len, runs), default=10)
    lines = [f"{'case':<{width}}  runs  failed  traceback  median s"]
    for case in sorted(runs):
        median = sorted(seconds[case])[len(seconds[case]) // 2] if seconds[case] else float("nan")
        counts = f"{len(runs[case]):>4}  {len(failed[case]):>6}  {len(tracebacks[case]):>9}"
        lines.append(f"{case:<{width}}  {counts}  {median:>8.1f}")
        for exception, count in seen_tracebacks[case].most_common():
            lines.append(f"    {count} x {exception}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=30, help="runs of each case (default 30)")
    parser.add_argument("-k", dest="keyword", default="", help="pytest -k expression choosing the cases")
    parser.add_argument("--results", type=Path, default=None,
                        help="JSON lines of every run (default: a new file in /tmp); an existing file is added to")  # fmt: skip
    parser.add_argument("--summary-only", action="store_true", help="summarise --results, run nothing")
    args = parser.parse_args()
    results = args.results or Path(f"/tmp/stopping_loop.{os.getpid()}.jsonl")
    if args.summary_only:
        print(summarise([json.loads(line) for line in results.read_text(encoding="utf-8").splitlines()]))
        return
    env = {**os.environ, RESULTS_ENV: str(results.resolve()),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "benchmarks"), os.environ.get("PYTHONPATH")]))}  # fmt: skip
    command = [sys.executable, "-m", "pytest", "tests/test_stopping.py", "--repeat", str(args.repeat), "-p",
               "stopping_loop", "-p", "no:cacheprovider", "-q", *(["-k", args.keyword] if args.keyword else [])]  # fmt: skip
    print(" ".join(command), flush=True)
    started = time.monotonic()
    subprocess.run(command, cwd=REPO, env=env, check=False)
    records = [json.loads(line) for line in results.read_text(encoding="utf-8").splitlines()] if results.exists() else []
    print(f"\n{len(records)} records in {results}, {time.monotonic() - started:.0f} s\n")
    print(summarise(records))


if __name__ == "__main__":
    main()
