"""The LightningModule: a pretrained backbone wrapped with peft LoRA, its metrics, optimizer and checkpoint contents.

Checkpoints hold only the trainable tensors (the LoRA matrices and the classification head) plus the training
state; the frozen backbone is loaded from ``model_name_or_path`` each time ("resume from a partial checkpoint").
Prediction labels through the inference engine (``weibo_sentiment.inference.engine``), as the API and the console do.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from dataclasses import asdict
from collections.abc import Sequence
from typing import Any, Literal, Optional

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score
from transformers import get_linear_schedule_with_warmup

from weibo_sentiment.inference.backbone import build_peft_model, check_trainable_tensors, fine_tuned_backbone
from weibo_sentiment.inference.engine import Engine, engine_for, exported_model_id, trained_model_id
from weibo_sentiment.inference.model_source import is_exported, read_manifest, refuse_checkpoint
from weibo_sentiment.errors import UserError
from weibo_sentiment.settings import DEFAULT_TARGET_MODULES, ModelSettings, Quantization
from weibo_sentiment.training.metrics import EvaluationMetrics


def symmetric_kl(logits: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """Mean over ``pairs`` (rows of one post as written and without its tags) of the symmetric KL divergence
    ½ (KL(p‖q) + KL(q‖p)) between the two rows' predicted distributions."""
    log_p, log_q = logits.float().log_softmax(dim=-1)[pairs[:, 0]], logits.float().log_softmax(dim=-1)[pairs[:, 1]]
    kl_pq = (log_p.exp() * (log_p - log_q)).sum(dim=-1)
    kl_qp = (log_q.exp() * (log_q - log_p)).sum(dim=-1)
    return ((kl_pq + kl_qp) / 2).mean()


