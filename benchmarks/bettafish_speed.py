"""The BettaFish drop-in's ``analyze_batch`` against ``main.py predict`` on the same posts, in the same mode.

    python benchmarks/bettafish_speed.py --config configs/quickstart.yaml --ckpt_path last --posts 1000 --repeats 3

Both label the same ``--posts`` real posts (from ``data/sample/weibo_senti_4k.csv``), alternating ``--repeats``
times, each in a process of its own with the same thread count: ``analyze_batch`` timed around the call (the model
loaded before), ``main.py predict`` from inside its predict loop (``speed_meter.StepTimer``: reading, batching and
writing included, start-up left out). Prints posts per second, medians, and the ratio, beside the CPU.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODES = {"torch fp32": {}, "onnxruntime int8": {"quantize": "int8"}}


def analyzer_worker(spec: dict) -> None:
    from weibo_sentiment.integrations.bettafish import WeiboSentimentAnalyzer

    analyzer = WeiboSentimentAnalyzer(model=spec["ckpt_path"], config=spec["config"], neutral_band=False, **spec["mode"])
    assert analyzer.initialize(), analyzer.disable_reason
    analyzer.analyze_batch(spec["texts"][:64], show_progress=False)  # warm-up, as predict's first batches are
    started = time.perf_counter()
    result = analyzer.analyze_batch(spec["texts"], show_progress=True)
    seconds = time.perf_counter() - started
    print(json.dumps({"posts": result.total_processed, "seconds": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--ckpt_path", default="last")
    parser.add_argument("--posts", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        analyzer_worker(json.loads(Path(args.worker).read_text(encoding="utf-8")))
        return

    sys.path.insert(0, str(ROOT))
    from weibo_sentiment.hardware import describe_cpu
    from weibo_sentiment.inference.model_source import locate_checkpoint

    ckpt = str(locate_checkpoint(args.ckpt_path, None, None)) if args.ckpt_path == "last" else args.ckpt_path
    with open(ROOT / "data" / "sample" / "weibo_senti_4k.csv", encoding="utf-8") as f:
        texts = [row["review"] for row in csv.DictReader(f)][: args.posts]
    work = Path(tempfile.mkdtemp(prefix="bettafish-speed-"))
    with open(work / "posts.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["review"])
        writer.writerows([t] for t in texts)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "benchmarks"), str(ROOT)]),
           "WEIBO_SENTIMENT_CACHE": str(work / "onnx-cache")}  # fmt: skip
    figures: dict[str, dict[str, list[float]]] = {}
    print(f"CPU: {describe_cpu()}; {len(texts)} posts", flush=True)
    for repeat in range(args.repeats):
        for mode, options in ((m, MODES[m]) for m in args.modes):
            spec = work / "spec.json"
            spec.write_text(json.dumps({"ckpt_path": ckpt, "config": args.config, "texts": texts, "mode": options}),
                            encoding="utf-8")  # fmt: skip
            result = subprocess.run([sys.executable, __file__, "--worker", str(spec)], cwd=ROOT, env=env,
                                    capture_output=True, text=True, check=True)  # fmt: skip
            analyzer = json.loads(result.stdout.strip().splitlines()[-1])
            report = work / "timing.json"
            flags = ["--model.quantize", "int8"] if options else []
            subprocess.run([sys.executable, "main.py", "predict", "--config", args.config, "--ckpt_path", ckpt, *flags,
                            "--data.predict_path", str(work / "posts.csv"), "--data.id_column", "null",
                            "--predict_writer.output_path", str(work / "out.csv"), "--trainer.logger", "false",
                            "--trainer.enable_progress_bar", "false", "--trainer.callbacks+=speed_meter.StepTimer",
                            f"--trainer.callbacks.report_path={report}"], cwd=ROOT, env=env, check=True,
                           capture_output=True)  # fmt: skip
            timing = json.loads(report.read_text(encoding="utf-8"))
            for side, (posts, seconds) in (("analyze_batch", (analyzer["posts"], analyzer["seconds"])),
                                           ("main.py predict", (timing["posts"], timing["seconds"]))):  # fmt: skip
                figures.setdefault(mode, {}).setdefault(side, []).append(posts / seconds)
            print(f"  round {repeat + 1}, {mode}: analyze_batch {figures[mode]['analyze_batch'][-1]:,.0f} posts/s, "
                  f"main.py predict {figures[mode]['main.py predict'][-1]:,.0f} posts/s", flush=True)
    print(f"\nCPU: {describe_cpu()}\n\n| mode | analyze_batch posts/s | main.py predict posts/s | ratio |\n"
          "| --- | --- | --- | --- |")
    for mode, sides in figures.items():
        ours, predict = statistics.median(sides["analyze_batch"]), statistics.median(sides["main.py predict"])
        print(f"| {mode} | {ours:,.0f} | {predict:,.0f} | {ours / predict:.2f} |")


if __name__ == "__main__":
    main()
