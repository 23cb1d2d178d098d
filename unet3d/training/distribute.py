"""Data-parallel training: ``tf.distribute`` strategies, sharded input, chief-only output.

``train.py --strategy`` picks one of:

* ``default``: no strategy, one device; the training path is unchanged.
* ``mirrored``: :class:`tf.distribute.MirroredStrategy` over all local GPUs
  (or, on a machine without one, all logical CPU devices).
* ``multiworker``: :class:`tf.distribute.MultiWorkerMirroredStrategy` over the
  workers of the standard ``TF_CONFIG`` environment variable.

``batch_size`` is the *global* batch: each of the ``N`` replicas gets
``batch_size / N`` patches per step, the loss is averaged over the global
batch (Keras scales each replica's loss by ``1 / N`` and the gradients are
summed), and the Dice metrics sum their totals and counts over all replicas.
The learning rate applies to the global batch as it is.

Each worker samples patches from its own share of the training cases
(``cases[worker::num_workers]``) and builds only its own replicas' patches;
``tf.data`` auto-sharding is off. With one worker the stream of global
batches is exactly the single-device one, so ``mirrored`` trains the same
weights as ``default`` (up to float summation order).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras

from unet3d.config import STRATEGIES
from unet3d.keras_compat import build_for_strategy, set_model_strategy
from unet3d_base.errors import InputError


@dataclass
class Distribution:
    """The strategy of a run and this process's place in it.

    Attributes:
        name: ``default``, ``mirrored`` or ``multiworker``.
        strategy: the ``tf.distribute.Strategy``, or None for ``default``.
        num_replicas: replicas in sync over all workers.
        num_workers: worker processes (1 unless ``multiworker``).
        worker_index: this worker's index among them (0-based).
        is_chief: whether this process writes checkpoints and logs.
    """

    name: str = "default"
    strategy: Any = None
    num_replicas: int = 1
    num_workers: int = 1
    worker_index: int = 0
    is_chief: bool = True
    devices: tuple[str, ...] = ()  # JAX: the devices keras.distribution spreads over

    @property
    def distributed(self) -> bool:
        return self.strategy is not None

    @property
    def local_replicas(self) -> int:
        return self.num_replicas // self.num_workers

    def scope(self):
        """``strategy.scope()``, or a no-op for ``default``."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def describe(self) -> str:
        if self.devices:
            return (f"strategy {self.name}: keras.distribution.DataParallel over "
                    + ", ".join(self.devices))
        if not self.distributed:
            return "strategy default: one device"
        text = f"strategy {self.name}: {self.num_replicas} replica(s)"
        if self.name == "multiworker":
            role = "chief" if self.is_chief else "non-chief"
            text += f" on {self.num_workers} worker(s); this is worker {self.worker_index} ({role})"
        else:
            text += " on " + ", ".join(self.strategy.extended.worker_devices)
        return text


