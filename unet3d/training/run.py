"""The training run behind ``train.py``: data, model, callbacks and outputs.

A run directory holds ``config.json`` (the resolved :class:`TrainConfig`),
``split.json`` (the seeded train/validation split), ``best.keras`` (best
validation mean Dice), ``last.keras`` and ``state.json`` (what ``--resume``
needs), ``log.csv`` and TensorBoard logs under ``tensorboard/``.

With ``strategy`` ``mirrored`` or ``multiworker`` (see :mod:`unet3d.training.distribute`)
the model is built and compiled inside the strategy's scope, ``batch_size``
is the global batch, and only the chief writes the run directory.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras

from data_generators.augmentation import AugmentationConfig
from data_generators.cache import cache_for, default_cache_root
from data_generators.case_split import split_cases
from data_generators.dataset import BratsPatchDataset, EpochSpan, ValidationPatchDataset
from data_generators.io import check_data_folder
from data_generators.layouts import LggCase, find_any_cases
from data_generators.synthetic import cached_synthetic_dataset
from unet3d.artifacts.keras_file import load_model
from unet3d.config import TrainConfig
from unet3d.keras_compat import build_for_strategy
from unet3d.memory import check_fits, training_bytes
from unet3d.models.losses import make_loss
from unet3d.models.metrics import region_metrics
from unet3d.models.unet import build_unet3d
from unet3d.precision import has_gpu, policy_scope
from unet3d.training.callbacks import (
    EpochSeeds,
    RunCheckpoint,
    StopOnSignal,
    ValidationImage,
    resume_checkpoint,
)
from unet3d.training.distribute import (
    check_batch_size,
    fit_context,
    make_distribution,
    output_dir,
    train_dataset,
    validation_dataset,
    worker_cases,
    worker_seed,
)
from unet3d.training.finetune import (
    FreezeEncoder,
    build_optimizer_for_all,
    init_from,
    load_source,
)
from unet3d.training.hparams import region_means, write_trial
from unet3d.training.rundir import prepare_run_dir, truncate_log
from unet3d.training.summaries import CsvLog, EpochScalars
from unet3d.training.validation import evaluate_volumes
from unet3d_base.errors import InputError
from unet3d_base.fileio import (
    atomic_write_text,
    exclusive_lock,
    remove_stale_temporaries,
)


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        run_dir: Path of the run directory.
        val_dice: dict region -> Dice of ``best.keras`` on the whole
            validation volumes, averaged over cases (``WT``, ``TC``, ``ET``,
            ``mean``); per case in ``validation.json``.
        history: dict metric -> list of per-epoch values (this session).
        best_epoch: int or None. 1-based epoch of ``best.keras``.
        seconds: float. Wall time of the run.
        model: keras.Model or None. The trained model (last epoch's weights).
        is_chief: bool. False on the workers of a multi-worker run that do
            not write ``run_dir``; their ``val_dice`` is empty.
    """

    run_dir: Path
    val_dice: dict[str, float] = field(default_factory=dict)
    history: dict[str, list[float]] = field(default_factory=dict)
    best_epoch: int | None = None
    seconds: float = 0.0
    model: Any = field(default=None, repr=False, compare=False)
    is_chief: bool = True


@contextlib.contextmanager
def precision_policy(mode: str):
    """Sets Keras' global dtype policy for ``mixed_precision`` ``mode`` during a run."""
    with policy_scope({"off": "fp32"}.get(mode, mode)):
        yield


def _check_precision(mode: str) -> None:
    if mode != "fp16":
        return

    if not has_gpu():
        raise InputError("--mixed-precision fp16 needs a GPU; on a CPU use bf16 or off")


def resolve_data(config: TrainConfig, cache_root: Path, log=print) -> Path:
    """The BraTS folder to train on; writes the synthetic dataset when ``data`` is None."""
    if config.data is not None:
        return Path(config.data)
    return cached_synthetic_dataset(cache_root, config.synthetic_cases, config.synthetic_shape,
                                    config.seed, log=log)


