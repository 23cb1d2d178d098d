"""A training campaign: a cheap recipe study, then k folds trained until their curves are flat.

A campaign is one JSON file kept in the repository (``campaigns/<name>/campaign.json``)
beside its split (``splits_final.json``, as nnU-Net's) and its status
(``status.json``). The runs themselves live outside the work tree, in a
runs folder (``--runs``), so a checkout laid anew cannot break them, and every
run continues with ``train.py --resume``. Running the campaign again continues
it wherever it stands, on this machine or another one::

    unet3d-campaign run campaigns/brats_cv5/campaign.json --runs ~/campaign/brats_cv5 \\
        [--stage study|folds|final] [--data /path/to/brats]
    unet3d-campaign status campaigns/brats_cv5/campaign.json --runs ~/campaign/brats_cv5
    unet3d-campaign oof campaigns/brats_cv5/campaign.json --runs ~/campaign/brats_cv5
    unet3d-campaign sync campaigns/brats_cv5/campaign.json --runs ~/campaign/brats_cv5

(:mod:`unet3d.cli.campaign`; ``python -m unet3d.cli.campaign`` is the same.)

Stages:

- ``study``: each arm (overrides of the study's base recipe) on a few folds at
  a fraction of the steps; ``study.json`` in the runs folder tabulates the
  whole-volume validation Dice per arm (mean and spread over folds) and the
  CPU-hours each cost (user + system time of the training processes).
- ``folds``: the chosen ``recipe`` on every fold. A fold first trains
  ``epochs`` epochs; while its validation curve (mean Dice of the validation
  patches, per epoch) still rose by more than ``tolerance`` in its last
  ``flat_fraction`` of epochs, it is resumed for ``extend_by`` more, up to
  ``max_epochs``. A finished fold's ``best.keras`` (``last.keras`` with
  ``"publish": "last"``) is saved without optimizer state as
  ``published/fold_<k>.keras`` in the runs folder. A campaign's ``init_from``
  (``{"folds": "<path with {fold}>", "final": "<path>"}``) warm-starts each run
  from a model, as ``train.py --init-from``.
- ``final``: the recipe on every case without validation (nnU-Net's fold
  "all") for the median of the folds' epochs: ``published/all.keras``.

``oof`` segments every case with the fold model that never saw it (averaging the
input's axis mirrorings where the campaign file says ``"mirroring": true``), chooses
the post-processing on all of them (:func:`unet3d.postprocessing.choose`) and
scores them (:mod:`unet3d.training.oof`). ``sync`` copies the status, the
study table, the out-of-fold report, the curves and the published fold models
into the repository (``campaigns/<name>/`` and the campaign's ``models``
folder), ready to commit.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from unet3d.env import describe_cpu
from unet3d.training.campaign_plan import (  # noqa: F401  (the campaign's API, in one place)
    REGIONS,
    is_flat,
    load_campaign,
    make_split,
    planned_runs,
    published_checkpoint,
    read_curve,
    read_json,
    read_split,
)
from unet3d.training.campaign_results import (
    copy_atomic,
    publish_weights,
    run_results,
    study_table,
)
from unet3d_base.errors import InputError
from unet3d_base.fileio import atomic_write_text

REPO = Path(__file__).resolve().parents[2]


class Campaign:
    """Runs a campaign's stages in ``runs_dir``; one training process at a time."""

    def __init__(self, campaign: dict[str, Any], runs_dir: str | Path, log=print):
        self.campaign = campaign
        self.runs_dir = Path(runs_dir).expanduser().resolve()
        self.log = log
        self.status_path = self.runs_dir / "status.json"
        self.status = read_json(self.status_path, {}) or {}
        if not self.status:
            self._seed_from_repository()
        self.status.setdefault("campaign", campaign["name"])
        self.status.setdefault("runs", {})
        self._child: subprocess.Popen | None = None
        self._signal: int | None = None

    def _seed_from_repository(self) -> None:
        """A new runs folder (another machine, or the old one lost) starts from what the
        repository kept: the finished runs of its ``status.json`` and the committed models,
        so finished work is not done again."""
        kept = read_json(self.campaign["_file"].parent / "status.json", {}) or {}
        done = {n: e for n, e in kept.get("runs", {}).items() if e.get("state") == "done"}
        published = self.runs_dir / "published"
        for name, entry in list(done.items()):
            if "published" in entry:
                source = self.campaign["_models"] / Path(entry["published"]).name
                if not source.is_file():  # not committed: that run is done again
                    del done[name]
                    continue
                copy_atomic(source, published / source.name)
                entry["published"] = str(published / source.name)
        for name in ("study.json", "oof.json"):  # the tables made from those runs
            kept_file = self.campaign["_file"].parent / name
            if done and kept_file.is_file():
                copy_atomic(kept_file, self.runs_dir / name)
        if done:
            self.status = {"campaign": self.campaign["name"], "runs": done}
            self.log(f"{self.runs_dir}: new runs folder; {len(done)} finished runs taken from "
                     f"{self.campaign['_file'].parent / 'status.json'}")

    # -- bookkeeping
    def continue_command(self) -> str:
        rel = os.path.relpath(self.campaign["_file"], REPO)
        return (f"python -m unet3d.cli.campaign run {rel} --runs {self.runs_dir} "
                f"--data {self.campaign['_data']}")

    def save_status(self) -> None:
        self.status["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.status["continue"] = self.continue_command()
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.status_path, json.dumps(self.status, indent=2) + "\n")

    def entry(self, name: str) -> dict[str, Any]:
        return self.status["runs"].setdefault(name, {"state": "pending", "cpu_hours": 0.0,
                                                     "wall_hours": 0.0})

    def _curve(self, run_dir: Path) -> dict[str, list[float]]:
        return read_curve(run_dir, self.campaign["_regions"])

    # -- one training process
    def _train(self, run: dict[str, Any], epochs: int | None = None) -> int:
        if self._signal is not None:  # asked to stop between two training processes
            return 128 + self._signal
        run_dir = self.runs_dir / run["name"]
        command = [sys.executable, str(REPO / "train.py"), "--out", str(run_dir)]
        if any((run_dir / name).is_file()
               for name in ("last.keras", "previous.keras", "step.keras")):
            command += ["--resume"] + (["--epochs", str(epochs)] if epochs else [])
        else:
            if run_dir.is_dir():  # stopped before its first checkpoint: nothing to keep
                self.log(f"{run['name']}: no checkpoint yet; starting it again")
                shutil.rmtree(run_dir)
                entry = self.entry(run["name"])  # its cost bought nothing: kept apart
                entry["cpu_hours_discarded"] = round(
                    entry.get("cpu_hours_discarded", 0.0) + entry["cpu_hours"], 4)
                entry.update(cpu_hours=0.0, wall_hours=0.0)
            run_dir.mkdir(parents=True, exist_ok=True)
            config_path = run_dir / "campaign_config.json"
            config = dict(run["config"])
            if epochs:
                config["epochs"] = epochs
            atomic_write_text(config_path, json.dumps(config, indent=2) + "\n")
            command += ["--config", str(config_path)]
        entry = self.entry(run["name"])
        entry["state"] = "running"
        entry["command"] = " ".join(command[1:])
        entry["machine"] = describe_cpu()
        self.save_status()
        self.log(f"[{time.strftime('%H:%M:%S')}] {run['name']}: {' '.join(command[1:])}")
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.time()
        with open(run_dir.parent / f"{run_dir.name}.out", "a") as out:
            self._child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                           cwd=REPO)
            code = self._child.wait()
            self._child = None
        if code < 0:  # killed by a signal's default action: the shell's 128 + signal
            code = 128 - code
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        entry["cpu_hours"] = round(entry["cpu_hours"] + cpu / 3600, 4)
        entry["wall_hours"] = round(entry["wall_hours"] + (time.time() - start) / 3600, 4)
        entry.update(run_results(run_dir, self.campaign["_regions"]))
        entry["state"] = "trained" if code == 0 else f"stopped (exit {code})"
        self.save_status()
        return code

    def _forward(self, signum, frame) -> None:
        self._signal = signum
        if self._child is not None and self._child.poll() is None:
            self._child.send_signal(signum)

    # -- stages
    def run(self, stages: list[str]) -> int:
        old = {s: signal.signal(s, self._forward) for s in (signal.SIGTERM, signal.SIGINT)}
        self.save_status()  # a runs folder seeded from the repository says so at once
        try:
            for stage in stages:
                code = self._run_stage(stage)
                if code:
                    return code
            return 0
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)

    def _run_stage(self, stage: str) -> int:
        for run in planned_runs(self.campaign, stage):
            if self.entry(run["name"]).get("state") == "done":
                continue
            code = self._run_one(run, stage)
            if self._signal is not None or code:
                self.log(f"{run['name']}: stopped (exit {code}); continue with: "
                         f"{self.continue_command()}")
                return code or 128 + self._signal
            if stage == "study":
                self.write_study()
        return 0

    def _run_one(self, run: dict[str, Any], stage: str) -> int:
        run_dir = self.runs_dir / run["name"]
        entry = self.entry(run["name"])
        if stage == "study":
            code = 0
            if not (run_dir / "validation.json").is_file():
                code = self._train(run)
            if code == 0:
                entry["state"] = "done"
                self.save_status()
            return code
        if stage == "final":
            return self._run_final(run)
        schedule = self.campaign["folds"]
        # the length aimed at is kept in the status (a resumed run's config.json keeps its
        # first length); the log says how far it went
        epochs = max(int(entry.get("target_epochs", schedule["epochs"])),
                     len(self._curve(run_dir)["epoch"]))
        while True:
            entry["target_epochs"] = epochs
            if not (run_dir / "validation.json").is_file() or \
                    len(self._curve(run_dir)["mean"]) < epochs:
                code = self._train(run, epochs)
                if code:
                    return code
            curve = self._curve(run_dir)["mean"]
            flat = is_flat(curve, schedule["flat_fraction"], schedule["tolerance"],
                           schedule.get("min_epochs", 5))
            if flat or epochs >= schedule["max_epochs"]:
                break
            epochs = min(epochs + schedule["extend_by"], schedule["max_epochs"])
            (run_dir / "validation.json").unlink(missing_ok=True)  # re-evaluated at the end
            self.log(f"{run['name']}: curve still rising after {len(curve)} epochs; "
                     f"extending to {epochs}")
        entry["flat"] = bool(flat)
        entry["curve"] = self._curve(run_dir)  # kept in the status: the figure outlives the run
        published = self.runs_dir / "published" / f"fold_{run['fold']}.keras"
        publish_weights(run_dir / published_checkpoint(self.campaign), published)
        entry["published"] = str(published)
        entry["state"] = "done"
        self.save_status()
        return 0

    def final_epochs(self) -> int:
        """The final model's epochs: the median, rounded up, of the epochs the folds
        trained until their curves were flat."""
        folds = [self.status["runs"].get(r["name"], {})
                 for r in planned_runs(self.campaign, "folds")]
        if not all(f.get("state") == "done" for f in folds):
            raise InputError("the final model needs every fold done first (its length is "
                             "the folds' median)")
        return int(math.ceil(float(np.median([f["epochs_done"] for f in folds]))))

    def _run_final(self, run: dict[str, Any]) -> int:
        run_dir = self.runs_dir / run["name"]
        epochs = self.final_epochs()
        if len(self._curve(run_dir)["epoch"]) < epochs or \
                not (run_dir / published_checkpoint(self.campaign)).is_file():
            code = self._train(run, epochs)
            if code:
                return code
        entry = self.entry(run["name"])
        published = self.runs_dir / "published" / "all.keras"
        publish_weights(run_dir / published_checkpoint(self.campaign), published)
        entry.update(published=str(published), state="done", epochs_done=epochs)
        self.save_status()
        return 0

    # -- the study's table
    def write_study(self) -> dict[str, Any]:
        """``study.json``: per arm, whole-volume validation Dice per fold, mean, spread,
        CPU-hours (in all and per fold run) and mean Dice per CPU-hour of one fold run;
        written from the finished study runs."""
        table = study_table(self.campaign, self.status["runs"])
        atomic_write_text(self.runs_dir / "study.json", json.dumps(table, indent=2) + "\n")
        return table

