"""Atomic writes: old or new content, never torn, with ordinary permissions."""

from __future__ import annotations

import os
import stat

import pytest

from unet3d_base.fileio import atomic_path, atomic_write_text


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_file_gets_the_umask_permissions_not_owner_only(tmp_path):
    previous = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}\n")
        assert _mode(tmp_path / "a.json") == 0o644  # 0o666 & ~0o022, as open() gives
        os.umask(0o027)
        atomic_write_text(tmp_path / "b.json", "{}\n")
        assert _mode(tmp_path / "b.json") == 0o640
    finally:
        os.umask(previous)


def test_replacing_keeps_the_old_permissions_and_failure_keeps_the_old_file(tmp_path):
    path = tmp_path / "seg.nii.gz"
    path.write_bytes(b"old")
    path.chmod(0o604)
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and _mode(path) == 0o604
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer died")
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["seg.nii.gz"]  # no temporary left
