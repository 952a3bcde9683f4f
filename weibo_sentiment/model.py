"""The LightningModule: a pretrained backbone wrapped with peft LoRA, its metrics, optimizer and checkpoint contents.

Checkpoints hold only the trainable tensors (the LoRA matrices and the classification head) plus the training
state; the frozen backbone is loaded from ``model_name_or_path`` each time ("resume from a partial checkpoint").
"""

from __future__ import annotations

import copy
import math
import os
import warnings
from collections import OrderedDict
from typing import Any, Literal, Optional

import torch
from lightning.pytorch import LightningModule
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecisionRecallCurve,
)
from transformers import AutoModelForSequenceClassification, PreTrainedModel, get_linear_schedule_with_warmup
from transformers.pytorch_utils import Conv1D

from weibo_sentiment.data import load_tokenizer
from weibo_sentiment.errors import UserError, explain_load_error, first_line
from weibo_sentiment.quantize import quantize_int8

ARCHITECTURE_HPARAMS = ("num_labels", "lora_r", "lora_alpha", "lora_dropout", "target_modules")
"""Hyper-parameters that shape the saved tensors: a checkpoint's values win over the config when it is loaded."""


def load_backbone(name_or_path: str, num_labels: int) -> PreTrainedModel:
    """``AutoModelForSequenceClassification`` from a hub id or a directory, padding with the tokenizer's pad id.

    The Chinese GPT-2's config carries GPT-2's bos/eos 50256, outside its 21,128-token vocab, so the pad id must
    come from the tokenizer (``[PAD]`` = 0), never from eos. Sequence classification pools the last non-pad token.
    """
    pad_token_id = load_tokenizer(name_or_path).pad_token_id
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            name_or_path, num_labels=num_labels, pad_token_id=pad_token_id, dtype=torch.float32
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


