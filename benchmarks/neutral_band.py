"""Where a model is no better than chance: accuracy by ``prob_positive`` on held-out posts, and the neutral band it
suggests (the README's default band comes from here).

    python benchmarks/neutral_band.py --config configs/quickstart.yaml --ckpt_path last
    python benchmarks/neutral_band.py --config configs/quickstart.yaml --ckpt_path last \\
        --posts ../shared/data/weibo_senti_100k/weibo_senti_100k_part.csv --limit 10000

Held-out posts: by default the quickstart's own validation split of ``data/sample/weibo_senti_4k.csv`` (the 400
posts ``fit`` held out, same seed) and the 200 bundled ``posts.csv``; with ``--posts``, a labelled file's posts that
are not in ``data/sample`` (``--limit`` of them, drawn with a fixed seed). Each post is labelled as written and
without its emoticon tags (as BettaFish's crawler stores posts). The band is the widest interval around 0.5, in
steps of ``--step``, inside which the model's accuracy stays at most ``--near_chance`` (0.6: ten points above a
coin's); its width and the share of posts it holds are printed for both conditions.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SAMPLE = ROOT / "data" / "sample"


def held_out_posts(posts: Path | None, limit: int, seed: int = 0) -> list[tuple[str, int]]:
    from weibo_sentiment.data.readers import read_labelled, stratified_split

    if posts is None:
        sample = read_labelled(str(SAMPLE / "weibo_senti_4k.csv"), "review", "label")
        _, val = stratified_split([post.label for post in sample], 0.1, 42)  # the quickstart's held-out split
        with open(SAMPLE / "posts.csv", encoding="utf-8") as f, open(SAMPLE / "posts_labels.csv", encoding="utf-8") as g:
            bundled = [(row["review"], int(label["label"])) for row, label in zip(csv.DictReader(f), csv.DictReader(g))]
        return [(sample[i].text, sample[i].label) for i in val] + bundled
    seen = set()
    for name in ("weibo_senti_4k.csv", "posts.csv"):
        with open(SAMPLE / name, encoding="utf-8") as f:
            seen |= {row["review"] for row in csv.DictReader(f)}
    rows = [(post.text, post.label) for post in read_labelled(str(posts), "review", "label") if post.text not in seen]
    random.Random(seed).shuffle(rows)
    return rows[:limit]


def band_for(probabilities: list[float], labels: list[int], near_chance: float, step: float) -> dict[str, Any]:
    """The widest band [0.5 - w, 0.5 + w] (w in steps) whose posts the model labels right at most ``near_chance``
    of the time, with its accuracy and share of posts."""
    best = {"band": None, "width": 0.0, "share": 0.0, "accuracy_inside": None}
    for steps in range(1, int(0.5 / step) + 1):
        low, high = round(0.5 - steps * step, 4), round(0.5 + steps * step, 4)
        inside = [(p >= 0.5) == bool(y) for p, y in zip(probabilities, labels) if low <= p <= high]
        if not inside:
            continue
        accuracy = sum(inside) / len(inside)
        if accuracy > near_chance:
            break
        best = {"band": [low, high], "width": round(high - low, 4), "share": round(len(inside) / len(labels), 4),
                "accuracy_inside": round(accuracy, 4), "posts_inside": len(inside)}  # fmt: skip
    return best


def by_bins(probabilities: list[float], labels: list[int], bins: int = 10) -> list[dict[str, Any]]:
    table = []
    for b in range(bins):
        low, high = b / bins, (b + 1) / bins
        inside = [(p >= 0.5) == bool(y) for p, y in zip(probabilities, labels) if low <= p < high or (b == bins - 1 and p == 1.0)]
        table.append({"prob_positive": f"{low:.1f}-{high:.1f}", "posts": len(inside),
                      "accuracy": round(sum(inside) / len(inside), 3) if inside else None})  # fmt: skip
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--ckpt_path", default="last")
    parser.add_argument("--posts", type=Path, help="a labelled file (label,review); default: the quickstart's held-out posts")
    parser.add_argument("--limit", type=int, default=10_000)
    parser.add_argument("--near_chance", type=float, default=0.6)
    parser.add_argument("--step", type=float, default=0.025)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from weibo_sentiment import SentimentAnalyzer
    from weibo_sentiment.emoticons import EmoticonTags

    posts = held_out_posts(args.posts, args.limit)
    tags = EmoticonTags()
    results: dict[str, Any] = {"posts": len(posts), "near_chance": args.near_chance}
    with SentimentAnalyzer.load(args.ckpt_path, config=args.config) as analyzer:
        for condition, texts in (("as written", [text for text, _ in posts]),
                                 ("without emoticon tags", [tags.strip(text) for text, _ in posts])):  # fmt: skip
            rows = analyzer.predict(texts)
            kept = [(row.prob_positive, label) for row, (_, label) in zip(rows, posts) if row.prob_positive is not None]
            probabilities, labels = [p for p, _ in kept], [y for _, y in kept]
            accuracy = sum((p >= 0.5) == bool(y) for p, y in kept) / len(kept)
            results[condition] = {"accuracy": round(accuracy, 4), "bins": by_bins(probabilities, labels),
                                  **band_for(probabilities, labels, args.near_chance, args.step)}  # fmt: skip
    print(f"{len(posts)} held-out posts; band: widest around 0.5 with accuracy <= {args.near_chance}\n")
    for condition in ("as written", "without emoticon tags"):
        r = results[condition]
        print(f"{condition}: accuracy {r['accuracy']:.3f}; band {r['band']} (width {r['width']}), "
              f"{r['share']:.1%} of posts, accuracy inside {r['accuracy_inside']}")
        print("  " + "  ".join(f"{b['prob_positive']}: {b['posts']} ({b['accuracy']})" for b in r["bins"]))
    if args.out:
        args.out.write_text(json.dumps(results, ensure_ascii=False, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
