"""Every use of Keras' private API, in one place, checked against the tested release.

Keras offers no public route for these; each is used by one feature and
exercised by ``tests/unet3d/test_keras_compat.py``, which fails on the first
Keras release that breaks one.

* :func:`seed_state`: a random layer's ``SeedGenerator`` state variable.
  Keras does not restore it from a ``.keras`` file, so :class:`EpochSeeds`
  reseeds it per epoch for exact ``--resume``.
* :func:`build_for_strategy`, :func:`set_model_strategy`: the multi-worker
  ``tf.distribute`` workaround of :func:`unet3d.training.distribute.fit_context`
  (``Model._symbolic_build``, ``Model._distribute_strategy``).

The layer graph walk of the LiteRT export uses the public ``layer.input`` /
``layer.output`` instead of ``layer._inbound_nodes``.
"""

from __future__ import annotations

import warnings

import keras

TESTED_KERAS = ("3.15",)  # major.minor releases the private uses below are tested on


def version_is_tested(version: str = keras.__version__) -> bool:
    return ".".join(version.split(".")[:2]) in TESTED_KERAS


def check_version() -> None:
    """Warns once if the installed Keras is not a tested release."""
    if not version_is_tested():
        warnings.warn(f"unet3d is tested with Keras {', '.join(TESTED_KERAS)}, not "
                      f"{keras.__version__}: data-parallel multi-worker training and exact "
                      "--resume use private Keras API that may have changed", stacklevel=2)


def seed_state(generator: keras.random.SeedGenerator):
    """The variable holding a ``SeedGenerator``'s state (shape ``(2,)``)."""
    return generator.state


def build_for_strategy(model: keras.Model, sample) -> None:
    """Builds the model's metric, loss and optimizer state from an example batch."""
    model._symbolic_build(data_batch=sample)


def set_model_strategy(model: keras.Model, strategy) -> None:
    """Sets (or, with None, unsets) the ``tf.distribute`` strategy ``fit`` runs under."""
    model._distribute_strategy = strategy


check_version()
