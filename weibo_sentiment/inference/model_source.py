"""Which trained model labels: the one answer, resolved once, for ``main.py``, the API, the console, the export and
the Python API.

A model comes as one of

- a checkpoint written by ``main.py fit`` (its trained tensors only) on a base model,
- a peft adapter directory on a base model,
- a directory written by ``main.py export`` (the model, LoRA merged, as ONNX, with its tokenizer and manifest),
- a base model alone (a fresh, untrained head: only ``fit`` starts from it).

:func:`resolve_model_source` turns what a user gave (a config's sections, flags, or a path from Python) into a
:class:`ModelSource`: concrete paths (``last`` resolved to one file), the hyper-parameters that shape the trained
tensors, the number of tokens a post is read to and the label names. It is a small frozen value, so the API resolves
it in its main process and hands the same value to every worker: a restarted worker loads the same model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from weibo_sentiment.classes import BINARY, class_names
from weibo_sentiment.errors import UserError, first_line

LAST = "last"
"""``--ckpt_path last``: the newest ``last.ckpt`` under the run's ``lightning_logs/`` (or ``checkpoint.dirpath``)."""
ARCHITECTURE_HPARAMS = ("num_labels", "lora_r", "lora_alpha", "lora_dropout", "target_modules",
                        "backbone_learning_rate")  # fmt: skip
"""Hyper-parameters that shape the saved tensors: a checkpoint's values win over the config when it is loaded.
(``backbone_learning_rate``: whether the backbone's own weights were trained, so saved, too.)"""
MANIFEST = "weibo_sentiment_export.json"
"""The file that marks a directory written by ``main.py export``."""
ADAPTER_CONFIG = "adapter_config.json"

