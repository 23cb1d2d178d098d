"""A folder of 50 cases: memory stays flat from case to case, and a batch killed midway
continues where it stopped when run again, with nothing lost or half-written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import nibabel as nib
import numpy as np
import pytest

from data_generators.synthetic import write_synthetic_dataset
from tests.conftest import REPO
from unet3d.artifacts.keras_file import save_model
from unet3d.config import ModelConfig, TrainConfig
from unet3d.models.unet import build_unet3d

N_CASES = 50
SHAPES = [(96, 96, 80), (88, 104, 72), (104, 88, 64)]  # three sizes, cycled


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> tuple[Path, Path]:
    """50 case folders (links to three synthetic cases of different sizes) and a model."""
    root = tmp_path_factory.mktemp("batch")
    sources = []
    for index, shape in enumerate(SHAPES):
        sources += write_synthetic_dataset(root / f"source{index}", n_cases=1, shape=shape,
                                           seed=index)
    data = root / "data"
    for index in range(N_CASES):
        case = data / f"Case_{index:02d}"
        case.mkdir(parents=True)
        for path in sources[index % len(sources)].iterdir():
            if not path.name.endswith("_seg.nii.gz"):
                (case / path.name).symlink_to(path)
    keras.utils.set_random_seed(0)
    model_config = ModelConfig(base_filters=4, depth=3)
    model = save_model(build_unet3d(model_config), root / "model.keras",
                       TrainConfig(model=model_config, patch_size=(32, 32, 32)).to_dict())
    return data, model


def start(batch, out: Path) -> subprocess.Popen:
    data, model = batch
    return subprocess.Popen([sys.executable, str(REPO / "predict.py"), "--model", str(model),
                             "--input", str(data), "--out", str(out)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def rss_mb(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    line = next((x for x in status.splitlines() if x.startswith("VmRSS:")), None)
    return int(line.split()[1]) / 1024 if line else None


def done(out: Path) -> int:
    return len(list(out.glob("Case_*.json")))


def labels(out: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(nib.load(p).dataobj) for p in sorted(out.glob("Case_*.nii.gz"))}


@pytest.fixture(scope="module")
def uninterrupted(batch, tmp_path_factory):
    """The whole batch in one go, its resident memory sampled after each finished case."""
    out = tmp_path_factory.mktemp("whole") / "preds"
    proc = start(batch, out)
    memory: dict[int, float] = {}
    while proc.poll() is None:
        value = rss_mb(proc.pid)
        if value is not None:
            memory[done(out)] = max(memory.get(done(out), 0.0), value)
        time.sleep(0.05)
    assert proc.returncode == 0, proc.stderr.read()[-2000:]
    return out, memory


@pytest.mark.slow
def test_memory_stays_flat_over_fifty_cases(uninterrupted):
    """Each case's volumes are ~12 MB of float32 input alone: keeping them (or their
    predictions) would add hundreds of MB over 40 cases."""
    _, memory = uninterrupted
    early = max(value for count, value in memory.items() if 5 <= count <= 10)
    late = max(value for count, value in memory.items() if count >= 40)
    print(f"resident memory: {early:.0f} MB by case 10, {late:.0f} MB by case 50")
    assert late - early < 100, (early, late)


@pytest.mark.slow
def test_killed_batch_continues_where_it_stopped(batch, uninterrupted, tmp_path):
    reference, _ = uninterrupted
    out = tmp_path / "preds"
    proc = start(batch, out)
    deadline = time.time() + 600
    while proc.poll() is None and done(out) < 20 and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the batch ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    finished = done(out)
    assert 20 <= finished < N_CASES
    stale = out / ".Case_49.nii.gz.k1ll3d.tmp.nii.gz"  # what a kill inside a write leaves
    stale.write_bytes(b"\x1f\x8b torn")

    again = start(batch, out)
    stdout, stderr = again.communicate(timeout=600)
    assert again.returncode == 0, stderr[-2000:]
    assert f"{N_CASES - finished} segmented, {finished} already done" in stdout
    assert not stale.exists() and not [p for p in out.iterdir() if ".tmp" in p.name]
    got, expected = labels(out), labels(reference)
    assert sorted(got) == sorted(expected) and len(got) == N_CASES
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    for report in out.glob("Case_*.json"):
        assert json.loads(report.read_text())["case_id"] == report.stem
