"""Build small backbones with the real bert-base-chinese vocabulary: random, or briefly language-model pre-trained.

They are saved as ordinary model directories, so the code under test loads them through the
same ``from_pretrained`` path as ``uer/gpt2-chinese-cluecorpussmall``. Used by the tests and the
offline quickstart, whose ``assets/tiny-gpt2-chinese`` was made (18 minutes on 2 cores) with::

    python -m tools.tiny_models gpt2 assets/tiny-gpt2-chinese --fp16 \
        --pretrain-on ../shared/data/weibo_senti_100k/weibo_senti_100k_part.csv \
        --exclude data/sample/weibo_senti_4k.csv data/sample/posts.csv

and a randomly initialised model of the real one's full shape::

    python -m tools.tiny_models gpt2 /tmp/gpt2-full-shape --width 768 --layers 12 --heads 12 --positions 1024
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    PretrainedConfig,
)

VOCAB_DIR = Path(__file__).resolve().parent.parent / "assets" / "vocab"


def save_tokenizer(out_dir: Path, vocab_dir: Path = VOCAB_DIR) -> BertTokenizer:
    """Save the bert-base-chinese WordPiece tokenizer (the one the Chinese GPT-2 uses) into ``out_dir``."""
    # BertTokenizer(vocab_file=...) silently ignores the path in transformers 5.x: load the directory.
    tokenizer = BertTokenizer.from_pretrained(str(vocab_dir))
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def save_random_model(out_dir: str | Path, model_class: type, seed: int, dtype: torch.dtype,
                      config_for: Callable[[int], PretrainedConfig]) -> Path:  # fmt: skip
    """A randomly initialised ``model_class`` of ``config_for(vocabulary size)``, saved with the tokenizer."""
    out_dir = Path(out_dir)
    config = config_for(len(save_tokenizer(out_dir)))
    torch.manual_seed(seed)
    model_class(config).to(dtype).save_pretrained(str(out_dir))
    return out_dir


def build_gpt2(
    out_dir: str | Path,
    n_embd: int = 64,
    n_layer: int = 2,
    n_head: int = 2,
    n_positions: int = 256,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """A GPT-2 shaped like ``uer/gpt2-chinese-cluecorpussmall`` (which is n_embd=768, n_layer=12, n_head=12)."""
    # The real model's config carries GPT-2's bos/eos 50256, outside its 21,128-token vocab: keep that so the code
    # under test must take pad_token_id from the tokenizer, as it must for the real one.
    return save_random_model(out_dir, GPT2LMHeadModel, seed, dtype, lambda vocab_size: GPT2Config(
        vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
        bos_token_id=50256, eos_token_id=50256, tokenizer_class="BertTokenizer"))  # fmt: skip


def pretrain_gpt2(model_dir: str | Path, texts: list[str], epochs: int = 1, batch_size: int = 32, lr: float = 3e-3,
                  max_length: int = 128, seed: int = 0, dtype: torch.dtype = torch.float32) -> None:
    """Causal-LM pre-training of a small GPT-2 on raw posts (no labels), saved back in place.

    A randomly initialised backbone gives LoRA little to adapt; a few minutes of language modelling give the
    quickstart model real token embeddings, the way the real model's pre-training does at scale.
    """
    from weibo_sentiment.data.tokenizer import pad_to_longest

    model_dir = str(model_dir)
    tokenizer = BertTokenizer.from_pretrained(model_dir)
    model = GPT2LMHeadModel.from_pretrained(model_dir, dtype=torch.float32)
    ids = tokenizer(texts, truncation=True, max_length=max_length, return_token_type_ids=False)["input_ids"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    steps = epochs * (len(ids) + batch_size - 1) // batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.05)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(ids), generator=generator).tolist()
        for start in range(0, len(order), batch_size):
            batch = pad_to_longest([ids[i] for i in order[start : start + batch_size]], tokenizer.pad_token_id)
            labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
            loss = model(**batch, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            if (start // batch_size) % 200 == 0:
                print(f"epoch {epoch} step {start // batch_size}/{len(order) // batch_size} loss {loss.item():.3f}")
    model.to(dtype).save_pretrained(model_dir)


def build_bert(out_dir: str | Path, hidden_size: int = 64, num_layers: int = 2, seed: int = 0) -> Path:
    """A BERT-style Chinese encoder, to show that nothing but the defaults is GPT-2-specific."""
    return save_random_model(out_dir, BertForSequenceClassification, seed, torch.float32, lambda vocab_size: BertConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=2,
        intermediate_size=hidden_size * 4, max_position_embeddings=256))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["gpt2", "bert"])
    parser.add_argument("out_dir")
    parser.add_argument("--width", type=int, default=64, help="hidden size (768 for the real model's shape)")
    parser.add_argument("--layers", type=int, default=2, help="number of layers (12 for the real model's shape)")
    parser.add_argument("--heads", type=int, default=2, help="attention heads (gpt2 only; 12 for the real shape)")
    parser.add_argument("--positions", type=int, default=256, help="longest input (gpt2 only; 1024 for the real shape)")
    parser.add_argument("--fp16", action="store_true", help="store the weights in float16 (half the file size)")
    parser.add_argument("--pretrain-on", help="gpt2 only: language-model pre-training on the posts of this CSV")
    parser.add_argument("--exclude", nargs="*", default=[], help="CSV files whose posts are left out of pre-training")
    parser.add_argument("--pretrain-epochs", type=int, default=1)
    args = parser.parse_args()
    if args.kind == "gpt2":
        dtype = torch.float16 if args.fp16 else torch.float32
        build_gpt2(args.out_dir, n_embd=args.width, n_layer=args.layers, n_head=args.heads, n_positions=args.positions,
                   dtype=dtype)
        if args.pretrain_on:
            from weibo_sentiment.data.readers import PostReader

            excluded = {post.text for path in args.exclude for post in PostReader(path)}
            texts = [post.text for post in PostReader(args.pretrain_on) if post.text not in excluded]
            print(f"pre-training on {len(texts)} posts ({len(excluded)} excluded)")
            pretrain_gpt2(args.out_dir, texts, epochs=args.pretrain_epochs, dtype=dtype)
    else:
        build_bert(args.out_dir, hidden_size=args.width, num_layers=args.layers)
    print(f"saved a {args.kind} model to {args.out_dir}")


if __name__ == "__main__":
    main()
