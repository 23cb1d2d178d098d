"""The :class:`Trainer`: one training run's state, from checks to the final scoring.

A run directory holds ``config.json``, ``split.json``, ``best.keras``, ``last.keras`` and
``state.json`` (what ``--resume`` needs), ``log.csv`` and ``tensorboard/``. With strategy
``mirrored`` or ``multiworker`` (:mod:`unet3d.training.distribute`) the model is built in
the strategy's scope, ``batch_size`` is global, and only the chief writes the run directory.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras

from data_generators.augmentation import AugmentationConfig
from data_generators.cache import cache_for, default_cache_root
from data_generators.case_split import resolve_split
from data_generators.dataset import BratsPatchDataset, EpochSpan, ValidationPatchDataset
from data_generators.io import check_data_folder
from data_generators.layouts import find_any_cases, layout_of
from data_generators.preprocessing import PreprocessedCase
from data_generators.synthetic import cached_synthetic_dataset
from unet3d.artifacts.keras_file import load_model
from unet3d.config import TrainConfig
from unet3d.keras_compat import build_for_strategy
from unet3d.memory import check_fits, training_bytes
from unet3d.models.losses import make_loss
from unet3d.models.metrics import region_metrics
from unet3d.models.unet import build_unet3d
from unet3d.precision import check_training_precision, policy_scope
from unet3d.training.distribute import (
    Distribution,
    check_batch_size,
    fit_context,
    make_distribution,
    output_dir,
    worker_cases,
    worker_seed,
)
from unet3d.training.distribute_data import train_dataset, validation_dataset
from unet3d.training.finetune import build_optimizer_for_all, init_from, load_source
from unet3d.training.hparams import region_means, write_trial
from unet3d.training.result import TrainResult
from unet3d.training.resume import resume_checkpoint
from unet3d.training.run_callbacks import run_callbacks
from unet3d.training.rundir import prepare_run_dir, truncate_log, write_config_and_split
from unet3d.training.signals import StopOnSignal
from unet3d.training.summaries import CsvLog
from unet3d.training.validation import evaluate_volumes
from unet3d_base.errors import InputError
from unet3d_base.fileio import atomic_write_text, exclusive_lock, remove_stale_temporaries


class Trainer:
    """Trains the U-Net as ``config`` says: checks, run directory, split, cache, datasets,
    model, callbacks, fit, and the whole-volume validation of ``best.keras``.

    Args:
        config: TrainConfig. The whole run.
        resume: bool, default False. Continue the run in ``config.out`` from its last
            checkpoint (optimizer state, schedule position, epoch and step, TensorBoard).
        log: callable, default print. Where progress lines go.
        callbacks: more Keras callbacks for ``fit``, called after the run's own
            (TensorBoard, log, checkpoints) and before the stop on a signal.
    """

    def __init__(self, config: TrainConfig, resume: bool = False, log=print,
                 callbacks: Sequence[keras.callbacks.Callback] = ()) -> None:
        self.config, self.resume, self.log, self.start = config, resume, log, time.time()
        self.extra_callbacks = tuple(callbacks)
        self.dist: Distribution | None = None
        self.run_dir = Path(config.out)
        self.init_source = None
        self.train_cases: list[PreprocessedCase] = []
        self.val_cases: list[PreprocessedCase] = []
        self.state: dict[str, Any] = {}
        self.model = None

    def run(self) -> TrainResult:
        """The whole run; returns the validation Dice of ``best.keras``.

        Raises:
            InputError: for unusable data, options or output folder.
        """
        self.check()
        lock = (exclusive_lock(self.run_dir, "--out") if self.dist.is_chief
                else contextlib.nullcontext())
        with lock:  # one process at a time writes a run directory
            if self.dist.is_chief:  # a killed run's temporary files: nobody else owns them now
                remove_stale_temporaries(self.run_dir)
            if self.dist.distributed or self.dist.devices:
                self.log(self.dist.describe())
            self.load_cases()
            with policy_scope(self.config.precision), \
                    output_dir(self.run_dir, self.dist) as write_dir:
                history, checkpoint = self.fit(Path(write_dir))
            return self.finish(history, checkpoint.best_epoch)

    def check(self) -> None:
        """What can be refused before any file is touched; prepares the run directory."""
        config = self.config
        # multi-worker collectives must be set up before TensorFlow runs any op
        self.dist = make_distribution(config.strategy)
        check_batch_size(config.batch_size, self.dist)
        check_training_precision(config.precision)
        if config.data is not None:  # a wrong path is named before the memory estimate
            check_data_folder(config.data)
        patch = "x".join(map(str, config.patch_size))
        check_fits(training_bytes(config.patch_size, config.batch_size,
                                  config.model.base_filters),
                   f"training with --patch-size {patch}, --batch-size {config.batch_size} and "
                   f"--base-filters {config.model.base_filters}",
                   "lower --patch-size or --batch-size")
        if config.init_from and not self.resume:
            self.init_source = load_source(config)
        if self.dist.is_chief:
            self.run_dir = prepare_run_dir(config, self.resume)
        elif self.resume and not (self.run_dir / "last.keras").is_file():
            # the chief owns --out; this worker only reads it
            raise InputError(f"--resume: {self.run_dir} holds no last.keras to resume from "
                             "(every worker must see the chief's run directory)")

    def load_cases(self) -> None:
        """The split (saved in the run) and the preprocessed cases of each side."""
        config = self.config
        cache_root = Path(config.cache_dir) if config.cache_dir else default_cache_root()
        data_dir = (Path(config.data) if config.data is not None else cached_synthetic_dataset(
            cache_root, config.synthetic_cases, config.synthetic_shape, config.seed,
            log=self.log))
        cases = find_any_cases(data_dir, config.modalities, require_label=True, log=self.log)
        layout = layout_of(data_dir)
        if layout.slices and config.model.spatial_dims == 3:
            raise InputError(f"--data {data_dir}: {layout.title}; train a 2D network on them "
                             "(--spatial-dims 2)")
        by_id = {case.case_id: case for case in cases}
        saved = self.run_dir / "split.json"
        train_ids, val_ids = resolve_split(
            list(by_id), data_dir, config.validation_cases, config.val_fraction, config.seed,
            config.folds, config.fold, distributed=self.dist.distributed,
            saved=json.loads(saved.read_text()) if self.resume and saved.is_file() else None)
        cache = cache_for(data_dir, cache_root, config.normalization)
        self.log(f"preprocessing {len(cases)} cases (cached in {cache.root})")
        self.train_cases = [cache.get(by_id[i], config.label_convention) for i in train_ids]
        self.val_cases = [cache.get(by_id[i], config.label_convention) for i in val_ids]
        if not self.resume and self.dist.is_chief:
            write_config_and_split(self.run_dir, config, train_ids, val_ids)

    def datasets(self) -> tuple[BratsPatchDataset, ValidationPatchDataset | None]:
        """This worker's training patches and the fixed validation patches (None: no
        validation cases, best = last epoch)."""
        config, dist = self.config, self.dist
        mode = config.model.output_mode
        # each worker samples its own share of the cases, batch_size / num_workers at a time
        train_data = BratsPatchDataset(
            worker_cases(self.train_cases, dist), patch_size=config.patch_size,
            batch_size=config.batch_size // dist.num_workers,
            steps_per_epoch=config.steps_per_epoch, output_mode=mode,
            foreground_fraction=config.foreground_fraction,
            augmentation=(AugmentationConfig().scaled(config.augment_strength)
                          if config.augment else None),
            seed=worker_seed(config.seed, dist),
        )  # the loader options go to the dataset fit consumes (EpochSpan / train_dataset)
        val_data = ValidationPatchDataset(
            self.val_cases, patch_size=config.patch_size, batch_size=config.batch_size,
            patches_per_case=config.val_patches_per_case, output_mode=mode, seed=config.seed,
        ) if self.val_cases else None
        if val_data is not None and dist.devices and len(val_data.centres) % len(dist.devices):
            raise InputError(
                f"--strategy mirrored on JAX splits every batch over {len(dist.devices)} "
                f"devices: the {len(val_data.centres)} validation patches (val_patches_per_case"
                f" x {len(self.val_cases)} cases) must be a multiple of {len(dist.devices)}")
        return train_data, val_data

    def build_model(self) -> keras.Model:
        """A new compiled model (or the pretrained start of ``init_from``), or the resumed
        checkpoint with its optimizer state; ``self.state`` says where it stands."""
        config, dist = self.config, self.dist
        with dist.scope():  # variables are mirrored over the replicas
            if self.resume:  # step.keras, last.keras, or previous.keras when last is damaged
                # a multi-worker run starts its epochs at step 0: it resumes from the epoch's
                model, self.state = resume_checkpoint(self.run_dir, move_damaged=dist.is_chief,
                                                      use_step=not dist.distributed)
                step = self.state.get("step")
                self.log(f"resuming {self.run_dir} after epoch {self.state['epoch']}"
                         + (f", step {step} of epoch {self.state['epoch'] + 1}" if step else ""))
            else:
                model = build_unet3d(config.model)
                model.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                              loss=make_loss(config.loss, config.model.output_mode,
                                             config.batch_dice),
                              metrics=region_metrics(config.model.output_mode))
                if self.init_source is not None:
                    init_from(model, self.init_source, config.init_from, log=self.log)
            if config.freeze_encoder_epochs:  # the encoder's variables join at the switch
                build_optimizer_for_all(model)
        return model

    def phases(self, train_data, val_data, initial_epoch: int) -> list[dict[str, Any]]:
        """The ``model.fit`` calls still to make: one, or two from a step checkpoint (the
        rest of its epoch first, then the other epochs)."""
        config, dist = self.config, self.dist
        if dist.distributed:  # sharded per worker, split per replica (training.distribute)
            val_set, val_steps = validation_dataset(val_data, dist)
            return [dict(x=train_dataset(train_data, dist, initial_epoch, config.epochs,
                                         workers=config.workers),
                         steps_per_epoch=config.steps_per_epoch, initial_epoch=initial_epoch,
                         epochs=config.epochs, validation_data=val_set,
                         validation_steps=val_steps)]
        # one iterator across epochs over batches that are pure functions of
        # (seed, epoch, index): identical whatever the prefetching, and on resume
        first_step = int(self.state.get("step", 0))
        bounds = [(initial_epoch, config.epochs, 0)]
        if first_step:
            bounds = [(initial_epoch, initial_epoch + 1, first_step),
                      (initial_epoch + 1, config.epochs, 0)][:2 if initial_epoch + 1
                                                               < config.epochs else 1]
        return [dict(x=EpochSpan(train_data, begin, end, workers=config.workers,
                                 use_multiprocessing=config.use_multiprocessing,
                                 max_queue_size=config.max_queue_size, first_step=skip),
                     steps_per_epoch=config.steps_per_epoch - skip, initial_epoch=begin,
                     epochs=end, validation_data=val_data, shuffle=False)
                for begin, end, skip in bounds]

    def fit(self, write_dir: Path):
        """Trains; checkpoints and logs go to ``write_dir`` (``run_dir`` on the chief).
        Returns the history of this session and the run's checkpoint callback."""
        config, dist = self.config, self.dist
        keras.utils.set_random_seed(config.seed)
        train_data, val_data = self.datasets()
        self.model = model = self.build_model()
        initial_epoch = int(self.state.get("epoch", 0))
        if self.state.get("step"):  # the metric variables its running totals go into
            build_for_strategy(model, (val_data or train_data)[0])
        if self.resume and dist.is_chief:
            truncate_log(self.run_dir / "log.csv", initial_epoch)
        self.log(f"model {model.name}: {model.count_params():,} parameters, "
                 f"{len(self.train_cases)} training / {len(self.val_cases)} validation cases")
        callbacks, checkpoint = run_callbacks(config, write_dir, self.state, self.resume,
                                              val_data)
        stop = StopOnSignal(checkpoint if not dist.distributed else None,
                            config.steps_per_epoch, every=config.checkpoint_every,
                            resume=self.state)
        history: dict[str, list[float]] = {}
        if initial_epoch >= config.epochs:
            return history, checkpoint
        phases = self.phases(train_data, val_data, initial_epoch)
        verbose = (1 if sys.stdout.isatty() else 2) if dist.is_chief else 0
        try:
            with stop, fit_context(model, dist, (val_data or train_data)[0]):
                for index, phase in enumerate(phases):
                    if index:  # the second phase continues the files the first one wrote
                        for callback in callbacks:
                            if isinstance(callback, CsvLog):
                                callback.append = True
                    fitted = model.fit(**phase, verbose=verbose,
                                       callbacks=[*callbacks, *self.extra_callbacks, stop])
                    for key, values in fitted.history.items():
                        history.setdefault(key, []).extend(float(v) for v in values)
        finally:
            for phase in phases:
                if isinstance(phase["x"], EpochSpan):
                    phase["x"].close()
        return history, checkpoint

    def finish(self, history: dict[str, list[float]], best_epoch: int | None) -> TrainResult:
        """Scores ``best.keras`` on the whole validation volumes (the chief) and reports."""
        config, run_dir = self.config, self.run_dir
        if not self.dist.is_chief:  # the chief evaluates and reports
            return TrainResult(run_dir=run_dir, history=history, best_epoch=best_epoch,
                               seconds=time.time() - self.start, model=self.model,
                               is_chief=False)
        val_dice = {}
        if self.val_cases:
            per_case = evaluate_volumes(load_model(run_dir / "best.keras"), self.val_cases,
                                        config.model.stride, config.model.output_mode,
                                        config.model.spatial_dims)
            atomic_write_text(run_dir / "validation.json", json.dumps(per_case, indent=2) + "\n")
            val_dice = region_means(per_case)
            self.log("validation Dice, whole volumes of {} cases (best.keras, epoch {}): "
                     "WT {:.3f}  TC {:.3f}  ET {:.3f}  mean {:.3f}".format(
                         len(per_case), best_epoch, val_dice["WT"], val_dice["TC"],
                         val_dice["ET"], val_dice["mean"]))
        else:
            self.log(f"trained on all {len(self.train_cases)} cases, no validation: "
                     "best.keras is the last epoch's model")
        result = TrainResult(run_dir=run_dir, val_dice=val_dice, history=history,
                             best_epoch=best_epoch, seconds=time.time() - self.start,
                             model=self.model)
        write_trial(run_dir, {**config.to_dict(), "train_cases": len(self.train_cases)},
                    val_dice, {"hours": result.seconds / 3600})
        self.log(f"TensorBoard logs: {run_dir / 'tensorboard'}  (tensorboard --logdir "
                 f"{run_dir}; runs side by side: --logdir on their parent folder, HParams tab)")
        self.log(f"finished in {result.seconds / 60:.1f} min")
        return result
