"""The input of a distributed run (:mod:`unet3d.training.distribute`): this worker's
training batches cut into one slice per local replica, and the fixed validation patches
split over all replicas; ``tf.data`` auto-sharding off."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from unet3d.training.distribute import Distribution


def _no_autoshard(dataset):
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return dataset.with_options(options)


def train_dataset(dataset, dist: Distribution, initial_epoch: int, epochs: int,
                  workers: int = 1):
    """A distributed dataset of the training batches of epochs ``initial_epoch..epochs-1``.

    ``dataset`` is this worker's :class:`~data_generators.dataset.BratsPatchDataset`
    whose ``batch_size`` is the per-worker batch. Batch ``(epoch, index)`` is
    cut into one slice per local replica, in replica order; with one worker
    the replicas together see exactly the single-device batch. Pass
    ``steps_per_epoch`` to ``fit``: the iterator runs across epochs.
    """
    import tensorflow as tf

    steps = len(dataset)
    per_replica = dataset.batch_size // dist.local_replicas
    x0, y0 = dataset[0]
    x_spec = (dataset.batch_size, *x0.shape[1:])
    y_spec = (dataset.batch_size, *y0.shape[1:])

    def load(k):
        x, y = dataset.batch_at(*divmod(int(k), steps))
        return x.astype(np.float32, copy=False), y.astype(np.float32, copy=False)

    def dataset_fn(context):
        def read(k):
            x, y = tf.numpy_function(load, [k], [tf.float32, tf.float32])
            x.set_shape(x_spec)
            y.set_shape(y_spec)
            return x, y

        ds = tf.data.Dataset.range(initial_epoch * steps, epochs * steps)
        ds = ds.map(read, num_parallel_calls=max(1, int(workers)), deterministic=True)
        ds = ds.unbatch().batch(per_replica, drop_remainder=True)
        return _no_autoshard(ds.prefetch(2 * dist.local_replicas))

    return dist.strategy.distribute_datasets_from_function(dataset_fn)


def _validation_slices(n_patches: int, batch_size: int, dist: Distribution) -> Iterator[list]:
    """Patch indices of this worker's replicas, one list per replica and step."""
    for start in range(0, n_patches, batch_size):
        batch = np.arange(start, min(start + batch_size, n_patches))
        pieces = np.array_split(batch, dist.num_replicas)  # trailing ones may be empty
        first = dist.worker_index * dist.local_replicas
        yield from (p.tolist() for p in pieces[first:first + dist.local_replicas])


def validation_dataset(val_data, dist: Distribution):
    """A distributed dataset of the fixed validation patches, and its steps per pass.

    Each global batch of ``val_data.batch_size`` patches is split over all
    replicas (the last one may leave some replicas an empty slice); each
    worker builds only its own slices, and the metrics add up over replicas.
    The dataset repeats: pass the steps as ``validation_steps``.
    """
    import tensorflow as tf

    x0, y0 = val_data.patch(0)
    n_patches = len(val_data.centres)

    def generate():
        for indices in _validation_slices(n_patches, val_data.batch_size, dist):
            if indices:
                pairs = [val_data.patch(i) for i in indices]
                yield (np.stack([p[0] for p in pairs]).astype(np.float32),
                       np.stack([p[1] for p in pairs]).astype(np.float32))
            else:
                yield (np.zeros((0, *x0.shape), np.float32), np.zeros((0, *y0.shape), np.float32))

    signature = (tf.TensorSpec((None, *x0.shape), tf.float32),
                 tf.TensorSpec((None, *y0.shape), tf.float32))

    def dataset_fn(context):
        ds = tf.data.Dataset.from_generator(generate, output_signature=signature)
        return _no_autoshard(ds.repeat().prefetch(2))

    steps = -(-n_patches // val_data.batch_size)
    return dist.strategy.distribute_datasets_from_function(dataset_fn), steps
