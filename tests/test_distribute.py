"""Data-parallel training: strategy options, sharding, mirrored == single device, multi-worker.

The training tests run TensorFlow in subprocesses (``tests/distribute_worker.py``):
logical CPU devices and multi-worker collectives must be set up before
TensorFlow starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

import unet3d.cli.train as train_cli
from tests.conftest import REPO
from unet3d.config import TrainConfig
from unet3d.training.distribute import (
    Distribution,
    check_batch_size,
    is_chief,
    read_tf_config,
    worker_cases,
)
from unet3d.training.distribute_data import _validation_slices
from unet3d_base.errors import InputError

SCRIPT = REPO / "tests" / "distribute_worker.py"


# ---- options and bookkeeping (no TensorFlow) ------------------------------------
def test_strategy_option_and_validation():
    assert TrainConfig().strategy == "default"
    config = train_cli.build_config(train_cli.parse_args(["--strategy", "mirrored"]))
    assert config.strategy == "mirrored"
    with pytest.raises(InputError, match="strategy must be one of"):
        TrainConfig(strategy="horovod")
    with pytest.raises(SystemExit):
        train_cli.parse_args(["--strategy", "horovod"])


def test_global_batch_must_split_over_replicas():
    check_batch_size(4, Distribution(num_replicas=2))
    with pytest.raises(InputError, match=r"^--batch-size 3 is not divisible by the 2 replicas$"):
        check_batch_size(3, Distribution(num_replicas=2))


def test_tf_config_and_chief():
    with pytest.raises(InputError, match="needs the TF_CONFIG"):
        read_tf_config({})
    with pytest.raises(InputError, match="not valid JSON"):
        read_tf_config({"TF_CONFIG": "{nope"})
    with pytest.raises(InputError, match="not in the cluster"):
        read_tf_config({"TF_CONFIG": json.dumps(
            {"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}})})
    workers = {"worker": ["a:1", "b:1"]}
    assert is_chief("worker", 0, workers) and not is_chief("worker", 1, workers)
    with_chief = {"chief": ["c:1"], **workers}
    assert is_chief("chief", 0, with_chief) and not is_chief("worker", 0, with_chief)
    assert is_chief(None, None, None)


def test_cases_and_validation_patches_are_shared_out():
    cases = list("abcde")
    one = Distribution(num_replicas=2)
    assert worker_cases(cases, one) == cases
    shards = [worker_cases(cases, Distribution("multiworker", None, 2, 2, w)) for w in (0, 1)]
    assert shards == [["a", "c", "e"], ["b", "d"]]
    with pytest.raises(InputError, match="cannot be shared by 3 workers"):
        worker_cases(["a", "b"], Distribution("multiworker", None, 3, 3, 0))
    # 7 patches in global batches of 4 over 2 replicas: every patch once, in order
    slices = list(_validation_slices(7, 4, one))
    assert slices == [[0, 1], [2, 3], [4, 5], [6]]
    per_worker = [list(_validation_slices(7, 4, Distribution("multiworker", None, 2, 2, w)))
                  for w in (0, 1)]
    assert per_worker == [[[0, 1], [4, 5]], [[2, 3], [6]]]  # same number of steps each


# ---- training in subprocesses ------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A synthetic dataset and its preprocessed cache, built before any worker starts."""
    from data_generators.cache import PreprocessedCache
    from data_generators.io import find_cases
    from data_generators.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("distribute")
    data, cache_root = root / "data", root / "cache"
    write_synthetic_dataset(data, n_cases=5, shape=(40, 40, 32), seed=1)
    digest = hashlib.sha1(str(data.resolve()).encode()).hexdigest()[:10]  # as in train()
    cache = PreprocessedCache(cache_root / "preprocessed" / f"{data.name}-{digest}")
    for case in find_cases(data, require_label=True):
        cache.get(case)
    return root, data, cache_root


def _env(**extra):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO), **extra}
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _summary(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_mirrored_matches_single_device(tiny_data):
    root, data, cache = tiny_data
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "compare", "--data", str(data), "--cache", str(cache),
         "--out", str(root / "compare")],
        capture_output=True, text=True, timeout=300, env=_env(), cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = _summary(proc.stdout)
    assert result["replicas"] == 2
    # training moved the weights, and both runs moved them the same way
    assert result["max_update"] > 1e-2
    assert result["max_abs_diff"] < 1e-4 * max(1.0, result["max_abs_weight"]), result
    # Dice metrics and loss are over the global batch: the same numbers on 1 or 2 replicas
    single, mirrored = result["single_history"], result["mirrored_history"]
    for key in ("loss", "dice_wt", "dice_mean", "val_loss", "val_dice_wt", "val_dice_mean"):
        np.testing.assert_allclose(mirrored[key], single[key], atol=2e-3, err_msg=key)


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.mark.slow
def test_multiworker_two_processes(tiny_data):
    root, data, cache = tiny_data
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in (0, 1):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        out = root / f"worker{index}"
        procs.append(subprocess.Popen(
            [sys.executable, str(SCRIPT), "worker", "--data", str(data), "--cache", str(cache),
             "--out", str(out), "--weights", str(root / f"weights{index}.npz"),
             "--epochs", "2"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
            env=_env(TF_CONFIG=tf_config)))
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=300))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for proc, (_, stderr) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, stderr[-3000:]
    chief, other = (_summary(stdout) for stdout, _ in outputs)
    assert chief["is_chief"] and not other["is_chief"]
    assert chief["replicas"] == other["replicas"] == 2
    # only the chief wrote a run directory
    run = root / "worker0"
    for name in ("best.keras", "last.keras", "state.json", "config.json", "log.csv",
                 "validation.json"):
        assert (run / name).is_file(), name
    assert json.loads((run / "state.json").read_text())["epoch"] == 2
    assert not (root / "worker1").exists()
    assert set(chief["val_dice"]) == {"WT", "TC", "ET", "mean"} and other["val_dice"] == {}
    # the same epoch logs (metrics reduced over all replicas) and the same weights
    assert chief["history"] == pytest.approx(other["history"])
    w0, w1 = np.load(root / "weights0.npz"), np.load(root / "weights1.npz")
    assert len(w0.files) == len(w1.files) > 0
    diff = max(float(np.max(np.abs(w0[k] - w1[k]))) for k in w0.files)
    print(f"multi-worker max weight difference between workers: {diff:.3g}")
    assert diff < 1e-6
