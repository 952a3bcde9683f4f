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
The parts live in modules of their own, on one harness (``harness.py``: subprocesses, their timing and memory):
``reference.py`` (the original scripts), ``fit_speed.py`` (our fit per precision; alone, fp32 against bf16-mixed),
``matmul_peak.py``, ``predict_memory.py`` and ``api_latency.api_throughput``.
Also measured: the machine's fp32 matrix-multiply peak (for achieved FLOP/s as a share of it), an int8 predict
mode when ``main.py`` has one, and whether predict's peak memory stays flat from 1,000 to 1,000,000 input lines.
Memory is each process's peak RSS from ``wait4`` and, since our predict reads in a DataLoader worker process whose
memory that peak leaves out (it is a maximum over the processes, not a sum), the sampled peak of the process with
its workers. Prints a Markdown table; ``--out FILE`` keeps every raw figure as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from api_latency import api_throughput
from fit_speed import fit_arguments, fit_modes, time_fits
from harness import CONFIG, POSTS, Runner, compare, machine_info, read_predictions, read_rows, torch_threads, write_posts
from predict_memory import memory_against_input_size


ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
CONFIG = ROOT / "configs" / "gpt2_chinese_lora.yaml"
POSTS = ROOT / "data" / "sample" / "weibo_senti_4k.csv"
STAGES = ("train", "predict", "api", "memory")  # what a run measures, in the order it runs them


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
# The driver: prepares the model and the posts, runs every side in a subprocess, and reports.
# =====================================================================================================================


def predict_modes(native_bf16: bool) -> dict[str, list[str]]:
    """Our inference modes, as main.py flags (bf16 only where the CPU has it: emulated bf16 is slower than fp32)."""
    modes = {"torch fp32": [], "onnxruntime fp32": ["--model.runtime", "onnxruntime"],
             "onnxruntime int8": ["--model.quantize", "int8"],
             "onnxruntime int8-dynamic": ["--model.quantize", "int8-dynamic"]}  # fmt: skip
    if native_bf16:
        modes["torch bf16"] = ["--trainer.precision", "bf16-mixed"]
    return modes


def run_benchmark(args: argparse.Namespace, settings: Settings, work: Path) -> dict[str, Any]:
    # This process imports neither torch nor the project and holds no model: a child's ru_maxrss starts from its
    # parent's peak (exec records the memory it replaces), so a big driver would raise every figure to its own.
    runner = Runner(work, args.threads)
    _, cpu = runner.worker("harness:cpu_info", {})
    results: dict[str, Any] = {"settings": asdict(settings), "machine": machine_info(args.threads, cpu, "speed.py"), "notes": [],
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
        runner.worker("harness:build_model", {"out": model_dir, "layers": layers, "width": width, "heads": heads})
    results["model"] = args.model or f"random GPT-2, {layers} layers x {width}, 21,128-token vocab"
    rows = read_rows(args.posts)
    texts = [text for _, text in rows]
    sample = random.Random(0).sample(texts, min(settings.predict_posts, len(texts)))
    predict_path = write_posts(work / "predict.csv", sample)
    steps = settings.warmup_steps + settings.timed_steps + 1  # +1: the last batch has no next start to close it
    common = ["--config", str(CONFIG), "--model.model_name_or_path", model_dir, "--trainer.enable_progress_bar",
              "false", "--trainer.enable_model_summary", "false"]  # fmt: skip
    fit_args = fit_arguments(model_dir, args.posts, work, steps)
    modes, fits = predict_modes(cpu["native_bf16"]), fit_modes(cpu["native_bf16"])
    if not cpu["native_bf16"]:
        notes.append("bf16: this CPU has neither AVX512_BF16 nor AMX (bf16 would be emulated, slower than fp32); "
                     "the bf16 modes were not run")  # fmt: skip

    print("matrix-multiply peak")
    _, results["matmul"] = runner.worker("matmul_peak:matmul_peak", {"repeats": settings.matmul_repeats,
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
        child, report = runner.worker("reference:reference_train", {"model": model_dir, "train_path": str(args.posts),
                                                          "steps": steps, "warmup_steps": settings.warmup_steps,
                                                          "adapter_out": str(adapter if repeat == 0 else
                                                                             work / f"adapter-{repeat}")})  # fmt: skip
        if repeat == 0:  # the model's size and the corpus's mean length, whichever stages run
            results["model_figures"] = {key: report[key] for key in ("non_embedding_parameters",
                                                                     "corpus_real_tokens_per_post")}  # fmt: skip
        if "train" not in args.stages:
            break
        run["train"]["reference"] = {**asdict(child), **report}
        run["train"].update(time_fits(runner, fit_args, fits, settings.warmup_steps, work, repeat))

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
        child, report = runner.worker("reference:reference_predict", {"model": model_dir, "adapter": str(adapter),
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
        results["api"] = api_throughput(runner, work, model_dir, str(adapter), settings.api_load,
                                        settings.repeats) if "api" in args.stages else {}
    except Exception as err:  # the rest of the figures are worth keeping
        results["api"] = {}
        notes.append(f"the API comparison failed: {type(err).__name__}: {err}")
    save_partial(args, results)

    results["memory"] = memory_against_input_size(runner, work, common, texts,
                                                  settings.memory_lines) if "memory" in args.stages else {}
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


def save_partial(args: argparse.Namespace, results: dict[str, Any]) -> None:
    """What is measured so far, beside --out, so that a failure later in a long run loses nothing."""
    if args.out:
        args.out.with_suffix(".partial.json").write_text(json.dumps(results, indent=1, ensure_ascii=False), "utf-8")


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
    args = parser.parse_args()

    settings = QUICK if args.quick else Settings()
    overrides = {"timed_steps": args.timed_steps, "warmup_steps": args.warmup_steps, "repeats": args.repeats,
                 "predict_posts": args.predict_posts,
                 "memory_lines": tuple(args.memory_lines) if args.memory_lines else None}  # fmt: skip
    settings = Settings(**{**asdict(settings), **{k: v for k, v in overrides.items() if v is not None}})
    args.threads = args.threads or torch_threads()
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
