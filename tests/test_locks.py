"""One process at a time per training --out or prediction output folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

import unet3d.cli.predict as predict_cli
import unet3d.cli.train as train_cli
from unet3d_base.errors import InputError
from unet3d_base.fileio import exclusive_lock

HOLD = """
import sys, time
from unet3d_base.fileio import exclusive_lock
with exclusive_lock(sys.argv[1], "--out"):
    print("held", flush=True)
    time.sleep(600)
"""


def _holder(folder):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_holder_is_refused_naming_the_first_and_a_killed_holder_is_taken_over(tmp_path):
    proc = _holder(tmp_path)
    try:
        with pytest.raises(InputError, match=rf"in use by process {proc.pid} on "):
            with exclusive_lock(tmp_path, "--out"):
                pass
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # dies holding it: the lock file stays behind
        proc.wait(timeout=30)
    assert (tmp_path / ".lock").read_text().startswith(f"process {proc.pid} ")
    with exclusive_lock(tmp_path, "--out") as path:  # taken over
        assert path.read_text().startswith(f"process {os.getpid()} ")
    assert not (tmp_path / ".lock").exists()  # released and removed


@pytest.mark.parametrize("cli", ["train", "predict"])
def test_clis_exit_2_naming_the_holder(cli, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("UNET3D_MEMORY_GB", "64")  # the lock, not this machine's free memory
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("the user's")
    case = tmp_path / "Case_1"
    case.mkdir()
    proc = _holder(out)
    try:
        if cli == "train":  # a resume of a run another process is still writing
            (out / "last.keras").write_text("x")
            (out / "config.json").write_text(json.dumps({"out": str(out)}))
            code = train_cli.main(["--out", str(out), "--resume"])
        else:
            code = predict_cli.main(["--input", str(case), "--out", str(out)])
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and f"in use by process {proc.pid}" in err[0] and str(out) in err[0]
    assert (out / "keep.txt").read_text() == "the user's"
