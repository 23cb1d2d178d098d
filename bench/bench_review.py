#!/usr/bin/env python
"""The review page of a folder of real cases: how long writing it takes beyond the
prediction, and how long Chromium takes to open and paint it from disk.

The label maps reviewed are the cases' own ground truth, copied into a predictions
folder (the page does not care who drew them); the scans come from the cases' folders.
Writing is timed without the viewer (thumbnails, flags, pages) and with it (each case's
sequences also base64-encoded into ``<case>.data.js``). Opening is the wall time of
headless Chromium taking a screenshot of ``index.html`` from ``file://``, browser start
included: first paint comes before it.

Usage:
    python bench/bench_review.py [--data ../shared/data/brats2018] [--cases 20]
"""

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unet3d.env import describe_cpu
from unet3d.evaluation.review import write_review

REPO = Path(__file__).resolve().parents[1]


def open_seconds(index: Path, profile: Path) -> float:
    start = time.perf_counter()
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update",
                    f"--user-data-dir={profile}", "--window-size=1280,900",
                    f"--screenshot={profile / 'shot.png'}", index.as_uri()],
                   check=True, capture_output=True, timeout=120)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" /
                        "brats2018")
    parser.add_argument("--cases", type=int, default=20)
    args = parser.parse_args()
    cases = sorted(p for p in args.data.iterdir() if p.is_dir())[:args.cases]
    print(f"machine: {describe_cpu()}; Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        preds = Path(tmp) / "preds"
        preds.mkdir()
        for case in cases:
            shutil.copyfile(next(case.glob("*_seg.nii*")), preds / f"{case.name}.nii.gz")
        timings = {}
        for viewer in (False, True):
            start = time.perf_counter()
            index = write_review(preds, args.data, viewer=viewer)
            timings[viewer] = time.perf_counter() - start
        data = sum(p.stat().st_size for p in (preds / "review").glob("*.data.js")) / 1e6
        opened = min(open_seconds(index, Path(tmp) / f"profile{i}") for i in range(3))
    n = len(cases)
    print(f"{n} cases: review written in {timings[False]:.1f} s without the viewer "
          f"({timings[False] / n:.2f} s a case), {timings[True]:.1f} s with it "
          f"({timings[True] / n:.2f} s a case, {data:.0f} MB of scans for the viewer)")
    print(f"index.html opened and painted by headless Chromium from file:// in "
          f"{opened:.2f} s, browser start included (best of 3)")


if __name__ == "__main__":
    main()
