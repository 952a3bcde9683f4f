"""One configuration for every entry point: ``main.py``'s YAML, read by jsonargparse.

``main.py`` (LightningCLI) and the API, the console and the export (``inference_parser``) read the same ``model:``
and ``data:`` sections, checked against the same classes with the same links, so a typo anywhere gets the same
one-line message; ``serve:`` holds the API's own settings. ``--print_config`` shows what each resolved.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Union

from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

from weibo_sentiment.backbone import checkpoint_architecture, find_last_checkpoint, read_checkpoint
from weibo_sentiment.data.datamodule import WeiboDataModule
from weibo_sentiment.model import SentimentClassifier

LAST = "last"
"""``--ckpt_path last``: the newest ``last.ckpt`` under ``lightning_logs/``."""


@dataclass
class ServeSettings:
    """The HTTP API's settings (the ``serve:`` section of a config)."""

    host: str = "127.0.0.1"  # address to listen on; 0.0.0.0 to serve other machines
    port: int = 8000
    max_batch_size: int = 32  # requests answered by one forward pass at most
    batch_timeout: float = 0.01  # seconds a request may wait for others to share its forward pass
    workers: int = 1  # model worker processes
    max_texts: int = 256  # texts per request at most
    max_chars: int = 10_000  # characters per text at most (longer: rejected; the model reads 128 tokens)


def link_data_to_model(parser: ArgumentParser) -> None:
    """The backbone is named once: the data module tokenizes with its tokenizer and checks labels against its
    ``num_labels``."""
    parser.link_arguments("model.model_name_or_path", "data.tokenizer_name_or_path")
    parser.link_arguments("model.num_labels", "data.num_labels")


def inference_parser(description: str) -> ArgumentParser:
    """The parser of the API, the console and the export: main.py's config and model/data flags, which trained
    weights to load, and the inference mode (``--runtime``, ``--quantize``, ``--precision``)."""
    parser = ArgumentParser(description=description, default_meta=False)
    parser.add_argument("--config", action=ActionConfigFile, help="a main.py YAML config (its model, data and serve "
                        "sections are used here; trainer, checkpoint and predict_writer are main.py's)")  # fmt: skip
    parser.add_argument("--ckpt_path", type=Optional[str], default=None,
                        help="a checkpoint written by main.py fit, or 'last' (the newest under lightning_logs/); "
                             "or give --model.adapter_path, or an exported model as --model.model_name_or_path")  # fmt: skip
    parser.add_argument("--runtime", type=Optional[Literal["torch", "onnxruntime"]], default=None,
                        help="what labels (overrides model.runtime): torch, or onnxruntime (CPU, faster)")  # fmt: skip
    parser.add_argument("--quantize", type=Optional[Literal["int8"]], default=None,
                        help="int8: onnxruntime's int8 matrix products (overrides model.quantize)")  # fmt: skip
    parser.add_argument("--precision", type=Literal["32-true", "bf16-mixed"], default="32-true",
                        help="bf16-mixed: bf16 on GPUs and CPUs with AVX512_BF16/AMX (runtime torch)")  # fmt: skip
    parser.add_class_arguments(SentimentClassifier, "model")
    parser.add_class_arguments(WeiboDataModule, "data")
    link_data_to_model(parser)
    parser.add_class_arguments(ServeSettings, "serve")
    # main.py's own sections of the same file: accepted, not used here.
    parser.add_argument("--seed_everything", type=Union[bool, int], default=True, help="main.py's; not used here")
    for section in ("trainer", "checkpoint", "predict_writer"):
        parser.add_argument(f"--{section}", type=Optional[dict], default=None, help="main.py's; not used here")
    return parser


def trained_model(parser: ArgumentParser, config: Namespace) -> tuple[Namespace, SentimentClassifier, WeiboDataModule]:
    """The model and data module a parsed ``inference_parser`` config names, with the checkpoint's weights loaded."""
    config, checkpoint = with_checkpoint(parser, config)
    classes = parser.instantiate_classes(config)
    if checkpoint is not None:
        classes.model.on_load_checkpoint(checkpoint)  # exactly the expected tensors, or a clear error
        classes.model.load_state_dict(checkpoint["state_dict"], strict=False)
    return config, classes.model, classes.data


def with_checkpoint(parser: ArgumentParser, config: Namespace) -> tuple[Namespace, Optional[dict[str, Any]]]:
    """The config with ``--ckpt_path`` resolved and read, the hyper-parameters that shape its tensors taken from
    it (as main.py does), and the ``--runtime``/``--quantize`` overrides applied; and the checkpoint, if any."""
    overrides = {key: config[key] for key in ("runtime", "quantize") if config[key] is not None}
    checkpoint = None
    if config.ckpt_path:
        path = find_last_checkpoint(Path("."), None) if config.ckpt_path == LAST else Path(config.ckpt_path)
        checkpoint = read_checkpoint(path)
        config.ckpt_path = str(path)
        overrides.update(checkpoint_architecture(checkpoint))
    if overrides:
        config = parser.parse_object({"model": overrides}, config)
    return config, checkpoint
