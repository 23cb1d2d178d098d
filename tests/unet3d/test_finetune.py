"""Weight transfer for --init-from and the encoder freeze of --freeze-encoder-epochs."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from unet3d.config import ModelConfig
from unet3d.models.unet import build_unet3d
from unet3d.training.finetune import (
    FreezeEncoder,
    build_optimizer_for_all,
    encoder_layers,
    transfer_weights,
)
from unet3d_base.errors import InputError

pytestmark = pytest.mark.slow  # converts, trains or runs real cases: not in make test-fast
SMALL = ModelConfig(base_filters=4, depth=3, segmentation_levels=2, dropout=0.0)


def _model(seed: int, **changes) -> keras.Model:
    keras.utils.set_random_seed(seed)
    values = {**SMALL.__dict__, **changes}
    return build_unet3d(ModelConfig(**values))


def _kernels(model: keras.Model) -> dict[str, np.ndarray]:
    return {layer.name: np.array(layer.weights[0]) for layer in model.layers if layer.weights}


def test_same_architecture_copies_every_layer():
    source, target = _model(1), _model(2)
    before = _kernels(target)
    transfer = transfer_weights(target, source, "src.keras")
    assert transfer.fresh == []
    assert len(transfer.loaded) == len(before)
    for name, kernel in _kernels(source).items():
        np.testing.assert_array_equal(_kernels(target)[name], kernel)
        if "conv" in name or "segmentation" in name:  # random kernels: the copy changed them
            assert not np.array_equal(before[name], kernel)


def test_other_label_set_and_modalities_keep_fresh_heads_and_first_conv():
    source = _model(1)  # 4 modalities, 3 region outputs
    target = _model(2, in_channels=2, output_mode="labels")  # 2 modalities, 4 softmax classes
    fresh_before = {n: k for n, k in _kernels(target).items()
                    if n == "enc0_conv" or n.endswith("_segmentation")}
    transfer = transfer_weights(target, source, "src.keras")
    assert sorted(transfer.fresh) == ["dec0_segmentation", "dec1_segmentation", "enc0_conv"]
    after, src = _kernels(target), _kernels(source)
    for name in transfer.loaded:
        np.testing.assert_array_equal(after[name], src[name])
    for name, kernel in fresh_before.items():  # untouched initialisation
        np.testing.assert_array_equal(after[name], kernel)
    # the full network still runs on the new inputs and gives 4 class probabilities
    out = target(np.zeros((1, 16, 16, 16, 2), np.float32))
    assert out.shape == (1, 16, 16, 16, 4)


def test_another_architecture_is_refused_naming_the_file_and_layer():
    with pytest.raises(InputError, match=r"src\.keras: another architecture: layer "
                                         r"enc0_context_a_norm has shapes"):
        transfer_weights(_model(2, base_filters=8), _model(1), "src.keras")
    with pytest.raises(InputError, match="layer enc3_conv missing"):
        transfer_weights(_model(2, depth=4), _model(1), "src.keras")


def test_freeze_encoder_holds_the_encoder_for_the_first_epochs():
    model = _model(3)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy")
    build_optimizer_for_all(model)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 16, 16, 16, 4)).astype(np.float32)
    y = (rng.random((2, 16, 16, 16, 3)) > 0.5).astype(np.float32)
    snapshots = [_kernels(model)]

    class Snapshot(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            snapshots.append(_kernels(self.model))

    model.fit(x, y, batch_size=2, epochs=3, verbose=0, shuffle=False,
              callbacks=[FreezeEncoder(2), Snapshot()])
    encoder = {layer.name for layer in encoder_layers(model)}
    decoder = set(snapshots[0]) - encoder
    assert encoder and decoder and "enc0_conv" in encoder and "dec0_segmentation" in decoder
    for epoch in (1, 2):  # frozen: the encoder is bit-identical, the decoder moves
        for name in encoder:
            np.testing.assert_array_equal(snapshots[epoch][name], snapshots[0][name])
        assert all(not np.array_equal(snapshots[epoch][n], snapshots[epoch - 1][n])
                   for n in decoder if "conv" in n)
    moved = [n for n in encoder if "conv" in n
             and not np.array_equal(snapshots[3][n], snapshots[2][n])]
    assert sorted(moved) == sorted(n for n in encoder if "conv" in n)  # epoch 3: all train
    assert all(layer.trainable for layer in model.layers)  # saved models are ordinary
