"""Keras ``PyDataset`` patch samplers for training and validation.

Batches are ``x`` float32 ``(B, D, H, W, C)`` and ``y`` float32: regions
``(B, D, H, W, 3)`` (WT, TC, ET) or one-hot classes ``(B, D, H, W, 4)``. A
two-value ``patch_size`` ``(H, W)`` samples axial slices for a 2D network
instead: patches of depth 1 cut and augmented in the slice's plane
(``AugmentationConfig(in_plane=True)``), delivered as ``(B, H, W, C)``.
Patch shapes, targets and random centres are :mod:`data_generators.patches`;
the train / validation split of the cases is :mod:`data_generators.case_split`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import keras
import numpy as np

from data_generators.augmentation import AugmentationConfig, extract_patch
from data_generators.patches import (
    as_slices,
    check_cases,
    encode_target,
    random_voxel,
    volume_patch,
)
from data_generators.preprocessing import PreprocessedCase
from unet3d_base.errors import InputError


class BratsPatchDataset(keras.utils.PyDataset):
    """Random (optionally augmented) training patches.

    Each batch draws, from ``np.random.default_rng([seed, epoch, index])``,
    a case per sample and a patch centre: a random tumor voxel with
    probability ``foreground_fraction``, else a uniform random voxel of the
    cropped volume. Batches are thus reproducible per ``(epoch, index)``
    whatever the worker order.

    Args:
        cases: preprocessed cases with labels.
        patch_size: ``(D, H, W)``, or ``(H, W)`` for axial slices.
        batch_size: patches per batch.
        steps_per_epoch: batches per epoch (``len(self)``).
        output_mode: ``regions`` (WT, TC, ET) or ``labels`` (one-hot 4 classes).
        foreground_fraction: share of patches centred on a tumor voxel.
        augmentation: augmentation settings; None for plain patches.
        seed: base seed.
        **kwargs: ``workers``, ``use_multiprocessing``, ``max_queue_size``
            for ``keras.utils.PyDataset``.
    """

    def __init__(
        self,
        cases: Sequence[PreprocessedCase],
        patch_size: Sequence[int],
        batch_size: int = 2,
        steps_per_epoch: int = 100,
        output_mode: str = "regions",
        foreground_fraction: float = 1.0 / 3.0,
        augmentation: AugmentationConfig | None = None,
        seed: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        check_cases(cases, output_mode)
        if not 0.0 <= foreground_fraction <= 1.0:
            raise InputError(f"foreground_fraction must lie in [0, 1], got {foreground_fraction}")
        self.cases = list(cases)
        self.spatial_dims = len(tuple(patch_size))
        self.patch_size = volume_patch(patch_size)
        self.batch_size = int(batch_size)
        self.steps_per_epoch = int(steps_per_epoch)
        self.output_mode = output_mode
        self.foreground_fraction = float(foreground_fraction)
        if augmentation is not None and self.spatial_dims == 2:
            augmentation = dataclasses.replace(augmentation, in_plane=True)
        self.augmentation = augmentation
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return self.steps_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch that seeds the following batches."""
        self.epoch = int(epoch)

    def on_epoch_end(self) -> None:
        self.epoch += 1

    def sample_centres(self, index: int) -> list[tuple[int, np.ndarray, bool]]:
        """The ``(case index, centre, from foreground)`` of each sample in batch ``index``.

        Draws from a fresh generator, so it matches what ``__getitem__`` uses.
        """
        return self._draw(np.random.default_rng([self.seed, self.epoch, int(index)]))

    def _draw(self, rng: np.random.Generator) -> list[tuple[int, np.ndarray, bool]]:
        picks = []
        for _ in range(self.batch_size):
            k = int(rng.integers(len(self.cases)))
            case = self.cases[k]
            want_fg = rng.random() < self.foreground_fraction
            if want_fg and len(case.foreground):
                centre = np.asarray(case.foreground[rng.integers(len(case.foreground))],
                                    dtype=np.int64)
                picks.append((k, centre, True))
            else:
                picks.append((k, random_voxel(case.image.shape, rng), False))
        return picks

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.batch_at(self.epoch, index)

    def batch_at(self, epoch: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch ``index`` of ``epoch``: a pure function of ``(seed, epoch, index)``."""
        if not 0 <= index < len(self):
            raise IndexError(f"batch index {index} out of range 0..{len(self) - 1}")
        rng = np.random.default_rng([self.seed, int(epoch), int(index)])
        xs, ys = [], []
        for k, centre, _ in self._draw(rng):
            case = self.cases[k]
            img, lbl = extract_patch(case.image, case.label, centre, self.patch_size,
                                     rng=rng, config=self.augmentation)
            xs.append(img)
            ys.append(encode_target(lbl, self.output_mode))
        x = np.stack(xs).astype(np.float32, copy=False)
        return as_slices(x, self.spatial_dims), as_slices(np.stack(ys), self.spatial_dims)

class ValidationPatchDataset(keras.utils.PyDataset):
    """Fixed, un-augmented validation patches.

    For each case, ``patches_per_case`` centres are drawn once at
    construction: the first is the tumor centroid (if the case has tumor),
    the others alternate a random tumor voxel and a random voxel.

    Args:
        cases: preprocessed cases with labels.
        patch_size: ``(D, H, W)``, or ``(H, W)`` for axial slices.
        batch_size: patches per batch (the last batch may be smaller).
        patches_per_case: centres per case.
        output_mode: ``regions`` or ``labels``.
        seed: seeds the centres.
        **kwargs: passed to ``keras.utils.PyDataset``.
    """

    def __init__(
        self,
        cases: Sequence[PreprocessedCase],
        patch_size: Sequence[int],
        batch_size: int = 2,
        patches_per_case: int = 2,
        output_mode: str = "regions",
        seed: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        check_cases(cases, output_mode)
        self.cases = list(cases)
        self.spatial_dims = len(tuple(patch_size))
        self.patch_size = volume_patch(patch_size)
        self.batch_size = int(batch_size)
        self.output_mode = output_mode
        rng = np.random.default_rng(seed)
        self.centres: list[tuple[int, np.ndarray]] = []
        for k, case in enumerate(self.cases):
            fg = np.asarray(case.foreground)
            for j in range(int(patches_per_case)):
                if len(fg) and j == 0:
                    centre = np.round(fg.mean(axis=0)).astype(np.int64)
                elif len(fg) and j % 2 == 1:
                    centre = fg[rng.integers(len(fg))].astype(np.int64)
                else:
                    centre = random_voxel(case.image.shape, rng)
                self.centres.append((k, centre))

    def __len__(self) -> int:
        return math.ceil(len(self.centres) / self.batch_size)

    def patch(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Patch ``i``: ``x`` float32 ``(D, H, W, C)`` and ``y`` float32 ``(D, H, W, K)``
        (``(H, W, C)`` and ``(H, W, K)`` for slices)."""
        k, centre = self.centres[i]
        case = self.cases[k]
        img, lbl = extract_patch(case.image, case.label, centre, self.patch_size)
        img, target = img[None], encode_target(lbl, self.output_mode)[None]
        return as_slices(img, self.spatial_dims)[0], as_slices(target, self.spatial_dims)[0]

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(f"batch index {index} out of range 0..{len(self) - 1}")
        items = range(index * self.batch_size,
                      min((index + 1) * self.batch_size, len(self.centres)))
        pairs = [self.patch(i) for i in items]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


class EpochSpan(keras.utils.PyDataset):
    """The batches of several epochs of a :class:`BratsPatchDataset`, end to end.

    Batch ``k`` is ``dataset.batch_at(initial_epoch + j // steps, j % steps)`` with
    ``j = k + first_step``,
    a pure function of its position. Pass ``steps_per_epoch`` to ``fit`` and
    Keras keeps one iterator across epochs, so what each epoch trains on does
    not depend on when Keras prefetches, and a resumed run (``initial_epoch``)
    sees exactly the batches an uninterrupted one did.

    The span prefetches with its own ``workers`` threads and presents itself to
    Keras as a single-worker dataset: Keras' threaded enqueuer stops at every
    epoch end and, when the next epoch starts, requests indices from 0 again,
    after whatever batches it happened to have queued. Under CPU load that
    replayed early batches (seen in tests), so Keras must only ever read the
    span in order.

    Args:
        dataset: BratsPatchDataset. Its ``len`` is the steps per epoch.
        initial_epoch: int, default 0. First epoch.
        epochs: int, default 1. One past the last epoch.
        first_step: int, default 0. Steps of ``initial_epoch`` already done (a
            run resumed from a step checkpoint): the span starts at batch
            ``first_step`` of that epoch.
        workers: int, default 1. Threads computing batches ahead (0 or 1:
            none, batches are computed when asked for).
        max_queue_size: int, default 10. Batches computed ahead at most.
        use_multiprocessing: accepted for the PyDataset signature; threads
            are used either way (batches are numpy work that releases the GIL).
    """

    def __init__(self, dataset: BratsPatchDataset, initial_epoch: int = 0, epochs: int = 1,
                 workers: int = 1, max_queue_size: int = 10,
                 use_multiprocessing: bool = False, first_step: int = 0) -> None:
        super().__init__(workers=1, use_multiprocessing=False, max_queue_size=max_queue_size)
        if epochs <= initial_epoch:
            raise ValueError(f"epochs ({epochs}) must exceed initial_epoch ({initial_epoch})")
        if not 0 <= first_step < len(dataset):
            raise ValueError(f"first_step ({first_step}) must lie in 0..{len(dataset) - 1}")
        self.dataset = dataset
        self.initial_epoch = int(initial_epoch)
        self.epochs = int(epochs)
        self.first_step = int(first_step)
        self.prefetch_threads = int(workers) if int(workers) > 1 else 0
        self.ahead = max(1, int(max_queue_size))
        self._pool: ThreadPoolExecutor | None = None
        self._pending: dict[int, Future] = {}

    def __len__(self) -> int:
        return (self.epochs - self.initial_epoch) * len(self.dataset) - self.first_step

    def _compute(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        epoch, index = divmod(int(k) + self.first_step, len(self.dataset))
        return self.dataset.batch_at(self.initial_epoch + epoch, index)

    def __getitem__(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= k < len(self):
            raise IndexError(f"batch {k} out of range 0..{len(self) - 1}")
        if not self.prefetch_threads:
            return self._compute(k)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.prefetch_threads,
                                            thread_name_prefix="EpochSpan")
        for ahead in range(k, min(k + 1 + self.ahead, len(self))):
            if ahead not in self._pending:
                self._pending[ahead] = self._pool.submit(self._compute, ahead)
        for stale in [i for i in self._pending if i < k]:  # out of order: not needed
            self._pending.pop(stale).cancel()
        return self._pending.pop(k).result()

    def close(self, wait: bool = True) -> None:
        """Stops the prefetch threads (also done when the span is garbage collected)."""
        pool, self._pool = getattr(self, "_pool", None), None
        if pool is not None:
            for future in self._pending.values():
                future.cancel()
            self._pending.clear()
            pool.shutdown(wait=wait)

    def __del__(self) -> None:
        self.close(wait=False)
