"""Training and prediction speed: a plain-PyTorch reference of the original recipe against our pipeline (main.py).

    python benchmarks/speed.py --quick                  # a 4-layer, 256-wide GPT-2: about 3 minutes on 2 cores
    python benchmarks/speed.py --out speed.json         # the real model's shape (12 x 768, random weights): ~25 min
    python benchmarks/speed.py --model /models/gpt2-chinese-cluecorpussmall   # an existing model directory

Both sides train and label the same real posts (``--posts``, default data/sample/weibo_senti_4k.csv), each in its
own subprocess with the same torch thread count, alternating reference and ours ``--repeats`` times. The reference
tokenizes one post per ``__getitem__`` padded to 128 tokens, trains with a plain loop, and labels one post per
forward pass with the LoRA adapter unmerged, as the original train.py/predict.py did; ours is
``python main.py fit|predict``, timed from inside by ``speed_meter.StepTimer`` so start-up and model loading are
left out. Our predictions use the reference's own saved adapter, so labels and probabilities must agree.
Also measured: the machine's fp32 matrix-multiply peak (for achieved FLOP/s as a share of it), an int8 predict
mode when ``main.py`` has one, and whether predict's peak memory stays flat from 1,000 to 1,000,000 input lines.
Memory is each process's peak RSS from ``wait4`` and, since our predict reads in a DataLoader worker process whose
memory that peak leaves out (it is a maximum over the processes, not a sum), the sampled peak of the process with
its workers. Prints a Markdown table; ``--out FILE`` keeps every raw figure as JSON.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
CONFIG = ROOT / "configs" / "gpt2_chinese_lora.yaml"
POSTS = ROOT / "data" / "sample" / "weibo_senti_4k.csv"
MAX_LENGTH = 128  # the original recipe pads every post to this
STAGES = ("train", "predict", "api", "memory")  # what a run measures, in the order it runs them
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
PEAK_WIDTH = 768  # the machine's matmul peak is measured on the real model's shapes, whatever model is benchmarked
# Our fit runs no validation (limit_val_batches 0), so val_f1_mean, which the config's EarlyStopping and checkpoint
# monitor, is never logged: EarlyStopping (strict) would stop the run with an error at the end of training, and the
# checkpoint would warn. Replace the config's callback list by its other member, and checkpoint without a monitor.
FIT_WITHOUT_VALIDATION = ["--trainer.callbacks=lightning.pytorch.callbacks.LearningRateMonitor",
                          "--trainer.callbacks.logging_interval=step", "--checkpoint.monitor=null"]


@dataclass
class Settings:
    """Sizes of one run; ``--quick`` shrinks the model and the work, the flags override either."""

    # the model: a random GPT-2 of the real one's shape, (layers, width, heads)
    shape: tuple[int, int, int] = (12, 768, 12)
    # training: batches left out at the start, then batches timed
    warmup_steps: int = 3
    timed_steps: int = 16
    # prediction: posts labelled per run, alternating reference/ours rounds
    predict_posts: int = 300
    repeats: int = 2
    # memory: input lines of the small and the large run
    memory_lines: tuple[int, int] = (1_000, 1_000_000)
    matmul_repeats: int = 10
    # the API: texts per request, concurrent clients, requests per mode and round (after 2 sent one by one)
    api_load: tuple[int, int, int] = (64, 16, 16)


QUICK = Settings(shape=(4, 256, 4), warmup_steps=2, timed_steps=8, predict_posts=100, repeats=1,
                 memory_lines=(1_000, 100_000), matmul_repeats=5, api_load=(64, 16, 32))  # fmt: skip


# =====================================================================================================================
# Workers: each runs in its own subprocess (python benchmarks/speed.py --worker NAME --spec JSON), so its peak RSS
# is its own and it starts as cold as main.py does.
# =====================================================================================================================


def _load_reference_model(model_dir: str, num_labels: int = 2) -> tuple[Any, Any]:
    """Tokenizer and sequence-classification backbone, loaded as the original scripts did."""
    from transformers import AutoModelForSequenceClassification

    from weibo_sentiment.data.tokenizer import load_tokenizer  # AutoTokenizer.from_pretrained(model_dir), checked for a pad id

    tokenizer = load_tokenizer(model_dir)
    backbone = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=num_labels, pad_token_id=tokenizer.pad_token_id
    )
    return tokenizer, backbone


def _encode_padded(tokenizer: Any, text: str) -> dict[str, Any]:
    """One post, padded to ``MAX_LENGTH`` (the original recipe's fixed-length batches)."""
    return tokenizer(text, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt",
                     return_token_type_ids=False)  # fmt: skip


def reference_train(spec: dict[str, Any]) -> dict[str, Any]:
    """The original train.py: per-item tokenization, batch 16 shuffled, LoRA, AdamW + linear warm-up, a plain loop.

    Batches are timed as ``StepTimer`` times ours: from one batch's arrival to the next (data loading included),
    the first ``warmup_steps`` and the last left out.
    """
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from torch.utils.data import DataLoader, Dataset
    from transformers import get_linear_schedule_with_warmup

    from weibo_sentiment.data.readers import read_labelled

    torch.manual_seed(42)
    posts = read_labelled(spec["train_path"], "review", "label")
    tokenizer, backbone = _load_reference_model(spec["model"])
    embeddings = backbone.transformer.wte.weight.numel() + backbone.transformer.wpe.weight.numel()
    non_embedding = sum(p.numel() for p in backbone.parameters()) - embeddings

    class PaddedPosts(Dataset):
        def __len__(self) -> int:
            return len(posts)

        def __getitem__(self, index: int) -> dict[str, Any]:
            encoded = _encode_padded(tokenizer, posts[index].text)
            return {"input_ids": encoded["input_ids"].squeeze(0), "attention_mask": encoded["attention_mask"].squeeze(0),
                    "labels": torch.tensor(posts[index].label)}  # fmt: skip

    lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=32, lora_dropout=0.1,
                      target_modules=["c_attn", "c_proj"], fan_in_fan_out=True)  # fmt: skip
    model = get_peft_model(backbone, lora)
    steps = spec["steps"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, eps=1e-8)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.1 * steps), steps)
    loader = DataLoader(PaddedPosts(), batch_size=16, shuffle=True)
    model.train()
    batches, previous = [], None
    for step, batch in enumerate(loader):
        if step == steps:  # like ours: `steps` batches trained, the last one untimed (nothing closes it there)
            break
        now = time.perf_counter()
        if previous is not None and previous[0] >= spec["warmup_steps"]:
            batches.append({"seconds": now - previous[1], **previous[2]})
        mask = batch["attention_mask"]
        previous = (step, now, {"samples": len(mask), "real_tokens": int(mask.sum()), "padded_tokens": mask.numel()})
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    model.save_pretrained(spec["adapter_out"])
    lengths = [len(ids) for ids in tokenizer([post.text for post in posts], truncation=True, max_length=MAX_LENGTH,
                                             return_token_type_ids=False)["input_ids"]]  # fmt: skip
    return {
        "torch_threads": torch.get_num_threads(),
        "non_embedding_parameters": non_embedding,
        "corpus_real_tokens_per_post": sum(lengths) / len(lengths),
        "warmup_steps": spec["warmup_steps"],
        "timed_batches": len(batches),
        **{key: sum(b[key] for b in batches) for key in ("seconds", "samples", "real_tokens", "padded_tokens")},
        "batches": batches,
    }