def read_tf_config(environ=None) -> dict[str, Any]:
    """The parsed ``TF_CONFIG``; an InputError if it is missing or malformed."""
    environ = os.environ if environ is None else environ
    text = environ.get("TF_CONFIG", "").strip()
    if not text:
        raise InputError(
            "--strategy multiworker needs the TF_CONFIG environment variable, e.g. "
            '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            '"task": {"type": "worker", "index": 0}}'
        )
    try:
        tf_config = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"TF_CONFIG is not valid JSON ({err.msg})") from None
    cluster = tf_config.get("cluster") if isinstance(tf_config, dict) else None
    task = tf_config.get("task") if isinstance(tf_config, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise InputError('TF_CONFIG needs a "cluster" mapping and a "task" mapping')
    task_type, index = task.get("type"), task.get("index", 0)
    if task_type not in cluster or not isinstance(index, int) \
            or not 0 <= index < len(cluster[task_type]):
        raise InputError(f"TF_CONFIG: task {task} is not in the cluster {cluster}")
    return tf_config


def is_chief(task_type: str | None, task_index: int | None, cluster: dict | None) -> bool:
    """The chief writes: task type ``chief``, else ``worker`` 0 when there is no chief."""
    if task_type is None or task_type == "chief":
        return True
    return task_type == "worker" and (task_index or 0) == 0 and "chief" not in (cluster or {})


def _local_devices() -> list[str]:
    import tensorflow as tf

    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return [d.name for d in devices]


def make_distribution(name: str = "default") -> Distribution:
    """Creates the strategy ``name``; call it before TensorFlow runs any op.

    Raises:
        InputError: unknown name, or ``multiworker`` without a usable ``TF_CONFIG``.
    """
    if name not in STRATEGIES:
        raise InputError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")
    if name == "default":
        return Distribution()
    backend = keras.backend.backend()
    if backend == "jax" and name == "mirrored":  # keras.distribution shards each batch
        devices = keras.distribution.list_devices()
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        return Distribution(name, None, len(devices), devices=tuple(devices))
    if backend != "tensorflow":
        hint = "; on JAX, --strategy mirrored uses keras.distribution" if backend == "jax" else ""
        raise InputError(f"--strategy {name} uses tf.distribute and needs the TensorFlow "
                         f"backend (this is KERAS_BACKEND={backend}){hint}")
    import tensorflow as tf

    if name == "mirrored":
        strategy = tf.distribute.MirroredStrategy(devices=_local_devices())
        return Distribution(name, strategy, int(strategy.num_replicas_in_sync))

    tf_config = read_tf_config()
    cluster = tf_config["cluster"]
    task_type, task_index = tf_config["task"]["type"], int(tf_config["task"].get("index", 0))
    # NCCL needs GPUs; ring all-reduce (gRPC) works everywhere
    implementation = (tf.distribute.experimental.CommunicationImplementation.AUTO
                      if tf.config.list_physical_devices("GPU")
                      else tf.distribute.experimental.CommunicationImplementation.RING)
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy(
            communication_options=tf.distribute.experimental.CommunicationOptions(
                implementation=implementation))
    except RuntimeError as err:  # e.g. TensorFlow already initialised
        raise InputError(f"--strategy multiworker: cannot start ({err})") from None
    workers = [t for t in ("chief", "worker") if t in cluster]
    num_workers = sum(len(cluster[t]) for t in workers)
    # the chief counts as worker 0 when there is one
    worker_index = task_index + (len(cluster.get("chief", [])) if task_type == "worker" else 0)
    return Distribution(name, strategy, int(strategy.num_replicas_in_sync), num_workers,
                        worker_index, is_chief(task_type, task_index, cluster))


def check_batch_size(batch_size: int, dist: Distribution) -> None:
    """The global batch must split evenly over the replicas."""
    if batch_size % dist.num_replicas:
        raise InputError(f"--batch-size {batch_size} is not divisible by the "
                         f"{dist.num_replicas} replicas")


def worker_cases(cases: Sequence, dist: Distribution) -> list:
    """This worker's share of the training cases: ``cases[worker::num_workers]``."""
    if dist.num_workers == 1:
        return list(cases)
    if len(cases) < dist.num_workers:
        raise InputError(f"{len(cases)} training cases cannot be shared by "
                         f"{dist.num_workers} workers; each needs at least one")
    return list(cases)[dist.worker_index::dist.num_workers]


def worker_seed(seed: int, dist: Distribution) -> int:
    """The patch-sampling seed of this worker (the run's seed on a single worker)."""
    return int(seed) if dist.num_workers == 1 else int(seed) + 1_000_003 * dist.worker_index


@contextlib.contextmanager
def output_dir(run_dir: Path, dist: Distribution) -> Iterator[Path]:
    """Where this process writes checkpoints and logs.

    The chief writes to ``run_dir``. Other workers must still save (saving
    reads synchronised variables, a collective every worker joins), so they
    write to a temporary folder that is removed afterwards.
    """
    if dist.is_chief:
        yield Path(run_dir)
        return
    tmp = Path(tempfile.mkdtemp(prefix=f"unet3d-worker{dist.worker_index}-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _vector_logs(step):
    """``step`` with its scalar outputs as shape ``(1,)`` (see :func:`fit_context`)."""

    def wrapped(data):
        logs = step(data)
        return keras.tree.map_structure(
            lambda v: keras.ops.reshape(v, (1,)) if len(keras.ops.shape(v)) == 0 else v, logs)

    return wrapped


@contextlib.contextmanager
def fit_context(model, dist: Distribution, sample) -> Iterator[None]:
    """Where ``model.fit`` runs; works around two Keras 3 multi-worker bugs.

    Keras 3.15's TF trainer breaks under a multi-worker
    ``MultiWorkerMirroredStrategy`` (tensorflow/tensorflow#72388):

    * ``fit`` starts by reducing the first distributed batch, a nested
      ``(x, y)`` of per-replica values, with ``strategy.reduce``, which this
      strategy refuses ("Attempt to convert a value (PerReplica...)"). So the
      metric, loss and optimizer state is built here, in the scope, from the
      example batch ``sample``, and ``fit`` runs in the scope with the
      model's own strategy unset, which skips that step.
    * each step's logs are reduced with ``strategy.reduce("MEAN", v, axis=0)``,
      which fails on scalars ("Invalid reduction dimension 0"). So the train
      and test steps return their scalar logs with shape ``(1,)``; the
      reduction averages them over the workers. The epoch logs that callbacks
      see come from the metrics' variables, summed over all replicas.

    Other strategies need none of this.
    """
    if dist.name != "multiworker":
        yield
        return
    with dist.strategy.scope():
        build_for_strategy(model, sample)
        set_model_strategy(model, None)
        model.train_step = _vector_logs(type(model).train_step.__get__(model))
        model.test_step = _vector_logs(type(model).test_step.__get__(model))
        try:
            yield
        finally:
            del model.train_step, model.test_step
            set_model_strategy(model, dist.strategy)
