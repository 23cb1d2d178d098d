"""Fine-tuning: start a run from a pretrained ``.keras`` model, optionally with a frozen encoder.

``train.py --init-from models/<name>.keras`` builds the run's model from its
own config, then copies the pretrained weights layer by layer, matched by
name. Two kinds of layer may differ in shape and are then left at their fresh
initialisation, as nnU-Net does when it loads pretrained weights for a new
task: the first convolution (``enc0_conv``, other input modalities) and the
1x1x1 segmentation heads (another output mode or label set). Any other
mismatch means another architecture and is refused.

``--freeze-encoder-epochs N`` keeps the encoder (every layer named ``enc*``:
the context pathway and the skip normalisations) fixed for the first N
epochs, so the randomly initialised or task-shifted decoder settles before
the pretrained features move.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import keras

from unet3d.artifacts.keras_file import load_model
from unet3d.models.unet import build_unet3d
from unet3d_base.errors import InputError

ENCODER_PREFIX = "enc"
FIRST_CONV = "enc0_conv"
HEAD_SUFFIX = "_segmentation"


def may_differ(name: str) -> bool:
    """Layers whose shapes follow the task, not the architecture."""
    return name == FIRST_CONV or name.endswith(HEAD_SUFFIX)


def encoder_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The layers of the contracting path that hold weights."""
    return [layer for layer in model.layers
            if layer.name.startswith(ENCODER_PREFIX) and layer.weights]


@dataclass
class Transfer:
    """What :func:`transfer_weights` did.

    Attributes:
        loaded: names of the layers whose weights came from the source.
        fresh: names of the layers left at their initialisation (shape differs).
    """

    loaded: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)

    def describe(self, source: Path) -> str:
        text = f"initialised {len(self.loaded)} layers from {source}"
        return text + (f"; new (shape differs): {', '.join(self.fresh)}" if self.fresh else "")


def transfer_weights(model: keras.Model, source: keras.Model, source_name: str) -> Transfer:
    """Copies ``source``'s weights into ``model`` for every layer that matches.

    Args:
        model: keras.Model. The run's freshly built model (changed in place).
        source: keras.Model. The pretrained model.
        source_name: str. Names the source in errors.

    Raises:
        InputError: a layer other than the first convolution or a
            segmentation head is missing or differs in shape (another
            architecture: use the pretrained model's base filters and depth).
    """
    by_name = {layer.name: layer for layer in source.layers}
    transfer = Transfer()
    for layer in model.layers:
        if not layer.weights:
            continue
        other = by_name.get(layer.name)
        shapes = [tuple(w.shape) for w in layer.weights]
        other_shapes = [tuple(w.shape) for w in other.weights] if other is not None else None
        if shapes == other_shapes:
            layer.set_weights(other.get_weights())
            transfer.loaded.append(layer.name)
        elif may_differ(layer.name):
            transfer.fresh.append(layer.name)
        else:
            found = "missing" if other is None else f"has shapes {other_shapes}"
            raise InputError(
                f"{source_name}: another architecture: layer {layer.name} {found}, the run's "
                f"model needs {shapes} (train with the pretrained model's base filters and depth)"
            )
    return transfer


def source_path(path: str | Path) -> Path:
    """``path`` as a Path; InputError naming ``--init-from`` if no such file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--init-from {path}: model file not found")
    return path


def load_source(config) -> keras.Model:
    """Loads the ``--init-from`` model once, refusing one that cannot start the run.

    Called before a run writes anything: the weights are tried on a
    throwaway copy of the run's network, so a mismatch is an error up front.

    Args:
        config: TrainConfig with ``init_from`` set.

    Returns:
        The pretrained keras.Model, for :func:`init_from`.
    """

    source = load_model(source_path(config.init_from))
    transfer_weights(build_unet3d(config.model), source, str(config.init_from))
    return source


def init_from(model: keras.Model, source: keras.Model, source_name: str | Path,
              log=print) -> Transfer:
    """Copies the pretrained ``source``'s weights into ``model`` and logs what it did."""
    transfer = transfer_weights(model, source, str(source_name))
    log(transfer.describe(Path(source_name)))
    return transfer


class FreezeEncoder(keras.callbacks.Callback):
    """Trains only the decoder during the first ``epochs`` epochs.

    The optimizer must already be built on all trainable variables (see
    :func:`build_optimizer_for_all`), so that the encoder's variables join it
    at the switch. The traced train function fixes which variables it
    updates, so it is rebuilt only when the frozen set changes; between
    epochs every layer is marked trainable again, so that checkpoints saved at
    the end of an epoch load (and resume) like any other model.

    Args:
        epochs: int. Number of leading epochs with the encoder frozen.
    """

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = int(epochs)
        self._traced_frozen: bool | None = None

    def _set(self, frozen: bool) -> None:
        for layer in encoder_layers(self.model):
            layer.trainable = not frozen

    def on_epoch_begin(self, epoch, logs=None):
        frozen = epoch < self.epochs
        self._set(frozen)
        if frozen != self._traced_frozen:
            self.model.make_train_function(force=True)
            self._traced_frozen = frozen

    def on_epoch_end(self, epoch, logs=None):
        self._set(False)  # checkpoints hold an ordinary, fully trainable model

    def on_train_end(self, logs=None):
        self._set(False)


def build_optimizer_for_all(model: keras.Model) -> None:
    """Builds the compiled model's optimizer on every trainable variable now."""
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
