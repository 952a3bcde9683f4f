"""Posts to token ids: the backbone's own tokenizer, loaded once per process, and padding to a batch's longest post."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from weibo_sentiment.errors import UserError, explain_load_error, first_line

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# What main.py export writes beside the model (transformers' fast tokenizer, serialised): read by the tokenizers
# library alone, an exported model labels without importing transformers (~1 s of a first answer's 3).
TOKENIZER_FILE, TOKENIZER_CONFIG_FILE = "tokenizer.json", "tokenizer_config.json"


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' load report (the freshly initialised classification head we are about to train, the Chinese
    GPT-2's out-of-vocabulary bos/eos ids, unused since padding comes from the tokenizer) and its progress bar say
    nothing to a user of this tool; weights that do not fit are checked here and reported as one line. Only for
    this load: a program that imports us keeps its own transformers settings."""
    from transformers.utils import logging as transformers_logging

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
    from transformers import AutoTokenizer

    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load the tokenizer of {name_or_path!r}: {explain_load_error(name_or_path, err)}") from None
    if tokenizer.pad_token_id is None:
        raise UserError(f"the tokenizer of {name_or_path!r} has no pad token; this project needs one to pad batches")
    return tokenizer


class SerializedTokenizer:
    """A saved fast tokenizer (``tokenizer.json`` and ``tokenizer_config.json``) run by the tokenizers library, with
    the part of transformers' calling convention that ``Tokenize`` uses: the same ids as ``load_tokenizer`` of the
    same directory, without importing transformers."""

    def __init__(self, directory: str | Path) -> None:
        from tokenizers import Tokenizer

        directory = Path(directory)
        try:
            self.backend = Tokenizer.from_file(str(directory / TOKENIZER_FILE))
            config = json.loads((directory / TOKENIZER_CONFIG_FILE).read_text(encoding="utf-8"))
        except Exception as err:  # tokenizers raises a bare Exception for an unreadable file, json a ValueError
            raise UserError(f"{directory}: cannot read its tokenizer ({first_line(err)}); export the model again") from None
        pad = config.get("pad_token")
        pad = pad.get("content") if isinstance(pad, dict) else pad
        self.pad_token_id = self.backend.token_to_id(pad) if pad else None
        if self.pad_token_id is None:
            raise UserError(f"{directory}: its tokenizer has no pad token; this project needs one to pad batches")
        self.backend.no_padding()

    def __call__(self, texts: list[str], truncation: bool = False, max_length: int | None = None, **_: Any) -> Any:
        if truncation and max_length:
            self.backend.enable_truncation(max_length)
        else:
            self.backend.no_truncation()
        encodings = self.backend.encode_batch(texts)
        return _Encoded(input_ids=[encoding.ids for encoding in encodings], encodings=encodings)


class _Encoded(dict):
    """``input_ids`` by key and the tokenizers ``encodings`` as an attribute, as transformers' BatchEncoding."""

    def __init__(self, input_ids: list[list[int]], encodings: list[Any]) -> None:
        super().__init__(input_ids=input_ids)
        self.encodings = encodings


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

    def __init__(self, tokenizer: PreTrainedTokenizerBase | SerializedTokenizer, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id

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


