"""Export a trained model for deployment: a directory with the model, LoRA merged, as ONNX (fp32, and int8 with
``--quantize int8``) and its tokenizer. onnxruntime and that directory are all a deployment needs: no base model
download, no peft.

    python -m weibo_sentiment.export --config configs/quickstart.yaml --ckpt_path last --output_dir exported --quantize int8
    python main.py export ...                      # the same
    python main.py predict --config configs/quickstart.yaml --model.model_name_or_path exported --quantize int8 ...
    python main.py export --config configs/quickstart.yaml --ckpt_path last --output_dir exported-hf --format hf

``main.py predict``, the API and the console take the directory as ``--model.model_name_or_path``.
"""

from __future__ import annotations

import datetime
import json
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

from weibo_sentiment.atomic_files import staged_directory
from weibo_sentiment.config_parser import inference_mode, inference_parser, source_from_config
from weibo_sentiment.data.tokenizer import load_tokenizer
from weibo_sentiment.inference.engine import (
    EXPORT_FORMAT,
    FP32_FILE,
    ONNX_FILES,
    export_onnx,
    load_trained_model,
    trained_model_id,
)
from weibo_sentiment.errors import UserError, exit_on_user_error
from weibo_sentiment.inference.model_source import MANIFEST, ModelSource, is_exported
from weibo_sentiment.stopping import exit_when_stopped


def checked_output_dir(path: str) -> Path:
    """Where to export: a new or empty directory, or an earlier export (replaced whole); never anything else."""
    output = Path(path)
    if output.exists() and not output.is_dir():
        raise UserError(f"{output}: is a file; give --output_dir a directory to create")
    if output.is_dir() and any(output.iterdir()) and not is_exported(output):
        raise UserError(f"{output}: exists and holds other files; give --output_dir a new or empty directory")
    return output


def main(argv: list[str] | None = None) -> None:
    parser = inference_parser(__doc__.splitlines()[0])
    parser.add_argument("--output_dir", type=str, required=True, help="the directory to write (new, empty, or an "
                        "earlier export, which is replaced)")  # fmt: skip
    parser.add_argument("--format", type=Literal["onnx", "hf"], default="onnx",
                        help="onnx: the ONNX model(s) for onnxruntime, which predict, the API and the console take as "
                             "--model.model_name_or_path; hf: a merged Hugging Face model directory (safetensors) for "
                             "transformers.pipeline('text-classification', model=DIR)")  # fmt: skip
    with exit_when_stopped(), exit_on_user_error():
        config = parser.parse_args(sys.argv[1:] if argv is None else argv)
        source = source_from_config(config)
        if source.kind == "exported":
            raise UserError(f"{source.path} is already an exported model")
        if source.kind == "base":
            raise UserError("export what? pass --ckpt_path CKPT (or last), or --model.adapter_path DIR")
        output = checked_output_dir(config.output_dir)
        quantize = inference_mode(config)["quantize"]
        if quantize and config.format == "hf":
            raise UserError(f"--format hf writes the fp32 model; {quantize} is for --format onnx")
        peft_model = load_trained_model(source)
        tokenizer = load_tokenizer(source.tokenizer)
        try:
            with staged_directory(output) as staging:
                if config.format == "hf":
                    files = save_merged_model(peft_model, tokenizer, source, staging)
                else:
                    files = {"fp32": FP32_FILE, **({quantize: ONNX_FILES[quantize]} if quantize else {})}
                    export_onnx(peft_model, staging, quantize)
                    tokenizer.save_pretrained(str(staging))
                    manifest = {
                        "format": EXPORT_FORMAT,
                        "model_id": trained_model_id(peft_model),
                        "num_labels": source.num_labels,
                        "labels": list(source.labels),
                        "files": files,
                        "base_model": source.base_model,
                        "trained_weights": source.path,
                        "max_length": source.max_length,
                        "exported": datetime.datetime.now().isoformat(timespec="seconds"),
                        "versions": {package: version(package) for package in ("torch", "transformers", "onnxruntime")},
                    }
                    (staging / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False), encoding="utf-8")
        except OSError as err:
            raise UserError(f"{output}: cannot write the export here ({err.strerror})") from None
    sizes = ", ".join(f"{name} {(output / name).stat().st_size / 1e6:.1f} MB" for name in files.values())
    print(f"Exported {source.describe()} to {output}: {sizes}")


def save_merged_model(peft_model: Any, tokenizer: Any, source: ModelSource, directory: Path) -> dict[str, str]:
    """A Hugging Face model directory: the base model with LoRA merged into its weights (safetensors), labels named
    in its config, and a tokenizer that reads posts as this project does: to ``max_length`` tokens, and without
    ``token_type_ids`` (a BERT tokenizer returns them by default, and GPT-2 would add a token-type embedding)."""
    merged = peft_model.merge_and_unload()
    merged.config.id2label = dict(enumerate(source.labels))
    merged.config.label2id = {label: number for number, label in enumerate(source.labels)}
    merged.save_pretrained(str(directory), safe_serialization=True)
    tokenizer.save_pretrained(str(directory))
    # transformers 5 saves neither of these from the tokenizer object, and reads both back from its config file.
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.update(model_input_names=["input_ids", "attention_mask"], model_max_length=source.max_length)
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    return {"weights": "model.safetensors", "config": "config.json"}
