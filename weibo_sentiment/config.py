"""One configuration for every entry point: ``main.py``'s YAML, read by jsonargparse.

``main.py`` (LightningCLI, ``cli``) and the API, the console and the export (``inference_parser`` here) read the
same ``model:`` and ``data:`` sections, checked against the same classes (``settings``) with the same links, so a
typo anywhere gets the same one-line message and ``--print_config`` shows what each resolved. Nothing here imports
Lightning: the API's process does not need it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional, Union

from jsonargparse import ActionConfigFile, ArgumentParser, Namespace
from peft import PeftModel

from weibo_sentiment.backbone import (
    build_peft_model,
    checkpoint_architecture,
    find_last_checkpoint,
    load_trained_tensors,
    read_checkpoint,
)
from weibo_sentiment.engine import is_exported, refuse_checkpoint
from weibo_sentiment.errors import UserError
from weibo_sentiment.settings import DataSettings, ModelSettings, ServeSettings

LAST = "last"
"""``--ckpt_path last``: the newest ``last.ckpt`` under ``lightning_logs/``."""


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
    parser.add_class_arguments(ModelSettings, "model")
    parser.add_class_arguments(DataSettings, "data")
    link_data_to_model(parser)
    parser.add_class_arguments(ServeSettings, "serve")
    # main.py's own sections of the same file: accepted, not used here.
    parser.add_argument("--seed_everything", type=Union[bool, int], default=True, help="main.py's; not used here")
    for section in ("trainer", "checkpoint", "predict_writer"):
        parser.add_argument(f"--{section}", type=Optional[dict], default=None, help="main.py's; not used here")
    return parser


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


def trained_model(parser: ArgumentParser, config: Namespace) -> tuple[Namespace, ModelSettings, Optional[PeftModel]]:
    """The settings of a parsed ``inference_parser`` config, and its peft model with the checkpoint's trained
    tensors loaded (none for an exported model, which holds its own)."""
    config, checkpoint = with_checkpoint(parser, config)
    settings = ModelSettings(**vars(config.model))
    if is_exported(settings.model_name_or_path):
        if checkpoint is not None:
            raise refuse_checkpoint(settings.model_name_or_path)
        return config, settings, None
    model = build_peft_model(settings)
    if checkpoint is not None:
        try:
            load_trained_tensors(model, checkpoint, settings.model_name_or_path)
        except UserError as err:
            raise UserError(f"{config.ckpt_path}: {err}") from None
    return config, settings, model


def data_settings(config: Namespace) -> DataSettings:
    return DataSettings(**vars(config.data))
