"""The settings of each section of a config (``model:``, ``data:``, ``serve:``), as plain dataclasses.

They are the one definition of those sections: ``main.py`` (LightningCLI) reads ``model:`` and ``data:`` through
the LightningModule and the DataModule, which take these fields as keyword arguments, and the API, the console and
the export read the same sections through these classes directly, without importing Lightning (see ``config``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from weibo_sentiment.classes import check_label_map, class_names
from weibo_sentiment.data.database import is_database_url
from weibo_sentiment.emoticons import DEFAULT_PATTERN
from weibo_sentiment.errors import UserError

DEFAULT_BACKBONE = "uer/gpt2-chinese-cluecorpussmall"
DEFAULT_TARGET_MODULES = ("c_attn", "c_proj")
# int8 schemes (inference/quantization.py): each token's activations alone, or one scale per batch
Quantization = Literal["int8", "int8-dynamic"]


@dataclass
class ModelSettings:
    """The model: backbone, LoRA, optimisation, and how it predicts.

    Args:
        model_name_or_path: the backbone: a hub id or a local model directory; for ``predict``, also a directory
            written by ``weibo_sentiment.export`` (ONNX, no base model needed).
        adapter_path: start from a saved peft adapter directory instead of a fresh LoRA (its own config wins).
        num_labels: number of classes: 2 (0 = negative, 1 = positive) or 3 (2 = neutral as well, learned from posts
            people labelled neutral; docs/training.md, Classes).
        lora_r: LoRA rank.
        lora_alpha: LoRA scaling numerator (scale = alpha / r).
        lora_dropout: dropout on the LoRA input.
        target_modules: names of the layers that get LoRA (GPT-2: c_attn, c_proj; BERT: query, key, value).
        learning_rate: AdamW peak learning rate (of LoRA and the classification head).
        backbone_learning_rate: ``None``: the backbone's own weights stay frozen and only LoRA and the head learn
            (checkpoints of LoRA + head alone). A value (e.g. 1e-4): every backbone weight learns too, at this peak
            rate on the same schedule (full fine-tuning; checkpoints then hold the whole model and no adapter is
            exported; on m3e-small 0.900 binary macro-F1 on people's labels against LoRA alone's 0.893, docs/training.md,
            Recipes).
        adam_epsilon: AdamW epsilon.
        weight_decay: AdamW weight decay (torch's default).
        warmup_ratio: share of all training steps spent warming the learning rate up linearly from 0.
        runtime: what predicts: ``torch`` or ``onnxruntime`` (CPU; the model exported to ONNX once and cached, same
            results as torch fp32 to ~1e-6, faster); default: onnxruntime for int8 and exported models, else torch.
            The precision is the trainer's (``--trainer.precision bf16-mixed`` for bf16).
        quantize: ``int8``: predict with onnxruntime's int8 matrix products (CPU; labels agree with fp32 on ~99.9 % of
            posts, and a post's probabilities do not depend on its batch); ``int8-dynamic``: one activation scale
            per batch (~1.1x faster without VNNI, but a post's probability moves with its neighbours); docs/speed.md;
            default: none.
        neutral_band: for a two-class model, ``[low, high]`` on ``prob_positive``: a post inside it is ``neutral`` (its
            label stays the model's 0 or 1) and summaries count three classes; default: none (docs/predicting.md, Neutral band).
            A three-class model says neutral itself and takes no band.
        view_consistency: with ``data.emoticon_views: 2``, the weight (lambda) of the symmetric KL divergence between
            the predictions for a post as written and without its emoticon tags, added to their cross-entropy
            (0.1: 1.0 cost 0.06 more val_f1 on m3e-small, docs/training.md, Emoticons).
    """

    model_name_or_path: str = DEFAULT_BACKBONE
    adapter_path: Optional[str] = None
    num_labels: int = 2
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGET_MODULES))
    learning_rate: float = 5e-4
    backbone_learning_rate: Optional[float] = None
    adam_epsilon: float = 1e-8
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    runtime: Optional[Literal["torch", "onnxruntime"]] = None
    quantize: Optional[Quantization] = None
    neutral_band: Optional[list[float]] = None
    view_consistency: float = 0.1

    def __post_init__(self) -> None:
        self.target_modules = list(self.target_modules)  # a tuple from Python or a list from YAML: saved as a list
        class_names(self.num_labels)  # 2 or 3
        if self.lora_r < 1 or self.lora_alpha <= 0:
            raise UserError(f"model.lora_r must be at least 1 and lora_alpha above 0; got {self.lora_r}, {self.lora_alpha}")
        if not 0.0 <= self.lora_dropout < 1.0 or not 0.0 <= self.warmup_ratio <= 1.0:
            raise UserError("model.lora_dropout must lie in [0, 1) and warmup_ratio in [0, 1]; got "
                            f"{self.lora_dropout}, {self.warmup_ratio}")  # fmt: skip
        if self.learning_rate <= 0:
            raise UserError(f"model.learning_rate must be above 0; got {self.learning_rate}")
        if self.backbone_learning_rate is not None and self.backbone_learning_rate <= 0:
            raise UserError("model.backbone_learning_rate must be above 0, or null to keep the backbone frozen; got "
                            f"{self.backbone_learning_rate}")  # fmt: skip
        band = checked_neutral_band(self.neutral_band)
        if band is not None and self.num_labels == 3:
            raise UserError("model.neutral_band is for two-class models; this one has a neutral class of its own "
                            "(model.num_labels 3): leave the band out")  # fmt: skip
        self.neutral_band = list(band) if band is not None else None


DEFAULT_NEUTRAL_BAND = (0.3, 0.7)
"""The neutral band the BettaFish analyzer uses unless told otherwise (its reports ask for 正面、负面、中性), and the one
the README suggests for ``model.neutral_band``: on 10,000 held-out real posts (``benchmarks/neutral_band.py``, the
quickstart model) the widest band around 0.5 where the model is right at most 60 % of the time (57.8 % inside,
95.3 % overall), holding 5.2 % of the posts."""


def checked_neutral_band(band: Optional[Sequence[float]]) -> Optional[tuple[float, float]]:
    """A neutral band as ``(low, high)`` with 0 <= low <= high <= 1, or ``None``."""
    if band is None:
        return None
    values = list(band)
    if len(values) != 2 or not all(isinstance(v, (int, float)) for v in values) or not 0 <= values[0] <= values[1] <= 1:
        raise UserError(f"neutral_band is [low, high] on prob_positive, with 0 <= low <= high <= 1; got {band}")
    return float(values[0]), float(values[1])


@dataclass
class LabelledSource:
    """A file of labelled posts to train or validate on, read with settings of its own (a corpus labelled from
    emoticons, posts labelled by people), e.g. SMP2020-EWECT's usual train as distributed::

        - path: usual_train.json      # [{"id": 1, "content": "...", "label": "happy"}, ...]
          text_column: content

    Args:
        path: a CSV, TSV, JSONL or JSON-array file with a header or fields naming the text and label columns.
        text_column: the column holding the post; default: ``data.text_column``.
        label_column: the column holding its label; default: ``data.label_column``.
        label_map: labels of this file and what they mean (``happy: positive``, ``surprise: null`` to leave them out),
            over the default map (label numbers, class names, SMP2020-EWECT's emotions; docs/training.md, Classes);
            default: ``data.label_map``.
        emoticon_dropout: probability that a training post of this file loses its emoticon tags, drawn anew each
            epoch (1.0: always, 0.0: never); default: ``data.emoticon_dropout``.
        weight: training posts drawn from this file each epoch, as a multiple of its posts: 1.0 each once, 0.25 a
            quarter of them (drawn anew each epoch), 2.0 each twice.
    """

    path: str
    text_column: Optional[str] = None
    label_column: Optional[str] = None
    label_map: Optional[dict[str, Optional[str]]] = None
    emoticon_dropout: Optional[float] = None
    weight: float = 1.0

    def __post_init__(self) -> None:
        check_label_map(self.label_map, f"the label_map of {self.path}")
        if self.emoticon_dropout is not None and not 0.0 <= self.emoticon_dropout <= 1.0:
            raise UserError(f"{self.path}: emoticon_dropout is a probability, between 0 and 1; got {self.emoticon_dropout}")
        if self.weight <= 0:
            raise UserError(f"{self.path}: weight is the share of its posts drawn each epoch, above 0; got {self.weight}")


@dataclass
class DataSettings:
    """The posts: where they are, how they are read, tokenized and batched.

    Args:
        train_path: labelled training posts (header ``label,review`` by default).
        val_path: labelled validation posts; default: a stratified split of ``train_path``.
        test_path: labelled posts for ``test``.
        predict_path: posts to label for ``predict``: a CSV/TSV/JSONL/JSON/TXT file, ``-`` for standard input, or a
            database URL (``sqlite:///crawl.db``, ``postgresql+psycopg://user@host:5432/db``,
            ``mysql+pymysql://user@host:3306/db``; a password left out is taken from DB_PASSWORD).
        predict_format: ``csv``, ``tsv``, ``jsonl``, ``json`` (one array of objects) or ``txt`` when the suffix does
            not tell (default: by suffix).
        table: with a database ``predict_path``: the table holding the posts (e.g. ``weibo_note``).
        query: with a database ``predict_path``: a SELECT giving the posts (its ``id_column`` must be unique: rows
            are read in its order); with ``table`` too, its labels are recorded as that table's (the SELECT picks
            some of its rows), else as ``query``'s.
        text_column: the column (or JSON field) holding the post (MindSpider/MediaCrawler: ``content``).
        label_column: the column holding the label (1 = positive, 0 = negative, 2 = neutral; or a class name or an
            annotator's emotion, see ``label_map``).
        label_map: labels of ``train_path``, ``val_path`` and ``test_path`` and what they mean, over the default map
            (label numbers, class names, and SMP2020-EWECT's emotions: happy -> positive; angry, sad, fear ->
            negative; neutral -> neutral; surprise -> null, left out); e.g. ``{surprise: positive}``.
        train_weight: ``train_path``'s training posts drawn each epoch, as a multiple of them (1.0: each once; 0.25:
            a quarter, drawn anew each epoch), when it is mixed with ``train_sources``.
        train_sources: more labelled files to train on beside ``train_path`` (each a :class:`LabelledSource`, with its
            own columns, label map, emoticon dropout and weight), e.g. posts labelled by people.
        human_val: posts labelled by people (a :class:`LabelledSource`, e.g. SMP2020-EWECT's usual_eval) scored at
            every validation beside the corpus's own: ``val_f1_human`` (positive-versus-negative macro-F1 on its
            positive and negative posts) and, for a three-class model, ``val_f1_human_3class``.
        id_column: a column copied to the predictions so they can be joined back, if the file has it; for a
            database, the id recorded in the labels table (``note_id``, ``comment_id``; default: the table's
            primary key).
        keep_columns: more input columns carried into each prediction row (e.g. ``[note_id, create_time,
            source_keyword]``), so labels can be joined back and counted over time.
        follow: with a database ``predict_path``: keep running and label new rows as a crawler inserts them,
            polling every this many seconds; SIGTERM or Ctrl-C ends the run after the chunk in hand.
        val_fraction: share of ``train_path`` held out for validation when there is no ``val_path``.
        split_seed: seed of that split.
        max_length: tokens kept per post (longer posts are truncated).
        emoticon_pattern: regular expression of an emoticon tag (see ``weibo_sentiment.emoticons``).
        emoticon_dropout: probability that a training post has its emoticon tags removed, drawn anew each epoch
            from the run's seed; validation, test and prediction never alter posts. 0: the original recipe.
        emoticon_views: 2: two-view training: every training post with tags to remove comes twice in its batch, as
            written and without its tags, and the model learns to say from the words what the tags say (its loss
            adds model.view_consistency x the two predictions' symmetric KL divergence); a batch then holds up to
            2 x batch_size sequences. 1: one view (with emoticon_dropout, if set).
        batch_size: training batch size.
        eval_batch_size: batch size for validate, test and predict (predict batches also end where padding would
            pass 5 % of their tokens).
        predict_window: posts that predict reads ahead and sorts by length before batching them (a bigger window
            pads less and holds more posts in memory); 1 keeps batches in input order.
        num_workers: DataLoader worker processes for fit, validate and test (posts are tokenized up front, so 0 is
            usually fastest); predict always reads and tokenizes in one background process.
        tokenizer_name_or_path: linked from ``model.model_name_or_path``: the backbone's own tokenizer.
        num_labels: linked from ``model.num_labels``: labels must lie in ``0 .. num_labels-1``.
    """

    train_path: Optional[str] = None
    val_path: Optional[str] = None
    test_path: Optional[str] = None
    predict_path: Optional[str] = None
    predict_format: Optional[str] = None
    table: Optional[str] = None
    query: Optional[str] = None
    text_column: str = "review"
    label_column: str = "label"
    label_map: Optional[dict[str, Optional[str]]] = None
    train_weight: float = 1.0
    train_sources: list[LabelledSource] = field(default_factory=list)
    human_val: Optional[LabelledSource] = None
    id_column: Optional[str] = "id"
    keep_columns: list[str] = field(default_factory=list)
    follow: Optional[float] = None
    val_fraction: float = 0.1
    split_seed: int = 42
    max_length: int = 128
    emoticon_pattern: str = DEFAULT_PATTERN
    emoticon_dropout: float = 0.0
    emoticon_views: Literal[1, 2] = 1
    batch_size: int = 16
    eval_batch_size: int = 64
    predict_window: int = 2048
    num_workers: int = 0
    tokenizer_name_or_path: str = DEFAULT_BACKBONE
    num_labels: int = 2

    def __post_init__(self) -> None:
        if not 0.0 <= self.emoticon_dropout <= 1.0:
            raise UserError(f"data.emoticon_dropout is a probability, between 0 and 1; got {self.emoticon_dropout}")
        if self.emoticon_views == 2 and self.emoticon_dropout > 0:
            raise UserError("data.emoticon_views 2 trains on every post with and without its tags already: set "
                            "data.emoticon_dropout to 0, or emoticon_views to 1")  # fmt: skip
        if not 0.0 <= self.val_fraction < 1.0:
            raise UserError(f"data.val_fraction is the share of train_path held out, from 0 to below 1; got "
                            f"{self.val_fraction}")  # fmt: skip
        self.keep_columns = list(self.keep_columns)
        check_label_map(self.label_map)
        if self.train_weight <= 0:
            raise UserError(f"data.train_weight is the share of train_path's posts drawn each epoch, above 0; got "
                            f"{self.train_weight}")  # fmt: skip
        # From YAML or the command line they arrive as dicts; from Python, as LabelledSource already.
        self.train_sources = [as_source(source) for source in self.train_sources or []]
        self.human_val = as_source(self.human_val) if self.human_val is not None else None
        from_database = is_database_url(self.predict_path)
        for name in ("table", "query", "follow"):
            if getattr(self, name) is not None and self.predict_path is not None and not from_database:
                raise UserError(f"data.{name} goes with a database predict_path (sqlite:///crawl.db, "
                                f"postgresql+psycopg://...); {self.predict_path} is a file")  # fmt: skip
        if self.follow is not None and self.follow <= 0:
            raise UserError(f"data.follow is the seconds between polls of the table, above 0; got {self.follow}")
        for name in ("max_length", "batch_size", "eval_batch_size", "predict_window"):
            if getattr(self, name) < 1:
                raise UserError(f"data.{name} must be at least 1; got {getattr(self, name)}")


def as_source(value: Any) -> LabelledSource:
    """A :class:`LabelledSource` from itself, a dict of its fields, or jsonargparse's namespace of them."""
    if isinstance(value, LabelledSource):
        return value
    fields = dict(vars(value)) if not isinstance(value, dict) else dict(value)
    unknown = sorted(set(fields) - set(LabelledSource.__dataclass_fields__))
    if unknown or "path" not in fields:
        raise UserError(f"a labelled source is {{path, text_column, label_column, label_map, emoticon_dropout, weight}}; "
                        f"got {fields}")  # fmt: skip
    return LabelledSource(**fields)


@dataclass
class ServeSettings:
    """The HTTP API (the ``serve:`` section; ``main.py`` accepts and ignores it).

    Args:
        host: address to listen on; 0.0.0.0 to serve other machines.
        port: port to listen on.
        max_batch_size: requests answered by one forward pass at most.
        batch_timeout: seconds a request may wait for others to share its forward pass.
        workers: model worker processes.
        max_texts: texts per request at most.
        max_chars: characters per text at most (longer: rejected; the model reads max_length tokens).
        max_body_bytes: request bodies larger than this are answered 413 before they are read; default: what
            max_texts texts of max_chars characters take as JSON (6 bytes a character at most).
        request_timeout: seconds a request may wait for its answer before it gets 504 (raise it when requests of many
            texts queue behind each other on a slow model); also how long its body may take to arrive (else 408).
        drain_seconds: on SIGTERM or Ctrl-C, how long requests in flight may take to finish before the workers stop.
        api_key: the key every request must carry (``X-API-Key: KEY`` or ``Authorization: Bearer KEY``); default:
            the environment variable WEIBO_SENTIMENT_API_KEY. Required when host is not a loopback address.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 32
    batch_timeout: float = 0.01
    workers: int = 1
    max_texts: int = 256
    max_chars: int = 10_000
    max_body_bytes: Optional[int] = None
    request_timeout: float = 30.0
    drain_seconds: float = 10.0
    api_key: Optional[str] = None