Kind = Literal["checkpoint", "adapter", "exported", "base"]


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: what to load, and what its tensors need (architecture, ``max_length``, labels, tokenizer).

    Attributes:
        kind: ``checkpoint``, ``adapter``, ``exported`` or ``base``.
        path: the checkpoint file, adapter directory or exported directory (``None`` for a bare base model).
        base_model: the base model's hub id or directory (``None`` for an exported model, which holds its own).
        tokenizer: the tokenizer's hub id or directory: the base model's, or the exported directory.
        architecture: the hyper-parameters that shape the trained tensors (``num_labels``, ``lora_*``,
            ``target_modules``): the checkpoint's own where it has them.
        max_length: tokens a post is read to (an export's own, from its manifest).
        labels: the name of each class, by label number.
    """

    kind: Kind
    path: Optional[str]
    base_model: Optional[str]
    tokenizer: str
    architecture: dict[str, Any] = field(default_factory=dict)
    max_length: int = 128
    labels: tuple[str, ...] = BINARY

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def adapter_path(self) -> Optional[str]:
        return self.path if self.kind == "adapter" else None

    @property
    def checkpoint_path(self) -> Optional[str]:
        return self.path if self.kind == "checkpoint" else None

    def describe(self) -> str:
        """``checkpoint lightning_logs/version_0/checkpoints/last.ckpt on assets/tiny-gpt2-chinese``, for messages."""
        if self.kind == "base":
            return f"base model {self.base_model}"
        return f"{self.kind} {self.path}" + (f" on {self.base_model}" if self.base_model else "")


def is_exported(path: Optional[str | Path]) -> bool:
    """Whether ``path`` is a directory written by ``main.py export``."""
    return bool(path) and (Path(path) / MANIFEST).is_file()


def tokenizer_of(name_or_path: str) -> Any:
    """An exported directory's saved tokenizer without transformers (``SerializedTokenizer``), else
    ``load_tokenizer``'s."""
    from weibo_sentiment.data.tokenizer import TOKENIZER_FILE, SerializedTokenizer, load_tokenizer

    if is_exported(name_or_path) and (Path(name_or_path) / TOKENIZER_FILE).is_file():
        return SerializedTokenizer(name_or_path)
    return load_tokenizer(name_or_path)


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """An exported directory's manifest (labels, max_length, files, where it came from)."""
    path = Path(directory) / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: not a readable export manifest ({first_line(err)}); export the model again") from None


def refuse_checkpoint(exported_dir: str) -> UserError:
    return UserError(f"{exported_dir} is an exported model, which holds its trained weights already: predict from "
                     "it without a checkpoint or adapter")


def locate_checkpoint(ckpt_path: str, root_dir: Optional[str | Path] = None, checkpoint_dir: Optional[str] = None) -> Path:
    """The checkpoint file ``ckpt_path`` names; ``last`` is the newest ``last*.ckpt`` in ``checkpoint_dir`` if set,
    else in any ``<root_dir>/lightning_logs/version_*/checkpoints/`` (``root_dir``: ``trainer.default_root_dir``,
    default the current directory). The one place ``last`` is resolved, so every entry point means the same file."""
    if ckpt_path != LAST:
        return Path(ckpt_path)
    pattern_root = Path(checkpoint_dir) if checkpoint_dir else Path(root_dir or ".") / "lightning_logs"
    # A run writing where a last.ckpt already stands names its own last-v1.ckpt, last-v2.ckpt, ...
    pattern = "last*.ckpt" if checkpoint_dir else "*/checkpoints/last*.ckpt"
    candidates = [path for path in pattern_root.glob(pattern) if path.is_file()]
    if not candidates:
        raise UserError(f"--ckpt_path last: no last.ckpt under {pattern_root}; give a checkpoint file's path instead")
    return max(candidates, key=lambda path: path.stat().st_mtime)


def checkpoint_architecture(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The hyper-parameters that shape a checkpoint's tensors; they win over a config's."""
    hparams = checkpoint.get("hyper_parameters") or {}
    architecture = {key: hparams[key] for key in ARCHITECTURE_HPARAMS if key in hparams}
    if hparams:
        # Our checkpoints record every model setting; one without this one was written before full fine-tuning
        # existed, so it holds LoRA and the head alone, whatever the config now asks for.
        architecture.setdefault("backbone_learning_rate", None)
    return architecture


def resolve_model_source(
    model_name_or_path: Optional[str] = None,
    *,
    ckpt_path: Optional[str] = None,
    adapter_path: Optional[str] = None,
    architecture: Optional[dict[str, Any]] = None,
    max_length: Optional[int] = None,
    root_dir: Optional[str | Path] = None,
    checkpoint_dir: Optional[str] = None,
) -> ModelSource:
    """Resolve what a config or a caller names into one :class:`ModelSource`.

    Args:
        model_name_or_path: the base model (hub id or directory), or an exported directory; ``None``: a checkpoint's
            own base model (its hyper-parameters), else the config default.
        ckpt_path: a checkpoint written by ``main.py fit``, or ``last``.
        adapter_path: a peft adapter directory.
        architecture: the config's values of ``ARCHITECTURE_HPARAMS`` (a checkpoint's own win).
        max_length: the config's ``data.max_length`` (an export's own wins; default: a checkpoint's, else 128).
        root_dir, checkpoint_dir: where ``last`` is looked for: ``trainer.default_root_dir`` and
            ``checkpoint.dirpath`` of the config.
    """
    from weibo_sentiment.settings import DEFAULT_BACKBONE

    architecture = {k: v for k, v in (architecture or {}).items() if k in ARCHITECTURE_HPARAMS}
    if is_exported(model_name_or_path):
        if ckpt_path or adapter_path:
            raise refuse_checkpoint(model_name_or_path)
        manifest = read_manifest(model_name_or_path)
        labels = tuple(manifest.get("labels") or class_names(manifest["num_labels"]))
        return ModelSource("exported", str(model_name_or_path), None, str(model_name_or_path),
                           {"num_labels": len(labels)}, int(manifest.get("max_length") or 128), labels)  # fmt: skip
    if ckpt_path and adapter_path:
        raise UserError("give a checkpoint (--ckpt_path) or an adapter (--model.adapter_path), not both")
    if ckpt_path:
        from weibo_sentiment.inference.backbone import read_checkpoint

        path = locate_checkpoint(ckpt_path, root_dir, checkpoint_dir)
        checkpoint = read_checkpoint(path)
        hparams = checkpoint.get("hyper_parameters") or {}
        data_hparams = checkpoint.get("datamodule_hyper_parameters") or {}
        base = model_name_or_path or hparams.get("model_name_or_path") or DEFAULT_BACKBONE
        architecture.update(checkpoint_architecture(checkpoint))
        length = max_length or data_hparams.get("max_length") or 128
        return _trained("checkpoint", str(path), base, architecture, length)
    base = model_name_or_path or DEFAULT_BACKBONE
    if adapter_path:
        if not (Path(adapter_path) / ADAPTER_CONFIG).is_file():
            raise UserError(f"{adapter_path}: not an adapter directory (no {ADAPTER_CONFIG})")
        return _trained("adapter", str(adapter_path), base, architecture, max_length or 128)
    return _trained("base", None, base, architecture, max_length or 128)


def _trained(kind: Kind, path: Optional[str], base: str, architecture: dict[str, Any], max_length: int) -> ModelSource:
    labels = class_names(int(architecture.get("num_labels", len(BINARY))))
    return ModelSource(kind, path, base, base, architecture, int(max_length), labels)


def source_of_path(model: str | Path, base_model: Optional[str] = None) -> ModelSource:
    """A :class:`ModelSource` from one path and no config, as the Python API takes it: a checkpoint file (or
    ``last``), whose base model and ``max_length`` are its own (saved by ``fit``); a peft adapter directory, on the
    base model its ``adapter_config.json`` names; or an exported directory. ``base_model`` overrides the base."""
    model = str(model)
    if is_exported(model):
        return resolve_model_source(model)
    if Path(model).is_dir():
        config = Path(model) / ADAPTER_CONFIG
        if not config.is_file():
            raise UserError(f"{model}: a directory, but neither an exported model ({MANIFEST}) nor a peft adapter "
                            f"({ADAPTER_CONFIG})")  # fmt: skip
        base_model = base_model or json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
        return resolve_model_source(base_model, adapter_path=model)
    if model != LAST and not Path(model).exists():
        raise UserError(f"{model}: no such checkpoint, adapter or exported model")
    return resolve_model_source(base_model, ckpt_path=model)
