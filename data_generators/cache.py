"""The on-disk cache of preprocessed cases (:mod:`data_generators.preprocessing`).

The cache stores, per case, uncompressed ``.npy`` arrays that are opened as
read-only memory maps, so patch sampling reads only the voxels it needs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data_generators.geometry import load_case_for_model
from data_generators.io import CaseFiles
from data_generators.labels import resolve_convention
from data_generators.normalization import (
    NORMALIZATIONS,
    effective_normalization,
    normalization_settings,
)
from data_generators.preprocessing import PreprocessedCase, foreground_coords, preprocess_case
from unet3d_base.errors import InputError, OutputError
from unet3d_base.fileio import storage_error

PREPROCESSING_VERSION = 2  # 2: cases brought to the model space (data_generators.geometry)


def _fingerprint(case: CaseFiles, label_convention: str,
                 normalization: str = "zscore") -> dict[str, Any]:
    files = [*case.images] + ([case.label] if case.label is not None else [])
    entries = []
    for path in files:
        stat = Path(path).stat()
        entries.append([str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns])
    fingerprint = {
        "version": PREPROCESSING_VERSION,
        "label_convention": resolve_convention(label_convention),
        "files": entries,
        "has_label": case.label is not None,
    }
    if normalization != "zscore":  # the z-score caches of earlier versions stay valid
        fingerprint["normalization"] = {"method": normalization,
                                         **normalization_settings(normalization)}
    # an LGG patient's files are the same whichever channels are read: name them
    channels = getattr(case, "modalities", None)
    if channels is not None:
        fingerprint["channels"] = list(channels)
    return fingerprint


def file_digest(path: Path, chunk: int = 1 << 24) -> dict[str, int]:
    """``{"bytes": size, "crc32": checksum}`` of a file, read in chunks."""
    crc = 0
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            crc = zlib.crc32(block, crc)
    return {"bytes": path.stat().st_size, "crc32": crc}


class PreprocessedCache:
    """Preprocessed cases stored as ``root/<case_id>/{image,label,foreground}.npy``.

    A case is rebuilt when its ``properties.json`` fingerprint (source paths,
    sizes, mtimes, label convention, ``PREPROCESSING_VERSION``) no longer
    matches. Each case folder is written into a temporary folder and renamed
    into place, so an interrupted build never leaves a partial case. The size
    and CRC-32 of every array file are recorded beside it and checked when the
    case is opened: a truncated or corrupted file (a crash, a full disk, a bad
    copy) is rebuilt from the sources, never read.

    Args:
        root: cache folder (created when needed).
        log: optional callable receiving progress messages.
        normalization: one of :data:`NORMALIZATIONS`, default ``zscore``.
    """

    def __init__(self, root: str | Path, log: Callable[[str], None] | None = None,
                 normalization: str = "zscore") -> None:
        if normalization not in NORMALIZATIONS:
            raise InputError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, "
                             f"got {normalization!r}")
        self.root = Path(root)
        self.log = log
        self.normalization = normalization
        self.builds = 0  # cases (re)built by this object

    def case_dir(self, case_id: str) -> Path:
        return self.root / case_id

    def get(self, case: CaseFiles, label_convention: str = "brats2017") -> PreprocessedCase:
        """Returns the cached case, building it first when missing or stale.

        Args:
            case: the source files.
            label_convention: convention of the label file.

        Returns:
            The case with memory-mapped, read-only arrays.
        """
        fingerprint = _fingerprint(case, label_convention, self.normalization)
        cached = self._open(case.case_id, fingerprint)
        if cached is not None:
            return cached
        self._build(case, label_convention, fingerprint)
        cached = self._open(case.case_id, fingerprint)
        if cached is None:  # pragma: no cover - only if the folder vanished meanwhile
            raise RuntimeError(f"{self.case_dir(case.case_id)}: cache build failed")
        return cached

    def get_many(
        self, cases: Sequence[CaseFiles], label_convention: str = "brats2017"
    ) -> list[PreprocessedCase]:
        """:meth:`get` for each case, in order."""
        return [self.get(case, label_convention) for case in cases]

    def _open(self, case_id: str, fingerprint: dict[str, Any]) -> PreprocessedCase | None:
        folder = self.case_dir(case_id)
        try:
            properties = json.loads((folder / "properties.json").read_text())
            if properties.get("fingerprint") != fingerprint:
                return None
            for name, recorded in properties["files"].items():
                if file_digest(folder / name) != recorded:
                    if self.log is not None:
                        self.log(f"{folder / name}: size or checksum differs from the one "
                                 "recorded; rebuilding the case")
                    return None
            image = np.load(folder / "image.npy", mmap_mode="r")
            label = None
            if fingerprint["has_label"]:
                label = np.load(folder / "label.npy", mmap_mode="r")
            foreground = np.load(folder / "foreground.npy")
        except (OSError, ValueError, KeyError):
            return None
        properties["crop_box"] = [tuple(b) for b in properties["crop_box"]]
        return PreprocessedCase(case_id, image, label, properties, foreground)

    def _build(self, case: CaseFiles, label_convention: str, fingerprint: dict[str, Any]) -> None:
        if self.log is not None:
            self.log(f"caching case {case.case_id}")
        image, label, properties, _ = load_case_for_model(case, label_convention)
        try:
            image, label, box = preprocess_case(image, label, self.normalization)
        except ValueError as err:  # an all-zero (empty) scan: nothing to crop to
            raise InputError(f"{case.images[0]}: {err}") from None
        properties = {
            **properties,
            "crop_box": [list(b) for b in box],
            "cropped_shape": list(image.shape[:3]),
            "fingerprint": fingerprint,
        }
        try:
            self._write(case.case_id, image, label, properties)
        except OSError as err:  # a full disk: one line naming the cache, nothing half-written
            refused = storage_error(err, self.case_dir(case.case_id))
            if refused is None:
                raise
            raise OutputError(f"{refused}; the preprocessed cache was not written (free space "
                              "or point --cache-dir / UNET3D_CACHE elsewhere)", err.errno) from None
        self.builds += 1

    def _write(self, case_id: str, image: np.ndarray, label: np.ndarray | None,
               properties: dict[str, Any]) -> None:
        """Writes the case's arrays into a temporary folder, then renames it into place."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{case_id}.", suffix=".tmp", dir=self.root))
        try:
            np.save(tmp / "image.npy", np.ascontiguousarray(image, dtype=np.float32))
            if label is not None:
                np.save(tmp / "label.npy", np.ascontiguousarray(label, dtype=np.uint8))
            np.save(tmp / "foreground.npy", foreground_coords(label))
            properties["files"] = {path.name: file_digest(path)
                                   for path in sorted(tmp.glob("*.npy"))}
            (tmp / "properties.json").write_text(json.dumps(properties, indent=1) + "\n")
            _replace_dir(tmp, self.case_dir(case_id))
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def _replace_dir(src: Path, dst: Path) -> None:
    """Moves folder ``src`` to ``dst``, replacing an existing ``dst``."""
    if dst.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent))
        os.replace(dst, trash / dst.name)
        try:
            os.replace(src, dst)
        finally:
            shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(src, dst)


def default_cache_root() -> Path:
    """``$UNET3D_CACHE`` or ``~/.cache/unet3d``."""
    env = os.environ.get("UNET3D_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "unet3d"


def cache_for(data_dir: str | Path, cache_root: str | Path | None = None,
              normalization: str | None = "zscore") -> PreprocessedCache:
    """The preprocessed cache of a data folder: one per folder (named by its resolved path)
    and normalisation (``zscore`` keeps the plain name). None is the default normalisation
    (:func:`~data_generators.normalization.effective_normalization`) and shares its cache."""
    normalization = effective_normalization(normalization)
    data_dir = Path(data_dir)
    root = Path(cache_root) if cache_root else default_cache_root()
    digest = hashlib.sha1(str(data_dir.resolve()).encode()).hexdigest()[:10]
    suffix = "" if normalization == "zscore" else f"-{normalization}"
    return PreprocessedCache(root / "preprocessed" / f"{data_dir.name}-{digest}{suffix}",
                             normalization=normalization)
