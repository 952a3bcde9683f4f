"""The shared harness of the speed benchmarks: each measured side runs in a subprocess of its own, started as cold as
``main.py`` is, and this process times it and samples its memory (the process with its workers) from outside.

- ``Runner.main_py``: ``python main.py ...`` timed from inside by ``speed_meter.StepTimer`` (start-up and model
  loading left out), with its wall time and peak memory; ``Runner.worker``: a function of a benchmark module
  (``module:function``) run the same way, e.g. the original scripts in ``reference.py``.
- What the machine is (``cpu_info``, ``machine_info``): printed beside every figure.
- Reading a process tree's memory (``descendants_and_self``, ``rss_kb``, ``tree_memory_mb``) and stopping a
  process group (``stop_group``), also used by ``api_load.py``.

    python benchmarks/harness.py --worker reference:reference_predict --spec '{"model": ..., "report": ...}'
"""

from __future__ import annotations

import argparse
import csv
import datetime
import importlib
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
CONFIG = ROOT / "configs" / "gpt2_chinese_lora.yaml"  # the original recipe's settings
POSTS = ROOT / "data" / "sample" / "weibo_senti_4k.csv"  # real labelled posts that ship with the project
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


# =====================================================================================================================
# Workers: functions of the benchmark modules, each run in its own subprocess
# (python benchmarks/harness.py --worker module:function --spec JSON), so its peak RSS is its own.
# =====================================================================================================================


def cpu_info(spec: dict[str, Any]) -> dict[str, Any]:
    """What the CPU reports: its model and the features that decide the fast modes (AVX2, AVX-512, VNNI, bf16, AMX)."""
    from weibo_sentiment.hardware import FEATURES, cpu_flags, describe_cpu, native_bf16

    return {"description": describe_cpu(), "flags": sorted(name for flag, name in FEATURES.items() if flag in cpu_flags()),
            "native_bf16": native_bf16()}  # fmt: skip


def build_model(spec: dict[str, Any]) -> dict[str, Any]:
    """A randomly initialised GPT-2 with the real vocabulary, saved as a model directory."""
    from tools.tiny_models import build_gpt2

    build_gpt2(spec["out"], n_embd=spec["width"], n_layer=spec["layers"], n_head=spec["heads"], n_positions=1024)
    return {}



def torch_threads() -> int:
    """torch's default thread count here (physical cores, or OMP_NUM_THREADS), asked outside this process: the
    driver imports neither torch nor the project (a child's peak RSS starts from its parent's)."""
    return int(subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                              capture_output=True, text=True, check=True).stdout)  # fmt: skip


def machine_info(threads: int, cpu: dict[str, Any], script: str) -> dict[str, Any]:
    """The machine and the software a figure was measured with (``cpu``: what the ``cpu_info`` worker reported),
    and the command that measured it."""
    from importlib.metadata import version

    return {"cpu": cpu["description"], "cpu_flags": cpu["flags"], "native_bf16": cpu["native_bf16"],
            "cores": os.cpu_count(), "torch_threads": threads, "python": platform.python_version(),
            **{package: version(package) for package in ("torch", "transformers", "peft", "lightning", "onnxruntime")},
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join(["python", f"benchmarks/{script}", *sys.argv[1:]]),
            # Anything else running on the machine slows both sides; alternating them spreads it, but say so.
            "load_average_at_start": os.getloadavg()[0]}  # fmt: skip


# =====================================================================================================================
# Running and measuring a side: its wall time and its peak memory, with its workers.
# =====================================================================================================================


