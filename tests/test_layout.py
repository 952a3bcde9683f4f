"""The layout's promises, checked by importing each entry point in a fresh interpreter and by reading every import
statement: data flows one way, and no module imports itself round a circle."""

from __future__ import annotations

import ast
import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

HEAVY_LIBRARIES = ("lightning", "torchmetrics", "matplotlib")
PACKAGE = REPO / "weibo_sentiment"


def modules_of(group: str) -> list[str]:
    return sorted("weibo_sentiment." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
                  for path in (PACKAGE / group).glob("*.py") if path.name != "__init__.py")  # fmt: skip


def of_group(modules: set[str], group: str) -> set[str]:
    return {name for name in modules if name.startswith(f"weibo_sentiment.{group}.")}


def imported_by(module: str) -> set[str]:
    script = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True)
    return set(json.loads(result.stdout.splitlines()[-1]))


@pytest.mark.parametrize("entry_point", ["weibo_sentiment", "weibo_sentiment.serve", "weibo_sentiment.console",
                                         "weibo_sentiment.integrations.bettafish", "weibo_sentiment.integrations.trend",
                                         "weibo_sentiment.export", *modules_of("inference"), *modules_of("serving")])
def test_inference_serving_and_their_entry_points_import_no_training_code_lightning_or_matplotlib(entry_point: str
                                                                                                 ) -> None:  # fmt: skip
    modules = imported_by(entry_point)
    assert not of_group(modules, "training") and "weibo_sentiment.cli" not in modules
    assert not {name.split(".")[0] for name in modules} & set(HEAVY_LIBRARIES)


@pytest.mark.parametrize("module", [*modules_of("data"), *modules_of("inference")])
def test_data_and_inference_import_nothing_of_serving(module: str) -> None:
    modules = imported_by(module)
    assert not of_group(modules, "serving") and not of_group(modules, "training")
    if module.startswith("weibo_sentiment.data."):
        assert not of_group(modules, "inference")  # posts come before models


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Each module of the package and the package modules it imports anywhere: at the top, inside functions, under
    ``TYPE_CHECKING`` (``from a.b import c`` counts as importing ``a.b.c`` when that is a module, else ``a.b``)."""
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        named: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                named.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                named.update(f"{node.module}.{alias.name}" for alias in node.names)
                named.add(node.module)
        found = set()
        for target in named:
            while target and target not in paths:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
        graph[name] = found
    return graph


def import_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of imports (its modules in order, the first again at the end), or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: explored
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[module] = 2
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_no_module_of_the_package_imports_itself_round_a_circle() -> None:
    cycle = import_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_circle_check_finds_a_circle_through_an_import_inside_a_function() -> None:
    graph = import_graph()
    graph["weibo_sentiment.errors"] = graph["weibo_sentiment.errors"] | {"weibo_sentiment.config_parser"}  # as a lazy import would
    cycle = import_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1] and "weibo_sentiment.errors" in cycle


def test_the_package_imports_no_tool_or_benchmark() -> None:
    modules = imported_by("weibo_sentiment.cli") | imported_by("weibo_sentiment.serve")
    assert not {name for name in modules if name.split(".")[0] in ("tools", "benchmarks", "speed_meter", "conftest")}


def library_private_names() -> set[str]:
    """The private attributes of the Lightning and LitServe classes this project builds on."""
    import litserve
    from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver  # DDP's launcher
    from lightning.pytorch import LightningDataModule, LightningModule, Trainer
    from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint, RichProgressBar, TQDMProgressBar
    from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
    from lightning.pytorch.loggers import TensorBoardLogger
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    classes = (LightningDataModule, LightningModule, Trainer, BasePredictionWriter, ModelCheckpoint, RichProgressBar,
               TQDMProgressBar, LightningCLI, SaveConfigCallback, TensorBoardLogger, TorchCheckpointIO,
               litserve.LitServer, litserve.LitAPI, _ChildProcessObserver)  # fmt: skip
    names = {name for cls in classes for name in dir(cls) if name.startswith("_") and not name.startswith("__")}
    # attributes set in __init__, not on the class
    for cls in (ModelCheckpoint, TensorBoardLogger, LightningCLI, _ChildProcessObserver):
        names |= set(re.findall(r"self\.(_[a-z]\w*)\s*[:=]", inspect.getsource(cls.__init__)))
    return names


def test_no_private_name_of_lightning_or_litserve_outside_the_compatibility_module() -> None:
    private = library_private_names()
    found = []
    for path in sorted((REPO / "weibo_sentiment").rglob("*.py")):
        if path.name == "compat.py":
            continue
        text = path.read_text(encoding="utf-8")
        own = set(re.findall(r"self\.(_\w+)\s*[:=]", text))  # attributes of our own classes
        for name in re.findall(r"(?:\.|def )(_[a-z]\w*)", text):
            if name in private and name not in own:
                found.append(f"{path.relative_to(REPO)}: {name}")
    assert not found, "private Lightning/LitServe names outside weibo_sentiment/compat.py:\n" + "\n".join(sorted(set(found)))
