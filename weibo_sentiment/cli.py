"""The command line: ``fit``, ``validate``, ``test`` and ``predict`` through LightningCLI, and ``export``.

    python main.py fit --config configs/quickstart.yaml
    python main.py predict --config configs/quickstart.yaml --ckpt_path last \
        --data.predict_path data/sample/posts.csv --predict_writer.output_path predictions.csv
    python main.py export --config configs/quickstart.yaml --ckpt_path last --output_dir exported --quantize int8

This is the one place that turns a user mistake into one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import logging
import shutil
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Optional

import transformers
from lightning.pytorch import Trainer
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from weibo_sentiment.inference.backbone import read_checkpoint
from weibo_sentiment.training.checkpointing import AdapterCheckpoint, AtomicCheckpointIO
from weibo_sentiment.config_parser import link_data_to_model
from weibo_sentiment.data.database import hide_password
from weibo_sentiment.training.datamodule import WeiboDataModule
from weibo_sentiment.errors import UserError, exit_on_user_error
from weibo_sentiment.processes import children_die_with_this_process, die_with_launcher
from weibo_sentiment.hardware import native_bf16, warn_bf16_emulated
from weibo_sentiment.inference.model_source import (
    checkpoint_architecture,
    is_exported,
    locate_checkpoint,
    resolve_model_source,
)
from weibo_sentiment.training.metrics import EvaluationMetrics
from weibo_sentiment.training.model import SentimentClassifier
from weibo_sentiment.training.prediction_writer import PredictionWriter
from weibo_sentiment.training.progress import use_posts_progress_bar
from weibo_sentiment.training.reports import EvaluationReport
from weibo_sentiment.settings import ServeSettings
from weibo_sentiment.stopping import STOP, exit_when_stopped

# Library noise that says nothing to a user of this tool (each checked: harmless here).
for _message in (
    "Couldn't infer the batch indices",  # the PredictionWriter keeps posts in the batch, not indices
    ".*does not have many workers",  # posts are tokenized once up front; workers would only add start-up time
    ".*isinstance\\(treespec, LeafSpec\\)",  # Lightning on torch >= 2.10
    ".*your dataloader is not resumable",  # WeiboDataModule.state_dict records the position within the epoch
):
    warnings.filterwarnings("ignore", message=_message)


class SaveConfigToRunFolder(SaveConfigCallback):
    """Saves the run's ``config.yaml`` in its own run folder (``lightning_logs/version_N``) and nowhere else.

    Without a logger (``--trainer.logger false``) Lightning's ``log_dir`` is ``default_root_dir``, by default the
    current directory, where a ``config.yaml`` may be the user's own: the run owns no folder there, so it saves none.
    """

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        if trainer.logger is not None:
            super().setup(trainer, pl_module, stage)


class SentimentCLI(LightningCLI):
    """LightningCLI for :class:`SentimentClassifier` on :class:`WeiboDataModule`, with a checkpoint callback that also
    exports the best adapter, and a prediction writer, each with its own flags (``--checkpoint.*``,
    ``--predict_writer.*``)."""

    def __init__(self, args: Any = None, **kwargs: Any) -> None:
        self._checkpoint: Optional[tuple[Path, dict[str, Any]]] = None  # set by parse_arguments
        super().__init__(
            SentimentClassifier,
            WeiboDataModule,
            save_config_callback=SaveConfigToRunFolder,
            # A resumed run writes into its own folder again, where config.yaml already stands.
            save_config_kwargs={"overwrite": True},
            # The data module splits the data between processes itself (each evaluation post exactly once).
            trainer_defaults={"callbacks": [EvaluationReport()], "use_distributed_sampler": False},
            auto_configure_optimizers=False,
            args=args,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        link_data_to_model(parser)
        parser.add_lightning_class_args(AdapterCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                # The mean of val_f1 and the emoticon-free val_f1_text: the best checkpoint must read the words too.
                "checkpoint.monitor": "val_f1_mean",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-{epoch}-{step}-{val_f1:.4f}-{val_f1_text:.4f}",
            }
        )
        parser.add_lightning_class_args(PredictionWriter, "predict_writer")
        # The HTTP API's settings live in the same config file; main.py only accepts them.
        parser.add_class_arguments(ServeSettings, "serve")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then resolve ``--ckpt_path`` (``last`` under this run's root, ``model_source.locate_checkpoint``) and
        take from the checkpoint only the hyper-parameters that shape its tensors (``ARCHITECTURE_HPARAMS``).

        LightningCLI then reloads every hyper-parameter a checkpoint saved over the YAML and the command line (a moved
        base-model directory, say): the resolved path is kept aside until ``before_instantiate_classes``, so that
        paths and optimisation settings stay the user's.
        """
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand:
            self._hide_passwords(subcommand)
            self._read_posts_as_exported(subcommand)
        if not subcommand or not self.config[subcommand].get("ckpt_path"):
            return
        config = self.config[subcommand]
        path = locate_checkpoint(config.ckpt_path, config.trainer.default_root_dir, config.checkpoint.dirpath)
        checkpoint = read_checkpoint(path)
        self._checkpoint = (path, checkpoint)
        architecture = checkpoint_architecture(checkpoint)
        overridden = {k: v for k, v in architecture.items() if config.model.get(k) != v}
        if overridden:
            settings = ", ".join(f"{k}={v}" for k, v in overridden.items())
            rank_zero_info(f"Using {settings} from {path}: they shape the tensors it holds")
        if architecture:
            self.config = self.parser.parse_object({subcommand: {"model": architecture}}, self.config)
        self.config[subcommand].ckpt_path = None

    def _hide_passwords(self, subcommand: str) -> None:
        """A database URL's password stays in this process (``database.hide_password``): the config that is saved
        (``config.yaml``, the hyper-parameters) and every line shown hold ``***`` in its place."""
        config = self.config[subcommand]
        config.data.predict_path = hide_password(config.data.predict_path)
        if config.get("predict_writer") is not None:
            config.predict_writer.output_path = hide_password(config.predict_writer.output_path)

    def _read_posts_as_exported(self, subcommand: str) -> None:
        """An exported model reads posts to the length it was exported for (its manifest's ``max_length``), as the
        API and the Python API do: another ``data.max_length`` would label the same post differently."""
        model = self.config[subcommand].model.model_name_or_path
        if not is_exported(model):
            return
        max_length = resolve_model_source(model).max_length
        if self.config[subcommand].data.max_length != max_length:
            rank_zero_info(f"Using max_length={max_length} from {model}: the length it was exported for")
            self.config = self.parser.parse_object({subcommand: {"data": {"max_length": max_length}}}, self.config)

    def before_instantiate_classes(self) -> None:
        if self._checkpoint is None:
            return
        path = self._checkpoint[0]
        self.config[self.subcommand].ckpt_path = str(path)
        if self.subcommand == "fit":
            self._continue_the_run_folder_of(path)

    def _continue_the_run_folder_of(self, ckpt_path: Path) -> None:
        """Resuming a run from its own folder continues that folder (same TensorBoard run, same best-k bookkeeping):
        the default logger is given that folder's version."""
        config = self.config.fit
        if config.checkpoint.dirpath or config.trainer.logger not in (None, True):
            return
        run_dir = ckpt_path.resolve().parent.parent
        logs_dir = Path(config.trainer.default_root_dir or ".").resolve() / "lightning_logs"
        if ckpt_path.parent.name != "checkpoints" or run_dir.parent != logs_dir:
            return
        number = run_dir.name.removeprefix("version_")  # TensorBoardLogger names version K's folder version_K
        logger = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                  "init_args": {"save_dir": config.trainer.default_root_dir or ".",
                                "version": int(number) if number.isdigit() else run_dir.name}}  # fmt: skip
        self.config = self.parser.parse_object({"fit": {"trainer": {"logger": logger}}}, self.config)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        # Checkpoints are written atomically and read weights-only unless the config brings its own CheckpointIO.
        trainer = (self.config_init[self.subcommand] if self.subcommand else self.config_init).get("trainer") or {}
        plugins = _as_list(trainer.get("plugins"))
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
        if trainer.get("logger") is False:
            # The configs' LearningRateMonitor logs to the run's logger; with none (--trainer.logger false) Lightning
            # would refuse to train, so it is left out.
            callbacks = _as_list(trainer.get("callbacks"))
            kwargs["callbacks"] = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
        new_trainer = super().instantiate_trainer(**kwargs)
        use_posts_progress_bar(new_trainer)  # predict's bar counts posts, out of the input's
        return new_trainer

    def _check_data(self, stage: str) -> None:
        """Check the checkpoint's tensors and read the data before the trainer makes a run folder, so a mistake in
        either leaves no half-made run behind."""
        self.model.check_stage(stage)
        if self._checkpoint is not None:
            path, checkpoint = self._checkpoint
            try:
                self.model.on_load_checkpoint(checkpoint)
            except UserError as err:
                raise UserError(f"{path}: {err}") from None
        self.datamodule.setup(stage)

    def before_validate(self) -> None:
        self._check_data("validate")

    def before_test(self) -> None:
        self._check_data("test")

    def before_predict(self) -> None:
        self._check_data("predict")

    def before_fit(self) -> None:
        self._check_data("fit")
        self._check_monitors()
        if "bf16" in str(self.trainer.precision) and isinstance(self.trainer.accelerator, CPUAccelerator):
            if not native_bf16():
                warn_bf16_emulated()

    def _check_monitors(self) -> None:
        """A checkpoint or early stopping that watches a validation metric this run does not report (a human one
        without data.human_val, a three-class one of a two-class model) is said before training, not after an epoch;
        a checkpoint file name that merely shows such a metric drops it instead (the human config's two-class runs)."""
        datamodule, num_labels = self.datamodule, self.model.settings.num_labels
        reported, splits = {"val_f1_mean"} if "val" in datamodule.datasets else set(), datamodule.evaluation_sets("val")
        for split in splits:
            dataset = datamodule.datasets[split]
            reported.update(EvaluationMetrics(split, num_labels).names(has_neutral=dataset.classes[0] is None))
        watchers = [("checkpoint", callback.monitor) for callback in self.trainer.checkpoint_callbacks]
        watchers += [("EarlyStopping", callback.monitor) for callback in self.trainer.early_stopping_callbacks]
        for who, monitor in watchers:
            if monitor and monitor.startswith("val_") and monitor not in reported and self.trainer.limit_val_batches:
                needs_people = "_human" in monitor and "val_human" not in splits
                hint = (" (it needs data.human_val: posts labelled by people)" if needs_people else
                        " (it needs model.num_labels 3 and neutral posts to validate on)" if "_3class" in monitor else "")
                raise UserError(f"{who} monitors {monitor}, which this run's validation does not report{hint}; it "
                                f"reports {', '.join(sorted(reported))}")  # fmt: skip
        for callback in self.trainer.checkpoint_callbacks:
            if isinstance(callback, AdapterCheckpoint):
                callback.name_only_reported_metrics(reported)

    @contextmanager
    def _no_run_folder_left_when_cut_short(self) -> Iterator[None]:
        """A validate, test or predict that a stop signal or a user's mistake (one found once the trainer runs, such
        as no permission to create a labels table) cut short leaves no run folder of its own behind (a stopped fit
        keeps its folder: its last.ckpt is where it resumes)."""
        logger = self.trainer.logger
        run_dir = Path(logger.log_dir) if isinstance(logger, TensorBoardLogger) else None
        new_run = run_dir is not None and not run_dir.exists()
        new_logs_dir = run_dir is not None and not run_dir.parent.exists()
        try:
            yield
        except BaseException as err:
            if (STOP.signum is not None or isinstance(err, UserError)) and new_run and self.trainer.is_global_zero:
                shutil.rmtree(run_dir, ignore_errors=True)
                if new_logs_dir:  # lightning_logs too, when this run made it (and so it holds nothing else)
                    with suppress(OSError):
                        run_dir.parent.rmdir()
            raise

    def validate(self, **kwargs: Any) -> None:
        with self._no_run_folder_left_when_cut_short():
            self.trainer.validate(**kwargs)

    def test(self, **kwargs: Any) -> None:
        with self._no_run_folder_left_when_cut_short():
            self.trainer.test(**kwargs)

    def predict(self, **kwargs: Any) -> None:
        # The PredictionWriter streams rows to the file; keeping them in memory too would grow with the input.
        kwargs["return_predictions"] = False
        with self._no_run_folder_left_when_cut_short():
            self.trainer.predict(**kwargs)


