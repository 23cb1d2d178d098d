"""A trained Keras model's forward pass as a ``predict_fn``, compiled on every backend.

A ``predict_fn`` maps a float32 batch `(B, D, H, W, C)` (`(B, H, W, C)` for a
2D network) to float32 probabilities `(B, D, H, W, K)` (`(B, H, W, K)`); Keras
and LiteRT models both provide one, so inference (:mod:`unet3d.inference`)
runs either through the same code.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import keras
import numpy as np

from unet3d.models.lean import lean_forward

PredictFn = Callable[[np.ndarray], np.ndarray]

# TensorFlow's CPU kernels (Eigen, AVX-512) read buffers aligned to this in place
ALIGN_BYTES = 64


def eager_predict_fn(model) -> PredictFn:
    """A ``predict_fn`` calling a Keras model eagerly (slow; the reference in tests)."""
    def run(batch: np.ndarray) -> np.ndarray:
        return keras.ops.convert_to_numpy(model(batch, training=False)).astype(np.float32)

    return run


def keras_predict_fn(model) -> PredictFn:
    """A ``predict_fn`` running a Keras model compiled for inference, on any backend.

    Eager calls are slow and memory-hungry (the default network on a
    144x176x144 volume: 16 s and 8.3 GB eagerly, 2.3 s and 2.3 GB compiled).
    So the forward pass is compiled once and reused:

    * TensorFlow: one ``tf.function`` graph per batch size and channel count,
      with open spatial sizes, so windows and cases of any size reuse it and
      nothing is retraced (measured: a second volume size runs at the speed
      of the first, no tracing). XLA is not used: ~9x slower on CPUs.
    * JAX: ``jax.jit`` over ``model.stateless_call`` (jit caches one
      executable per input shape).
    * PyTorch: the eager module under ``torch.inference_mode``.

    Returns float32 probabilities whatever the model's dtype policy.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return _tensorflow_predict_fn(model)
    if backend == "jax":
        return _jax_predict_fn(model)
    if backend == "torch":
        import torch

        def run_torch(batch: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                out = model(batch, training=False)
            return keras.ops.convert_to_numpy(out).astype(np.float32, copy=False)

        return run_torch
    return eager_predict_fn(model)


def _tensorflow_predict_fn(model) -> PredictFn:
    import tensorflow as tf

    plain = tf.function(lambda x: model(x, training=False), autograph=False)
    lean = lean_forward(model) if memory_saving() else None
    forward = tf.function(lean, autograph=False) if lean else plain
    graphs: dict[tuple[int, int, int], Callable] = {}

    def run(batch: np.ndarray) -> np.ndarray:
        key = (batch.shape[0], batch.shape[-1], batch.ndim)
        graph = graphs.get(key)
        if graph is None:  # open spatial sizes: one graph serves every volume (or slice)
            spec = tf.TensorSpec((key[0],) + (None,) * (batch.ndim - 2) + (key[1],), tf.float32)
            try:
                graph = forward.get_concrete_function(spec)
            except Exception as err:  # the lean pass leans on Keras internals: fail safe
                if forward is plain:
                    raise
                warnings.warn(f"the memory-saving forward pass failed to build ({err!r}); "
                              "running the plain one", RuntimeWarning, stacklevel=2)
                graph = plain.get_concrete_function(spec)
            graphs[key] = graph
        out = graph(_tensorflow_input(batch))
        return out.numpy().astype(np.float32, copy=False)

    functions = (plain,) if forward is plain else (plain, forward)
    run.tracing_count = lambda: sum(f.experimental_get_tracing_count() for f in functions)
    return run


def _tensorflow_input(batch: np.ndarray):
    """``batch`` as a TensorFlow tensor: its own buffer, shared through DLPack, where
    TensorFlow's kernels can read it in place (float32, C-contiguous, writable, aligned to
    :data:`ALIGN_BYTES`, as :func:`unet3d.inference.predictor.pad_to` makes it), else a copy.
    Shared, the input is held once during the pass instead of twice."""
    import tensorflow as tf

    if (memory_saving() and batch.dtype == np.float32 and batch.flags.c_contiguous
            and batch.flags.writeable and batch.ctypes.data % ALIGN_BYTES == 0):
        return tf.experimental.dlpack.from_dlpack(batch.__dlpack__())
    return tf.convert_to_tensor(batch, dtype=tf.float32)


def _jax_predict_fn(model) -> PredictFn:
    import jax

    @jax.jit
    def forward(trainable, non_trainable, x):
        out, _ = model.stateless_call(trainable, non_trainable, x, training=False)
        return out

    def run(batch: np.ndarray) -> np.ndarray:
        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]
        return np.asarray(forward(trainable, non_trainable, batch), dtype=np.float32)

    return run


def memory_saving() -> bool:
    """Whether inference saves memory (:func:`unet3d.models.lean.lean_forward`, the input
    shared with TensorFlow, :func:`unet3d.inference.allocators.return_freed_heap_tops`);
    ``UNET3D_MEMORY_SAVING=0`` turns it off, to compare."""
    return os.environ.get("UNET3D_MEMORY_SAVING", "1") != "0"