class SentimentClassifier(LightningModule):
    """Sentiment of Weibo posts: a sequence-classification backbone with LoRA, scored by accuracy and macro-F1."""

    def __init__(
        self,
        model_name_or_path: str = "uer/gpt2-chinese-cluecorpussmall",
        adapter_path: Optional[str] = None,
        num_labels: int = 2,
        lora_r: int = 8,
        lora_alpha: int = 32,
        lora_dropout: float = 0.1,
        target_modules: list[str] = ["c_attn", "c_proj"],  # noqa: B006 - jsonargparse needs a literal default
        learning_rate: float = 5e-4,
        adam_epsilon: float = 1e-8,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        quantize: Optional[Literal["int8"]] = None,
    ) -> None:
        """
        Args:
            model_name_or_path: the backbone: a hub id or a local model directory.
            adapter_path: start from a saved peft adapter directory instead of a fresh LoRA (its own config wins).
            num_labels: number of classes (2: 0 = negative, 1 = positive).
            lora_r: LoRA rank.
            lora_alpha: LoRA scaling numerator (scale = alpha / r).
            lora_dropout: dropout on the LoRA input.
            target_modules: names of the layers that get LoRA (GPT-2: c_attn, c_proj; BERT: query, key, value).
            learning_rate: AdamW peak learning rate.
            adam_epsilon: AdamW epsilon.
            weight_decay: AdamW weight decay (torch's default).
            warmup_ratio: share of all training steps spent warming the learning rate up linearly from 0.
            quantize: ``int8``: predict with the linear layers dynamically quantised to int8 (CPU only; faster,
                labels agreed with fp32 on 99.8 % of posts in the README's test); default: fp32.
        """
        super().__init__()
        self.save_hyperparameters()
        # Checkpoints hold only the trainable tensors: load them onto the freshly loaded backbone non-strictly,
        # after on_load_checkpoint has checked that they are exactly the ones this model expects.
        self.strict_loading = False
        backbone = load_backbone(model_name_or_path, num_labels)
        # from_pretrained returns eval mode, and Lightning keeps modules' modes: train with the backbone's dropout on,
        # as the reference recipe does; validation and prediction switch to eval mode as usual.
        backbone.train()
        if adapter_path:
            self.model = load_adapter(backbone, adapter_path)
        else:
            self.model = get_peft_model(
                backbone, lora_config(backbone, target_modules, lora_r, lora_alpha, lora_dropout)
            )
        metrics = MetricCollection(
            {
                "acc": MulticlassAccuracy(num_classes=num_labels, average="micro"),
                "f1": MulticlassF1Score(num_classes=num_labels, average="macro"),
            }
        )
        self.train_metrics = metrics.clone(prefix="train_")
        self.val_metrics = metrics.clone(prefix="val_")
        self.test_metrics = metrics.clone(prefix="test_")
        # Macro-F1 on the same posts with their emoticon tags removed (see weibo_sentiment.emoticons).
        self.val_f1_text = MulticlassF1Score(num_classes=num_labels, average="macro")
        self.test_f1_text = MulticlassF1Score(num_classes=num_labels, average="macro")
        # Pictures of each evaluation, drawn by callbacks.EvaluationReport: one object per stage.
        self.val_confusion = MulticlassConfusionMatrix(num_classes=num_labels)
        self.test_confusion = MulticlassConfusionMatrix(num_classes=num_labels)
        self.val_pr_curve = MulticlassPrecisionRecallCurve(num_classes=num_labels, thresholds=100)
        self.test_pr_curve = MulticlassPrecisionRecallCurve(num_classes=num_labels, thresholds=100)
        self.evaluation_probabilities: list[torch.Tensor] = []  # this evaluation's, in dataloader order
        self.int8_model: Optional[torch.nn.Module] = None  # the quantised copy that predicts with quantize=int8

    # ---- what a checkpoint holds -------------------------------------------------------------------------
    def trainable_keys(self) -> set[str]:
        """The state-dict keys of the trainable tensors: LoRA matrices and the classification head."""
        return {name for name, parameter in self.named_parameters() if parameter.requires_grad}

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        prefix = kwargs.get("prefix", "")
        keep = self.trainable_keys()
        full = super().state_dict(*args, **kwargs)
        return OrderedDict((key, value) for key, value in full.items() if key[len(prefix) :] in keep)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        expected = {key: value.shape for key, value in self.state_dict().items()}
        found = checkpoint.get("state_dict") or {}
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
                f"the checkpoint does not fit base model {self.hparams.model_name_or_path!r} with this LoRA setup: "
                f"{'; '.join(problems)}. Was it trained on another base model, num_labels or lora_r?"
            )

    # ---- training and evaluation -------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Class logits; never passes ``token_type_ids`` (see ``data.Tokenize``)."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    def on_fit_start(self) -> None:
        if self.trainer.is_global_zero:
            self.model.print_trainable_parameters()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Dropout draws depend only on the run's seed, the epoch, the batch and the rank, not on what ran before in
        # this process: a run resumed from a checkpoint continues exactly as the uninterrupted run would have.
        seed = int(os.environ.get("PL_GLOBAL_SEED", "0"))
        torch.manual_seed(((seed * 1_009 + self.current_epoch) * 1_000_003 + batch_idx) * 1_009 + self.global_rank)

    def _step(self, batch: dict[str, torch.Tensor], stage: str, metrics: MetricCollection) -> torch.Tensor:
        logits = self(batch["input_ids"], batch["attention_mask"])
        loss = torch.nn.functional.cross_entropy(logits, batch["labels"])
        metrics.update(logits.argmax(dim=-1), batch["labels"])
        if stage != "train":
            probabilities = logits.detach().float().softmax(dim=-1)
            getattr(self, f"{stage}_confusion").update(probabilities.argmax(dim=-1), batch["labels"])
            getattr(self, f"{stage}_pr_curve").update(probabilities, batch["labels"])
            self.evaluation_probabilities.append(probabilities.cpu())
        on_step = stage == "train"
        size = len(batch["labels"])
        self.log(f"{stage}_loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=size)
        # Logging the metric objects (not .compute() values) lets torchmetrics sync states across processes.
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage != "train", batch_size=size)
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train", self.train_metrics)

    def _text_only_step(self, batch: dict[str, Any], stage: str, metric: MulticlassF1Score) -> None:
        if "text_only" not in batch:  # every post of this batch was nothing but emoticon tags
            return
        text_only = batch["text_only"]
        metric.update(self(text_only["input_ids"], text_only["attention_mask"]).argmax(dim=-1), text_only["labels"])
        self.log(f"{stage}_f1_text", metric, on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=len(text_only["labels"]))  # fmt: skip

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "val", self.val_metrics)
        self._text_only_step(batch, "val", self.val_f1_text)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "test", self.test_metrics)
        self._text_only_step(batch, "test", self.test_f1_text)

    def _start_evaluation(self, stage: str) -> None:
        # The picture metrics are not logged, so Lightning never resets them (e.g. after the sanity check).
        getattr(self, f"{stage}_confusion").reset()
        getattr(self, f"{stage}_pr_curve").reset()
        self.evaluation_probabilities = []

    def on_validation_epoch_start(self) -> None:
        self._start_evaluation("val")

    def on_test_epoch_start(self) -> None:
        self._start_evaluation("test")

    def on_validation_epoch_end(self) -> None:
        # One figure that rewards reading the words as well as the tags, for choosing checkpoints.
        # compute() here returns the values synced across processes that the logged metric objects report.
        if self.val_f1_text.update_count:
            mean = (self.val_metrics["f1"].compute() + self.val_f1_text.compute()) / 2
            self.log("val_f1_mean", mean, prog_bar=True, sync_dist=True)  # equal on every rank already

    def on_predict_start(self) -> None:
        if self.hparams.quantize == "int8":
            if self.device.type != "cpu":
                raise UserError("model.quantize int8 runs on CPU only: drop it, or predict with --trainer.accelerator cpu")
            self.int8_model = quantize_int8(copy.deepcopy(self.model).merge_and_unload())
        else:
            # LoRA folded into the base weights: one matrix product per layer instead of three (undone at the end).
            self.model.merge_adapter()

    def on_predict_end(self) -> None:
        if self.int8_model is None:
            self.model.unmerge_adapter()
        self.int8_model = None

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Class probabilities, one row per post (NaN for posts without text); the writer makes rows of them."""
        probabilities = torch.full((len(batch["posts"]), self.hparams.num_labels), float("nan"), device=self.device)
        if len(batch["classified"]):
            model = self.int8_model if self.int8_model is not None else self.model
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            probabilities[batch["classified"]] = logits.softmax(dim=-1).to(probabilities.dtype)
        return probabilities

    def configure_optimizers(self) -> dict[str, Any]:
        total_steps = self.trainer.estimated_stepping_batches
        if not math.isfinite(total_steps):
            raise UserError("the learning-rate schedule needs a length: set trainer.max_epochs or trainer.max_steps")
        optimizer = torch.optim.AdamW(
            [p for p in self.parameters() if p.requires_grad],
            lr=self.hparams.learning_rate,
            eps=self.hparams.adam_epsilon,
            weight_decay=self.hparams.weight_decay,
        )
        scheduler = get_linear_schedule_with_warmup(
            optimizer, num_warmup_steps=int(self.hparams.warmup_ratio * total_steps), num_training_steps=int(total_steps)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
