"""Kill training with SIGKILL mid-epoch, resume it, and get the uninterrupted run's curve."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import REPO
from unet3d.artifacts.keras_file import load_model

CONFIG = {
    "model": {"base_filters": 4, "depth": 3, "dropout": 0.3},
    "epochs": 3, "steps_per_epoch": 6, "batch_size": 2, "patch_size": [32, 32, 32],
    "learning_rate": 0.01, "synthetic_cases": 4, "synthetic_shape": [48, 48, 40],
    "val_patches_per_case": 1, "val_fraction": 0.3, "workers": 1, "seed": 11,
}


def start(tmp_path, out, *extra):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({**CONFIG, "cache_dir": str(tmp_path / "cache")}))
    env = {**os.environ, "TF_DETERMINISTIC_OPS": "1"}
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), "--config", str(cfg),
                             "--out", str(out), *extra], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def rows(run):
    return list(csv.DictReader((run / "log.csv").open()))


def resume_and_compare(run, done, reference, tmp_path):
    """The checkpoint holds ``done`` complete epochs; ``--resume`` then gives the
    uninterrupted run's log, row for row."""
    assert load_model(run / "last.keras", compile=True).optimizer.iterations.numpy() == \
        done * CONFIG["steps_per_epoch"]
    resumed = start(tmp_path, run, "--resume")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-2000:]
    got = rows(run)
    assert [r["epoch"] for r in got] == ["0", "1", "2"]
    for key in ("loss", "val_loss", "dice_wt", "val_dice_mean", "learning_rate"):
        np.testing.assert_allclose([float(r[key]) for r in got],
                                   [float(r[key]) for r in reference], rtol=1e-5, err_msg=key)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run's log rows."""
    tmp = tmp_path_factory.mktemp("reference")
    proc = start(tmp, tmp / "reference")
    assert proc.wait(timeout=600) == 0, proc.stderr.read()[-2000:]
    return rows(tmp / "reference")


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(reference, tmp_path):

    run = tmp_path / "killed"
    state = run / "state.json"
    # killed as soon as epoch 1 is checkpointed: inside epoch 2 (or its checkpoint), however
    # fast the machine, never after the run
    assert kill_after_epoch(tmp_path, run, 1) == -signal.SIGKILL
    # a kill at any moment leaves complete files: the checkpoint loads, the state parses
    done = json.loads(state.read_text())["epoch"]
    assert done in (1, 2)
    resume_and_compare(run, done, reference, tmp_path)
    assert json.loads(state.read_text())["epoch"] == 3

    # TensorBoard: one scalar per epoch, steps 0..2, continuing after the resume
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard" / "train"), size_guidance={"tensors": 0})
    acc.Reload()
    steps = sorted({e.step for e in acc.Tensors("epoch_loss")})
    assert steps == [0, 1, 2]


def kill_after_epoch(tmp_path, run, epoch):
    proc = start(tmp_path, run)
    state = run / "state.json"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if state.is_file() and json.loads(state.read_text())["epoch"] >= epoch:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "training ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    return proc.wait(timeout=60)


@pytest.mark.slow
def test_resume_from_a_damaged_checkpoint_uses_the_previous_one(reference, tmp_path):
    """last.keras torn (a bad copy, a disk fault): --resume names it in one line, keeps it
    aside, and continues from previous.keras, the checkpoint before it, to the same curve."""
    run = tmp_path / "damaged"
    kill_after_epoch(tmp_path, run, 2)
    last, previous = run / "last.keras", run / "previous.keras"
    done = json.loads((run / "state.json").read_text())["epoch"]
    assert done == 2, done  # killed inside epoch 3: previous.keras holds epoch 1
    torn = last.read_bytes()[: last.stat().st_size // 2]
    last.write_bytes(torn)
    assert load_model(previous, compile=True).optimizer.iterations.numpy() == \
        CONFIG["steps_per_epoch"]
    resumed = start(tmp_path, run, "--resume")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-2000:]
    err = resumed.stderr.read()
    lines = [line for line in err.splitlines() if "last.keras" in line]
    assert len(lines) == 1 and str(last) in lines[0] and "Traceback" not in err, err[-2000:]
    assert f"resuming from {previous} (epoch 1)" in lines[0]
    assert (run / "last.damaged.keras").read_bytes() == torn  # kept, not deleted
    got = rows(run)
    assert [r["epoch"] for r in got] == ["0", "1", "2"]
    for key in ("loss", "val_loss", "val_dice_mean"):
        np.testing.assert_allclose([float(r[key]) for r in got],
                                   [float(r[key]) for r in reference], rtol=1e-5, err_msg=key)


@pytest.mark.slow
def test_resume_with_no_loadable_checkpoint_is_one_line(tmp_path):
    run = tmp_path / "broken"
    kill_after_epoch(tmp_path, run, 1)
    for name in ("last.keras", "previous.keras"):
        if (run / name).exists():
            (run / name).write_bytes(b"PK\x03\x04 torn")
    resumed = start(tmp_path, run, "--resume")
    assert resumed.wait(timeout=600) == 2
    err = resumed.stderr.read().strip()
    assert len(err.splitlines()) == 1 and str(run / "last.keras") in err, err[-2000:]
