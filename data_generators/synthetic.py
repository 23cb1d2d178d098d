"""A small BraTS-like synthetic dataset for smoke tests and demos.

Each case is a skull-stripped, brain-shaped volume with white matter, grey
matter and ventricles, plus one tumor: a necrotic core (label 1) inside an
enhancing rim (label 4) inside edema (label 2), written in the BraTS 2018
layout ``Synth_###/Synth_###_{t1,t1ce,t2,flair,seg}.nii.gz``.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from data_generators.labels import MODALITIES
from unet3d_base.errors import InputError
from unet3d_base.fileio import atomic_path, atomic_write_text

SYNTHETIC_VERSION = 1
_CASE_RE = re.compile(r"^Synth_\d{3}$")

# relative intensity per modality (t1, t1ce, t2, flair) for each tissue
_TISSUES = {
    "wm": (1.00, 1.00, 0.45, 0.60),
    "gm": (0.75, 0.75, 0.70, 0.75),
    "csf": (0.30, 0.30, 1.40, 0.20),
    "edema": (0.60, 0.62, 1.10, 1.30),
    "enhancing": (0.70, 1.45, 0.90, 1.00),
    "necrosis": (0.35, 0.35, 1.30, 0.40),
}
_SCALE = 400.0


def _smooth_noise(shape: Sequence[int], rng: np.random.Generator, cells: int = 5) -> np.ndarray:
    """Smooth random field with unit std: a ``cells^3`` lattice of random Gaussian bumps.

    Separable, so it costs a few tensor products instead of a full-size filter.
    """
    weights = rng.standard_normal((cells, cells, cells))
    bases = []
    for size in shape:
        x = np.arange(size, dtype=np.float32)[:, None]
        mu = np.linspace(0.0, size - 1.0, cells, dtype=np.float32)[None, :]
        width = max(size / (cells - 1.0), 1.0)
        bases.append(np.exp(-0.5 * ((x - mu) / width) ** 2))
    field = np.tensordot(bases[0], weights, axes=(1, 0))  # (X, cy, cz)
    field = np.tensordot(field, bases[1], axes=(1, 1))  # (X, cz, Y)
    field = np.tensordot(field, bases[2], axes=(1, 1))  # (X, Y, Z)
    field = field - field.mean()
    std = field.std()
    return (field / std if std > 0 else field).astype(np.float32)


def _grid(shape: Sequence[int]) -> list[np.ndarray]:
    return np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij",
                       sparse=True)


def make_synthetic_case(
    shape: Sequence[int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Generates one synthetic case.

    Args:
        shape: spatial shape ``(X, Y, Z)``, each at least 32.
        rng: source of all randomness.

    Returns:
        ``image`` float32 ``(X, Y, Z, 4)`` in ``MODALITIES`` order, 0 outside
        the brain and positive inside; ``label`` uint8 ``(X, Y, Z)`` with
        values in {0, 1, 2, 4} (BraTS 2017 convention).
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 32:
        raise ValueError(f"synthetic shape must be 3 sizes >= 32, got {shape}")
    g = _grid(shape)
    # the draws from rng happen in this order: brain, tumor, then intensities
    brain, tissue = _brain_tissue(shape, g, rng)
    label = _tumor_label(shape, g, brain, rng)
    return _render(shape, brain, tissue, label, rng), label


def _brain_tissue(shape: tuple[int, ...], g: list[np.ndarray],
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The brain mask and a tissue map: 0 outside, 1 white matter, 2 grey matter, 3 CSF."""
    centre = np.array(shape, dtype=np.float32) / 2 + rng.uniform(-1.5, 1.5, 3)
    radii = np.array(shape, dtype=np.float32) * rng.uniform(0.38, 0.44, 3)
    r = np.sqrt(sum(((g[a] - centre[a]) / radii[a]) ** 2 for a in range(3)))
    r = r * (1.0 + 0.05 * _smooth_noise(shape, rng))  # smooth deformation of the outline
    brain = r < 1.0
    gm = brain & (r > 0.82 + 0.04 * _smooth_noise(shape, rng, cells=8))
    # two ventricles beside the midline
    vent = np.zeros(shape, dtype=bool)
    for side in (-1.0, 1.0):
        vc = centre + np.array([side * 0.12, 0.05, 0.05]) * radii
        vr = radii * np.array([0.08, 0.25, 0.12]) * rng.uniform(0.8, 1.2, 3)
        vent |= sum(((g[a] - vc[a]) / vr[a]) ** 2 for a in range(3)) < 1.0
    tissue = np.zeros(shape, dtype=np.uint8)  # 0 outside, 1 wm, 2 gm, 3 csf
    tissue[brain] = 1
    tissue[gm] = 2
    tissue[vent & brain] = 3
    return brain, tissue


