"""Step-level preemption: a signal at any step keeps that step; ``--resume`` continues from
it and reproduces the uninterrupted run step by step (running loss of every step, epoch
rows of log.csv, final weights). ``--checkpoint-every`` covers SIGKILL."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import REPO
from unet3d.artifacts.keras_file import load_model

STEPS, EPOCHS = 6, 3
CONFIG = {
    "model": {"base_filters": 4, "depth": 3, "dropout": 0.3},
    "epochs": EPOCHS, "steps_per_epoch": STEPS, "batch_size": 2, "patch_size": [32, 32, 32],
    "learning_rate": 0.01, "synthetic_cases": 4, "synthetic_shape": [48, 48, 40],
    "val_patches_per_case": 1, "val_fraction": 0.3, "workers": 1, "seed": 11,
}
WORKER = REPO / "tests" / "preempt_worker.py"
# a random step strictly inside an epoch (neither its first nor its last), drawn per session
# and named in the test id
RANDOM_STEP = random.choice([k for k in range(2, STEPS * EPOCHS) if k % STEPS not in (0, 1)])


def launch(tmp_path, run, record, *extra, at=0, signame="TERM", config=None):
    cfg = tmp_path / "config.json"
    values = {k: v for k, v in {**CONFIG, **(config or {})}.items() if v is not None}
    cfg.write_text(json.dumps({**values, "cache_dir": str(tmp_path.parent / "cache")}))
    env = {**os.environ, "TF_DETERMINISTIC_OPS": "1", "RECORD": str(record),
           "SIGNAL_AT_STEP": str(at), "SIGNAL": signame}
    args = ["--out", str(run), "--resume"] if "--resume" in extra else \
        ["--config", str(cfg), "--out", str(run), *extra]
    return subprocess.Popen([sys.executable, str(WORKER), *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def steps_of(record):
    """``{global step: running loss}`` of every step a process recorded."""
    return {step: loss for step, loss in (json.loads(line) for line in record.open())}


def rows(run):
    return list(csv.DictReader((run / "log.csv").open()))


def weights(path):
    return [np.asarray(w) for w in load_model(path).get_weights()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run: every step's running loss, the log rows, the last weights."""
    tmp = tmp_path_factory.mktemp("reference")
    record = tmp / "steps.jsonl"
    proc = launch(tmp, tmp / "run", record)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()[-2000:]
    losses = steps_of(record)
    assert sorted(losses) == list(range(1, STEPS * EPOCHS + 1))
    return {"losses": losses, "rows": rows(tmp / "run"), "weights": weights(tmp / "run" /
                                                                            "last.keras")}


def resume_matches(tmp_path, run, before, reference, first_resumed):
    """Resumes ``run``; the steps recorded before (``before``) and after, together, are the
    reference's, the resumed process starting at step ``first_resumed``."""
    record = tmp_path / "resumed.jsonl"
    proc = launch(tmp_path, run, record, "--resume")
    assert proc.wait(timeout=600) == 0, proc.stderr.read()[-2000:]
    after = steps_of(record)
    assert min(after) == first_resumed, sorted(after)
    merged = {**{k: v for k, v in before.items() if k < first_resumed}, **after}
    assert sorted(merged) == sorted(reference["losses"])
    np.testing.assert_allclose([merged[k] for k in sorted(merged)],
                               [reference["losses"][k] for k in sorted(merged)], rtol=1e-6)
    got = rows(run)
    assert [r["epoch"] for r in got] == [str(e) for e in range(EPOCHS)]
    for key in ("loss", "val_loss", "dice_wt", "val_dice_mean", "learning_rate"):
        np.testing.assert_allclose([float(r[key]) for r in got],
                                   [float(r[key]) for r in reference["rows"]], rtol=1e-6,
                                   err_msg=key)
    for mine, theirs in zip(weights(run / "last.keras"), reference["weights"], strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-6)
    assert not (run / "step.keras").exists()  # the finished run keeps epoch checkpoints only


@pytest.mark.slow
@pytest.mark.parametrize(("at", "signame"),
                         [(1, "TERM"), (STEPS + 1, "INT"), (2 * STEPS, "TERM"),
                          (RANDOM_STEP, "TERM")],
                         ids=["first_step", "first_step_of_epoch_2_ctrl_c",
                              "last_step_of_epoch_2", f"random_step_{RANDOM_STEP}"])
