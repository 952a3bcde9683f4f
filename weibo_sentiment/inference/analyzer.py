"""The public Python API: load a trained model once, label posts in length-sorted batches, get one row per post.

    from weibo_sentiment import SentimentAnalyzer, summarize
    analyzer = SentimentAnalyzer.load("lightning_logs/version_0/checkpoints/last.ckpt", config="configs/quickstart.yaml")
    rows = analyzer.predict(["今天真开心[哈哈]", "排队两小时，太失望了"])   # one row per post, in order
    print(rows[0].sentiment, rows[0].confidence, summarize(rows).line())

``main.py predict`` (through the LightningModule), the HTTP API, its page, the console and the BettaFish analyzer
label through the same engine, batching and rows, so every entry point gives the same answer for the same post.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from weibo_sentiment.classes import probability_columns
from weibo_sentiment.data.database import LABELS_TABLE
from weibo_sentiment.inference.model_source import ModelSource, is_exported, source_of_path, tokenizer_of


@dataclass(frozen=True)
class SentimentRow:
    """What the model says of one post.

    Attributes:
        label: 0 (negative), 1 (positive) or, for a three-class model, 2 (neutral); ``None`` for a post without text.
        sentiment: ``negative``, ``positive``, ``neutral`` (a three-class model's, or a two-class model's inside a
            neutral band), or ``empty`` for a post without text.
        confidence: the probability of the likeliest class (``None`` when empty).
        prob_positive: the probability of ``positive`` (``None`` when empty).
        emoticons: the post's emoticon tags (``[哈哈][泪]``), which a prediction may rest on.
        truncated: the post was longer than the model reads (``max_length`` tokens) and was read up to there.
        prob_negative, prob_neutral: a three-class model's probabilities of those classes (``None`` otherwise).
        num_labels: the model's number of classes: its rows as dicts carry every class's probability when it is 3.
    """

    label: Optional[int]
    sentiment: str
    confidence: Optional[float]
    prob_positive: Optional[float]
    emoticons: str
    truncated: bool = False
    prob_negative: Optional[float] = None
    prob_neutral: Optional[float] = None
    num_labels: int = field(default=2, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The row as ``main.py predict`` writes it (and the API answers it), the probabilities of a three-class model
        included."""
        return {"label": self.label, "sentiment": self.sentiment, "confidence": self.confidence,
                **{column: getattr(self, column) for column in probability_columns(self.num_labels)},
                "emoticons": self.emoticons, "truncated": self.truncated}  # fmt: skip


