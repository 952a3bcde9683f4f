"""Our training speed in each precision: ``main.py fit`` in fp32 and in bf16-mixed, alternating, on the same batches.

    python benchmarks/fit_speed.py                          # a random GPT-2 of the real shape (12 x 768), ~10 min
    python benchmarks/fit_speed.py --model /models/m3e-small --repeats 3 --timed-steps 64

Each run is ``python main.py fit`` in a subprocess of its own (``harness.Runner``), timed from inside by
``speed_meter.StepTimer``: the first ``--warmup-steps`` batches left out, then ``--timed-steps`` batches. With the
same seed every mode trains on the same batches in the same order, so a ratio between modes is a ratio of speeds
on the same work; a ratio is taken within a repeat, whose runs follow each other, and the median of the repeats'
ratios reported. bf16-mixed runs only where the CPU has native bf16 (AVX512_BF16 or AMX) or on a GPU: emulated,
it is slower than fp32. ``speed.py`` runs the same fits beside the original recipe's training (``reference.py``).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from harness import CONFIG, POSTS, Runner, machine_info, read_rows, torch_threads

# Our fit runs no validation (limit_val_batches 0), so val_f1_mean, which the config's EarlyStopping and checkpoint
# monitor, is never logged: EarlyStopping (strict) would stop the run with an error at the end of training, and the
# checkpoint would warn. Replace the config's callback list by its other member, and checkpoint without a monitor.
FIT_WITHOUT_VALIDATION = ["--trainer.callbacks=lightning.pytorch.callbacks.LearningRateMonitor",
                          "--trainer.callbacks.logging_interval=step", "--checkpoint.monitor=null"]  # fmt: skip


def fit_modes(native_bf16: bool) -> dict[str, list[str]]:
    """Our training precisions, as main.py flags (bf16 only where the CPU has it: emulated bf16 is slower)."""
    return {"fp32": [], **({"bf16-mixed": ["--trainer.precision", "bf16-mixed"]} if native_bf16 else {})}


def fit_arguments(model_dir: str, posts: Path, work: Path, steps: int) -> list[str]:
    """``main.py fit`` flags that train ``steps`` batches of ``posts`` and nothing else (no validation)."""
    # Our fit holds no posts out when given a validation file; a tiny one, never run (limit_val_batches 0).
    val_path = work / "val.csv"
    with open(val_path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([("label", "review"), *read_rows(posts)[:16]])
    return ["fit", "--config", str(CONFIG), "--model.model_name_or_path", model_dir, "--trainer.enable_progress_bar",
            "false", "--trainer.enable_model_summary", "false", "--data.train_path", str(posts), "--data.val_path",
            str(val_path), "--trainer.max_steps", str(steps), "--trainer.limit_val_batches", "0",
            "--trainer.num_sanity_val_steps", "0", *FIT_WITHOUT_VALIDATION,
            # one view per post, whatever the config's recipe (the reference trains one)
            "--data.emoticon_dropout", "0", "--data.emoticon_views", "1"]  # fmt: skip


def time_fits(runner: Runner, arguments: list[str], modes: dict[str, list[str]], warmup_steps: int, work: Path,
              repeat: int) -> dict[str, dict[str, Any]]:  # fmt: skip
    """One run of ``main.py fit`` per mode, in turn: each one's wall time and memory (``harness.Child``) and what
    ``StepTimer`` timed (seconds, samples, real and padded tokens of the timed batches)."""
    reports = {}
    for mode, extra in modes.items():
        root = work / f"ours-fit-{repeat}-{mode}"
        child, report = runner.main_py(f"ours-fit-{mode}", [*arguments, "--trainer.default_root_dir", str(root),
                                                            *extra], warmup_steps)  # fmt: skip
        reports[mode] = {**asdict(child), **report}
    return reports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="an existing model directory (default: a random GPT-2 of the real shape)")
    parser.add_argument("--posts", type=Path, default=POSTS, help="labelled posts (label,review) to train on")
    parser.add_argument("--warmup-steps", type=int, default=3, help="training batches left out at the start")
    parser.add_argument("--timed-steps", type=int, default=32, help="training batches timed after the warm-up")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds of every mode")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's default here)")
    parser.add_argument("--out", type=Path, help="every run's figures as JSON")
    args = parser.parse_args()
    args.threads = args.threads or torch_threads()
    work = Path(tempfile.mkdtemp(prefix="fit-speed-"))
    try:
        runner = Runner(work, args.threads)
        _, cpu = runner.worker("harness:cpu_info", {})
        print(f"CPU: {cpu['description']}")
        model_dir = args.model or str(work / "model")
        if not args.model:
            runner.worker("harness:build_model", {"out": model_dir, "layers": 12, "width": 768, "heads": 12})
        modes = fit_modes(cpu["native_bf16"])
        if len(modes) == 1:
            print("bf16: this CPU has neither AVX512_BF16 nor AMX (bf16 would be emulated): fp32 only")
        arguments = fit_arguments(model_dir, args.posts, work, args.warmup_steps + args.timed_steps + 1)
        runs = [time_fits(runner, arguments, modes, args.warmup_steps, work, repeat) for repeat in range(args.repeats)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    machine = machine_info(args.threads, cpu, "fit_speed.py")
    print(f"\nCPU: {machine['cpu']}; {machine['cores']} cores, torch threads {args.threads}, torch {machine['torch']}; "
          f"{machine['date']}; model: {args.model or 'random GPT-2 12 x 768'}; {args.timed_steps} batches timed "
          f"after {args.warmup_steps}, {args.repeats} alternating repeats\n")  # fmt: skip
    print("| mode | samples/s (median) | real tokens/s (median) | × fp32 (median of the repeats' ratios) | per repeat |")
    print("| --- | --- | --- | --- | --- |")
    for mode in modes:
        rates = [run[mode]["samples"] / run[mode]["seconds"] for run in runs]
        tokens = [run[mode]["real_tokens"] / run[mode]["seconds"] for run in runs]
        ratios = [(run[mode]["samples"] / run[mode]["seconds"]) / (run["fp32"]["samples"] / run["fp32"]["seconds"])
                  for run in runs]  # fmt: skip
        print(f"| {mode} | {statistics.median(rates):.2f} | {statistics.median(tokens):.0f} | "
              f"{statistics.median(ratios):.2f}× | {', '.join(f'{r:.2f}×' for r in ratios)} |")
    if args.out:
        args.out.write_text(json.dumps({"machine": machine, "runs": runs}, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
