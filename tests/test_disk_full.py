"""A full disk, for real: the outputs go to a small tmpfs mounted in a private mount
namespace (``unshare``), filled up before the command runs. Each command must stop with
one line naming the file, exit 74, leave the previous files byte for byte and no
temporary file behind."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import pytest

from data_generators.synthetic import write_synthetic_dataset
from tests.conftest import REPO
from unet3d.artifacts.keras_file import save_model
from unet3d.config import ModelConfig, TrainConfig
from unet3d.models.unet import build_unet3d

TINY = ModelConfig(base_filters=2, depth=2, segmentation_levels=1)
SHAPE = (40, 40, 32)

# runs inside the namespace: mount, lay out the disk, fill it, run the command, copy the
# disk's contents out (the mount vanishes with the namespace)
DRIVER = textwrap.dedent("""
    import json, os, shutil, subprocess, sys
    spec = json.loads(sys.argv[1])
    disk = spec["disk"]
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", disk], check=True)
    for source, name in spec["copy"]:
        shutil.copytree(source, os.path.join(disk, name))
    for name in spec["touch"]:  # files the command rewrites in place (a lock) keep a page
        with open(os.path.join(disk, name), "w") as handle:
            handle.write("x")
    stat = os.statvfs(disk)
    with open(os.path.join(disk, "filler"), "wb") as handle:
        handle.write(bytes(stat.f_bavail * stat.f_frsize - spec["free"]))
    proc = subprocess.run(spec["command"], capture_output=True, text=True, cwd=spec["cwd"])
    shutil.copytree(disk, spec["after"], ignore=shutil.ignore_patterns("filler"))
    json.dump({"rc": proc.returncode, "err": proc.stderr}, open(spec["result"], "w"))
