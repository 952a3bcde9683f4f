"""The pretrained backbone with LoRA: loading the base model, attaching a fresh or saved adapter, and reading the
checkpoints that hold only the trainable tensors.

Pure transformers/peft/torch: the training module (``model.py``), the inference engine and the export use it alike.
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from transformers import AutoModelForSequenceClassification, PreTrainedModel
from transformers.pytorch_utils import Conv1D

from weibo_sentiment.data.tokenizer import load_tokenizer, quiet_transformers
from weibo_sentiment.errors import UserError, explain_load_error, first_line
from weibo_sentiment.classes import class_names
from weibo_sentiment.settings import ModelSettings

CHECKPOINT_PREFIX = "model."
"""A checkpoint's tensors are the LightningModule's, whose peft model is its attribute ``model``."""


def load_backbone(name_or_path: str, num_labels: int) -> PreTrainedModel:
    """``AutoModelForSequenceClassification`` from a hub id or a directory, padding with the tokenizer's pad id.

    The Chinese GPT-2's config carries GPT-2's bos/eos 50256, outside its 21,128-token vocab, so the pad id must
    come from the tokenizer (``[PAD]`` = 0), never from eos. Sequence classification pools the last non-pad token.
    """
    pad_token_id = load_tokenizer(name_or_path).pad_token_id
    labels = class_names(num_labels)
    try:
        with quiet_transformers():
            return AutoModelForSequenceClassification.from_pretrained(
                name_or_path, num_labels=num_labels, pad_token_id=pad_token_id, dtype=torch.float32,
                id2label=dict(enumerate(labels)), label2id={label: number for number, label in enumerate(labels)},
            )
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load the base model {name_or_path!r}: {explain_load_error(name_or_path, err)}") from None


def lora_config(backbone: torch.nn.Module, target_modules: list[str], r: int, alpha: int, dropout: float) -> LoraConfig:
    """LoRA on ``target_modules`` with the classification head trained and saved (peft's ``SEQ_CLS`` task)."""
    targets = [module for name, module in backbone.named_modules() if name.rsplit(".", 1)[-1] in target_modules]
    if not targets:
        raise UserError(
            f"none of model.target_modules {target_modules} is a layer of the base model "
            f"({type(backbone).__name__}); e.g. GPT-2: [c_attn, c_proj], BERT: [query, key, value]"
        )
    return LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        # GPT-2's attention and MLP layers are transformers' Conv1D, which stores weights transposed.
        fan_in_fan_out=any(isinstance(module, Conv1D) for module in targets),
    )


def load_adapter(backbone: PreTrainedModel, adapter_path: str) -> PeftModel:
    """A saved peft adapter directory (ours or another peft script's for the same base) on ``backbone``."""
    if not os.path.isfile(os.path.join(adapter_path, "adapter_config.json")):
        raise UserError(f"{adapter_path}: not an adapter directory (no adapter_config.json)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model = PeftModel.from_pretrained(backbone, adapter_path, is_trainable=True)
        except (RuntimeError, ValueError, KeyError, OSError) as err:
            # peft's message starts "Error(s) in loading state_dict ...:"; the line that says which tensor does not fit
            # comes after it.
            detail = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), first_line(err))
            raise UserError(f"{adapter_path}: the adapter does not fit the base model ({detail}); "
                            "was it saved for another base model?") from None
    missing = [str(w.message) for w in caught if "missing adapter keys" in str(w.message).lower()]
    if missing:
        raise UserError(f"{adapter_path}: the adapter does not fit the base model: {first_line(Exception(missing[0]))}")
    return model


