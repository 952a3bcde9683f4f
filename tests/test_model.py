"""The LightningModule: which tensors train, which a checkpoint holds, and the peft adapter export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification

from weibo_sentiment.training.checkpointing import export_adapter
from weibo_sentiment.errors import UserError
from weibo_sentiment.inference.backbone import load_adapter, load_backbone
from weibo_sentiment.training.model import SentimentClassifier

GPT2_LORA_LAYERS = ("attn.c_attn", "attn.c_proj", "mlp.c_proj")  # "c_proj" names both attention and MLP outputs


def gpt2_trainable_keys(n_layer: int = 2) -> set[str]:
    lora = {
        f"model.base_model.model.transformer.h.{i}.{layer}.lora_{ab}.default.weight"
        for i in range(n_layer)
        for layer in GPT2_LORA_LAYERS
        for ab in "AB"
    }
    return lora | {"model.base_model.model.score.modules_to_save.default.weight"}


def randomize_trainable(module: SentimentClassifier, seed: int = 0) -> None:
    """LoRA's B starts at zero (a no-op): give every trainable tensor values so a lost one changes the logits."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.requires_grad:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)


def sample_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(104, 21128, (3, 12), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    input_ids[0, 8:], attention_mask[0, 8:] = 0, 0  # a padded row
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": torch.tensor([0, 1, 1])}


def test_only_lora_and_the_head_train_and_only_they_are_checkpointed(tiny_gpt2: str) -> None:
    module = SentimentClassifier(model_name_or_path=tiny_gpt2)
    assert module.trainable_keys() == gpt2_trainable_keys()
    assert set(module.state_dict()) == gpt2_trainable_keys()
    assert module.model.peft_config["default"].fan_in_fan_out  # GPT-2's Conv1D stores weights transposed


def test_pad_id_comes_from_the_tokenizer_not_from_eos(tiny_gpt2: str) -> None:
    backbone = load_backbone(tiny_gpt2, num_labels=2)
    assert backbone.config.pad_token_id == 0 and backbone.config.eos_token_id == 50256


def test_a_training_step_changes_only_trainable_tensors(tiny_gpt2: str) -> None:
    module = SentimentClassifier(model_name_or_path=tiny_gpt2)
    randomize_trainable(module)
    before = {k: v.clone() for k, v in module.model.named_parameters()}
    loss = torch.nn.functional.cross_entropy(module(**{k: v for k, v in sample_batch().items() if k != "labels"}),
                                             sample_batch()["labels"])
    loss.backward()
    torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=1.0).step()
    changed = {k for k, v in module.model.named_parameters() if not torch.equal(v, before[k])}
    assert {f"model.{k}" for k in changed} == gpt2_trainable_keys()


def test_a_bert_style_encoder_works_by_changing_the_config_only(tiny_bert: str) -> None:
    module = SentimentClassifier(model_name_or_path=tiny_bert, target_modules=["query", "value"])
    expected = {
        f"model.base_model.model.bert.encoder.layer.{i}.attention.self.{m}.lora_{ab}.default.weight"
        for i in range(2)
        for m in ("query", "value")
        for ab in "AB"
    } | {f"model.base_model.model.classifier.modules_to_save.default.{p}" for p in ("weight", "bias")}
    assert module.trainable_keys() == expected
    assert not module.model.peft_config["default"].fan_in_fan_out  # nn.Linear layers
    batch = sample_batch()
    logits = module(batch["input_ids"], batch["attention_mask"])
    assert logits.shape == (3, 2)


def test_target_modules_that_do_not_exist_are_a_user_error(tiny_gpt2: str) -> None:
    with pytest.raises(UserError, match="none of model.target_modules"):
        SentimentClassifier(model_name_or_path=tiny_gpt2, target_modules=["query"])


def test_loading_a_checkpoint_of_another_shape_is_a_clear_error(tiny_gpt2: str) -> None:
    saved = {"state_dict": SentimentClassifier(model_name_or_path=tiny_gpt2, lora_r=4).state_dict()}
    SentimentClassifier(model_name_or_path=tiny_gpt2, lora_r=4).on_load_checkpoint(saved)  # the same shape loads
    with pytest.raises(UserError, match=r"12 of another shape .* lora_r"):
        SentimentClassifier(model_name_or_path=tiny_gpt2, lora_r=8).on_load_checkpoint(saved)
    with pytest.raises(UserError, match="of another shape"):
        SentimentClassifier(model_name_or_path=tiny_gpt2, lora_r=4, num_labels=3).on_load_checkpoint(saved)
    with pytest.raises(UserError, match="missing"):
        SentimentClassifier(model_name_or_path=tiny_gpt2).on_load_checkpoint({"state_dict": {}})


def test_exported_adapter_loads_with_plain_peft_and_gives_the_same_logits(tiny_gpt2: str, tmp_path: Path) -> None:
    module = SentimentClassifier(model_name_or_path=tiny_gpt2)
    randomize_trainable(module)
    module.eval()
    export_adapter(module.model, tmp_path / "adapter")
    assert {p.name for p in (tmp_path / "adapter").iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    base = AutoModelForSequenceClassification.from_pretrained(tiny_gpt2, num_labels=2, pad_token_id=0)
    plain = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    batch = sample_batch()
    with torch.no_grad():
        ours = module(batch["input_ids"], batch["attention_mask"])
        theirs = plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(ours, theirs)
    # Exporting again replaces the folder whole.
    export_adapter(module.model, tmp_path / "adapter")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_an_adapter_for_another_base_is_a_clear_error(tiny_gpt2: str, tiny_bert: str, tmp_path: Path) -> None:
    export_adapter(SentimentClassifier(model_name_or_path=tiny_bert, target_modules=["query", "value"]).model, tmp_path / "bert")
    with pytest.raises(UserError, match="does not fit the base model"):
        load_adapter(load_backbone(tiny_gpt2, 2), str(tmp_path / "bert"))
    wider = SentimentClassifier(model_name_or_path=str(Path(tiny_gpt2)), lora_r=8)
    export_adapter(wider.model, tmp_path / "gpt2")
    with pytest.raises(UserError, match="does not fit the base model"):
        load_adapter(load_backbone(tiny_gpt2, 3), str(tmp_path / "gpt2"))  # a 3-label head


def test_full_fine_tuning_makes_every_backbone_weight_trainable_and_part_of_the_model_id(tiny_gpt2: str) -> None:
    from weibo_sentiment.inference.engine import trained_model_id

    with pytest.raises(UserError, match="backbone_learning_rate must be above 0"):
        SentimentClassifier(model_name_or_path=tiny_gpt2, backbone_learning_rate=0.0)
    lora_only = SentimentClassifier(model_name_or_path=tiny_gpt2)
    full = SentimentClassifier(model_name_or_path=tiny_gpt2, backbone_learning_rate=1e-4)
    backbone = full.trainable_keys() - gpt2_trainable_keys()
    assert lora_only.trainable_keys() == gpt2_trainable_keys() and backbone
    assert not any("original_module" in key for key in full.trainable_keys())
    # what identifies a model: its backbone's weights too when they were trained, and only then
    for module, counts in ((lora_only, False), (full, True)):
        before = trained_model_id(module.model)
        with torch.no_grad():
            module.model.base_model.model.transformer.h[0].ln_1.weight.add_(1.0)
        assert (trained_model_id(module.model) != before) is counts