""")


def on_full_disk(tmp_path: Path, command: list[str], copy=(), touch=(), free: int = 0):
    """Runs ``command`` with ``<tmp_path>/disk`` a tmpfs with ``free`` bytes left after
    ``copy`` (``(folder, name)`` pairs) is laid on it. Returns (exit code, stderr, a copy
    of the disk afterwards)."""
    disk, after, result = tmp_path / "disk", tmp_path / "after", tmp_path / "result.json"
    disk.mkdir()
    spec = {"disk": str(disk), "copy": [[str(s), n] for s, n in copy], "touch": list(touch),
            "free": free, "command": command, "cwd": str(REPO), "after": str(after),
            "result": str(result)}
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    if shutil.which("unshare") is None:
        pytest.fail("the disk-full tests need unshare (util-linux) to mount a private tmpfs")
    proc = subprocess.run(["unshare", "--mount", "--map-root-user", sys.executable,
                           str(driver), json.dumps(spec)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0 and result.is_file(), (
        f"could not mount a tmpfs in a private namespace: {proc.stderr[-1500:]}")
    values = json.loads(result.read_text())
    return values["rc"], values["err"].strip(), after


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp" in p.name]


def one_line(err: str, *needles: str) -> None:
    """One line of ours; TensorFlow's own C++ log lines (``E0000 00:00:...``) aside."""
    lines = [line for line in err.splitlines() if not re.match(r"[IWEF]\d{4} [\d:.]+ ", line)]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def tiny_config(tmp_path: Path, **values) -> Path:
    """A one-epoch training config of a tiny network, written to ``tmp_path``."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps({
        "model": {"base_filters": 2, "depth": 2, "segmentation_levels": 1}, "epochs": 1,
        "batch_size": 1, "patch_size": [16, 16, 16], "workers": 1, **values}))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("disk_full")
    write_synthetic_dataset(root / "data", n_cases=3, shape=SHAPE, seed=0)
    return root / "data"


@pytest.mark.slow
def test_prediction_on_a_full_disk_keeps_the_previous_outputs(data, tmp_path):
    keras.utils.set_random_seed(0)
    config = TrainConfig(model=TINY, patch_size=(16, 16, 16)).to_dict()
    model = save_model(build_unet3d(TINY), tmp_path / "model.keras", config)
    case = sorted(p for p in data.iterdir() if p.is_dir())[0]
    previous = tmp_path / "previous"
    command = [sys.executable, str(REPO / "predict.py"), "--model", str(model), "--input",
               str(case), "--out"]
    subprocess.run([*command, str(previous)], check=True, capture_output=True, cwd=REPO)
    before = snapshot(previous)
    assert f"{case.name}.nii.gz" in before and f"{case.name}.json" in before

    rc, err, after = on_full_disk(tmp_path, [*command, str(tmp_path / "disk" / "preds"),
                                             "--overwrite"],
                                  copy=[(previous, "preds")], touch=["preds/.lock"])
    assert rc == 74, err[-3000:]
    one_line(err, f"{case.name}.nii.gz: cannot be written (No space left on device)",
             "the previous file is unchanged")
    assert snapshot(after / "preds") == before
    assert not temporaries(after)


@pytest.mark.slow
def test_training_checkpoint_on_a_full_disk_keeps_the_last_one(data, tmp_path):
    cfg = tiny_config(tmp_path, steps_per_epoch=2, val_patches_per_case=1, val_fraction=0.34,
                      seed=0, cache_dir=str(tmp_path / "cache"))
    run = tmp_path / "run"
    train = [sys.executable, str(REPO / "train.py"), "--config", str(cfg), "--data", str(data)]
    done = subprocess.run([*train, "--out", str(run)], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "UNET3D_MEMORY_GB": "16"})
    assert done.returncode == 0, done.stderr[-2000:]
    before = snapshot(run)
    assert "last.keras" in before and "best.keras" in before

    # room for the epoch's log rows and TensorBoard events, not for a model
    rc, err, after = on_full_disk(
        tmp_path, [*train, "--out", str(tmp_path / "disk" / "run"), "--resume", "--epochs", "2"],
        copy=[(run, "run")], touch=["run/.lock"], free=16 * 1024)
    assert rc == 74, err[-3000:]
    one_line(err, ".keras: cannot be written (No space left on device)",
             "the previous file is unchanged")
    for name in ("last.keras", "best.keras", "state.json"):
        assert (after / "run" / name).read_bytes() == before[name], name
    assert not temporaries(after)


@pytest.mark.slow
def test_tensorboard_write_on_a_full_disk_is_one_line(data, tmp_path):
    """The event writer's refused write reaches the main thread: exit 74, one line naming
    the event file; the events, the log and the checkpoints stay byte for byte."""
    cfg = tiny_config(tmp_path, steps_per_epoch=2, val_patches_per_case=1, val_fraction=0.34,
                      seed=0, cache_dir=str(tmp_path / "cache"))
    run = tmp_path / "run"
    train = [sys.executable, str(REPO / "train.py"), "--config", str(cfg), "--data", str(data)]
    done = subprocess.run([*train, "--out", str(run)], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "UNET3D_MEMORY_GB": "16"})
    assert done.returncode == 0, done.stderr[-2000:]
    # only the TensorBoard folder lies on the full disk: the run's own files have room
    events = tmp_path / "events"
    shutil.move(run / "tensorboard", events)
    (run / "tensorboard").symlink_to(tmp_path / "disk" / "tb")
    before, events_before = snapshot(run), snapshot(events)
    assert any("events.out.tfevents" in name for name in events_before)

    rc, err, after = on_full_disk(tmp_path, [*train, "--out", str(run), "--resume",
                                             "--epochs", "2"], copy=[(events, "tb")])
    assert rc == 74, err[-3000:]
    one_line(err, str(run / "tensorboard" / "train" / "events.out.tfevents"),
             "cannot write (No space left on device)")
    assert snapshot(after / "tb") == events_before  # no torn record, no empty new file
    assert snapshot(run) == before  # log.csv, last.keras, state.json: as epoch 1 left them
    assert not temporaries(after) and not temporaries(run)


def test_training_log_row_on_a_full_disk_keeps_the_previous_rows(tmp_path):
    """log.csv's row that the storage refuses: the file keeps its earlier rows whole, no
    torn last line, no temporary file."""
    logs = tmp_path / "logs"
    logs.mkdir()
    script = textwrap.dedent("""
        import sys
        from unet3d.training.summaries import CsvLog
        log = CsvLog(sys.argv[1], append=True)
        log.on_train_begin()
        log.on_epoch_end(2, {"loss": 0.5, "val_dice_mean": 0.25})
    """)
    (logs / "log.csv").write_text("epoch,loss,val_dice_mean\n0,0.75,0.125\n1,0.625,0.1875\n")
    before = snapshot(logs)
    rc, err, after = on_full_disk(tmp_path, [sys.executable, "-c", script,
                                             str(tmp_path / "disk" / "logs" / "log.csv")],
                                  copy=[(logs, "logs")])
    assert rc != 0 and "No space left on device" in err, err[-2000:]
    assert snapshot(after / "logs") == before
    assert not temporaries(after)


@pytest.mark.slow
def test_preprocessing_cache_on_a_full_disk_is_one_line(data, tmp_path):
    cfg = tiny_config(tmp_path, steps_per_epoch=1)
    rc, err, after = on_full_disk(
        tmp_path, [sys.executable, str(REPO / "train.py"), "--config", str(cfg), "--data",
                   str(data), "--out", str(tmp_path / "run"), "--cache-dir",
                   str(tmp_path / "disk" / "cache")])
    assert rc == 74, err[-3000:]
    one_line(err, str(tmp_path / "disk" / "cache"), "No space left on device",
             "the preprocessed cache was not written")
    assert not temporaries(after)
