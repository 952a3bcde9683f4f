"""The inference engine: the one place where batches of token ids become class probabilities, in every runtime and
precision. ``main.py predict`` (through the LightningModule), the HTTP API and the console all label through it.

    mode = choose_mode(runtime="onnxruntime", precision="32-true", quantize="int8")
    engine = build_engine(peft_model, mode, base_model="uer/gpt2-chinese-cluecorpussmall")
    probabilities = engine(input_ids, attention_mask)         # (posts, labels), float32, on the CPU

| runtime     | precision / quantize | what runs                                                                  |
| ----------- | -------------------- | -------------------------------------------------------------------------- |
| torch       | 32-true              | eager PyTorch, LoRA merged into the base weights; CPU or GPU               |
| torch       | bf16-mixed           | the same under bf16 autocast; fast on GPUs and CPUs with AVX512_BF16/AMX   |
| onnxruntime | 32-true              | the merged model exported to ONNX: torch fp32's results (to ~1e-6), faster |
| onnxruntime | int8                 | that ONNX model, int8 weights, each token's activations quantised alone    |
| onnxruntime | int8-dynamic         | int8 weights, one activation scale per batch (faster, batch-dependent)     |

The ONNX model of a trained model is exported once and kept in a cache folder keyed by the trained tensors and the
base model (``$WEIBO_SENTIMENT_CACHE``, default ``~/.cache/weibo-sentiment``); ``weibo_sentiment.export`` writes
the same files into a directory of their own for deployment (``exported_engine`` loads it: no base model needed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol

import torch

from weibo_sentiment.errors import UserError, first_line
from weibo_sentiment.hardware import native_bf16, warn_bf16_emulated
from weibo_sentiment.inference.model_source import ModelSource, is_exported, read_manifest
from weibo_sentiment.inference.quantization import DISABLED_OPTIMIZERS, QUANTIZATIONS, quantize_onnx
from weibo_sentiment.settings import ModelSettings

RUNTIMES = ("torch", "onnxruntime")
PRECISIONS = ("32-true", "bf16-mixed")
FP32_FILE, INT8_FILE = "model.onnx", "model.int8.onnx"
ONNX_FILES = {None: FP32_FILE, "int8": INT8_FILE, "int8-dynamic": "model.int8-dynamic.onnx"}  # by quantize
# Bump when what an exported ONNX file computes changes: old cache entries are then left unused. 2: model.int8.onnx
# quantises each row alone (format 1's was what int8-dynamic is now); 3: the same scheme in fewer passes
# (QuantizeLinear and MatMulIntegerToFloat), so cache entries of format 2 are rebuilt faster.
EXPORT_FORMAT = 3
PER_ROW_INT8_FORMAT = 2  # the first format whose model.int8.onnx quantises rows alone
OPSET = 17
FINGERPRINT_HEX_DIGITS = 32  # a cache entry's folder name: its fingerprint, and nothing else in the cache root is one
CACHE_ENTRIES_KEPT = 4  # each entry is one model's ONNX files (fp32 ~ the base model's size, int8 a quarter of it)


class Engine(Protocol):
    mode: InferenceMode
    num_labels: int
    model_id: str  # the trained model's identity, whatever runs it (trained_model_id)

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Class probabilities (float32) of right-padded ``input_ids``."""

    def close(self) -> None:
        """Give back what the engine changed or holds (e.g. unmerge LoRA from a model that goes on training)."""


@dataclass(frozen=True)
class InferenceMode:
    """How to run a model: ``runtime`` torch or onnxruntime, ``precision`` 32-true or bf16-mixed, ``quantize`` int8."""

    runtime: str = "torch"
    precision: str = "32-true"
    quantize: Optional[str] = None

    def __str__(self) -> str:
        numbers = self.quantize or ("bf16" if self.precision.startswith("bf16") else "fp32")
        return f"{self.runtime} {numbers}"