def train(config: TrainConfig, resume: bool = False, log=print,
          callbacks: Sequence[keras.callbacks.Callback] = ()) -> TrainResult:
    """Trains the 3D U-Net as ``config`` says and returns the validation Dice.

    Args:
        config: TrainConfig. The whole run.
        resume: bool, default False. Continue the run in ``config.out`` from
            its last completed epoch (optimizer state, learning-rate schedule
            position, epoch counter and TensorBoard step).
        log: callable, default print. Where progress lines go.
        callbacks: more Keras callbacks for ``fit``, called after the run's own
            (TensorBoard, log, checkpoints) and before the stop on a signal.

    Raises:
        InputError: for unusable data, options or output folder.
    """

    start = time.time()
    # multi-worker collectives must be set up before TensorFlow runs any op
    dist = make_distribution(config.strategy)
    check_batch_size(config.batch_size, dist)
    _check_precision(config.mixed_precision)
    if config.data is not None:  # a wrong path is named before the memory estimate
        check_data_folder(config.data)

    patch = "x".join(map(str, config.patch_size))
    check_fits(training_bytes(config.patch_size, config.batch_size, config.model.base_filters),
               f"training with --patch-size {patch}, --batch-size {config.batch_size} and "
               f"--base-filters {config.model.base_filters}",
               "lower --patch-size or --batch-size")
    init_source = None
    if config.init_from and not resume:
        init_source = load_source(config)
    if dist.is_chief:
        run_dir = prepare_run_dir(config, resume)
    else:  # the chief owns --out; this worker only reads it (when resuming)
        run_dir = Path(config.out)
        if resume and not (run_dir / "last.keras").is_file():
            raise InputError(f"--resume: {run_dir} holds no last.keras to resume from "
                             "(every worker must see the chief's run directory)")
    lock = exclusive_lock(run_dir, "--out") if dist.is_chief else contextlib.nullcontext()
    with lock:  # one process at a time writes a run directory
        if dist.is_chief:  # a killed run's temporary files: nobody else can own them now
            remove_stale_temporaries(run_dir)
        return _prepare_and_fit(config, run_dir, resume, start, log, dist, init_source,
                                tuple(callbacks))


def _prepare_and_fit(config, run_dir, resume, start, log, dist, init_source,
                     extra_callbacks=()) -> TrainResult:
    """The split, the cache and the fit of :func:`train`, under the run's lock."""
    if dist.distributed or dist.devices:
        log(dist.describe())


    cache_root = Path(config.cache_dir) if config.cache_dir else default_cache_root()
    data_dir = resolve_data(config, cache_root, log=log)
    cases = find_any_cases(data_dir, modalities=config.modalities, require_label=True)
    if isinstance(cases[0], LggCase) and config.model.spatial_dims == 3:
        raise InputError(f"--data {data_dir}: Kaggle LGG slices; train a 2D network on them "
                         "(--spatial-dims 2)")
    by_id = {case.case_id: case for case in cases}
    if resume and (run_dir / "split.json").is_file():
        split = json.loads((run_dir / "split.json").read_text())
        train_ids, val_ids = split["train"], split["validation"]
    elif config.validation_cases is not None:
        unknown = sorted(set(config.validation_cases) - set(by_id))
        if unknown:
            raise InputError(f"validation_cases: {', '.join(unknown)} not found in {data_dir}")
        val_ids = sorted(config.validation_cases)
        train_ids = sorted(set(by_id) - set(val_ids))
        if not train_ids:
            raise InputError(f"validation_cases: every case of {data_dir} is held out")
        if not val_ids and dist.distributed:
            raise InputError("validation_cases: [] (no validation) runs on one process only")
    else:
        train_ids, val_ids = split_cases(list(by_id), config.val_fraction, config.seed,
                                         config.folds, config.fold)
    missing = sorted(set(train_ids + val_ids) - set(by_id))
    if missing:
        raise InputError(f"{data_dir}: cases of the saved split are missing: {', '.join(missing)}")

    cache = cache_for(data_dir, cache_root, config.normalization)
    log(f"preprocessing {len(cases)} cases (cached in {cache.root})")
    train_cases = [cache.get(by_id[i], config.label_convention) for i in train_ids]
    val_cases = [cache.get(by_id[i], config.label_convention) for i in val_ids]

    if not resume and dist.is_chief:
        config.save(run_dir / "config.json")
        split = {"seed": config.seed, "folds": config.folds, "fold": config.fold,
                 "val_fraction": config.val_fraction, "train": train_ids,
                 "validation": val_ids}
        atomic_write_text(run_dir / "split.json", json.dumps(split, indent=2) + "\n")

    with precision_policy(config.mixed_precision):
        return _fit(config, run_dir, train_cases, val_cases, resume, start, log, dist,
                    init_source, extra_callbacks)


