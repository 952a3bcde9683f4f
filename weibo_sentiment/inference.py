"""Load a trained model for inference, once, and label posts with it: shared by the HTTP API and the console.

The model and data settings come from the same YAML config as ``main.py``; the weights from a checkpoint
(``--ckpt_path``) or a peft adapter directory (``--adapter_path``). LoRA is merged into the base weights and the
model put in eval mode, so each request is one plain forward pass.
"""

from __future__ import annotations

import argparse
import pickle
import warnings
from pathlib import Path
from typing import Any, Optional

import torch
import yaml

from weibo_sentiment.callbacks import prediction_rows
from weibo_sentiment.data import Post, SortedPostBatches, Tokenize, load_tokenizer
from weibo_sentiment.emoticons import DEFAULT_PATTERN, EmoticonTags
from weibo_sentiment.errors import UserError, first_line
from weibo_sentiment.model import ARCHITECTURE_HPARAMS, SentimentClassifier
from weibo_sentiment.quantize import quantize_int8

DATA_SETTINGS = ("max_length", "emoticon_pattern", "text_column")


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


def checkpoint_architecture(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The hyper-parameters that shape a checkpoint's tensors; they win over a config's."""
    hparams = checkpoint.get("hyper_parameters") or {}
    return {key: hparams[key] for key in ARCHITECTURE_HPARAMS if key in hparams}


def read_config(path: Optional[str]) -> dict[str, Any]:
    """The ``model`` and ``data`` sections of a ``main.py`` YAML config (other sections are ignored here)."""
    if path is None:
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f) or {}
    except OSError as err:
        raise UserError(f"{path}: cannot read the config ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({first_line(err)})") from None
    if not isinstance(config, dict):
        raise UserError(f"{path}: expected a YAML mapping with model: and data: sections")
    return config


class SentimentPredictor:
    """A merged, eval-mode model with its tokenizer: ``predict(texts)`` gives one result row per text."""

    def __init__(
        self,
        config_path: Optional[str] = None,
        ckpt_path: Optional[str] = None,
        adapter_path: Optional[str] = None,
        model_name_or_path: Optional[str] = None,
        device: str = "cpu",
        quantize: Optional[str] = None,
    ) -> None:
        config = read_config(config_path)
        model_settings = dict(config.get("model") or {})
        data_settings = {k: v for k, v in (config.get("data") or {}).items() if k in DATA_SETTINGS}
        if model_name_or_path:
            model_settings["model_name_or_path"] = model_name_or_path
        if adapter_path:
            model_settings["adapter_path"] = adapter_path
        checkpoint = read_checkpoint(ckpt_path) if ckpt_path else None
        if checkpoint is not None:
            model_settings.update(checkpoint_architecture(checkpoint))
        try:
            module = SentimentClassifier(**model_settings)
        except TypeError as err:
            raise UserError(f"{config_path}: model section: {err}") from None
        if checkpoint is not None:
            module.on_load_checkpoint(checkpoint)  # exactly the expected tensors, or a clear error
            module.load_state_dict(checkpoint["state_dict"], strict=False)
        self.model = module.model.merge_and_unload().eval().to(device)
        quantize = quantize or module.hparams.quantize
        if quantize == "int8":
            if device != "cpu":
                raise UserError("--quantize int8 runs on CPU only")
            self.model = quantize_int8(self.model)
        self.device = device
        self.tokenizer = load_tokenizer(module.hparams.model_name_or_path)
        self.tokenize = Tokenize(self.tokenizer, data_settings.get("max_length", 128))
        self.emoticons = EmoticonTags(data_settings.get("emoticon_pattern", DEFAULT_PATTERN))
        self.text_column = data_settings.get("text_column", "review")

    @torch.inference_mode()
    def predict(self, texts: list[str], chunk_size: int = 64) -> list[dict[str, Any]]:
        """``label``, ``sentiment``, ``confidence``, ``prob_positive``, ``emoticons`` and ``truncated`` per text.

        Texts are batched as ``main.py predict`` batches a window (sorted by token count, answers restored to
        input order), so a short post never pays for padding to a long one.
        """
        posts = [Post(text) for text in texts]
        probabilities = torch.full((len(texts), self.model.config.num_labels), float("nan"))
        lengths = torch.zeros(len(texts), dtype=torch.long)
        batches = SortedPostBatches([], self.tokenize, self.tokenizer.pad_token_id, chunk_size, len(texts))
        for batch in batches.window_batches(posts):
            if not len(batch["classified"]):
                continue
            positions = torch.tensor(batch["positions"])[batch["classified"]]
            inputs = {key: batch[key].to(self.device) for key in ("input_ids", "attention_mask")}
            probabilities[positions] = self.model(**inputs).logits.float().softmax(-1).cpu()
            lengths[positions] = batch["attention_mask"].sum(dim=1)
        rows = prediction_rows(posts, probabilities, self.text_column, self.emoticons)
        # The model reads max_length tokens; say so when a post was cut to fit rather than pass it silently.
        # Only posts that reached the limit can have been cut: count their full length to be sure.
        at_limit = [i for i, length in enumerate(lengths.tolist()) if length >= self.tokenize.max_length]
        full_lengths = [len(ids) for ids in self.tokenizer([texts[i] for i in at_limit])["input_ids"]] if at_limit else []
        cut = {i for i, length in zip(at_limit, full_lengths) if length > self.tokenize.max_length}
        for index, row in enumerate(rows):
            del row[self.text_column]
            row["truncated"] = index in cut
        return rows


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that say which model to load: shared by the HTTP API and the console."""
    parser.add_argument("--config", help="a main.py YAML config: its model and data sections are used")
    weights = parser.add_mutually_exclusive_group(required=True)
    weights.add_argument("--ckpt_path", help="a checkpoint written by main.py fit")
    weights.add_argument("--adapter_path", help="a peft adapter directory (ours or another peft script's)")
    parser.add_argument("--model_name_or_path", help="the base model, if not the config's (hub id or directory)")
    parser.add_argument("--quantize", choices=["int8"], help="int8: dynamically quantised linear layers (CPU only)")


def predictor_from_arguments(args: argparse.Namespace, device: str = "cpu") -> SentimentPredictor:
    return SentimentPredictor(args.config, args.ckpt_path, args.adapter_path, args.model_name_or_path, device,
                              args.quantize)  # fmt: skip