def choose_mode(
    runtime: Optional[str] = None,
    precision: str = "32-true",
    quantize: Optional[str] = None,
    device_type: str = "cpu",
    exported: bool = False,
) -> InferenceMode:
    """Check a requested combination and fill in the runtime: onnxruntime for int8 and exported models, else torch.

    int8 runs on onnxruntime (torch.ao's quantisation is deprecated upstream and ran 2.5x slower), in two schemes
    (``quantization.py``): ``int8``, the same probabilities for a post in any batch, and ``int8-dynamic``.
    onnxruntime runs on the CPU here, in fp32 or int8. bf16 is only fast where the hardware has it: on a CPU without
    AVX512_BF16 or AMX it is emulated, slower than fp32, and this says so.
    """
    precision = str(precision)
    bf16 = precision.startswith("bf16")
    if quantize not in (None, *QUANTIZATIONS):
        raise UserError(f"quantize {quantize!r}: choose {' or '.join(QUANTIZATIONS)} (or none)")
    if runtime not in (None, *RUNTIMES):
        raise UserError(f"runtime {runtime!r}: choose torch or onnxruntime")
    needs_onnx = "an exported model" if exported else quantize
    if runtime is None:
        runtime = "onnxruntime" if needs_onnx else "torch"
    if runtime == "torch" and needs_onnx:
        raise UserError(f"{needs_onnx} runs on onnxruntime: use runtime onnxruntime (--model.runtime onnxruntime, "
                        "or --runtime onnxruntime for the API and console), or leave runtime unset")
    if runtime == "onnxruntime":
        if device_type != "cpu":
            raise UserError(f"runtime onnxruntime runs on the CPU, not on {device_type}: use runtime torch there "
                            "(with precision bf16-mixed on a recent GPU), or --trainer.accelerator cpu")
        if bf16:
            raise UserError("runtime onnxruntime runs fp32 (exact) or int8 (quantize int8) on the CPU, not bf16: "
                            "for bf16 use runtime torch, else precision 32-true")
    if bf16 and device_type == "cpu" and not native_bf16():
        warn_bf16_emulated()
    return InferenceMode(runtime, "bf16-mixed" if bf16 else precision, quantize)


# ---- torch ------------------------------------------------------------------------------------------------------
class TorchEngine:
    """A peft model in eval mode with LoRA merged into its base weights (one matrix product per layer, not three),
    optionally under bf16 autocast. ``close`` unmerges and restores the training mode, so training can go on."""

    def __init__(self, peft_model: Any, mode: InferenceMode) -> None:
        self.model, self.mode = peft_model, mode
        self.bf16 = mode.precision.startswith("bf16")
        self.num_labels = peft_model.config.num_labels
        self._was_training = peft_model.training
        peft_model.eval()
        peft_model.merge_adapter()

    @torch.inference_mode()
    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        device = next(self.model.parameters()).device
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
        return logits.float().softmax(dim=-1)

    def close(self) -> None:
        self.model.unmerge_adapter()
        self.model.train(self._was_training)


# ---- onnxruntime ------------------------------------------------------------------------------------------------
class OnnxEngine:
    """An ONNX file run by onnxruntime on the CPU with this process's torch thread count."""

    def __init__(self, path: Path, num_labels: int, mode: InferenceMode, threads: Optional[int] = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: its notes on unused initializers say nothing to a user
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                                disabled_optimizers=DISABLED_OPTIMIZERS.get(mode.quantize or "", []))
        except Exception as err:  # onnxruntime raises its own types for unreadable or truncated files
            raise UserError(f"{path}: onnxruntime cannot load it ({first_line(err)}); export it again") from None
        self.path, self.num_labels, self.mode = Path(path), num_labels, mode

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        feed = {"input_ids": input_ids.cpu().numpy(), "attention_mask": attention_mask.cpu().numpy()}
        (logits,) = self.session.run(["logits"], feed)
        return torch.from_numpy(logits).float().softmax(dim=-1)

    def close(self) -> None:
        self.session = None


