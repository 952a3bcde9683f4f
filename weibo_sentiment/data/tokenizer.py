"""Posts to token ids: the backbone's own tokenizer, loaded once per process, and padding to a batch's longest post."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase
from transformers.utils import logging as transformers_logging

from weibo_sentiment.errors import UserError, explain_load_error


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' load report (the freshly initialised classification head we are about to train, the Chinese
    GPT-2's out-of-vocabulary bos/eos ids, unused since padding comes from the tokenizer) and its progress bar say
    nothing to a user of this tool; weights that do not fit are checked here and reported as one line. Only for
    this load: a program that imports us keeps its own transformers settings."""
    verbosity, progress_bar = transformers_logging.get_verbosity(), transformers_logging.is_progress_bar_enabled()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)
        if progress_bar:
            transformers_logging.enable_progress_bar()


@functools.lru_cache(maxsize=4)
def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """The backbone's own tokenizer (a hub id or a model directory), with a pad token.

    Cached: the model (for its pad id), the data module and the inference loader each ask for it, and it is only
    read, never changed.
    """
    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load the tokenizer of {name_or_path!r}: {explain_load_error(name_or_path, err)}") from None
    if tokenizer.pad_token_id is None:
        raise UserError(f"the tokenizer of {name_or_path!r} has no pad token; this project needs one to pad batches")
    return tokenizer


def pad_to_longest(sequences: Sequence[Sequence[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad token ids to the batch's longest sequence (not to ``max_length``): ``input_ids`` + ``attention_mask``."""
    longest = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


class Tokenize:
    """The backbone's tokenizer, truncating to ``max_length``; never returns ``token_type_ids``.

    GPT-2 has no segment embeddings: given BertTokenizer's all-zero ``token_type_ids`` it would add the embedding
    of token 0 (``[PAD]``) to every position.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, texts: list[str]) -> list[list[int]]:
        return self._encode(texts)["input_ids"]

    def marking_truncated(self, texts: list[str]) -> tuple[list[list[int]], list[bool]]:
        """The token ids, and whether each text was longer than ``max_length`` tokens (read only up to there)."""
        encoded = self._encode(texts)
        ids = encoded["input_ids"]
        if encoded.encodings is not None:  # a fast (Rust) tokenizer keeps what truncation cut off, in one pass
            return ids, [bool(encoding.overflowing) for encoding in encoded.encodings]
        at_limit = [i for i, row in enumerate(ids) if len(row) >= self.max_length]  # only these can have been cut
        full = self.tokenizer([texts[i] for i in at_limit], return_token_type_ids=False, return_attention_mask=False)
        cut = {i for i, row in zip(at_limit, full["input_ids"]) if len(row) > self.max_length}
        return ids, [i in cut for i in range(len(ids))]

    def _encode(self, texts: list[str]) -> Any:
        return self.tokenizer(
            texts,
            truncation=True,
            max_length=self.max_length,
            return_token_type_ids=False,
            return_attention_mask=False,
        )