def reference_predict(spec: dict[str, Any]) -> dict[str, Any]:
    """The original predict.py: base model + adapter (unmerged), one post per forward pass, padded to 128."""
    import torch
    from peft import PeftModel

    from weibo_sentiment.data.readers import PostReader

    tokenizer, backbone = _load_reference_model(spec["model"])
    model = PeftModel.from_pretrained(backbone, spec["adapter"])
    model.eval()
    posts = list(PostReader(spec["predict_path"]))
    rows, real_tokens = [], 0
    start = time.perf_counter()
    for post in posts:
        encoded = _encode_padded(tokenizer, post.text)
        with torch.no_grad():
            probabilities = model(**encoded).logits.softmax(dim=-1)[0]
        label = int(probabilities.argmax())
        rows.append({"id": post.id, "label": label, "probability": float(probabilities[label]),
                     "prob_positive": float(probabilities[1])})  # fmt: skip
        real_tokens += int(encoded["attention_mask"].sum())
    seconds = time.perf_counter() - start
    return {"torch_threads": torch.get_num_threads(), "seconds": seconds, "posts": len(posts),
            "real_tokens": real_tokens, "padded_tokens": len(posts) * MAX_LENGTH, "rows": rows}  # fmt: skip


def _best_rate(run: Any, operations: float, repeats: int) -> float:
    """The best of ``repeats`` timed windows of about 0.2 s each (after a warm-up), in operations per second / 1e9.

    A peak is what the machine can do: the best window, not the median (other work only ever slows a window)."""
    for _ in range(3):  # warm-up: oneDNN/MKL/MLAS pick and cache their kernels
        run()
    start, iterations = time.perf_counter(), 0
    while time.perf_counter() - start < 0.2:
        run()
        iterations += 1
    per_repeat, best = max(1, iterations), 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(per_repeat):
            run()
        best = max(best, operations * per_repeat / (time.perf_counter() - start) / 1e9)
    return best