def within_classes(logits: torch.Tensor, class_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """The logits with the classes a row's source does not label set to -inf (``data.batching.classes_of``), so that
    its cross-entropy is over the classes it has: a corpus labelled only negative or positive teaches a three-class
    model nothing about neutral. Without a mask, the logits as they are."""
    return logits if class_mask is None else logits.masked_fill(~class_mask, float("-inf"))


class SentimentClassifier(LightningModule):
    """Sentiment of Weibo posts: a sequence-classification backbone with LoRA, scored by accuracy and macro-F1."""

    def __init__(
        self,
        model_name_or_path: str = ModelSettings.model_name_or_path,
        adapter_path: Optional[str] = None,
        num_labels: int = ModelSettings.num_labels,
        lora_r: int = ModelSettings.lora_r,
        lora_alpha: int = ModelSettings.lora_alpha,
        lora_dropout: float = ModelSettings.lora_dropout,
        target_modules: Sequence[str] = DEFAULT_TARGET_MODULES,
        learning_rate: float = ModelSettings.learning_rate,
        backbone_learning_rate: Optional[float] = None,
        adam_epsilon: float = ModelSettings.adam_epsilon,
        weight_decay: float = ModelSettings.weight_decay,
        warmup_ratio: float = ModelSettings.warmup_ratio,
        runtime: Optional[Literal["torch", "onnxruntime"]] = None,
        quantize: Optional[Quantization] = None,
        neutral_band: Optional[list[float]] = None,
        view_consistency: float = ModelSettings.view_consistency,
    ) -> None:
        """The ``model:`` section of a config; each argument is described (and checked) in
        :class:`weibo_sentiment.settings.ModelSettings`, which the API, the console and the export read too."""
        settings = {name: value for name, value in locals().items() if name in ModelSettings.__dataclass_fields__}
        super().__init__()
        self.settings = ModelSettings(**settings)
        self.save_hyperparameters(asdict(self.settings))
        # Checkpoints hold only the trainable tensors: load them onto the freshly loaded backbone non-strictly,
        # after on_load_checkpoint has checked that they are exactly the ones this model expects.
        self.strict_loading = False
        name = self.settings.model_name_or_path
        self.exported_dir = name if is_exported(name) else None
        self.engine: Optional[Engine] = None  # set for the length of a predict run
        if self.exported_dir is not None:
            # An exported model predicts through its ONNX file alone; there is no backbone to train or evaluate.
            self.model = None
            self.hparams.num_labels = self.settings.num_labels = read_manifest(name)["num_labels"]
        else:
            self.model = build_peft_model(self.settings)
        self._add_metrics(self.settings.num_labels)

    def _add_metrics(self, num_labels: int) -> None:
        self.train_metrics = MetricCollection({"acc": MulticlassAccuracy(num_classes=num_labels, average="micro"),
                                               "f1": MulticlassF1Score(num_classes=num_labels, average="macro")},
                                              prefix="train_")  # fmt: skip
        # One set of metrics per evaluation set: the corpus's validation posts (val), posts labelled by people
        # (val_human, data.human_val) and test's; each set's names end with its own suffix (val_f1_human).
        self.evaluation = torch.nn.ModuleDict({split: EvaluationMetrics(split, num_labels)
                                               for split in ("val", "val_human", "test")})  # fmt: skip
        self.evaluation_probabilities: dict[str, list[torch.Tensor]] = {}  # this evaluation's, in dataloader order

    # ---- what a checkpoint holds -------------------------------------------------------------------------
    def trainable_keys(self) -> set[str]:
        """The state-dict keys of the trainable tensors: LoRA matrices and the classification head (and with full
        fine-tuning, ``model.backbone_learning_rate``, the backbone's weights)."""
        return {name for name, parameter in self.named_parameters() if parameter.requires_grad}

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        prefix = kwargs.get("prefix", "")
        keep = self.trainable_keys()
        full = super().state_dict(*args, **kwargs)
        return OrderedDict((key, value) for key, value in full.items() if key[len(prefix) :] in keep)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.exported_dir is not None:
            raise refuse_checkpoint(self.exported_dir)
        expected = {key: value.shape for key, value in self.state_dict().items()}
        check_trainable_tensors(expected, checkpoint.get("state_dict") or {}, self.settings.model_name_or_path)

    def check_stage(self, stage: str) -> None:
        """An exported model can only predict; say so before any work or run folder."""
        if self.exported_dir is not None and stage != "predict":
            raise UserError(f"{self.exported_dir} is an exported model (ONNX) for prediction only: to {stage}, use the "
                            "base model (--model.model_name_or_path) with a checkpoint or adapter")

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

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        raw = self(batch["input_ids"], batch["attention_mask"])
        logits = within_classes(raw, batch.get("class_mask"))
        loss = torch.nn.functional.cross_entropy(logits, batch["labels"])
        if "view_pairs" in batch:  # two-view training: the words must say what the tags say
            divergence = symmetric_kl(raw, batch["view_pairs"])
            loss = loss + self.settings.view_consistency * divergence
            self.log("train_view_kl", divergence, on_step=True, on_epoch=True, batch_size=len(batch["view_pairs"]))
        self.train_metrics.update(logits.argmax(dim=-1), batch["labels"])
        size = len(batch["labels"])
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=size)
        # Logging the metric objects (not .compute() values) lets torchmetrics sync states across processes.
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True, batch_size=size)
        return loss

    def _evaluation_step(self, batch: dict[str, Any], stage: str, dataloader_idx: int) -> None:
        split = self._evaluation_split(stage, dataloader_idx)
        metrics: EvaluationMetrics = self.evaluation[split]
        logits = self(batch["input_ids"], batch["attention_mask"])
        loss = torch.nn.functional.cross_entropy(within_classes(logits, batch.get("class_mask")), batch["labels"])
        probabilities = metrics.update(logits, batch["labels"])
        self.evaluation_probabilities.setdefault(split, []).append(probabilities.cpu())
        size = len(batch["labels"])
        self.log(metrics.name("loss"), loss, on_epoch=True, prog_bar=split == stage, sync_dist=True, batch_size=size,
                 add_dataloader_idx=False)  # fmt: skip
        for name, metric in metrics.logged(has_neutral="class_mask" not in batch):
            self.log(name, metric, on_step=False, on_epoch=True, prog_bar=metrics.in_progress_bar(name),
                     batch_size=size, add_dataloader_idx=False)  # fmt: skip
        if "text_only" in batch and split != "val_human":  # absent: every post of this batch was nothing but tags
            text_only = batch["text_only"]
            metrics.update_text_only(self(text_only["input_ids"], text_only["attention_mask"]), text_only["labels"])
            self.log(metrics.name("f1_text"), metrics.f1_text, on_step=False, on_epoch=True, prog_bar=True,
                     batch_size=len(text_only["labels"]), add_dataloader_idx=False)  # fmt: skip

    def _evaluation_split(self, stage: str, dataloader_idx: int) -> str:
        """Which evaluation set a dataloader holds (``WeiboDataModule.evaluation_sets``)."""
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        splits = datamodule.evaluation_sets(stage) if datamodule is not None else [stage]
        return splits[dataloader_idx]

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluation_step(batch, "val", dataloader_idx)

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluation_step(batch, "test", dataloader_idx)

    def _start_evaluation(self, stage: str) -> None:
        # The picture metrics are not logged, so Lightning never resets them (e.g. after the sanity check).
        for split in ("val", "val_human") if stage == "val" else (stage,):
            self.evaluation[split].reset_pictures()
        self.evaluation_probabilities = {}

    def on_validation_epoch_start(self) -> None:
        self._start_evaluation("val")

    def on_test_epoch_start(self) -> None:
        self._start_evaluation("test")

    def on_validation_epoch_end(self) -> None:
        # One figure that rewards reading the words as well as the tags, for choosing checkpoints.
        # compute() here returns the values synced across processes that the logged metric objects report.
        corpus = self.evaluation["val"]
        if corpus.f1_text.update_count:
            mean = (corpus.f1.compute() + corpus.f1_text.compute()) / 2
            self.log("val_f1_mean", mean, prog_bar=True, sync_dist=True)  # equal on every rank already

    # ---- prediction, through the inference engine ---------------------------------------------------------------
    def inference_engine(self, precision: str = "32-true") -> Engine:
        """The engine that labels for this model in its ``runtime``/``quantize`` and the given precision."""
        return engine_for(self.settings, self.model, precision, self.device.type)

    def trained_model_id(self) -> str:
        """What identifies this trained model in a labels table, whatever runs it (``engine.trained_model_id``)."""
        return exported_model_id(self.exported_dir) if self.exported_dir else trained_model_id(self.model)

    def on_predict_start(self) -> None:
        self.engine = self.inference_engine(str(self.trainer.precision))
        rank_zero_info(f"Labelling with {self.engine.mode}")

    def on_predict_end(self) -> None:
        if self.engine is not None:
            self.engine.close()
        self.engine = None

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Class probabilities, one row per post (NaN for posts without text); the writer makes rows of them."""
        probabilities = torch.full((len(batch["posts"]), self.settings.num_labels), float("nan"), device=self.device)
        if len(batch["classified"]):
            computed = self.engine(batch["input_ids"], batch["attention_mask"])
            probabilities[batch["classified"]] = computed.to(probabilities.device)
        return probabilities

    def configure_optimizers(self) -> dict[str, Any]:
        total_steps = self.trainer.estimated_stepping_batches
        if not math.isfinite(total_steps):
            raise UserError("the learning-rate schedule needs a length: set trainer.max_epochs or trainer.max_steps")
        backbone = [p for _, p in fine_tuned_backbone(self.model)]  # full fine-tuning: a rate of its own
        in_backbone = {id(p) for p in backbone}
        groups = [{"params": [p for p in self.model.parameters() if p.requires_grad and id(p) not in in_backbone]}]
        if backbone:
            groups.append({"params": backbone, "lr": self.settings.backbone_learning_rate})
        optimizer = torch.optim.AdamW(
            groups,
            lr=self.settings.learning_rate,
            eps=self.settings.adam_epsilon,
            weight_decay=self.settings.weight_decay,
        )
        scheduler = get_linear_schedule_with_warmup(
            optimizer, num_warmup_steps=int(self.settings.warmup_ratio * total_steps), num_training_steps=int(total_steps)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
