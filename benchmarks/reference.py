"""The original recipe's scripts (BettaFish's GPT2-Lora train.py and predict.py), as the speed benchmarks' reference:
per-post tokenization padded to 128 tokens, batch 16 shuffled, a plain PyTorch loop; prediction one post per
forward pass with the LoRA adapter unmerged. Workers of ``harness.Runner.worker`` (``reference:reference_train``,
``reference:reference_predict``), each in a subprocess of its own.
"""

from __future__ import annotations

import time
from typing import Any

MAX_LENGTH = 128  # the original recipe pads every post to this


def _load_reference_model(model_dir: str, num_labels: int = 2) -> tuple[Any, Any]:
    """Tokenizer and sequence-classification backbone, loaded as the original scripts did."""
    from transformers import AutoModelForSequenceClassification

    from weibo_sentiment.data.tokenizer import load_tokenizer  # AutoTokenizer.from_pretrained(model_dir), checked for a pad id

    tokenizer = load_tokenizer(model_dir)
    backbone = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=num_labels, pad_token_id=tokenizer.pad_token_id
    )
    return tokenizer, backbone


def _encode_padded(tokenizer: Any, text: str) -> dict[str, Any]:
    """One post, padded to ``MAX_LENGTH`` (the original recipe's fixed-length batches)."""
    return tokenizer(text, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt",
                     return_token_type_ids=False)  # fmt: skip


def reference_train(spec: dict[str, Any]) -> dict[str, Any]:
    """The original train.py: per-item tokenization, batch 16 shuffled, LoRA, AdamW + linear warm-up, a plain loop.

    Batches are timed as ``StepTimer`` times ours: from one batch's arrival to the next (data loading included),
    the first ``warmup_steps`` and the last left out.
    """
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from torch.utils.data import DataLoader, Dataset
    from transformers import get_linear_schedule_with_warmup

    from weibo_sentiment.data.readers import read_labelled

    torch.manual_seed(42)
    posts = read_labelled(spec["train_path"], "review", "label")
    tokenizer, backbone = _load_reference_model(spec["model"])
    embeddings = backbone.transformer.wte.weight.numel() + backbone.transformer.wpe.weight.numel()
    non_embedding = sum(p.numel() for p in backbone.parameters()) - embeddings

    class PaddedPosts(Dataset):
        def __len__(self) -> int:
            return len(posts)

        def __getitem__(self, index: int) -> dict[str, Any]:
            encoded = _encode_padded(tokenizer, posts[index].text)
            return {"input_ids": encoded["input_ids"].squeeze(0), "attention_mask": encoded["attention_mask"].squeeze(0),
                    "labels": torch.tensor(posts[index].label)}  # fmt: skip

    lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=32, lora_dropout=0.1,
                      target_modules=["c_attn", "c_proj"], fan_in_fan_out=True)  # fmt: skip
    model = get_peft_model(backbone, lora)
    steps = spec["steps"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, eps=1e-8)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.1 * steps), steps)
    loader = DataLoader(PaddedPosts(), batch_size=16, shuffle=True)
    model.train()
    batches, previous = [], None
    for step, batch in enumerate(loader):
        if step == steps:  # like ours: `steps` batches trained, the last one untimed (nothing closes it there)
            break
        now = time.perf_counter()
        if previous is not None and previous[0] >= spec["warmup_steps"]:
            batches.append({"seconds": now - previous[1], **previous[2]})
        mask = batch["attention_mask"]
        previous = (step, now, {"samples": len(mask), "real_tokens": int(mask.sum()), "padded_tokens": mask.numel()})
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    model.save_pretrained(spec["adapter_out"])
    lengths = [len(ids) for ids in tokenizer([post.text for post in posts], truncation=True, max_length=MAX_LENGTH,
                                             return_token_type_ids=False)["input_ids"]]  # fmt: skip
    return {
        "torch_threads": torch.get_num_threads(),
        "non_embedding_parameters": non_embedding,
        "corpus_real_tokens_per_post": sum(lengths) / len(lengths),
        "warmup_steps": spec["warmup_steps"],
        "timed_batches": len(batches),
        **{key: sum(b[key] for b in batches) for key in ("seconds", "samples", "real_tokens", "padded_tokens")},
        "batches": batches,
    }


def reference_predict(spec: dict[str, Any]) -> dict[str, Any]:
    """The original predict.py: base model + adapter (unmerged), one post per forward pass, padded to 128."""
    import torch
    from peft import PeftModel

    from weibo_sentiment.data.readers import PostReader

    tokenizer, backbone = _load_reference_model(spec["model"])
    model = PeftModel.from_pretrained(backbone, spec["adapter"])
    model.eval()
    posts = list(PostReader(spec["predict_path"]))
    rows, real_tokens = [], 0
    start = time.perf_counter()
    for post in posts:
        encoded = _encode_padded(tokenizer, post.text)
        with torch.no_grad():
            probabilities = model(**encoded).logits.softmax(dim=-1)[0]
        label = int(probabilities.argmax())
        rows.append({"id": post.id, "label": label, "probability": float(probabilities[label]),
                     "prob_positive": float(probabilities[1])})  # fmt: skip
        real_tokens += int(encoded["attention_mask"].sum())
    seconds = time.perf_counter() - start
    return {"torch_threads": torch.get_num_threads(), "seconds": seconds, "posts": len(posts),
            "real_tokens": real_tokens, "padded_tokens": len(posts) * MAX_LENGTH, "rows": rows}  # fmt: skip
