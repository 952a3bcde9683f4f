"""Export a trained model for deployment: a directory with the model, LoRA merged, as ONNX (fp32, and int8 with
``--quantize int8``) and its tokenizer. onnxruntime and that directory are all a deployment needs: no base model
download, no peft.

    python -m weibo_sentiment.export --config configs/quickstart.yaml --ckpt_path last --output_dir exported --quantize int8
    python main.py export ...                      # the same
    python main.py predict --config configs/quickstart.yaml --model.model_name_or_path exported --quantize int8 ...

``main.py predict``, the API and the console take the directory as ``--model.model_name_or_path``.
"""

from __future__ import annotations

import datetime
import json
import sys
from importlib.metadata import version
from pathlib import Path

from weibo_sentiment.atomic_files import staged_directory
from weibo_sentiment.config import data_settings, inference_parser, trained_model
from weibo_sentiment.data.tokenizer import load_tokenizer
from weibo_sentiment.engine import FP32_FILE, INT8_FILE, MANIFEST, export_onnx, is_exported
from weibo_sentiment.errors import UserError, exit_on_user_error
from weibo_sentiment.outputs import SENTIMENTS
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
    with exit_when_stopped(), exit_on_user_error():
        config = parser.parse_args(sys.argv[1:] if argv is None else argv)
        if is_exported(config.model.model_name_or_path):
            raise UserError(f"{config.model.model_name_or_path} is already an exported model")
        if not config.ckpt_path and not config.model.adapter_path:
            raise UserError("export what? pass --ckpt_path CKPT (or last), or --model.adapter_path DIR")
        output = checked_output_dir(config.output_dir)
        config, settings, model = trained_model(parser, config)
        data = data_settings(config)
        quantize = settings.quantize == "int8"
        try:
            with staged_directory(output) as staging:
                export_onnx(model, staging, quantize)
                load_tokenizer(data.tokenizer_name_or_path).save_pretrained(str(staging))
                manifest = {
                    "format": 1,
                    "num_labels": settings.num_labels,
                    "labels": list(SENTIMENTS[: settings.num_labels]),
                    "files": {"fp32": FP32_FILE, **({"int8": INT8_FILE} if quantize else {})},
                    "base_model": settings.model_name_or_path,
                    "trained_weights": config.ckpt_path or settings.adapter_path,
                    "max_length": data.max_length,
                    "exported": datetime.datetime.now().isoformat(timespec="seconds"),
                    "versions": {package: version(package) for package in ("torch", "transformers", "onnxruntime")},
                }
                (staging / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False), encoding="utf-8")
        except OSError as err:
            raise UserError(f"{output}: cannot write the export here ({err.strerror})") from None
    sizes = ", ".join(f"{name} {(output / name).stat().st_size / 1e6:.1f} MB" for name in manifest["files"].values())
    print(f"Exported {manifest['trained_weights']} on {manifest['base_model']} to {output}: {sizes}")


if __name__ == "__main__":
    main()
