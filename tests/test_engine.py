"""The inference engine: every runtime and precision labels the same batch, LoRA merged, the ONNX export cached."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import onnx
import pytest
import torch

from test_model import randomize_trainable, sample_batch
from weibo_sentiment.inference import engine as engine_module
from weibo_sentiment.inference.engine import InferenceMode, choose_mode, model_fingerprint
from weibo_sentiment.errors import UserError
from weibo_sentiment.training.model import SentimentClassifier


@pytest.fixture(scope="module")
def trained_looking(tiny_gpt2: str) -> tuple[SentimentClassifier, dict, torch.Tensor]:
    """A model with trained-looking LoRA, a batch with a padded row, and its unmerged eager fp32 probabilities."""
    module = SentimentClassifier(model_name_or_path=tiny_gpt2)
    randomize_trainable(module)
    batch = sample_batch()
    module.eval()
    with torch.inference_mode():
        probabilities = module(batch["input_ids"], batch["attention_mask"]).softmax(-1)
    module.train()
    return module, batch, probabilities


def label(module: SentimentClassifier, batch: dict, precision: str = "32-true", **settings) -> tuple[torch.Tensor, object]:
    """The probabilities of ``batch`` from the engine of ``module`` in the given mode (engine closed after)."""
    module.settings = replace(module.settings, **{"runtime": None, "quantize": None, **settings})
    engine = module.inference_engine(precision)
    try:
        return engine(batch["input_ids"], batch["attention_mask"]), engine
    finally:
        engine.close()


def test_torch_engine_merges_lora_into_the_base_weights_and_undoes_it_on_close(trained_looking) -> None:
    module, batch, unmerged = trained_looking
    module.settings = replace(module.settings, runtime="torch", quantize=None)
    engine = module.inference_engine()
    lora_layers = [m for m in module.modules() if hasattr(m, "merged")]
    assert lora_layers and all(layer.merged for layer in lora_layers)  # one matmul per layer, not three
    assert not module.model.training  # dropout off while labelling
    merged = engine(batch["input_ids"], batch["attention_mask"])
    engine.close()
    assert torch.allclose(merged, unmerged, atol=1e-5)
    assert not any(layer.merged for layer in lora_layers)  # trainable again, checkpoints unchanged
    assert module.model.training  # the mode it had before


def test_onnxruntime_fp32_equals_torch_fp32(trained_looking) -> None:
    module, batch, unmerged = trained_looking
    probabilities, engine = label(module, batch, runtime="onnxruntime")
    assert str(engine.mode) == "onnxruntime fp32"
    assert torch.allclose(probabilities, unmerged, atol=1e-5)
    assert module.model.training and not any(m.merged for m in module.modules() if hasattr(m, "merged"))


@pytest.mark.parametrize(("quantize", "file", "product"), [("int8", "model.int8.onnx", "MatMulIntegerToFloat"),
                                                         ("int8-dynamic", "model.int8-dynamic.onnx", "MatMulInteger")])
def test_int8_runs_on_onnxruntime_with_quantised_matrix_products(trained_looking, quantize: str, file: str,
                                                                 product: str) -> None:  # fmt: skip
    module, batch, fp32 = trained_looking
    int8, engine = label(module, batch, quantize=quantize)  # runtime unset: int8 picks onnxruntime
    assert str(engine.mode) == f"onnxruntime {quantize}" and engine.path.name == file
    operators = {node.op_type for node in onnx.load(str(engine.path)).graph.node}
    assert product in operators
    # int8: each row's own scale (a per-axis QuantizeLinear on the rows), no quantisation of the whole tensor at once
    assert ("DynamicQuantizeLinear" in operators) == (quantize == "int8-dynamic")
    assert ("QuantizeLinear" in operators) == (quantize == "int8")
    assert torch.allclose(int8, fp32, atol=0.05) and not torch.equal(int8, fp32)  # int8 arithmetic, close to fp32


@pytest.mark.parametrize("quantize", [None, "int8"])
def test_a_posts_probabilities_do_not_depend_on_the_posts_beside_it(trained_looking, quantize: str | None) -> None:
    """The same post alone and in a batch of 64 real posts of mixed lengths (not sorted, so most rows are padded):
    the same probabilities to 1e-6, in fp32 and in int8 (whose activations are quantised row by row)."""
    from conftest import real_rows

    from weibo_sentiment.data.tokenizer import load_tokenizer, pad_to_longest

    module, _, _ = trained_looking
    tokenizer = load_tokenizer(module.settings.model_name_or_path)
    posts = [row["review"] for row in real_rows(64)]
    ids = [tokenizer(post, truncation=True, max_length=128, return_token_type_ids=False)["input_ids"] for post in posts]
    assert len({len(row) for row in ids}) > 20  # mixed lengths
    module.settings = replace(module.settings, runtime="onnxruntime", quantize=quantize)
    engine = module.inference_engine()
    try:
        together = engine(**pad_to_longest(ids, tokenizer.pad_token_id))
        alone = torch.cat([engine(**pad_to_longest([row], tokenizer.pad_token_id)) for row in ids])
    finally:
        engine.close()
    assert (together - alone).abs().max().item() <= 1e-6


def test_bf16_autocast_stays_close_to_fp32(trained_looking) -> None:
    module, batch, fp32 = trained_looking
    bf16, engine = label(module, batch, precision="bf16-mixed")
    assert str(engine.mode) == "torch bf16"
    assert torch.allclose(bf16, fp32, atol=0.05)


def test_the_onnx_export_is_cached_by_trained_weights_and_base_model(trained_looking, onnx_cache: Path) -> None:
    module, batch, _ = trained_looking
    _, first = label(module, batch, runtime="onnxruntime")
    exported_at = first.path.stat().st_mtime_ns
    _, again = label(module, batch, runtime="onnxruntime")
    assert again.path == first.path and again.path.stat().st_mtime_ns == exported_at  # taken from the cache
    assert again.path.parent.parent == onnx_cache
    before = model_fingerprint(module.model, module.settings.model_name_or_path)
    with torch.no_grad():
        next(p for n, p in module.named_parameters() if "lora_B" in n).add_(0.01)
    assert model_fingerprint(module.model, module.settings.model_name_or_path) != before  # other weights, other entry
    with torch.no_grad():
        next(p for n, p in module.named_parameters() if "lora_B" in n).sub_(0.01)


@pytest.mark.e2e
def test_the_cache_key_is_the_same_in_every_process(tiny_gpt2: str, tmp_path: Path) -> None:
    """Python randomises set order per process (peft keeps target_modules as a set): the key must not see it."""
    module = SentimentClassifier(model_name_or_path=tiny_gpt2)
    randomize_trainable(module)
    module.model.save_pretrained(str(tmp_path / "adapter"))
    script = ("import sys; from weibo_sentiment.training.model import SentimentClassifier; "
              "from weibo_sentiment.inference.engine import model_fingerprint; "
              "m = SentimentClassifier(model_name_or_path=sys.argv[1], adapter_path=sys.argv[2]); "
              "print(model_fingerprint(m.model, sys.argv[1]))")  # fmt: skip
    keys = {
        subprocess.run([sys.executable, "-c", script, tiny_gpt2, str(tmp_path / "adapter")], capture_output=True,
                       text=True, check=True, env={**os.environ, "PYTHONHASHSEED": seed}).stdout.strip()
        for seed in ("1", "2")
    }  # fmt: skip
    assert len(keys) == 1 and len(keys.pop()) == 32


def test_engine_cache_keeps_a_bounded_number_of_models_and_nothing_else_of_its_folder(tmp_path: Path) -> None:
    entries = [tmp_path / f"{number:032x}" for number in range(engine_module.CACHE_ENTRIES_KEPT + 2)]
    for age, entry in enumerate(reversed(entries)):
        entry.mkdir()
        os.utime(entry, (1_000_000 + age, 1_000_000 + age))  # entries[0] most recently used
    (tmp_path / "recipe" / "m3e-small").mkdir(parents=True)  # someone else's folder beside the entries (it was lost)
    engine_module._evict(tmp_path, keep=engine_module.CACHE_ENTRIES_KEPT)
    kept = sorted(path.name for path in tmp_path.iterdir())
    assert kept == sorted([entry.name for entry in entries[: engine_module.CACHE_ENTRIES_KEPT]] + ["recipe"])


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"runtime": "torch", "quantize": "int8"}, "int8 runs on onnxruntime"),
        ({"runtime": "onnxruntime", "precision": "bf16-mixed"}, "not bf16"),
        ({"runtime": "onnxruntime", "device_type": "cuda"}, "runs on the CPU"),
        ({"runtime": "torch", "exported": True}, "an exported model runs on onnxruntime"),
        ({"quantize": "int4"}, "choose int8 or int8-dynamic"),
    ],
)
def test_modes_that_cannot_work_are_one_clear_error(settings: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        choose_mode(**settings)


def test_runtime_defaults_to_torch_and_to_onnxruntime_for_int8_and_exported_models() -> None:
    assert choose_mode() == InferenceMode("torch", "32-true", None)
    assert choose_mode(quantize="int8").runtime == "onnxruntime"
    assert choose_mode(exported=True).runtime == "onnxruntime"


def test_bf16_on_a_cpu_without_native_bf16_warns_that_it_is_slower(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="emulated and runs slower than fp32"):
        choose_mode(precision="bf16-mixed")
    monkeypatch.setattr(engine_module, "native_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        choose_mode(precision="bf16-mixed")
