"""Does predict's memory stay flat however long its input? Its peak RSS, with its reader worker, on a small and a
large input (1,000 and 1,000,000 lines by default in ``speed.py``), on a tiny model so a million lines take minutes.
Run by ``speed.py`` (stage ``memory``).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from harness import Runner, write_posts


def memory_against_input_size(runner: Runner, work: Path, common: list[str], texts: list[str],
                              lines: tuple[int, int]) -> dict[str, Any]:  # fmt: skip
    """Predict's peak memory with a small and a large input: a tiny model, so a million lines take minutes."""
    # One thread: this part measures memory, not speed, and a tiny model's small operations only lose from a
    # second thread (badly so when anything else runs on the machine and OpenMP threads wait for each other).
    small, large = lines
    print(f"predict memory, {small:,} vs {large:,} input lines (a GPT-2 of 2 layers x 32, 1 thread)")
    tiny = str(work / "tiny-model")
    runner.worker("harness:build_model", {"out": tiny, "layers": 2, "width": 32, "heads": 2})
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
