"""TensorBoard event files written with TensorBoard's own protobufs, on every Keras backend.

``keras.callbacks.TensorBoard`` and ``tf.summary`` need TensorFlow; the JAX
and PyTorch backends may run where it is not installed. :class:`EventWriter`
writes scalars and PNG images with the ``tensorboard`` package alone, in the
layout Keras' callback uses (``<log_dir>/train`` and ``<log_dir>/validation``,
tags ``epoch_<metric>``), so dashboards and scripts read the same files.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import keras
import numpy as np
from PIL import Image
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.image import metadata as image_metadata
from tensorboard.plugins.scalar import summary_v2 as scalar_summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter
from tensorboard.util import tensor_util


class EventWriter:
    """Appends summaries to one TensorBoard event file in ``log_dir``.

    Args:
        log_dir: str or Path. Created if missing.
    """

    def __init__(self, log_dir):
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        self._writer = EventFileWriter(str(log_dir))

    def add(self, summary, step: int) -> None:
        """Appends one ``Summary`` protobuf at ``step``."""
        self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                               summary=summary))

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.add(scalar_summary.scalar_pb(tag, float(value)), step)

    def image(self, tag: str, rgb: np.ndarray, step: int) -> None:
        """``rgb``: floats in [0, 1], ``(H, W, 3)``; stored as PNG, as ``tf.summary.image``."""
        pixels = (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        height, width = pixels.shape[:2]
        tensor = tensor_util.make_tensor_proto(
            [str(width).encode(), str(height).encode(), buffer.getvalue()])
        metadata = image_metadata.create_summary_metadata(
            display_name=tag, description="", converted_to_tensor=True)
        value = summary_pb2.Summary.Value(tag=tag, metadata=metadata, tensor=tensor)
        self.add(summary_pb2.Summary(value=[value]), step)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class EpochScalars(keras.callbacks.Callback):
    """Each epoch's logs as TensorBoard scalars: ``train/epoch_<name>`` and
    ``validation/epoch_<name>`` (from the ``val_`` entries), as Keras' callback.

    Args:
        log_dir: str or Path. The run's TensorBoard folder.
    """

    def __init__(self, log_dir):
        super().__init__()
        self.log_dir = Path(log_dir)
        self._writers: dict[str, EventWriter] = {}

    def _writer(self, name: str) -> EventWriter:
        if name not in self._writers:
            self._writers[name] = EventWriter(self.log_dir / name)
        return self._writers[name]

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            split, name = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
            self._writer(split).scalar(f"epoch_{name}", float(value), epoch)
        for writer in self._writers.values():
            writer.flush()

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.close()
        self._writers = {}
