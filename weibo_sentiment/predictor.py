"""Label texts with a trained model loaded once: the HTTP API, its page and the console ask this.

The model, the data settings and the inference mode come from the same config as ``main.py`` (see ``config``);
the texts go through the same tokenizer, length-sorted batches, inference engine and rows as ``main.py predict``,
so the answers are its answers.
"""

from __future__ import annotations

from typing import Any

import torch
from jsonargparse import ArgumentParser, Namespace

from weibo_sentiment.config import data_settings, trained_model
from weibo_sentiment.data.batching import SortedPostBatches
from weibo_sentiment.data.readers import Post
from weibo_sentiment.data.tokenizer import Tokenize, load_tokenizer
from weibo_sentiment.emoticons import EmoticonTags
from weibo_sentiment.engine import Engine, engine_for
from weibo_sentiment.outputs import prediction_rows


class SentimentPredictor:
    """An inference engine with its tokenizer: ``predict(texts)`` gives one result row per text."""

    def __init__(self, engine: Engine, tokenize: Tokenize, emoticons: EmoticonTags, batch_size: int = 64) -> None:
        self.engine, self.tokenize, self.emoticons, self.batch_size = engine, tokenize, emoticons, batch_size
        self.pad_token_id = tokenize.tokenizer.pad_token_id

    def predict(self, texts: list[str]) -> list[dict[str, Any]]:
        """``label``, ``sentiment``, ``confidence``, ``prob_positive``, ``emoticons`` and ``truncated`` per text.

        Texts are batched as ``main.py predict`` batches a window (sorted by token count, answers restored to
        input order), so a short post never pays for padding to a long one.
        """
        posts = [Post(text) for text in texts]
        probabilities = torch.full((len(texts), self.engine.num_labels), float("nan"))
        lengths = torch.zeros(len(texts), dtype=torch.long)
        batches = SortedPostBatches([], self.tokenize, self.pad_token_id, self.batch_size, len(texts))
        for batch in batches.window_batches(posts):
            if not len(batch["classified"]):
                continue
            positions = torch.tensor(batch["positions"])[batch["classified"]]
            probabilities[positions] = self.engine(batch["input_ids"], batch["attention_mask"]).cpu()
            lengths[positions] = batch["attention_mask"].sum(dim=1)
        rows = prediction_rows(posts, probabilities, "text", self.emoticons)
        # The model reads max_length tokens; say so when a post was cut to fit rather than pass it silently.
        # Only posts that reached the limit can have been cut: count their full length to be sure.
        max_length = self.tokenize.max_length
        at_limit = [i for i, length in enumerate(lengths.tolist()) if length >= max_length]
        full_lengths = [len(ids) for ids in self.tokenize.tokenizer([texts[i] for i in at_limit])["input_ids"]] if at_limit else []
        cut = {i for i, length in zip(at_limit, full_lengths) if length > max_length}
        for index, row in enumerate(rows):
            del row["text"]
            row["truncated"] = index in cut
        return rows


def load_predictor(parser: ArgumentParser, config: Namespace, device: str = "cpu") -> SentimentPredictor:
    """Build the model a parsed ``inference_parser`` config names, load its trained weights, and make its engine."""
    config, settings, model = trained_model(parser, config)
    if model is not None:
        model.to(device)
    engine = engine_for(settings, model, config.precision, torch.device(device).type)
    data = data_settings(config)
    tokenize = Tokenize(load_tokenizer(data.tokenizer_name_or_path), data.max_length)
    return SentimentPredictor(engine, tokenize, EmoticonTags(data.emoticon_pattern), data.eval_batch_size)