@dataclass
class Child:
    """One finished subprocess: what it measured about itself, and what the driver measured about it."""

    returncode: int
    wall_seconds: float
    peak_rss_mb: float  # wait4's ru_maxrss: the largest of the process and its descendants, never their sum
    peak_tree_mb: float  # sampled: the process with its descendants (e.g. a DataLoader worker), see tree_memory_mb
    log: str
    tree_mb_samples: list[tuple[float, float]]

    def tail(self, lines: int = 25) -> str:
        return "\n".join(Path(self.log).read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


def descendants_and_self(pid: int) -> list[int]:
    """``pid`` and every process below it, from the parent ids in /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "(comm)", which may hold spaces
        except OSError:  # gone meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree = [pid]
    for member in tree:
        tree += children.get(member, [])
    return tree


def memory_kb(pid: int) -> dict[str, int]:
    """A process's resident memory by kind (kB), from /proc/PID/smaps_rollup; empty once it has gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as rollup:
            return {line.split(":")[0]: int(line.split()[1]) for line in rollup if line.rstrip().endswith(" kB")}
    except OSError:
        return {}


def rss_kb(pid: int) -> int:
    """A process's RSS from /proc/PID/statm: a counter, cheap to read however large the process."""
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * PAGE_KB
    except (OSError, IndexError):
        return 0


def tree_memory_mb(pid: int) -> float:
    """The root's RSS plus the pages its descendants (a DataLoader worker) hold privately.

    Not PSS: PSS splits a shared library's pages among every process on the machine that maps it, so it moves with
    whatever else runs; the root's RSS plus the workers' unique pages do not. Pages a forked worker still shares
    with the root (the model's weights) count once. Only the workers' smaps are read: that walks every page table,
    which for a process of several GB would take CPU from the run being measured.
    """
    root, *workers = descendants_and_self(pid)
    private = sum(m.get("Private_Clean", 0) + m.get("Private_Dirty", 0) for m in map(memory_kb, workers))
    return (rss_kb(root) + private) / 1024


class TreeMemorySampler(threading.Thread):
    """Samples a process tree's memory until stopped; ``peak_mb`` is the largest sample (short peaks can slip by)."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak_mb = pid, interval, 0.0
        self.samples: list[tuple[float, float]] = []  # (seconds since start, MB)
        self.done = threading.Event()

    def run(self) -> None:
        start = time.perf_counter()
        while not self.done.wait(self.interval):
            megabytes = tree_memory_mb(self.pid)
            self.samples.append((round(time.perf_counter() - start, 2), round(megabytes, 1)))
            self.peak_mb = max(self.peak_mb, megabytes)


class Runner:
    """Runs each side in a subprocess of its own (cwd: the repository), its output in a log in the work folder."""

    def __init__(self, work: Path, threads: int) -> None:
        self.work = work
        self.count = 0
        self.threads = threads

    def run(self, label: str, command: list[str], threads: Optional[int] = None) -> Child:
        self.count += 1
        log = self.work / f"{self.count:02d}-{label}.log"
        print(f"  {label} ...", end="", flush=True)
        start = time.perf_counter()
        with open(log, "w", encoding="utf-8") as out:
            process = subprocess.Popen(command, cwd=ROOT, env=self.environment(threads or self.threads), stdout=out,
                                       stderr=subprocess.STDOUT)  # fmt: skip
            sampler = TreeMemorySampler(process.pid)
            sampler.start()
            # wait4 gives this child's own rusage; RUSAGE_CHILDREN would fold in every child run so far.
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
            sampler.done.set()
            sampler.join()
        child = Child(process.returncode, time.perf_counter() - start, usage.ru_maxrss / 1024, sampler.peak_mb,
                      str(log), sampler.samples)  # fmt: skip
        print(f" {child.wall_seconds:.0f} s, peak RSS {child.peak_rss_mb:.0f} MB, with its workers "
              f"{child.peak_tree_mb:.0f} MB" + ("" if child.returncode == 0 else " FAILED"))
        return child

    def environment(self, threads: int) -> dict[str, str]:
        # The same intra-op thread count for every side; torch reads OMP_NUM_THREADS at start-up (onnxruntime takes
        # torch's). ONNX exports go to a cache in the work folder: the first onnxruntime run of each model exports
        # (outside the timed loop, inside its wall time), later ones reuse it.
        return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                "WEIBO_SENTIMENT_CACHE": str(self.work / "onnx-cache"),
                "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCHMARKS), str(ROOT), os.environ.get("PYTHONPATH")]))}

    def worker(self, function: str, spec: dict[str, Any]) -> tuple[Child, dict[str, Any]]:
        """``function`` (``module:name``, a module of benchmarks/) run in a subprocess of its own on ``spec``; what it
        returns, through a JSON report."""
        label = function.split(":")[1].replace("_", "-")
        report = self.work / f"{label}-{self.count + 1:02d}.json"
        spec = {**spec, "threads": self.threads, "report": str(report)}
        child = self.run(label, [sys.executable, str(Path(__file__)), "--worker", function, "--spec", json.dumps(spec)])
        return child, self._report(child, report)

    def main_py(self, label: str, args: list[str], warmup_steps: int = 0,
                threads: Optional[int] = None) -> tuple[Child, dict[str, Any]]:
        report = self.work / f"{label}-{self.count + 1:02d}.json"
        # jsonargparse applies --trainer.callbacks.X to the callback added last: these flags go after all others.
        timer = ["--trainer.callbacks+=speed_meter.StepTimer", f"--trainer.callbacks.report_path={report}",
                 f"--trainer.callbacks.warmup_steps={warmup_steps}"]
        child = self.run(label, [sys.executable, "main.py", *args, *timer], threads)
        return child, self._report(child, report)

    @staticmethod
    def _report(child: Child, report: Path) -> dict[str, Any]:
        if child.returncode != 0 or not report.is_file():
            sys.exit(f"error: {Path(child.log).name} failed (exit {child.returncode}); its last lines:\n{child.tail()}")
        return json.loads(report.read_text(encoding="utf-8"))


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to a process's whole group, SIGKILL to what is left after 30 s."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            os.killpg(process.pid, signal.SIGKILL)  # the group's other members, if any outlived it
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


# =====================================================================================================================
# Posts in and predictions out.
# =====================================================================================================================


def write_posts(path: Path, texts: list[str]) -> Path:
    """A prediction input with an id per post (so rows of both sides can be matched)."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "review"])
        writer.writerows((f"p{i}", text) for i, text in enumerate(texts))
    return path


def read_predictions(path: Path) -> dict[str, tuple[int, float]]:
    """Our prediction file as id -> (label, prob_positive)."""
    with open(path, encoding="utf-8", newline="") as f:
        return {row["id"]: (int(row["label"]), float(row["prob_positive"])) for row in csv.DictReader(f)}


def compare(reference: dict[str, tuple[int, float]], ours: dict[str, tuple[int, float]]) -> dict[str, Any]:
    """Label agreement and the largest probability difference between two sets of predictions of the same posts.

    A post missing from ``ours`` counts as a disagreement.
    """
    common = reference.keys() & ours.keys()
    same = sum(reference[key][0] == ours[key][0] for key in common)
    return {"posts": len(reference), "missing": len(reference) - len(common), "same_label": same,
            "agreement": same / len(reference),
            "max_abs_prob_diff": max((abs(reference[key][1] - ours[key][1]) for key in common), default=None)}


def read_rows(path: Path) -> list[tuple[str, str]]:
    """(label, post) rows of a labelled CSV; the workers and main.py read and check it with the project's reader."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        return [(row["label"], row["review"]) for row in csv.DictReader(f)]


def run_worker(function: str, spec_json: str) -> None:
    import torch

    spec = json.loads(spec_json)
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    module, name = function.split(":")
    result = getattr(importlib.import_module(module), name)(spec)
    Path(spec["report"]).write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="run one benchmark worker (a subprocess of Runner.worker)")
    parser.add_argument("--worker", required=True, help="module:function, a module of benchmarks/")
    parser.add_argument("--spec", required=True, help="the function's argument, as JSON (with report: its output)")
    arguments = parser.parse_args()
    run_worker(arguments.worker, arguments.spec)