class _LogitsOnly(torch.nn.Module):
    """What is exported: (input_ids, attention_mask) -> logits. The model is called with keyword arguments: GPT-2's
    second positional parameter is ``past_key_values``, and the cache it would build is not wanted."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.extra = {"use_cache": False} if getattr(model.config, "use_cache", None) is not None else {}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **self.extra).logits


def export_onnx(peft_model: Any, directory: Path, quantize: Optional[str]) -> None:
    """Write ``model.onnx`` (fp32, LoRA merged) and, with ``quantize``, its int8 file (``ONNX_FILES``) into
    ``directory``.

    LoRA is merged for the export and unmerged after (no copy of the base weights is made). The wrapper is put in
    eval mode before exporting: ``torch.onnx.export`` restores the module's training mode afterwards, so a fresh
    (training-mode) wrapper would come back with dropout on.
    """
    was_training = peft_model.training
    wrapper = _LogitsOnly(peft_model).eval()
    # A padded row, so that the traced graph keeps the attention mask's general path.
    input_ids = torch.randint(104, 1000, (2, 8))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 5:] = 0
    peft_model.merge_adapter()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on Python-side shape checks, torch's deprecation
            torch.onnx.export(
                wrapper,
                (input_ids, attention_mask),
                str(directory / FP32_FILE),
                dynamo=False,
                opset_version=OPSET,
                input_names=["input_ids", "attention_mask"],
                output_names=["logits"],
                dynamic_axes={"input_ids": {0: "posts", 1: "tokens"}, "attention_mask": {0: "posts", 1: "tokens"},
                              "logits": {0: "posts"}},  # fmt: skip
            )
    finally:
        peft_model.unmerge_adapter()
        peft_model.train(was_training)
    if quantize:
        quantize_onnx(directory / FP32_FILE, directory / ONNX_FILES[quantize], quantize)


# ---- the cache of exported models -------------------------------------------------------------------------------
def cache_root() -> Path:
    if os.environ.get("WEIBO_SENTIMENT_CACHE"):
        return Path(os.environ["WEIBO_SENTIMENT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "weibo-sentiment"


def _add_trained_tensors(digest: Any, peft_model: Any) -> None:
    """Feed a peft model's trained tensors (LoRA and head, and the backbone's when it was fine-tuned too) and LoRA
    settings to ``digest``."""
    from peft import get_peft_model_state_dict

    from weibo_sentiment.inference.backbone import fine_tuned_backbone

    for name, tensor in sorted(get_peft_model_state_dict(peft_model).items()) + fine_tuned_backbone(peft_model):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    # Sorted keys, and sets (target_modules) as sorted lists: the same settings give the same key in every process.
    # Where the base model was read from is left out: the same model read from two places is the same model.
    settings = {k: v for k, v in peft_model.peft_config["default"].to_dict().items() if k != "base_model_name_or_path"}
    digest.update(json.dumps(settings, sort_keys=True, default=lambda v: sorted(map(str, v))
                             if isinstance(v, (set, frozenset)) else str(v)).encode())  # fmt: skip


def trained_model_id(peft_model: Any) -> str:
    """What identifies a trained model whatever runs it (runtime, precision, an export of it): its trained tensors,
    its LoRA settings and its base model's shape, as 16 hex digits. The labels table records it (``model``), so a
    rerun knows which posts this model has labelled already."""
    digest = hashlib.sha256(b"weibo-sentiment trained model")
    _add_trained_tensors(digest, peft_model)
    config = peft_model.config
    shape = {key: getattr(config, key, None) for key in ("model_type", "vocab_size", "n_layer", "n_embd",
                                                           "num_hidden_layers", "hidden_size", "num_labels")}
    digest.update(json.dumps(shape, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def model_fingerprint(peft_model: Any, base_model: str) -> str:
    """A key for what an export computes: the adapter's tensors and settings, and which base model they sit on
    (a directory by its files' names, sizes and modification times; a hub id by its name and revision)."""
    digest = hashlib.sha256(f"format {EXPORT_FORMAT} opset {OPSET}".encode())
    _add_trained_tensors(digest, peft_model)
    base = Path(base_model)
    if base.is_dir():
        for file in sorted(base.iterdir()):
            if file.is_file():
                stat = file.stat()
                digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    else:
        digest.update(f"{base_model}@{getattr(peft_model.config, '_commit_hash', None)}".encode())
    return digest.hexdigest()[:FINGERPRINT_HEX_DIGITS]


def exported_model_id(directory: str | Path) -> str:
    """An exported directory's ``trained_model_id`` (its manifest's ``model_id``; an export made before manifests
    held it: a key of what its manifest says it was made from)."""
    manifest = read_manifest(directory)
    if manifest.get("model_id"):
        return str(manifest["model_id"])
    made_from = {key: manifest.get(key) for key in ("base_model", "trained_weights", "num_labels", "max_length")}
    return hashlib.sha256(json.dumps(made_from, sort_keys=True).encode()).hexdigest()[:16]


def cached_onnx(peft_model: Any, base_model: str, quantize: Optional[str]) -> Path:
    """The cache entry (a folder) holding this model's ONNX files, exported now if missing.

    Entries are written under a temporary name and renamed into place: another process exporting the same model
    at the same time (DDP ranks) either wins the rename or finds the finished entry.
    """
    root = cache_root()
    entry = root / model_fingerprint(peft_model, base_model)
    wanted = entry / ONNX_FILES[quantize]
    if not wanted.is_file():
        try:
            root.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".export-", dir=root))
        except OSError as err:
            raise UserError(f"{root}: cannot write the ONNX cache here ({err.strerror}); "
                            "set WEIBO_SENTIMENT_CACHE to a writable folder") from None
        try:
            if (entry / FP32_FILE).is_file():  # fp32 cached (and maybe the other int8), this int8 asked for now
                for file in entry.iterdir():
                    shutil.copy2(file, staging / file.name)
                quantize_onnx(staging / FP32_FILE, staging / wanted.name, str(quantize))
            else:
                export_onnx(peft_model, staging, quantize)
            if entry.is_dir() and not wanted.is_file():
                shutil.rmtree(entry, ignore_errors=True)  # the entry makes way for one with this file too
            try:
                os.rename(staging, entry)
            except OSError:  # another process got there first: its entry is the same model
                pass
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    os.utime(entry)  # most recently used: evicted last
    _evict(root, keep=CACHE_ENTRIES_KEPT)
    return wanted