def test_signal_at_a_step_keeps_it_and_resume_matches(at, signame, reference, tmp_path):
    """A preemption (SIGTERM) or Ctrl-C (SIGINT) as step ``at`` starts: that step finishes,
    one line says how to resume, exit 128 + signal within 30 s, nothing after it runs."""
    run, record = tmp_path / "run", tmp_path / "stopped.jsonl"
    signum = getattr(signal, f"SIG{signame}")
    proc = launch(tmp_path, run, record, at=at, signame=signame)
    # the worker signals itself as step `at` starts; the clock starts at the record of the
    # step before (within a step of the signal)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and \
            (not record.is_file() or max(steps_of(record), default=0) < at - 1):
        time.sleep(0.01)
    sent = time.time()
    assert proc.wait(timeout=120) == 128 + signum, proc.stderr.read()[-2000:]
    assert time.time() - sent < 30
    err = proc.stderr.read()
    assert "Traceback" not in err
    message = [line for line in err.splitlines() if line.startswith("train.py:")]
    assert len(message) == 1 and f"--out {run} --resume" in message[0], err[-2000:]
    before = steps_of(record)
    assert max(before) == at  # the step in flight finished and nothing after it ran
    epoch, step = divmod(at, STEPS)
    state = json.loads((run / "state.json").read_text())
    if step:  # inside an epoch: a step checkpoint holds exactly the steps done
        assert f"at step {step} of epoch {epoch + 1}" in message[0]
        assert (state["epoch"], state["step"]) == (epoch, step)
        assert load_model(run / "step.keras", compile=True).optimizer.iterations.numpy() == at
    else:  # an epoch's last step: the epoch ends (validation, checkpoint), then the stop
        assert f"last.keras holds epoch {epoch}" in message[0]
        assert state["epoch"] == epoch and "step" not in state
        assert not (run / "step.keras").exists()
    resume_matches(tmp_path, run, before, reference, at + 1)


@pytest.mark.slow
def test_sigkill_loses_at_most_checkpoint_every_steps(reference, tmp_path):
    """SIGKILL cannot be caught: --checkpoint-every 4 bounds the loss to the steps since
    the last multiple of 4 (step 11 killed: the run resumes at step 9)."""
    run, record = tmp_path / "run", tmp_path / "killed.jsonl"
    proc = launch(tmp_path, run, record, "--checkpoint-every", "4", at=11, signame="KILL")
    assert proc.wait(timeout=600) == -signal.SIGKILL
    state = json.loads((run / "state.json").read_text())
    assert (state["epoch"], state["step"]) == (1, 2)  # step 8 = epoch 2, step 2
    resume_matches(tmp_path, run, steps_of(record), reference, 9)


@pytest.mark.slow
def test_damaged_step_checkpoint_falls_back_to_the_epoch(reference, tmp_path):
    """A torn step.keras: one line names it, it is kept aside, and the run repeats its
    epoch from last.keras, to the same curve."""
    run, record = tmp_path / "run", tmp_path / "stopped.jsonl"
    proc = launch(tmp_path, run, record, at=STEPS + 3)
    assert proc.wait(timeout=600) == 128 + signal.SIGTERM
    step = run / "step.keras"
    torn = step.read_bytes()[: step.stat().st_size // 2]
    step.write_bytes(torn)
    resumed = tmp_path / "resumed.jsonl"
    proc = launch(tmp_path, run, resumed, "--resume")
    assert proc.wait(timeout=600) == 0
    err = proc.stderr.read()
    lines = [line for line in err.splitlines() if "step.keras" in line]
    assert len(lines) == 1 and "last complete epoch" in lines[0] and "Traceback" not in err
    assert (run / "step.damaged.keras").read_bytes() == torn
    assert min(steps_of(resumed)) == STEPS + 1  # epoch 2 again, from its first step
    for k, loss in steps_of(resumed).items():
        np.testing.assert_allclose(loss, reference["losses"][k], rtol=1e-6)


@pytest.mark.slow
def test_sigterm_while_the_encoder_is_frozen_resumes_to_the_same_curve(tmp_path):
    """Fine-tuning the shipped model with its encoder frozen for the first epoch: a step
    checkpoint taken then holds the optimizer state of every variable, loads whole, and the
    resumed run's steps equal the uninterrupted run's."""
    shipped = REPO / "models" / "brats_unet3d_b8_128_all23.keras"
    from unet3d.artifacts.keras_file import read_model_config

    config = {"init_from": str(shipped), "freeze_encoder_epochs": 1, "epochs": 2,
              "steps_per_epoch": 4, "patch_size": [32, 32, 32], "learning_rate": 0.001,
              "model": read_model_config(shipped)["model"]}  # the shipped architecture
    ref_dir, ref_record = tmp_path / "ref", tmp_path / "ref.jsonl"
    (ref_dir).mkdir()
    proc = launch(ref_dir, ref_dir / "run", ref_record, config=config)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()[-2000:]
    reference = steps_of(ref_record)
    assert sorted(reference) == list(range(1, 9))

    run, record = tmp_path / "run", tmp_path / "stopped.jsonl"
    proc = launch(tmp_path, run, record, at=2, config=config)  # inside the frozen epoch
    assert proc.wait(timeout=600) == 128 + signal.SIGTERM, proc.stderr.read()[-2000:]
    resumed = tmp_path / "resumed.jsonl"
    proc = launch(tmp_path, run, resumed, "--resume")
    assert proc.wait(timeout=600) == 0
    err = proc.stderr.read()
    assert "optimizer" not in err.lower() or "skipping" not in err.lower(), err[-2000:]
    merged = {**steps_of(record), **steps_of(resumed)}
    assert sorted(merged) == sorted(reference) and min(steps_of(resumed)) == 3
    np.testing.assert_allclose([merged[k] for k in sorted(merged)],
                               [reference[k] for k in sorted(reference)], rtol=1e-6)