def _int8_matmul(m: int, k: int, n: int, threads: int, kernel: str) -> Any:
    """One onnxruntime int8 product of the kernel our int8 models run: ``DynamicQuantizeMatMul`` (float A quantised
    per call, int8 B; int8-dynamic's projections once onnxruntime has fused them) or ``MatMulInteger`` (uint8 A,
    int8 B in 7 bits, int32 out: the integer product of int8's ``MatMulIntegerToFloat``, whose rows are quantised by
    an operator of their own)."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if kernel == "DynamicQuantizeMatMul":
        weights = rng.integers(-127, 128, (k, n), dtype=np.int8)
        a_type, feed = TensorProto.FLOAT, {"a": rng.standard_normal((m, k), dtype=np.float32)}
        node = helper.make_node(kernel, ["a", "b", "b_scale", "b_zero"], ["y"], domain="com.microsoft")
        extra = [numpy_helper.from_array(np.array(0.01, np.float32), "b_scale"),
                 numpy_helper.from_array(np.array(0, np.int8), "b_zero")]  # fmt: skip
        y_type = TensorProto.FLOAT
    else:
        weights = rng.integers(-64, 65, (k, n), dtype=np.int8)
        a_type, feed = TensorProto.UINT8, {"a": rng.integers(1, 256, (m, k), dtype=np.uint8)}
        node = helper.make_node(kernel, ["a", "b", "a_zero"], ["y"])
        extra, y_type = [numpy_helper.from_array(np.array(128, np.uint8), "a_zero")], TensorProto.INT32
    graph = helper.make_graph([node], "int8_peak", [helper.make_tensor_value_info("a", a_type, [m, k])],
                              [helper.make_tensor_value_info("y", y_type, [m, n])],
                              [numpy_helper.from_array(weights, "b"), *extra])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda: session.run(None, feed)


def matmul_peak(spec: dict[str, Any]) -> dict[str, Any]:
    """The machine's matrix-multiply peaks on the real model's projection shapes (tokens x 768 @ 768 x 2304, ...):
    fp32 and (where the CPU has it natively) bf16 through ``torch.mm``, int8 through the two onnxruntime kernels our
    int8 models run (the better of them is the int8 peak); each the best window of several on its best shape."""
    import torch

    width, tokens = PEAK_WIDTH, 2048
    shapes = [(tokens, width, 3 * width), (tokens, width, width), (tokens, width, 4 * width), (tokens, 4 * width, width)]
    kinds = ["fp32", "int8 DynamicQuantizeMatMul", "int8 MatMulInteger"] + (["bf16"] if spec.get("native_bf16") else [])
    by_kind: dict[str, dict[str, float]] = {kind: {} for kind in kinds}
    for m, k, n in shapes:
        name, operations = f"({m}x{k})@({k}x{n})", 2 * m * k * n
        for kind in kinds:
            if kind.startswith("int8"):
                run = _int8_matmul(m, k, n, torch.get_num_threads(), kernel=kind.split()[1])
            else:
                dtype = torch.float32 if kind == "fp32" else torch.bfloat16
                a, b, out = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype), torch.empty(m, n, dtype=dtype)
                run = partial(torch.mm, a, b, out=out)
            by_kind[kind][name] = _best_rate(run, operations, spec["repeats"])
    best = {kind: max(rates, key=rates.get) for kind, rates in by_kind.items()}
    peaks = {kind: by_kind[kind][shape] for kind, shape in best.items() if not kind.startswith("int8")}
    int8_kernel = max((kind for kind in by_kind if kind.startswith("int8")), key=lambda kind: by_kind[kind][best[kind]])
    peaks["int8"], best["int8"] = by_kind[int8_kernel][best[int8_kernel]], f"{best[int8_kernel]} {int8_kernel.split()[1]}"
    return {"torch_threads": torch.get_num_threads(), "by_shape": by_kind, "best_shape": best, "peaks": peaks,
            "peak_gflops": peaks["fp32"]}  # fmt: skip


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


WORKERS = {"reference-train": reference_train, "reference-predict": reference_predict, "matmul-peak": matmul_peak,
           "build-model": build_model, "cpu-info": cpu_info}  # fmt: skip


def run_worker(name: str, spec_json: str) -> None:
    import torch

    spec = json.loads(spec_json)
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    result = WORKERS[name](spec)
    Path(spec["report"]).write_text(json.dumps(result), encoding="utf-8")


# =====================================================================================================================
# The driver: prepares the model and the posts, runs every side in a subprocess, and reports.
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

    def worker(self, name: str, spec: dict[str, Any]) -> tuple[Child, dict[str, Any]]:
        report = self.work / f"{name}-{self.count + 1:02d}.json"
        spec = {**spec, "threads": self.threads, "report": str(report)}
        child = self.run(name, [sys.executable, str(Path(__file__)), "--worker", name, "--spec", json.dumps(spec)])
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


def machine_info(threads: int, cpu: dict[str, Any]) -> dict[str, Any]:
    from importlib.metadata import version

    return {"cpu": cpu["description"], "cpu_flags": cpu["flags"], "native_bf16": cpu["native_bf16"],
            "cores": os.cpu_count(), "torch_threads": threads, "python": platform.python_version(),
            **{package: version(package) for package in ("torch", "transformers", "peft", "lightning", "onnxruntime")},
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join(["python", "benchmarks/speed.py", *sys.argv[1:]]),
            # Anything else running on the machine slows both sides; alternating them spreads it, but say so.
            "load_average_at_start": os.getloadavg()[0]}  # fmt: skip


def read_rows(path: Path) -> list[tuple[str, str]]:
    """(label, post) rows of a labelled CSV; the workers and main.py read and check it with the project's reader."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        return [(row["label"], row["review"]) for row in csv.DictReader(f)]


