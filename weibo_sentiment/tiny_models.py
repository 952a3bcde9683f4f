"""Build small, randomly initialised backbones with the real bert-base-chinese vocabulary.

They are saved as ordinary model directories, so the code under test loads them through the
same ``from_pretrained`` path as ``uer/gpt2-chinese-cluecorpussmall``. Used by the tests, the
offline quickstart and the speed benchmark (which builds one of the real model's full shape)::

    python -m weibo_sentiment.tiny_models gpt2 assets/tiny-gpt2-chinese
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
)

VOCAB_DIR = Path(__file__).resolve().parent.parent / "assets" / "vocab"


def save_tokenizer(out_dir: Path, vocab_dir: Path = VOCAB_DIR) -> BertTokenizer:
    """Save the bert-base-chinese WordPiece tokenizer (the one the Chinese GPT-2 uses) into ``out_dir``."""
    # BertTokenizer(vocab_file=...) silently ignores the path in transformers 5.x: load the directory.
    tokenizer = BertTokenizer.from_pretrained(str(vocab_dir))
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer


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
    out_dir = Path(out_dir)
    tokenizer = save_tokenizer(out_dir)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        # The real model's config carries GPT-2's bos/eos 50256, outside its 21,128-token vocab:
        # keep that so the code under test must take pad_token_id from the tokenizer, as it must for the real one.
        bos_token_id=50256,
        eos_token_id=50256,
        tokenizer_class="BertTokenizer",
    )
    torch.manual_seed(seed)
    GPT2LMHeadModel(config).to(dtype).save_pretrained(str(out_dir))
    return out_dir


def build_bert(out_dir: str | Path, hidden_size: int = 64, num_layers: int = 2, seed: int = 0) -> Path:
    """A BERT-style Chinese encoder, to show that nothing but the defaults is GPT-2-specific."""
    out_dir = Path(out_dir)
    tokenizer = save_tokenizer(out_dir)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        intermediate_size=hidden_size * 4,
        max_position_embeddings=256,
    )
    torch.manual_seed(seed)
    BertForSequenceClassification(config).save_pretrained(str(out_dir))
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["gpt2", "bert"])
    parser.add_argument("out_dir")
    parser.add_argument("--width", type=int, default=64, help="hidden size (768 for the real model's shape)")
    parser.add_argument("--layers", type=int, default=2, help="number of layers (12 for the real model's shape)")
    parser.add_argument("--heads", type=int, default=2, help="attention heads (gpt2 only; 12 for the real shape)")
    args = parser.parse_args()
    if args.kind == "gpt2":
        build_gpt2(args.out_dir, n_embd=args.width, n_layer=args.layers, n_head=args.heads)
    else:
        build_bert(args.out_dir, hidden_size=args.width, num_layers=args.layers)
    print(f"saved a {args.kind} model to {args.out_dir}")


if __name__ == "__main__":
    main()
