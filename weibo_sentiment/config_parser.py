"""One configuration for every entry point: ``main.py``'s YAML, read by jsonargparse.

``main.py`` (LightningCLI, ``cli``) and the API, the console and the export (``inference_parser`` here) read the
same ``model:`` and ``data:`` sections, checked against the same classes (``settings``) with the same links, so a
typo anywhere gets the same one-line message and ``--print_config`` shows what each resolved. Nothing here imports
Lightning: the API's process does not need it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Literal, Optional, Union

from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

from weibo_sentiment.inference.model_source import ARCHITECTURE_HPARAMS, ModelSource, resolve_model_source
from weibo_sentiment.settings import DataSettings, ModelSettings, Quantization, ServeSettings




def link_data_to_model(parser: ArgumentParser) -> None:
    """The backbone is named once: the data module tokenizes with its tokenizer and checks labels against its
    ``num_labels``."""
    parser.link_arguments("model.model_name_or_path", "data.tokenizer_name_or_path")
    parser.link_arguments("model.num_labels", "data.num_labels")


INFERENCE_OPTIONS = frozenset({
    "config", "print_config", "help", "ckpt_path", "runtime", "quantize", "precision", "model.model_name_or_path",
    "model.adapter_path", "model.runtime", "model.quantize", "model.neutral_band", "data.max_length",
    "data.emoticon_pattern", "data.eval_batch_size",
})  # fmt: skip
"""The options that labelling uses, which ``--help`` lists: which model, how it runs, how posts are read into it."""


def inference_parser(description: str, serves: bool = False) -> ArgumentParser:
    """The parser of the API (``serves``), the console and the export: main.py's config and model/data flags, which
    trained weights to load, and the inference mode (``--runtime``, ``--quantize``, ``--precision``). Its ``--help``
    lists only what labelling uses (``INFERENCE_OPTIONS``, and the ``serve`` section for the API); every other
    option of a main.py config is still accepted, so one file serves ``main.py`` and these alike."""
    parser = ArgumentParser(description=description, default_meta=False)
    parser.add_argument("--config", action=ActionConfigFile, help="a main.py YAML config (its model, data and serve "
                        "sections are used here; trainer, checkpoint and predict_writer are main.py's)")  # fmt: skip
    parser.add_argument("--ckpt_path", type=Optional[str], default=None,
                        help="a checkpoint written by main.py fit, or 'last' (the newest under lightning_logs/); "
                             "or give --model.adapter_path, or an exported model as --model.model_name_or_path")  # fmt: skip
    parser.add_argument("--runtime", type=Optional[Literal["torch", "onnxruntime"]], default=None,
                        help="what labels (overrides model.runtime): torch, or onnxruntime (CPU, faster)")  # fmt: skip
    parser.add_argument("--quantize", type=Optional[Quantization], default=None,
                        help="int8: onnxruntime's int8 matrix products, a post's result independent of its batch; "
                             "int8-dynamic: one scale per batch, faster (overrides model.quantize)")  # fmt: skip
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
    for action in parser._actions:  # argparse's list of options: SUPPRESS leaves one out of --help, not out of parsing
        applies = action.dest in INFERENCE_OPTIONS or (serves and action.dest.split(".")[0] == "serve")
        if not applies:
            action.help = argparse.SUPPRESS
    return parser


def load_config(config: Optional[str | Path] = None, **overrides: Any) -> Namespace:
    """A ``main.py`` YAML read as the API, console and export read it (``None``: the defaults), with flag values
    (``ckpt_path``, ``runtime``, ``quantize``, ``precision``) set as given; for the Python API."""
    parser = inference_parser("weibo_sentiment")
    args = ["--config", str(config)] if config is not None else []
    parsed = parser.parse_args(args)
    for key, value in overrides.items():
        if value is not None:
            parsed[key] = value
    return parsed


def source_from_config(config: Namespace) -> ModelSource:
    """The model a parsed config names: ``--ckpt_path`` (``last`` under its ``trainer.default_root_dir`` /
    ``checkpoint.dirpath``, as ``main.py`` looks), ``model.adapter_path``, or an exported ``model_name_or_path``."""
    trainer = config.get("trainer") or {}
    checkpoint = config.get("checkpoint") or {}
    return resolve_model_source(
        config.model.model_name_or_path,
        ckpt_path=config.get("ckpt_path"),
        adapter_path=config.model.adapter_path,
        architecture={key: config.model[key] for key in ARCHITECTURE_HPARAMS},
        max_length=config.data.max_length,
        root_dir=trainer.get("default_root_dir"),
        checkpoint_dir=checkpoint.get("dirpath"),
    )


def inference_mode(config: Namespace) -> dict[str, Any]:
    """The runtime, quantisation and precision a parsed config asks for (flags over the ``model:`` section)."""
    return {
        "runtime": config.get("runtime") or config.model.runtime,
        "quantize": config.get("quantize") or config.model.quantize,
        "precision": config.get("precision") or "32-true",
    }


def data_settings(config: Namespace) -> DataSettings:
    return DataSettings(**vars(config.data))


def analyzer_options(config: Namespace) -> dict[str, Any]:
    """What ``SentimentAnalyzer.from_source`` takes from a parsed config besides the model: the mode its flags ask
    for, the batch size, the emoticon pattern and the neutral band."""
    return {**inference_mode(config), "batch_size": config.data.eval_batch_size,
            "emoticon_pattern": config.data.emoticon_pattern, "neutral_band": config.model.neutral_band}