def predict_modes(native_bf16: bool) -> dict[str, list[str]]:
    """Our inference modes, as main.py flags (bf16 only where the CPU has it: emulated bf16 is slower than fp32)."""
    modes = {"torch fp32": [], "onnxruntime fp32": ["--model.runtime", "onnxruntime"],
             "onnxruntime int8": ["--model.quantize", "int8"],
             "onnxruntime int8-dynamic": ["--model.quantize", "int8-dynamic"]}  # fmt: skip
    if native_bf16:
        modes["torch bf16"] = ["--trainer.precision", "bf16-mixed"]
    return modes


def fit_modes(native_bf16: bool) -> dict[str, list[str]]:
    return {"fp32": [], **({"bf16-mixed": ["--trainer.precision", "bf16-mixed"]} if native_bf16 else {})}


def run_benchmark(args: argparse.Namespace, settings: Settings, work: Path) -> dict[str, Any]:
    # This process imports neither torch nor the project and holds no model: a child's ru_maxrss starts from its
    # parent's peak (exec records the memory it replaces), so a big driver would raise every figure to its own.
    runner = Runner(work, args.threads)
    _, cpu = runner.worker("cpu-info", {})
    results: dict[str, Any] = {"settings": asdict(settings), "machine": machine_info(args.threads, cpu), "notes": [],
                               "stages": args.stages}  # fmt: skip
    notes = results["notes"]
    print(f"CPU: {cpu['description']}")

    # ---- inputs: one model, the training posts, a sample of them to label -------------------------------------
    layers, width, heads = settings.shape
    if args.model:
        model_dir = args.model
    else:
        print(f"building a random GPT-2, {layers} layers x {width}, the real vocabulary")
        model_dir = str(work / "model")
        runner.worker("build-model", {"out": model_dir, "layers": layers, "width": width, "heads": heads})
    results["model"] = args.model or f"random GPT-2, {layers} layers x {width}, 21,128-token vocab"
    rows = read_rows(args.posts)
    texts = [text for _, text in rows]
    # Our fit holds no posts out when given a validation file; a tiny one, never run (limit_val_batches 0).
    val_path = work / "val.csv"
    with open(val_path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([("label", "review"), *rows[:16]])
    sample = random.Random(0).sample(texts, min(settings.predict_posts, len(texts)))
    predict_path = write_posts(work / "predict.csv", sample)
    steps = settings.warmup_steps + settings.timed_steps + 1  # +1: the last batch has no next start to close it
    common = ["--config", str(CONFIG), "--model.model_name_or_path", model_dir, "--trainer.enable_progress_bar",
              "false", "--trainer.enable_model_summary", "false"]  # fmt: skip
    fit_args = ["fit", *common, "--data.train_path", str(args.posts), "--data.val_path", str(val_path),
                "--trainer.max_steps", str(steps), "--trainer.limit_val_batches", "0",
                "--trainer.num_sanity_val_steps", "0", *FIT_WITHOUT_VALIDATION,
                # the reference trains one view per post: so does ours here, whatever the config's recipe
                "--data.emoticon_dropout", "0", "--data.emoticon_views", "1"]  # fmt: skip
    modes, fits = predict_modes(cpu["native_bf16"]), fit_modes(cpu["native_bf16"])
    if not cpu["native_bf16"]:
        notes.append("bf16: this CPU has neither AVX512_BF16 nor AMX (bf16 would be emulated, slower than fp32); "
                     "the bf16 modes were not run")  # fmt: skip

    print("matrix-multiply peak")
    _, results["matmul"] = runner.worker("matmul-peak", {"repeats": settings.matmul_repeats,
                                                         "native_bf16": cpu["native_bf16"]})  # fmt: skip
    peaks = results["matmul"]["peaks"]
    print("  peaks: " + ", ".join(f"{kind} {rate:.0f} G{'OP' if kind == 'int8' else 'FLOP'}/s"
                                  for kind, rate in peaks.items()))  # fmt: skip

    # ---- reference and ours, alternating, on the same posts ------------------------------------------------------
    runs: list[dict[str, Any]] = [{"train": {}, "predict": {}, "agreement": {}} for _ in range(settings.repeats)]
    adapter = work / "reference-adapter"  # what every predict run labels with: the first reference training's
    for repeat, run in enumerate(runs):
        if "train" not in args.stages and repeat > 0:
            break  # one reference training all the same: it makes the adapter that prediction labels with
        print(f"training, repeat {repeat + 1} of {settings.repeats}" if "train" in args.stages else
              "training the reference once, untimed: its adapter is what prediction labels with")  # fmt: skip
        child, report = runner.worker("reference-train", {"model": model_dir, "train_path": str(args.posts),
                                                          "steps": steps, "warmup_steps": settings.warmup_steps,
                                                          "adapter_out": str(adapter if repeat == 0 else
                                                                             work / f"adapter-{repeat}")})  # fmt: skip
        if repeat == 0:  # the model's size and the corpus's mean length, whichever stages run
            results["model_figures"] = {key: report[key] for key in ("non_embedding_parameters",
                                                                     "corpus_real_tokens_per_post")}  # fmt: skip
        if "train" not in args.stages:
            break
        run["train"]["reference"] = {**asdict(child), **report}
        for mode, extra in fits.items():
            root = work / f"ours-fit-{repeat}-{mode}"
            child, report = runner.main_py(f"ours-fit-{mode}", [*fit_args, "--trainer.default_root_dir", str(root),
                                                                *extra], settings.warmup_steps)  # fmt: skip
            run["train"][mode] = {**asdict(child), **report}

    predict_args = ["predict", *common, "--model.adapter_path", str(adapter), "--data.predict_path",
                    str(predict_path), "--trainer.default_root_dir", str(work / "ours-predict")]
    # The first onnxruntime run of a model exports it into the cache: timed apart, as what a first run costs.
    print("onnxruntime: first runs, which export the model (fp32, then int8 from it)")
    results["first_runs"] = {}
    for mode, extra in (modes if "predict" in args.stages else {}).items():
        if "onnxruntime" in mode:
            child, report = runner.main_py(f"first-{mode.replace(' ', '-')}", [*predict_args, "--predict_writer."
                                           "output_path", str(work / "first.csv"), *extra])  # fmt: skip
            results["first_runs"][mode] = {**asdict(child), **report}
    for repeat, run in enumerate(runs if "predict" in args.stages else []):
        print(f"prediction, repeat {repeat + 1} of {settings.repeats}")
        child, report = runner.worker("reference-predict", {"model": model_dir, "adapter": str(adapter),
                                                            "predict_path": str(predict_path)})  # fmt: skip
        run["predict"]["reference"] = {**asdict(child), **{k: v for k, v in report.items() if k != "rows"}}
        reference_rows = {row["id"]: (row["label"], row["prob_positive"]) for row in report["rows"]}
        for mode, extra in modes.items():
            out = work / f"predictions-{repeat}-{mode.replace(' ', '-')}.csv"
            child, report = runner.main_py(f"ours-predict-{mode.replace(' ', '-')}",
                                           [*predict_args, "--predict_writer.output_path", str(out), *extra])
            run["predict"][mode] = {**asdict(child), **report}
            # Labels against the reference (the same adapter, unmerged torch fp32, one post per pass).
            run["agreement"][mode] = compare(reference_rows, read_predictions(out))
    results["runs"] = runs
    save_partial(args, results)

    # ---- the API: today's mode (torch fp32) against the fastest, alternating ----------------------------------
    try:
        results["api"] = api_throughput(runner, work, model_dir, str(adapter), settings, cpu) if "api" in args.stages else {}
    except Exception as err:  # the rest of the figures are worth keeping
        results["api"] = {}
        notes.append(f"the API comparison failed: {type(err).__name__}: {err}")
    save_partial(args, results)

    results["memory"] = memory_against_input_size(runner, work, common, texts, settings) if "memory" in args.stages else {}
    results["load_average_at_end"] = os.getloadavg()[0]
    # The floor under every child's peak RSS (see above): should be small.
    results["driver_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    threads = {report["torch_threads"] for run in runs for stage in ("train", "predict")
               for report in run[stage].values()}  # fmt: skip
    if results["machine"]["load_average_at_start"] > 0.5 * (os.cpu_count() or 1):
        notes.append(f"the 1-minute load average was {results['machine']['load_average_at_start']:.1f} when the run "
                     "started: unless that was a run that had just ended, other work shared the machine, and the "
                     "figures are low and noisy")
    if threads - {args.threads}:
        notes.append(f"torch threads differed between the processes: {sorted(threads)}, asked for {args.threads}")
    results["summary"] = summarise(results)
    return results


def memory_against_input_size(runner: Runner, work: Path, common: list[str], texts: list[str],
                              settings: Settings) -> dict[str, Any]:  # fmt: skip
    """Predict's peak memory with a small and a large input: a tiny model, so a million lines take minutes."""
    # One thread: this part measures memory, not speed, and a tiny model's small operations only lose from a
    # second thread (badly so when anything else runs on the machine and OpenMP threads wait for each other).
    small, large = settings.memory_lines
    print(f"predict memory, {small:,} vs {large:,} input lines (a GPT-2 of 2 layers x 32, 1 thread)")
    tiny = str(work / "tiny-model")
    runner.worker("build-model", {"out": tiny, "layers": 2, "width": 32, "heads": 2})
    memory = {}
    for lines in (small, large):
        path = write_posts(work / f"memory-{lines}.csv", [texts[i % len(texts)] for i in range(lines)])
        child, report = runner.main_py(f"ours-predict-{lines}-lines", [
            "predict", *common, "--model.model_name_or_path", tiny, "--data.predict_path", str(path),
            "--predict_writer.output_path", str(work / f"memory-{lines}-out.csv"),
            "--trainer.default_root_dir", str(work / f"memory-{lines}")], threads=1)  # fmt: skip
        memory[lines] = {**asdict(child), **report}
        path.unlink()  # up to a few hundred MB each
        (work / f"memory-{lines}-out.csv").unlink(missing_ok=True)
    # A short run can end before its worker has copied the parent's pages it touches (a fixed cost, not one that
    # grows with the input): within the long run, memory that grows with the input shows as a peak in its second
    # half above the one in its second quarter (the first holds the start-up).
    samples = memory[large]["tree_mb_samples"]
    quarter = samples[-1][0] / 4 if samples else 0
    early = [mb for t, mb in samples if quarter < t <= 2 * quarter] or [0.0]
    late = [mb for t, mb in samples if t > 2 * quarter] or [0.0]
    return {"small_lines": small, "large_lines": large, "small": memory[small], "large": memory[large],
            "rss_ratio": memory[large]["peak_rss_mb"] / memory[small]["peak_rss_mb"],
            "tree_ratio": memory[large]["peak_tree_mb"] / memory[small]["peak_tree_mb"],
            "large_second_quarter_peak_mb": max(early), "large_second_half_peak_mb": max(late)}


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


def save_partial(args: argparse.Namespace, results: dict[str, Any]) -> None:
    """What is measured so far, beside --out, so that a failure later in a long run loses nothing."""
    if args.out:
        args.out.with_suffix(".partial.json").write_text(json.dumps(results, indent=1, ensure_ascii=False), "utf-8")


def api_throughput(runner: Runner, work: Path, model_dir: str, adapter: str, settings: Settings,
                   cpu: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """texts/s of the HTTP API under ``settings.api_load`` (texts per request, clients, requests): the server in
    today's mode (torch fp32) and in the fastest (onnxruntime int8), started in turn, ``repeats`` times each, on
    the same model."""
    import socket
    import urllib.request

    from api_latency import measure

    posts = [text for _, text in read_rows(POSTS)]
    modes = {"torch fp32": [], "onnxruntime int8": ["--quantize", "int8"]}
    figures: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    texts, clients, requests = settings.api_load
    print(f"API: {texts} texts x {clients} clients, {requests} requests")
    for repeat in range(settings.repeats):
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


# =====================================================================================================================
# Figures and the table
# =====================================================================================================================


def figures(report: dict[str, Any], unit: str, flops_per_token: int) -> dict[str, float]:
    """One side's rates in one repeat (``unit``: samples or posts)."""
    return {
        f"{unit}_per_s": report[unit] / report["seconds"],
        "real_tokens_per_s": report["real_tokens"] / report["seconds"],
        "real_tokens_per_sample": report["real_tokens"] / report[unit],
        "padding_share": 1 - report["real_tokens"] / report["padded_tokens"],
        "gflops": flops_per_token * report["real_tokens"] / report["seconds"] / 1e9,
        "peak_rss_mb": report["peak_rss_mb"],
        "peak_tree_mb": report["peak_tree_mb"],
        "wall_seconds": report["wall_seconds"],
    }


def peak_kind(side: str) -> str:
    """Which of the machine's matmul peaks limits a side: int8 and bf16 modes by their own, the rest by fp32's."""
    return next((kind for kind in ("int8", "bf16") if kind in side), "fp32")


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    """Medians over the repeats, FLOP/s from the model's non-embedding parameters and the real tokens."""
    runs = results["runs"]
    params = results["model_figures"]["non_embedding_parameters"]
    peaks = results["matmul"]["peaks"]
    # Forward ~ 2 FLOPs per parameter per token (attention's own T^2 term ignored); training with a frozen
    # backbone ~ 2 x forward (backward through the activations, no weight gradients but LoRA's).
    flops_per_token = {"train": 4 * params, "predict": 2 * params}
    corpus_mean = results["model_figures"]["corpus_real_tokens_per_post"]
    summary: dict[str, Any] = {"non_embedding_parameters": params, "peaks": peaks,
                               "corpus_real_tokens_per_post": corpus_mean}  # fmt: skip
    for stage, unit in (("train", "samples"), ("predict", "posts")):
        summary[stage] = {}
        for side in runs[0][stage]:
            per_run = [figures(run[stage][side], unit, flops_per_token[stage]) for run in runs if run[stage]]
            summary[stage][side] = {key: statistics.median(f[key] for f in per_run) for key in per_run[0]}
            # Each mode against the peak of the units it computes on: int8 and bf16 run on faster ones than fp32.
            kind = peak_kind(side)
            summary[stage][side]["peak_kind"] = kind
            summary[stage][side]["share_of_peak"] = summary[stage][side]["gflops"] / peaks[kind]
    # Our batches are grouped by length, so a stretch of 16 batches holds ~16 independent lengths, not 256: its
    # mean post length strays from the corpus's by ~10-20 %. Our cost per post follows its length, the reference's
    # does not (always 128 tokens), so ours at the corpus's mean length is its real tokens/s over that mean.
    for side, figure in summary["train"].items():
        if side != "reference":
            figure["samples_per_s_at_corpus_mean_length"] = figure["real_tokens_per_s"] / corpus_mean
    summary["agreement"] = {
        mode: {"same_label": sum(run["agreement"][mode]["same_label"] for run in runs),
               "posts": sum(run["agreement"][mode]["posts"] for run in runs),
               "max_abs_prob_diff": max(run["agreement"][mode]["max_abs_prob_diff"] or 0 for run in runs)}
        for mode in runs[0]["agreement"] if all(run["agreement"] for run in runs)
    }  # fmt: skip
    return summary


def table(results: dict[str, Any]) -> str:
    s, machine, memory, api = results["summary"], results["machine"], results["memory"], results["api"]
    peaks = results["matmul"]["peaks"]

    def num(value: Optional[float], digits: int = 1) -> str:
        return "—" if value is None else f"{value:,.{digits}f}"

    def ratio(ours: Optional[float], reference: Optional[float]) -> str:
        return "—" if not ours or not reference else f"{ours / reference:.2f}×"

    lines = [
        f"CPU: {machine['cpu']}",
        (f"{machine['cores']} cores, torch threads {machine['torch_threads']}; torch {machine['torch']}, "
         f"onnxruntime {machine['onnxruntime']}; {machine['date']}; 1-min load average "
         f"{machine['load_average_at_start']:.1f} at the start, {results['load_average_at_end']:.1f} at the end"),
        (f"`{machine['command']}`; model: {results['model']}, "
         f"{s['non_embedding_parameters'] / 1e6:.1f} M non-embedding parameters; medians of "
         f"{results['settings']['repeats']} alternating repeat(s); stages: {', '.join(results['stages'])}"),
        ("matmul peaks (best shape, best of several windows): " + ", ".join(
            f"{kind} {rate:.0f} G{'OP' if kind == 'int8' else 'FLOP'}/s {results['matmul']['best_shape'][kind]}"
            + (" (onnxruntime)" if kind == "int8" else " (torch.mm)") for kind, rate in peaks.items())),
        "",
        "| stage | side / mode | posts or samples/s | × reference | padding | GFLOP/s (% of its peak) | "
        "peak MB (with workers) | same label as the reference | max \\|Δ prob\\| |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for stage, unit in (("train", "samples"), ("predict", "posts")):
        if not s[stage]:
            continue
        reference = s[stage]["reference"][f"{unit}_per_s"]
        for side, f in s[stage].items():
            rate = num(f[f"{unit}_per_s"], 2)
            if stage == "train" and side != "reference":
                at_mean = f["samples_per_s_at_corpus_mean_length"]
                rate += f" ({num(at_mean, 2)} at the mean length, {ratio(at_mean, reference)})"
            agree = s["agreement"].get(side) if stage == "predict" else None
            agreement = f"{agree['same_label']} of {agree['posts']} ({agree['same_label'] / agree['posts']:.1%})" if agree else ""
            diff = f"{agree['max_abs_prob_diff']:.1e}" if agree else ""
            lines.append(f"| {stage} | {side} | {rate} | {ratio(f[f'{unit}_per_s'], reference)} | "
                         f"{f['padding_share']:.0%} | {num(f['gflops'])} ({f['share_of_peak']:.0%} of {f['peak_kind']}) | "
                         f"{num(f['peak_rss_mb'], 0)} ({num(f['peak_tree_mb'], 0)}) | {agreement} | {diff} |")  # fmt: skip
    if api:
        base = api["torch fp32"]["texts/s"]
        for mode, figure in api.items():
            texts, clients, _ = results["settings"]["api_load"]
            lines.append(f"| API, {texts} texts × {clients} "
                         f"clients | {mode} | {num(figure['texts/s'])} texts/s, p50 {figure['p50 ms']:.0f} ms | "
                         f"{ratio(figure['texts/s'], base)} of torch fp32 | | | | | |")  # fmt: skip
    for mode, first in results["first_runs"].items():
        lines.append(f"| predict, first run (exports) | {mode} | wall {first['wall_seconds']:.1f} s (later runs: "
                     f"{s['predict'][mode]['wall_seconds']:.1f} s) | | | | {first['peak_rss_mb']:,.0f} "
                     f"({first['peak_tree_mb']:,.0f}) | | |")  # fmt: skip
    if memory:
        small, large = memory["small"], memory["large"]
        lines += ["", (
            f"predict peak RSS, {memory['small_lines']:,} → {memory['large_lines']:,} input lines (GPT-2 2 × 32, "
            f"1 thread): {small['peak_rss_mb']:,.0f} → {large['peak_rss_mb']:,.0f} MB ({memory['rss_ratio']:.2f}×); "
            f"with workers {small['peak_tree_mb']:,.0f} → {large['peak_tree_mb']:,.0f} MB "
            f"({memory['tree_ratio']:.2f}×); within the {memory['large_lines']:,}-line run, peak with workers in its "
            f"2nd quarter → 2nd half: {memory['large_second_quarter_peak_mb']:,.0f} → "
            f"{memory['large_second_half_peak_mb']:,.0f} MB; {large['posts'] / large['seconds']:,.0f} posts/s")]
    return "\n".join(lines + [f"\nNote: {note}" for note in results["notes"]])


def stage_list(value: str) -> list[str]:
    stages = [stage.strip() for stage in value.split(",") if stage.strip()]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown or not stages:
        raise argparse.ArgumentTypeError(f"{value!r}: stages are {', '.join(STAGES)}")
    return [stage for stage in STAGES if stage in stages]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small model and little work: about 3 minutes")
    parser.add_argument("--model", help="an existing model directory (default: a random GPT-2 of the real shape)")
    parser.add_argument("--posts", type=Path, default=POSTS, help="labelled posts (label,review) to train and label")
    parser.add_argument("--timed-steps", type=int, help="training batches timed after the warm-up")
    parser.add_argument("--warmup-steps", type=int, help="training batches left out at the start")
    parser.add_argument("--predict-posts", type=int, help="posts to label, drawn from --posts")
    parser.add_argument("--memory-lines", type=int, nargs=2, metavar=("SMALL", "LARGE"),
                        help="input lines of the two memory runs")  # fmt: skip
    parser.add_argument("--repeats", type=int, help="alternating reference/ours rounds")
    parser.add_argument("--threads", type=int, help="torch threads on every side (default: torch's default here)")
    parser.add_argument("--out", type=Path, help="write every raw figure here as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, predictions, adapters)")
    parser.add_argument("--stages", type=stage_list, default=list(STAGES),
                        help=f"comma-separated, of {','.join(STAGES)} (default: all); without train, the reference "
                             "still trains once, untimed, for the adapter that prediction labels with")  # fmt: skip
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args.worker, args.spec)
        return

    settings = QUICK if args.quick else Settings()
    overrides = {"timed_steps": args.timed_steps, "warmup_steps": args.warmup_steps, "repeats": args.repeats,
                 "predict_posts": args.predict_posts,
                 "memory_lines": tuple(args.memory_lines) if args.memory_lines else None}  # fmt: skip
    settings = Settings(**{**asdict(settings), **{k: v for k, v in overrides.items() if v is not None}})
    if not args.threads:  # torch's own default here (physical cores, or OMP_NUM_THREADS), asked outside this process
        args.threads = int(subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                                          capture_output=True, text=True, check=True).stdout)  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="speed-"))
    start = time.perf_counter()
    try:
        results = run_benchmark(args, settings, work)
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    results["total_seconds"] = time.perf_counter() - start
    print()
    print(table(results))
    print(f"\ntotal {results['total_seconds'] / 60:.1f} min")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1, ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":
    main()