def _fit(config, run_dir, train_cases, val_cases, resume, start, log, dist,
         init_source=None, extra_callbacks=()) -> TrainResult:
    with output_dir(run_dir, dist) as write_dir:
        return _fit_in(config, run_dir, write_dir, train_cases, val_cases, resume, start,
                       log, dist, init_source, extra_callbacks)


def _fit_in(config, run_dir, write_dir, train_cases, val_cases, resume, start, log,
            dist, init_source=None, extra_callbacks=()) -> TrainResult:
    """Trains; checkpoints and logs go to ``write_dir`` (``run_dir`` on the chief).

    ``init_source`` is the pretrained model of ``--init-from``, already loaded
    and checked by :func:`unet3d.training.finetune.load_source`.
    """
    keras.utils.set_random_seed(config.seed)
    mode = config.model.output_mode
    # each worker samples its own share of the cases, batch_size / num_workers at a time
    train_data = BratsPatchDataset(
        worker_cases(train_cases, dist), patch_size=config.patch_size,
        batch_size=config.batch_size // dist.num_workers,
        steps_per_epoch=config.steps_per_epoch, output_mode=mode,
        foreground_fraction=config.foreground_fraction,
        augmentation=(AugmentationConfig().scaled(config.augment_strength)
                      if config.augment else None),
        seed=worker_seed(config.seed, dist),
    )  # the loader options go to the dataset fit consumes (EpochSpan / train_dataset)
    val_data = ValidationPatchDataset(
        val_cases, patch_size=config.patch_size, batch_size=config.batch_size,
        patches_per_case=config.val_patches_per_case, output_mode=mode, seed=config.seed,
    ) if val_cases else None  # none: training on every case, best = last epoch
    if val_data is not None and dist.devices and len(val_data.centres) % len(dist.devices):
        raise InputError(
            f"--strategy mirrored on JAX splits every batch over {len(dist.devices)} devices: "
            f"the {len(val_data.centres)} validation patches (val_patches_per_case x "
            f"{len(val_cases)} cases) must be a multiple of {len(dist.devices)}")

    state = {}
    with dist.scope():  # variables are mirrored over the replicas
        if resume:  # step.keras, last.keras, or previous.keras when last.keras is damaged
            # a multi-worker run starts its epochs at step 0: it resumes from the epoch's
            model, state = resume_checkpoint(run_dir, move_damaged=dist.is_chief,
                                             use_step=not dist.distributed)
            log(f"resuming {run_dir} after epoch {state['epoch']}"
                + (f", step {state['step']} of epoch {state['epoch'] + 1}"
                   if state.get("step") else ""))
        else:
            model = build_unet3d(config.model)
            model.compile(
                optimizer=keras.optimizers.Adam(config.learning_rate),
                loss=make_loss(config.loss, mode, config.batch_dice),
                metrics=region_metrics(mode),
            )
            if init_source is not None:
                init_from(model, init_source, config.init_from, log=log)
        if config.freeze_encoder_epochs:  # the encoder's variables join at the switch
            build_optimizer_for_all(model)
    initial_epoch = int(state.get("epoch", 0))
    if state.get("step"):  # the metric variables its running totals go into, built now
        build_for_strategy(model, (val_data or train_data)[0])
    if resume and dist.is_chief:
        truncate_log(run_dir / "log.csv", initial_epoch)
    log(f"model {model.name}: {model.count_params():,} parameters, "
        f"{len(train_cases)} training / {len(val_cases)} validation cases")

    lr0, decay = config.learning_rate, config.lr_decay
    tensorboard_dir = write_dir / "tensorboard"
    checkpoint = RunCheckpoint(write_dir, best_score=state.get("best_score") or float("-inf"),
                               config=config.to_dict(),
                               monitor="val_dice_mean" if val_data else None)
    checkpoint.best_epoch = state.get("best_epoch")
    callbacks = [
        EpochSeeds(config.seed),  # dropout masks depend on (seed, epoch): exact resume
        keras.callbacks.LearningRateScheduler(lambda epoch: lr0 * decay**epoch),
        # TensorBoard first: a write the storage refuses there stops the run before the
        # epoch's row and checkpoint, so every file stays as the previous epoch left it
        EpochScalars(tensorboard_dir),  # keras.callbacks.TensorBoard needs TensorFlow
        CsvLog(write_dir / "log.csv", append=resume),
        checkpoint,
    ]
    if val_data is not None:
        shown = config.modalities.index("flair") if "flair" in config.modalities else 0
        scalars = next(i for i, c in enumerate(callbacks) if isinstance(c, EpochScalars))
        callbacks.insert(scalars + 1, ValidationImage(
            tensorboard_dir, val_data.patch(0), output_mode=mode, channel=shown,
            spatial_dims=config.model.spatial_dims))
    if config.freeze_encoder_epochs:  # before the checkpoint, which saves at epoch end
        callbacks.insert(0, FreezeEncoder(config.freeze_encoder_epochs))
    verbose = (1 if sys.stdout.isatty() else 2) if dist.is_chief else 0
    history = {}
    stop = StopOnSignal(checkpoint if not dist.distributed else None, config.steps_per_epoch,
                        every=config.checkpoint_every, resume=state)
    if initial_epoch < config.epochs:
        if dist.distributed:  # sharded per worker, split per replica (unet3d.training.distribute)
            val_set, val_steps = validation_dataset(val_data, dist)
            phases = [dict(x=train_dataset(train_data, dist, initial_epoch, config.epochs,
                                           workers=config.workers),
                           steps_per_epoch=config.steps_per_epoch, initial_epoch=initial_epoch,
                           epochs=config.epochs, validation_data=val_set,
                           validation_steps=val_steps)]
        else:
            # one iterator across epochs over batches that are pure functions of
            # (seed, epoch, index): identical whatever the prefetching, and on resume;
            # from a step checkpoint, the rest of its epoch first, then the others
            first_step = int(state.get("step", 0))
            bounds = [(initial_epoch, config.epochs, 0)]
            if first_step:
                bounds = [(initial_epoch, initial_epoch + 1, first_step),
                          (initial_epoch + 1, config.epochs, 0)][:2 if initial_epoch + 1
                                                                   < config.epochs else 1]
            phases = [dict(x=EpochSpan(train_data, begin, end, workers=config.workers,
                                       use_multiprocessing=config.use_multiprocessing,
                                       max_queue_size=config.max_queue_size, first_step=skip),
                           steps_per_epoch=config.steps_per_epoch - skip, initial_epoch=begin,
                           epochs=end, validation_data=val_data, shuffle=False)
                      for begin, end, skip in bounds]
        try:
            with stop, fit_context(model, dist, (val_data or train_data)[0]):
                for index, phase in enumerate(phases):
                    if index:  # the second phase continues the files the first one wrote
                        for callback in callbacks:
                            if isinstance(callback, CsvLog):
                                callback.append = True
                    fitted = model.fit(**phase, callbacks=[*callbacks, *extra_callbacks, stop],
                                       verbose=verbose)
                    for key, values in fitted.history.items():
                        history.setdefault(key, []).extend(float(v) for v in values)
        finally:
            for phase in phases:
                if isinstance(phase["x"], EpochSpan):
                    phase["x"].close()

    if not dist.is_chief:  # the chief evaluates and reports
        return TrainResult(run_dir=run_dir, history=history, best_epoch=checkpoint.best_epoch,
                           seconds=time.time() - start, model=model, is_chief=False)
    val_dice = {}
    if val_cases:
        best = load_model(run_dir / "best.keras")
        per_case = evaluate_volumes(best, val_cases, config.model.stride, mode,
                                    config.model.spatial_dims)
        atomic_write_text(run_dir / "validation.json", json.dumps(per_case, indent=2) + "\n")
        val_dice = region_means(per_case)
        log("validation Dice, whole volumes of {} cases (best.keras, epoch {}): "
            "WT {:.3f}  TC {:.3f}  ET {:.3f}  mean {:.3f}".format(
                len(per_case), checkpoint.best_epoch, val_dice["WT"], val_dice["TC"],
                val_dice["ET"], val_dice["mean"]))
    else:
        log(f"trained on all {len(train_cases)} cases, no validation: best.keras is the "
            "last epoch's model")
    result = TrainResult(run_dir=run_dir, val_dice=val_dice, history=history,
                         best_epoch=checkpoint.best_epoch, seconds=time.time() - start,
                         model=model)

    write_trial(run_dir, {**config.to_dict(), "train_cases": len(train_cases)}, val_dice,
                {"hours": result.seconds / 3600})
    log(f"TensorBoard logs: {tensorboard_dir}  (tensorboard --logdir {run_dir}; runs side "
        "by side: --logdir on their parent folder, HParams tab)")
    log(f"finished in {result.seconds / 60:.1f} min")
    return result
