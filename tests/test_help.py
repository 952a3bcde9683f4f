"""``--help`` of the API, the console and the export lists what labelling uses, not main.py's training knobs; a
main.py config with its training sections is still read by each."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import REPO

LABELLING = {"--config", "--print_config", "--help", "--ckpt_path", "--runtime", "--quantize", "--precision",
             "--model.model_name_or_path", "--model.adapter_path", "--model.runtime", "--model.quantize",
             "--model.neutral_band", "--data.max_length", "--data.emoticon_pattern", "--data.eval_batch_size"}  # fmt: skip
SERVING = {"--serve", "--serve.host", "--serve.port", "--serve.max_batch_size", "--serve.batch_timeout", "--serve.workers",
           "--serve.max_texts", "--serve.max_chars", "--serve.max_body_bytes", "--serve.request_timeout",
           "--serve.drain_seconds", "--serve.api_key"}  # fmt: skip
TRAINING = {"--model.learning_rate", "--model.lora_r", "--data.train_path", "--data.emoticon_dropout",
            "--data.batch_size", "--trainer", "--checkpoint", "--seed_everything"}  # fmt: skip
ENTRY_POINTS = {
    "api": ([sys.executable, "-m", "weibo_sentiment.serve"], LABELLING | SERVING),
    "console": ([sys.executable, "-m", "weibo_sentiment.console"], LABELLING),
    "export": ([sys.executable, "main.py", "export"], LABELLING | {"--output_dir", "--format"}),
}


def run(command: list[str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*command, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("entry_point", list(ENTRY_POINTS))
def test_help_lists_the_options_that_apply_and_no_training_knob(entry_point: str) -> None:
    command, expected = ENTRY_POINTS[entry_point]
    result = run(command, "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    listed = {option.split("=")[0] for option in re.findall(r"(?<![\w-])--[a-z_.]+", result.stdout)}
    listed -= {"--trainer.precision"}  # named inside --model.runtime's text, as the way main.py takes bf16
    assert listed == expected, f"missing {sorted(expected - listed)}, extra {sorted(listed - expected)}"
    assert not listed & TRAINING


@pytest.mark.parametrize("entry_point", list(ENTRY_POINTS))
def test_a_training_config_is_still_accepted(entry_point: str) -> None:
    command, _ = ENTRY_POINTS[entry_point]
    extra = ["--output_dir", "unused"] if entry_point == "export" else []
    result = run(command, "--config", "configs/gpt2_chinese_lora_human.yaml", "--model.lora_r", "4", *extra,
                 "--print_config")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "max_length: 128" in result.stdout and "lora_r" not in result.stdout  # what applies, resolved
    # ...and the training options are still read and checked, not dropped: a wrong value is still a mistake
    wrong = run(command, "--config", "configs/gpt2_chinese_lora_human.yaml", "--model.lora_r", "many", *extra,
                "--print_config")  # fmt: skip
    assert wrong.returncode != 0 and "lora_r" in wrong.stderr
