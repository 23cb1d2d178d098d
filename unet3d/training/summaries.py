"""TensorBoard event files written with TensorBoard's own protobufs, on every Keras backend.

``keras.callbacks.TensorBoard`` and ``tf.summary`` need TensorFlow; the JAX
and PyTorch backends may run where it is not installed. :class:`EventWriter`
writes scalars and PNG images with the ``tensorboard`` package alone, in the
layout Keras' callback uses (``<log_dir>/train`` and ``<log_dir>/validation``,
tags ``epoch_<metric>``), so dashboards and scripts read the same files.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import os
import socket
import struct
import time
from pathlib import Path

import keras
import numpy as np
from PIL import Image
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
from tensorboard.plugins.image import metadata as image_metadata
from tensorboard.plugins.scalar import summary_v2 as scalar_summary
from tensorboard.util import tensor_util

from unet3d_base.fileio import atomic_write_text


class EventWriter:
    """Appends summaries to one TensorBoard event file in ``log_dir``, from the calling thread.

    TensorBoard's own ``EventFileWriter`` writes from a background thread, so a
    full disk there surfaces late (or only as a thread's traceback) and can
    leave a torn record. This writer keeps the events in memory until
    :meth:`flush` (or :meth:`close`), then appends them in one write; when the
    storage refuses it, the file is cut back to its previous length (a new
    file is removed) and the ``OSError`` (naming the file) is raised to the
    caller, which the command lines turn into one line and exit status 74.

    Args:
        log_dir: str or Path. Created if missing.
    """

    _count = itertools.count()

    def __init__(self, log_dir):
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        # the name TensorBoard's writer gives: time, host, process, a per-process counter
        name = f"{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(self._count)}"
        self.path = Path(log_dir) / f"events.out.tfevents.{name}"
        self._pending: list[bytes] = []
        self._closed = False
        self._add_event(event_pb2.Event(
            wall_time=time.time(), file_version="brain.Event:2",
            source_metadata=event_pb2.SourceMetadata(writer="unet3d")))

    def _add_event(self, event) -> None:
        if self._closed:
            raise ValueError(f"{self.path}: the event writer is closed")
        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))  # TFRecord framing, as TensorBoard's RecordWriter
        self._pending.append(header + struct.pack("<I", masked_crc32c(header)) + data
                             + struct.pack("<I", masked_crc32c(data)))

    def add(self, summary, step: int) -> None:
        """Appends one ``Summary`` protobuf at ``step``."""
        self._add_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

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
        """Appends the pending events to the file, all or none of them.

        Raises:
            OSError: the storage refused the write (``filename`` is the event
                file, which holds exactly what it held before).
        """
        if not self._pending:
            return
        data = b"".join(self._pending)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        size = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError as err:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            os.close(fd)
            if size == 0:
                self.path.unlink(missing_ok=True)
            raise OSError(err.errno, err.strerror, str(self.path)) from None
        os.close(fd)
        self._pending = []

    def close(self) -> None:
        """Flushes; a closed writer accepts no more events."""
        if not self._closed:
            self.flush()
            self._closed = True


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


class CsvLog(keras.callbacks.Callback):
    """Each epoch's logs as one row of a CSV file, in the columns of Keras' ``CSVLogger``
    (``epoch`` and the metric names, sorted).

    The file is rewritten whole and atomically at every epoch end (it holds one
    short row per epoch), so a full disk or a kill leaves the previous
    complete file, never a torn last line.

    Args:
        path: str or Path. The CSV file.
        append: bool, default False. Continue the rows already in ``path``
            (its header gives the columns); else start it afresh.
    """

    def __init__(self, path, append: bool = False):
        super().__init__()
        self.path = Path(path)
        self.append = append
        self.keys: list[str] | None = None
        self._text = ""

    def on_train_begin(self, logs=None):
        self._text, self.keys = "", None
        if self.append and self.path.is_file():
            self._text = self.path.read_text()
            header = self._text.splitlines()[:1]
            if header:
                self.keys = next(csv.reader(header))[1:]
            if self._text and not self._text.endswith("\n"):
                self._text += "\n"

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        if self.keys is None:
            self.keys = sorted(logs)
        if not self._text:
            writer.writerow(["epoch", *self.keys])
        writer.writerow([epoch, *(float(logs[k]) if k in logs else "NA" for k in self.keys)])
        text = self._text + buffer.getvalue()
        atomic_write_text(self.path, text)
        self._text = text
