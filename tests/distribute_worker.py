"""Subprocess entry point of ``tests/test_distribute.py`` (TensorFlow must start fresh).

compare: splits the CPU into two logical devices, trains a tiny model with
    ``strategy default`` and then ``mirrored`` (same seed, same global batch)
    and prints ``{"max_abs_diff": ..., ...}`` as the last line of stdout.
worker: one worker of a ``multiworker`` run (``TF_CONFIG`` from the
    environment); saves its final weights to ``--weights`` (``.npz``) and
    prints a JSON summary as the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from unet3d.env import apply_defaults

apply_defaults()  # TensorFlow environment defaults, before TF loads


# One epoch: the default path's PyDataset may prefetch the next epoch's first
# batch before its sampling epoch advances, so later epochs are not comparable.
TINY = dict(epochs=1, steps_per_epoch=4, batch_size=4, patch_size=(16, 16, 16),
            learning_rate=0.01, val_patches_per_case=3, val_fraction=0.4, workers=1,
            seed=5, augment=False)
MODEL = dict(base_filters=2, depth=2, segmentation_levels=2, dropout=0.0)


def tiny_config(data: str, cache: str, out: str, **changes):
    from unet3d.config import ModelConfig, TrainConfig

    values = {**TINY, **changes}
    return TrainConfig(data=data, cache_dir=cache, out=out, model=ModelConfig(**MODEL), **values)


def weights_of(model):
    import numpy as np

    return [np.asarray(w) for w in model.get_weights()]


def compare(args) -> dict:
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras

    from unet3d.training.run import train

    quiet = lambda *_: None  # noqa: E731
    root = Path(args.out)
    # fit() shuffles the order of a PyDataset's batches (Python's random); the
    # mirrored input runs them in index order, so the reference does too
    fit = keras.Model.fit
    keras.Model.fit = lambda self, *a, **k: fit(self, *a, **{**k, "shuffle": False})
    try:
        single = train(tiny_config(args.data, args.cache, str(root / "single")), log=quiet)
    finally:
        keras.Model.fit = fit
    mirrored = train(tiny_config(args.data, args.cache, str(root / "mirrored"),
                                 strategy="mirrored"), log=quiet)
    a, b = weights_of(single.model), weights_of(mirrored.model)
    assert [w.shape for w in a] == [w.shape for w in b]
    diff = max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True))
    scale = max(float(np.max(np.abs(x))) for x in a)
    moved = max(float(np.max(np.abs(x - y))) for x, y in
                zip(a, weights_of(_initial_model()), strict=True))
    return {"replicas": mirrored.model.distribute_strategy.num_replicas_in_sync,
            "max_abs_diff": diff, "max_abs_weight": scale, "max_update": moved,
            "single_history": single.history, "mirrored_history": mirrored.history,
            "single_val_dice": single.val_dice, "mirrored_val_dice": mirrored.val_dice}


def _initial_model():
    """The same tiny model, freshly initialised with the same seed (how far training moved)."""
    import keras

    from unet3d.config import ModelConfig
    from unet3d.models.unet import build_unet3d

    keras.utils.set_random_seed(TINY["seed"])
    return build_unet3d(ModelConfig(**MODEL))


def worker(args) -> dict:
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from unet3d.training.run import train

    config = tiny_config(args.data, args.cache, args.out, strategy="multiworker",
                         epochs=args.epochs)
    result = train(config, log=lambda *a: print(*a, flush=True))
    weights = weights_of(result.model)
    np.savez(args.weights, *weights)
    return {"is_chief": result.is_chief, "history": result.history,
            "val_dice": result.val_dice,
            "replicas": result.model.distribute_strategy.num_replicas_in_sync}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("compare", "worker"))
    parser.add_argument("--data", required=True)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--weights")
    parser.add_argument("--epochs", type=int, default=TINY["epochs"])
    args = parser.parse_args()
    summary = compare(args) if args.mode == "compare" else worker(args)
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
