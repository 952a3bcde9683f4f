"""The layout's promises, checked by importing each entry point in a fresh interpreter: data flows one way."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO

TRAINING_ONLY = ("weibo_sentiment.model", "weibo_sentiment.data.datamodule", "weibo_sentiment.checkpointing",
                 "weibo_sentiment.reports", "weibo_sentiment.prediction_writer", "weibo_sentiment.cli")  # fmt: skip
HEAVY_LIBRARIES = ("lightning", "torchmetrics", "matplotlib")


def imported_by(module: str) -> set[str]:
    script = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True)
    return set(json.loads(result.stdout.splitlines()[-1]))


@pytest.mark.parametrize("entry_point", ["weibo_sentiment.serve", "weibo_sentiment.console", "weibo_sentiment.export"])
def test_the_api_console_and_export_import_no_training_code_lightning_or_matplotlib(entry_point: str) -> None:
    modules = imported_by(entry_point)
    assert not modules & set(TRAINING_ONLY)
    assert not {name.split(".")[0] for name in modules} & set(HEAVY_LIBRARIES)


def test_outputs_know_nothing_of_lightning() -> None:
    modules = imported_by("weibo_sentiment.outputs")
    assert "lightning" not in {name.split(".")[0] for name in modules}


def test_the_package_imports_no_tool_or_benchmark() -> None:
    modules = imported_by("weibo_sentiment.cli") | imported_by("weibo_sentiment.serve")
    assert not {name for name in modules if name.split(".")[0] in ("tools", "benchmarks", "speed_meter", "conftest")}
