"""val_f1 and val_f1_text for several `data.emoticon_dropout` values, each a real `fit` through the CLI.

    python benchmarks/emoticon_dropout.py --config configs/quickstart.yaml
    python benchmarks/emoticon_dropout.py --config configs/quickstart.yaml --from-scratch \
        --train-path ../shared/data/weibo_senti_100k/weibo_senti_100k_part.csv --epochs 1

`--from-scratch` trains a randomly initialised small GPT-2 (2 layers, 64 wide, the real vocabulary)
instead of the config's backbone. Prints one markdown table row per value: the last validation's figures.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tools/ sits beside the package, not in it
from tools.tiny_models import build_gpt2  # noqa: E402
from weibo_sentiment.cli import SentimentCLI  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--train-path", help="labelled posts (default: the config's data.train_path)")
    parser.add_argument("--from-scratch", action="store_true", help="a randomly initialised small GPT-2")
    parser.add_argument("--epochs", type=int, help="trainer.max_epochs (default: the config's)")
    parser.add_argument("--dropouts", type=float, nargs="+", default=[0.0, 0.3, 0.5, 0.8])
    parser.add_argument("--two-views", action="store_true",
                        help="also runs with data.emoticon_views 2 and model.view_consistency 1.0 and 0.1")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="emoticon-dropout-"))
    extra = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    if args.train_path:
        extra += ["--data.train_path", args.train_path]
    if args.epochs:
        extra += ["--trainer.max_epochs", str(args.epochs)]
    if args.from_scratch:
        extra += ["--model.model_name_or_path", str(build_gpt2(work / "scratch-gpt2", n_embd=64, n_layer=2, n_head=2))]
    variants = {str(dropout): ["--data.emoticon_dropout", str(dropout)] for dropout in args.dropouts}
    if args.two_views:
        for weight in ("1.0", "0.1"):
            variants[f"two views, lambda {weight}"] = ["--data.emoticon_dropout", "0", "--data.emoticon_views", "2",
                                                       "--model.view_consistency", weight]  # fmt: skip
    rows = []
    for name, flags in variants.items():
        start = time.perf_counter()
        cli = SentimentCLI(args=["fit", "--config", args.config, *flags,
                                 "--trainer.default_root_dir", str(work / name.replace(" ", "-").replace(",", "")), *extra])  # fmt: skip
        metrics = cli.trainer.callback_metrics
        rows.append(f"| {name} | {metrics['val_f1']:.4f} | {metrics['val_f1_text']:.4f} | "
                    f"{cli.trainer.current_epoch} | {time.perf_counter() - start:.0f} s |")  # fmt: skip
        print(rows[-1], flush=True)
    print("\n| emoticon_dropout | val_f1 | val_f1_text | epochs | wall time |\n| --- | --- | --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