class SentimentAnalyzer:
    """A trained model loaded once, labelling posts: ``predict(texts)`` gives one :class:`SentimentRow` per text.

    Build it with :meth:`load` (a path) or :meth:`from_source` (a resolved :class:`ModelSource`). Close it (or use it
    as a context manager) to give back the engine's memory at once.
    """

    def __init__(self, engine: Any, tokenize: Any, emoticons: Any, source: ModelSource, batch_size: int = 64,
                 neutral_band: Optional[tuple[float, float]] = None) -> None:  # fmt: skip
        self.engine, self.tokenize, self.emoticons, self.source = engine, tokenize, emoticons, source
        self.batch_size, self.neutral_band = batch_size, neutral_band

    @classmethod
    def load(
        cls,
        model: Optional[str | Path] = None,
        *,
        config: Optional[str | Path] = None,
        base_model: Optional[str] = None,
        runtime: Optional[str] = None,
        quantize: Optional[str] = None,
        precision: str = "32-true",
        batch_size: Optional[int] = None,
        device: str = "cpu",
        neutral_band: Optional[tuple[float, float]] = None,
    ) -> SentimentAnalyzer:
        """Load a model.

        Args:
            model: a checkpoint written by ``main.py fit`` (or ``"last"``: the newest under the config's run
                folder), a peft adapter directory, or a directory written by ``main.py export``. ``None``: what the
                config names (its ``model.model_name_or_path`` as an exported directory, or ``model.adapter_path``).
            config: a ``main.py`` YAML config: the base model, ``max_length``, the emoticon pattern and batch size
                come from it. Without one, a checkpoint's own (saved by ``fit``), else the defaults.
            base_model: the base model (hub id or directory) the checkpoint or adapter sits on; overrides the
                config's and the checkpoint's.
            runtime: ``torch`` or ``onnxruntime`` (default: onnxruntime for int8 and exported models, else torch).
            quantize: ``int8`` (onnxruntime, fastest on CPUs).
            precision: ``32-true`` or ``bf16-mixed`` (torch).
            batch_size: posts per forward pass at most (default: the config's ``data.eval_batch_size``, 64).
            device: ``cpu`` or ``cuda`` (torch).
            neutral_band: ``(low, high)``, for a two-class model: a post whose ``prob_positive`` lies in it is
                ``neutral`` (its label stays the model's); default: the config's ``model.neutral_band``, else none. A
                three-class model says neutral itself and takes no band.
        """
        if config is None and model is not None:  # the checkpoint's own base model and max_length, or the defaults
            source = source_of_path(model, base_model)
            return cls.from_source(source, runtime=runtime, quantize=quantize, precision=precision,
                                   batch_size=batch_size or 64, device=device, neutral_band=neutral_band)  # fmt: skip
        from weibo_sentiment.config_parser import load_config

        parsed = load_config(config, runtime=runtime, quantize=quantize, precision=precision)
        if base_model:
            parsed.model.model_name_or_path = base_model
        if model is not None:
            name_model_in_config(parsed, str(model))
        parsed.data.eval_batch_size = batch_size or parsed.data.eval_batch_size
        parsed.model.neutral_band = neutral_band or parsed.model.neutral_band
        return cls.from_config(parsed, device=device)

    @classmethod
    def from_config(cls, config: Any, source: Optional[ModelSource] = None, device: str = "cpu") -> SentimentAnalyzer:
        """The analyzer of a parsed config (``weibo_sentiment.config_parser``), in the mode its flags ask for; ``source``
        when it was resolved already (the API resolves it once in its main process and hands it to its workers)."""
        from weibo_sentiment.config_parser import analyzer_options, source_from_config

        return cls.from_source(source or source_from_config(config), **analyzer_options(config), device=device)

    @classmethod
    def from_source(
        cls,
        source: ModelSource,
        *,
        runtime: Optional[str] = None,
        quantize: Optional[str] = None,
        precision: str = "32-true",
        batch_size: int = 64,
        device: str = "cpu",
        emoticon_pattern: Optional[str] = None,
        neutral_band: Optional[tuple[float, float]] = None,
    ) -> SentimentAnalyzer:
        """An analyzer for a resolved model source (the API's workers get the one its main process resolved)."""
        import torch

        from weibo_sentiment.data.tokenizer import Tokenize
        from weibo_sentiment.emoticons import DEFAULT_PATTERN, EmoticonTags
        from weibo_sentiment.inference.engine import engine_for_source
        from weibo_sentiment.errors import UserError
        from weibo_sentiment.settings import checked_neutral_band

        band = checked_neutral_band(neutral_band)
        if band is not None and source.num_labels == 3:
            raise UserError(f"neutral_band is for two-class models; {source.describe()} has a neutral class of its own: "
                            "leave the band out")  # fmt: skip
        engine = engine_for_source(source, runtime, quantize, precision, torch.device(device))
        tokenize = Tokenize(tokenizer_of(source.tokenizer), source.max_length)
        return cls(engine, tokenize, EmoticonTags(emoticon_pattern or DEFAULT_PATTERN), source, batch_size, band)

    @property
    def mode(self) -> str:
        """What labels: ``torch fp32``, ``onnxruntime int8``, ..."""
        return str(self.engine.mode)

    def predict(self, texts: Iterable[str]) -> list[SentimentRow]:
        """One row per text, in order. Texts are batched as ``main.py predict`` batches a window (sorted by token
        count, answers put back in input order), so a short post never pays for padding to a long one."""
        import torch

        from weibo_sentiment.data.batching import SortedPostBatches, truncated_posts
        from weibo_sentiment.data.readers import Post
        from weibo_sentiment.inference.outputs import prediction_rows

        texts = list(texts)
        if not all(isinstance(text, str) for text in texts):
            raise TypeError("predict takes a list of str (one post each)")
        posts = [Post(text) for text in texts]
        probabilities = torch.full((len(texts), self.engine.num_labels), float("nan"))
        truncated = [False] * len(texts)
        batches = SortedPostBatches([], self.tokenize, self.tokenize.pad_token_id, self.batch_size,
                                    max(len(texts), 1))  # fmt: skip
        for batch in batches.window_batches(posts):
            for position, cut in zip(batch["positions"], truncated_posts(batch)):
                truncated[position] = cut
            if len(batch["classified"]):
                positions = torch.as_tensor(batch["positions"])[batch["classified"]]
                probabilities[positions] = self.engine(batch["input_ids"], batch["attention_mask"]).cpu()
        rows = prediction_rows(posts, probabilities, "text", self.emoticons, truncated=truncated,
                               neutral_band=self.neutral_band)  # fmt: skip
        fields = [key for key in SentimentRow.__dataclass_fields__ if key != "num_labels"]
        return [SentimentRow(**{key: row[key] for key in fields if key in row}, num_labels=self.engine.num_labels)
                for row in rows]  # fmt: skip

    def label_database(
        self,
        url: str,
        table: Optional[str] = None,
        *,
        query: Optional[str] = None,
        text_column: str = "content",
        id_column: Optional[str] = None,
        labels_table: str = LABELS_TABLE,
        window: int = 2048,
    ) -> Any:
        """Label the posts of a database table (or SELECT) that this model has not labelled yet, into a labels table
        beside them, a window of posts per transaction, as ``main.py predict`` does with a database URL; returns the
        run's :func:`summarize` of what it labelled.

        ``url``: ``sqlite:///crawl.db``, ``postgresql+psycopg://user@host:5432/db``, ``mysql+pymysql://...`` (a
        password left out is taken from DB_PASSWORD). ``id_column``: the id recorded per label (``note_id``,
        ``comment_id``; default: the table's primary key)."""

        from weibo_sentiment.data.database import DatabasePosts, LabelsLocation, LabelsTable
        from weibo_sentiment.inference.outputs import PredictionSummary

        source = DatabasePosts.open(url, table, query, text_column, id_column)
        location = LabelsLocation(url, labels_table, self.engine.model_id)
        labels = LabelsTable(location, source.source_table, self.engine.num_labels)
        summary = PredictionSummary("text")
        try:
            labels.create()
            for posts in source.unlabelled_by(location).windows(window):
                rows = [{"id": post.id, **row.to_dict()} for post, row in zip(posts, self.predict([p.text for p in posts]))]
                labels.write(rows)
                summary.add(rows, [post.text for post in posts])
        finally:
            labels.close()
        return summary

    def close(self) -> None:
        """Give back the engine (its onnxruntime session, or the merged torch weights)."""
        self.engine.close()

    def __enter__(self) -> SentimentAnalyzer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SentimentAnalyzer({self.source.describe()}, {self.mode})"


def name_model_in_config(config: Any, model: str) -> None:
    """Put a path given to :meth:`SentimentAnalyzer.load` where a config names that kind of model."""
    if is_exported(model):
        config.model.model_name_or_path = model
    elif Path(model).is_dir():
        config.model.adapter_path = model
    else:
        config.ckpt_path = model