def build_peft_model(settings: ModelSettings) -> PeftModel:
    """The backbone with LoRA: a saved adapter (``adapter_path``) or a fresh one, in training mode; with
    ``backbone_learning_rate``, the backbone's own weights trainable too (full fine-tuning).

    from_pretrained returns eval mode, and Lightning keeps modules' modes: training runs with the backbone's dropout
    on, as the reference recipe does; validation and prediction switch to eval mode as usual.
    """
    backbone = load_backbone(settings.model_name_or_path, settings.num_labels)
    backbone.train()
    if settings.adapter_path:
        model = load_adapter(backbone, settings.adapter_path)
    else:
        config = lora_config(backbone, settings.target_modules, settings.lora_r, settings.lora_alpha,
                             settings.lora_dropout)  # fmt: skip
        with warnings.catch_warnings():
            # peft's PeftModel reads transformers 5's deprecated `is_gradient_checkpointing` (a FutureWarning printed
            # before a user's first answer); gradient checkpointing is off here, and peft reads the new name once it
            # has it.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
            model = get_peft_model(backbone, config)
    if settings.backbone_learning_rate is not None:
        for name, parameter in model.named_parameters():
            # peft keeps the head's pretrained copy (original_module) beside the trained one: it never runs
            if not is_adapter_or_head(name) and "original_module" not in name:
                parameter.requires_grad_(True)
    return model


def is_adapter_or_head(name: str) -> bool:
    """Whether a peft model's parameter is LoRA's or the classification head's (trained at ``learning_rate``), not
    the backbone's own (frozen, or trained at ``backbone_learning_rate``)."""
    return "lora_" in name or "modules_to_save" in name


def fine_tuned_backbone(peft_model: PeftModel) -> list[tuple[str, torch.nn.Parameter]]:
    """The backbone's own parameters that train (full fine-tuning), in model order; none with LoRA alone."""
    return [(name, p) for name, p in peft_model.named_parameters() if p.requires_grad and not is_adapter_or_head(name)]


def trainable_shapes(peft_model: PeftModel) -> dict[str, torch.Size]:
    """The checkpoint keys and shapes of a peft model's trainable tensors (LoRA matrices, classification head, and
    with full fine-tuning the backbone's weights)."""
    return {CHECKPOINT_PREFIX + name: p.shape for name, p in peft_model.named_parameters() if p.requires_grad}


def load_trained_tensors(peft_model: PeftModel, checkpoint: dict[str, Any], base: str) -> None:
    """Put a checkpoint's trained tensors into ``peft_model``, after checking they are exactly the expected ones."""
    found = checkpoint.get("state_dict") or {}
    check_trainable_tensors(trainable_shapes(peft_model), found, base)
    peft_model.load_state_dict({key.removeprefix(CHECKPOINT_PREFIX): value for key, value in found.items()},
                               strict=False)  # fmt: skip


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint file, loaded safely (``weights_only``); a damaged or missing file is a :class:`UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file" + (" (it is a directory)" if path.is_dir() else ""))
    try:
        with warnings.catch_warnings():
            # torch's notes on a foreign file (e.g. "Detected pickle protocol 4"): the error below says what matters
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message advises re-running with weights_only=False: never pass that on to a user
        if "GLOBAL" in str(err):
            raise UserError(f"{path}: not a readable checkpoint: it holds Python objects other than tensors, which "
                            "could run code when loaded, so it is refused; use a checkpoint written by main.py fit"
                            ) from None
        raise UserError(f"{path}: not a readable checkpoint (truncated, corrupted, or not a checkpoint at all); "
                        "use a checkpoint written by main.py fit") from None
    except Exception:  # torch raises many types for a damaged file, none of them telling a user more
        raise UserError(f"{path}: not a readable checkpoint (truncated, corrupted, or not a checkpoint at all); "
                        "use a checkpoint written by main.py fit") from None


def check_trainable_tensors(expected: dict[str, torch.Size], found: dict[str, torch.Tensor], base: str) -> None:
    """A checkpoint's tensors must be exactly the trainable ones this model has, of the same shapes."""
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    reshaped = sorted(k for k in expected.keys() & found.keys() if tuple(found[k].shape) != tuple(expected[k]))
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensors missing (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unknown tensors (e.g. {unexpected[0]})")
    if reshaped:
        key = reshaped[0]
        problems.append(f"{len(reshaped)} of another shape (e.g. {key}: {tuple(found[key].shape)} in the file, "
                        f"{tuple(expected[key])} here)")
    if problems:
        raise UserError(
            f"the checkpoint does not fit base model {base!r} with this LoRA setup: "
            f"{'; '.join(problems)}. Was it trained on another base model, num_labels or lora_r?"
        )