def _tumor_label(shape: tuple[int, ...], g: list[np.ndarray], brain: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
    """BraTS 2017 labels of one tumor inside ``brain``: one distance-like function,
    nested thresholds (edema 2, enhancing rim 4, necrotic core 1)."""
    scale = min(shape) / 80.0
    r_edema = rng.uniform(12.0, 20.0) * scale
    r_rim = r_edema * rng.uniform(0.55, 0.7)
    r_core = r_rim * rng.uniform(0.4, 0.65)
    r_rim = max(r_rim, r_core + 3.0)
    r_edema = max(r_edema, r_rim + 3.0)
    stretch = rng.uniform(0.8, 1.25, 3)
    reach = r_edema * 1.35 / stretch.min() + 2.0
    inside = ndimage.distance_transform_edt(brain[::2, ::2, ::2]) * 2.0  # coarse is enough
    candidates = np.argwhere(inside > reach + 2.0)
    if len(candidates) == 0:
        candidates = np.argwhere(inside >= inside.max())
    tc = (candidates[rng.integers(len(candidates))] * 2).astype(np.float32)
    d = np.sqrt(sum(((g[a] - tc[a]) * stretch[a]) ** 2 for a in range(3)))
    d = d * (1.0 + 0.12 * _smooth_noise(shape, rng, cells=6))
    label = np.zeros(shape, dtype=np.uint8)
    label[d < r_edema] = 2
    label[d < r_rim] = 4
    label[d < r_core] = 1
    label[~brain] = 0
    return label


def _render(shape: tuple[int, ...], brain: np.ndarray, tissue: np.ndarray, label: np.ndarray,
            rng: np.random.Generator) -> np.ndarray:
    """The four modalities' intensities of the tissues and tumor, with bias field and noise."""
    image = np.zeros(shape + (len(MODALITIES),), dtype=np.float32)
    bias = 1.0 + 0.08 * _smooth_noise(shape, rng, cells=3)
    masks = {
        "wm": tissue == 1, "gm": tissue == 2, "csf": tissue == 3,
        "edema": label == 2, "enhancing": label == 4, "necrosis": label == 1,
    }
    for c in range(len(MODALITIES)):
        channel = np.zeros(shape, dtype=np.float32)
        for name, mask in masks.items():  # tumor tissues come last and win
            channel[mask] = _TISSUES[name][c]
        channel = ndimage.gaussian_filter(channel, 0.7) * bias
        channel += rng.normal(0.0, 0.03, shape).astype(np.float32)
        channel = np.clip(channel * _SCALE, 1.0, None)
        channel[~brain] = 0.0
        image[..., c] = channel
    return image


def _affine(shape: Sequence[int]) -> np.ndarray:
    """BraTS-like LPS affine: 1 mm voxels, x and y flipped."""
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[1, 3] = float(shape[1] - 1)
    return affine


def write_synthetic_dataset(
    out_dir: str | Path,
    n_cases: int = 12,
    shape: Sequence[int] = (96, 96, 80),
    seed: int = 0,
    overwrite: bool = False,
) -> list[Path]:
    """Writes (or reuses) a synthetic dataset in the BraTS 2018 layout.

    Case ``i`` is generated from ``np.random.default_rng([seed, i])``, so the
    same parameters give identical files. ``out_dir/synthetic.json`` records
    the parameters; when it matches and every file exists, nothing is
    rewritten.

    Args:
        out_dir: dataset folder.
        n_cases: number of cases.
        shape: spatial shape ``(X, Y, Z)``.
        seed: base seed.
        overwrite: allow replacing a folder that is not a synthetic dataset.

    Returns:
        The case folders, sorted.

    Raises:
        InputError: ``out_dir`` holds other files and ``overwrite`` is False.
    """
    out_dir = Path(out_dir)
    shape = tuple(int(s) for s in shape)
    params = {"n_cases": int(n_cases), "shape": list(shape), "seed": int(seed),
              "version": SYNTHETIC_VERSION}
    names = [f"Synth_{i:03d}" for i in range(n_cases)]
    case_dirs = [out_dir / name for name in names]
    keys = (*MODALITIES, "seg")
    files = [d / f"{d.name}_{k}.nii.gz" for d in case_dirs for k in keys]
    meta = out_dir / "synthetic.json"
    if meta.is_file():
        try:
            same = json.loads(meta.read_text()) == params
        except ValueError:
            same = False
        if same and all(f.is_file() for f in files):
            return case_dirs
    if out_dir.exists():
        if not out_dir.is_dir():
            raise InputError(f"{out_dir}: exists and is not a folder")
        foreign = [p.name for p in out_dir.iterdir()
                   if not (_CASE_RE.match(p.name) or p.name == "synthetic.json"
                           or p.name.startswith("."))]
        if foreign and not overwrite:
            raise InputError(f"{out_dir}: not a synthetic dataset folder (holds {foreign[0]})")
        for p in out_dir.iterdir():
            if _CASE_RE.match(p.name) and p.is_dir():
                shutil.rmtree(p)
        meta.unlink(missing_ok=True)
    affine = _affine(shape)
    for i, case_dir in enumerate(case_dirs):
        image, label = make_synthetic_case(shape, np.random.default_rng([seed, i]))
        case_dir.mkdir(parents=True, exist_ok=True)
        arrays = [np.round(image[..., c]).astype(np.int16) for c in range(len(MODALITIES))]
        for key, data in zip(keys, [*arrays, label.astype(np.int16)], strict=True):
            img = nib.Nifti1Image(data, affine)
            img.header.set_xyzt_units("mm", "sec")
            img.set_qform(affine, code=1)
            img.set_sform(affine, code=1)
            with atomic_path(case_dir / f"{case_dir.name}_{key}.nii.gz") as tmp:
                nib.save(img, str(tmp))
    atomic_write_text(meta, json.dumps(params) + "\n")
    return case_dirs


def cached_synthetic_dataset(cache_root: str | Path, n_cases: int, shape: Sequence[int],
                             seed: int, log=print) -> Path:
    """The synthetic dataset of these settings under ``cache_root``, written once."""
    text = "x".join(map(str, shape))
    folder = Path(cache_root) / "synthetic" / f"n{n_cases}_{text}_seed{seed}"
    log(f"synthetic dataset: {n_cases} cases of {text} in {folder}")
    write_synthetic_dataset(folder, n_cases=n_cases, shape=shape, seed=seed)
    return folder
