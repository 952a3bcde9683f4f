"""int8 against fp32 on held-out posts, and whether a post's probability depends on the posts beside it.

    python benchmarks/int8_agreement.py --config configs/quickstart.yaml --ckpt_path last
    python benchmarks/int8_agreement.py --config configs/quickstart.yaml --ckpt_path last \\
        --posts ../shared/data/weibo_senti_100k/weibo_senti_100k_part.csv --limit 2000
    python benchmarks/int8_agreement.py --ckpt_path <a checkpoint of benchmarks/recipe.py's m3e-small> \\
        --posts <its held-out posts> --limit 2000

Labels the held-out posts (``neutral_band.held_out_posts``: by default the quickstart's 400 validation posts and the
200 bundled ones) with torch fp32, onnxruntime fp32 and both int8 schemes through the Python API, and prints, for
each mode against torch fp32: labels that agree, the largest and the 99th-percentile |Δ prob_positive|; and, on
the first ``--alone`` posts, the largest difference between a post labelled alone and in its batch of 64.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

MODES = {"torch fp32": {}, "onnxruntime fp32": {"runtime": "onnxruntime"}, "onnxruntime int8": {"quantize": "int8"},
         "onnxruntime int8-dynamic": {"quantize": "int8-dynamic"}}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="the config the model was trained with (needed for --ckpt_path last); "
                        "default: the checkpoint's own base model and settings")
    parser.add_argument("--ckpt_path", default="last")
    parser.add_argument("--posts", type=Path, help="a labelled file (label,review); default: the quickstart's held-out posts")
    parser.add_argument("--limit", type=int, default=2_000)
    parser.add_argument("--alone", type=int, default=256, help="posts also labelled one at a time")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from neutral_band import held_out_posts

    from weibo_sentiment import SentimentAnalyzer
    from weibo_sentiment.hardware import describe_cpu

    texts = [text for text, _ in held_out_posts(args.posts, args.limit)]
    probabilities, alone = {}, {}
    for mode, options in MODES.items():
        analyzer = SentimentAnalyzer.load(args.ckpt_path, config=args.config, **options)
        # Unsorted batches of 64 (the order of the file): a post shares its batch with posts of other lengths.
        probabilities[mode] = [row.prob_positive for start in range(0, len(texts), 64)
                               for row in analyzer.predict(texts[start : start + 64])]  # fmt: skip
        alone[mode] = [analyzer.predict([text])[0].prob_positive for text in texts[: args.alone]]
        analyzer.close()
    reference = probabilities["torch fp32"]
    results = {}
    for mode, probs in probabilities.items():
        diffs = sorted(abs(a - b) for a, b in zip(probs, reference))
        results[mode] = {
            "same_label": sum((a >= 0.5) == (b >= 0.5) for a, b in zip(probs, reference)),
            "posts": len(texts),
            "max_abs_prob_diff": diffs[-1],
            "p99_abs_prob_diff": diffs[int(0.99 * (len(diffs) - 1))],
            "alone_vs_batch_max_diff": max(abs(a - b) for a, b in zip(alone[mode], probs)),
            "median_prob_positive": statistics.median(probs),
        }
    print(f"CPU: {describe_cpu()}; {len(texts)} held-out posts; {args.alone} also labelled alone\n")
    print("| mode | labels as torch fp32 | max \\|Δ prob\\| | 99th pct \\|Δ prob\\| | alone vs in a batch of 64 |")
    print("| --- | --- | --- | --- | --- |")
    for mode, r in results.items():
        print(f"| {mode} | {r['same_label']:,} of {r['posts']:,} ({r['same_label'] / r['posts']:.2%}) | "
              f"{r['max_abs_prob_diff']:.1e} | {r['p99_abs_prob_diff']:.1e} | {r['alone_vs_batch_max_diff']:.1e} |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