def _evict(root: Path, keep: int) -> None:
    """Remove all but the ``keep`` most recently used entries. Only folders named as entries are: the cache root may
    be a folder that holds other things (``~/.cache/weibo-sentiment`` once lost a downloaded model)."""
    entry_name = re.compile(f"[0-9a-f]{{{FINGERPRINT_HEX_DIGITS}}}")
    entries = sorted((p for p in root.iterdir() if p.is_dir() and entry_name.fullmatch(p.name)),
                     key=lambda p: p.stat().st_mtime, reverse=True)  # fmt: skip
    for old in entries[keep:]:
        shutil.rmtree(old, ignore_errors=True)


# ---- building an engine -----------------------------------------------------------------------------------------
def build_engine(peft_model: Any, mode: InferenceMode, base_model: str) -> Engine:
    """The engine for a peft model (base + LoRA + head) in ``mode``."""
    if mode.runtime == "torch":
        engine: Engine = TorchEngine(peft_model, mode)
    else:
        started = time.perf_counter()
        path = cached_onnx(peft_model, base_model, quantize=mode.quantize)
        engine = OnnxEngine(path, peft_model.config.num_labels, mode)
        logging.getLogger(__name__).debug("onnxruntime engine from %s in %.1f s", path, time.perf_counter() - started)
    engine.model_id = trained_model_id(peft_model)
    return engine


def engine_for(settings: ModelSettings, peft_model: Any, precision: str = "32-true", device_type: str = "cpu") -> Engine:
    """The engine a model's settings ask for: its exported directory's, or one built from its peft model."""
    exported = is_exported(settings.model_name_or_path)
    mode = choose_mode(settings.runtime, precision, settings.quantize, device_type, exported=exported)
    if exported:
        return exported_engine(settings.model_name_or_path, mode)
    return build_engine(peft_model, mode, settings.model_name_or_path)


def engine_for_source(source: ModelSource, runtime: Optional[str] = None, quantize: Optional[str] = None,
                      precision: str = "32-true", device: torch.device = torch.device("cpu")) -> Engine:  # fmt: skip
    """The engine of a resolved model source in the mode asked for: an export's ONNX file, or the base model with
    its trained tensors (checkpoint or adapter) loaded, LoRA merged or exported to ONNX."""
    if source.kind == "exported":
        return exported_engine(source.path, choose_mode(runtime, precision, quantize, device.type, exported=True))
    settings = model_settings(source, runtime=runtime, quantize=quantize)
    mode = choose_mode(runtime, precision, quantize, device.type)  # before loading: a wrong mode is one quick line
    peft_model = load_trained_model(source)
    peft_model.to(device)
    return build_engine(peft_model, mode, settings.model_name_or_path)


def model_settings(source: ModelSource, **changes: Any) -> ModelSettings:
    """The ``model:`` settings that build a source's (non-exported) model."""
    return ModelSettings(model_name_or_path=source.base_model, adapter_path=source.adapter_path,
                         **source.architecture, **changes)  # fmt: skip


def load_trained_model(source: ModelSource) -> Any:
    """The peft model of a checkpoint or adapter source, its trained tensors loaded and checked."""
    from weibo_sentiment.inference.backbone import build_peft_model, load_trained_tensors, read_checkpoint

    peft_model = build_peft_model(model_settings(source))
    if source.kind == "checkpoint":
        try:
            load_trained_tensors(peft_model, read_checkpoint(source.path), source.base_model)
        except UserError as err:
            raise UserError(f"{source.path}: {err}") from None
    return peft_model


def exported_engine(directory: str | Path, mode: InferenceMode) -> OnnxEngine:
    """The engine of an exported directory: its fp32 or int8 ONNX file, no base model or peft needed."""
    manifest = read_manifest(directory)
    name = ONNX_FILES[mode.quantize]
    if int(manifest.get("format", 1)) < PER_ROW_INT8_FORMAT and mode.quantize:
        # A format-1 export's model.int8.onnx is what int8-dynamic is now (one activation scale per batch).
        if mode.quantize == "int8":
            raise UserError(f"{directory}: exported by an earlier version, whose int8 file scales each batch as a "
                            "whole; export it again for int8, or use --quantize int8-dynamic with it as it is")  # fmt: skip
        name = INT8_FILE
    path = Path(directory) / name
    if not path.is_file():
        hint = f" (export with --quantize {mode.quantize} to include it)" if mode.quantize else ""
        raise UserError(f"{directory}: the exported model has no {name}{hint}")
    engine = OnnxEngine(path, manifest["num_labels"], mode)
    engine.model_id = exported_model_id(directory)
    return engine