def _as_list(value: Any) -> list[Any]:
    """A trainer setting that takes one object or a list of them, as a list."""
    return [] if value is None else list(value) if isinstance(value, list) else [value]


def quiet_libraries() -> None:
    """Keep stderr for warnings and our one error line.

    Lightning's progress notes (Seed set, GPU available, tips) go to stdout. transformers' per-load report (the
    freshly initialised classification head we are about to train; the Chinese GPT-2's out-of-vocabulary bos/eos
    ids, unused since padding comes from the tokenizer) and progress bars are dropped: weights that do not fit are
    checked by this project and reported as one line.
    """
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    for name in ("lightning.pytorch", "lightning.fabric"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stderr:
                handler.setStream(sys.stdout)
            handler.addFilter(_no_lightning_advertising)


def _no_lightning_advertising(record: logging.LogRecord) -> bool:
    """Lightning 2.6 prints a tip for its cloud logging service (``litlogger``) at every run without it: an
    advertisement, not something about this run."""
    return not record.getMessage().startswith("💡 Tip:")


def main(args: Any = None) -> None:
    """Entry point of ``main.py`` and the ``weibo-sentiment`` console script; ``export`` is ``weibo_sentiment.export``."""
    die_with_launcher()  # a DDP rank this command's launcher started goes with it
    children_die_with_this_process()
    quiet_libraries()
    argv = sys.argv[1:] if args is None else args
    if isinstance(argv, list) and argv[:1] == ["export"]:
        from weibo_sentiment.export import main as export

        export(argv[1:])
        return
    with exit_when_stopped(), exit_on_user_error():
        try:
            SentimentCLI(args=args)
        except MisconfigurationException as err:  # Lightning's word for a trainer setting that cannot work here
            raise UserError(str(err)) from None
