"""A run as a TensorBoard HParams trial, read back with TensorBoard's own loader."""

import json

import pytest
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.hparams import plugin_data_pb2

from unet3d.config import TrainConfig
from unet3d.training.hparams import trial_from_run, write_trial


def read_events(folder):
    (path,) = folder.glob("events.out.tfevents.*")
    hparams, scalars = None, {}
    for event in EventFileLoader(str(path)).Load():
        for value in event.summary.value:
            plugin = value.metadata.plugin_data
            if plugin.plugin_name == "hparams":
                data = plugin_data_pb2.HParamsPluginData.FromString(plugin.content)
                if data.HasField("session_start_info"):
                    hparams = data.session_start_info
            elif value.HasField("tensor"):
                scalars[value.tag] = (event.step, value.tensor.float_val[0])
    return hparams, scalars


def test_trial_holds_hyperparameters_and_validation_dice(tmp_path):
    config = TrainConfig(epochs=7, learning_rate=2e-3, patch_size=(64, 64, 64)).to_dict()
    run = tmp_path / "b16_lr2e-3"
    folder = write_trial(run, {**config, "train_cases": 18},
                         {"WT": 0.9, "TC": 0.8, "ET": 0.75, "mean": 0.8167}, {"hours": 1.5})
    info, scalars = read_events(folder)
    values = {k: (v.number_value if v.HasField("number_value") else v.string_value)
              for k, v in info.hparams.items()}
    assert values["learning_rate"] == pytest.approx(2e-3)
    assert values["patch_size"] == "64x64x64" and values["epochs"] == 7
    assert values["train_cases"] == 18 and values["base_filters"] == 16
    assert scalars["validation/dice_wt"] == (7, pytest.approx(0.9))
    assert scalars["validation/dice_et"] == (7, pytest.approx(0.75))
    assert scalars["validation/hours"] == (7, pytest.approx(1.5))
    # rewriting replaces the trial rather than adding a second one
    write_trial(run, config, {"WT": 0.5, "TC": 0.5, "ET": 0.5, "mean": 0.5})
    _, scalars = read_events(folder)
    assert scalars["validation/dice_wt"][1] == pytest.approx(0.5)


def test_trial_from_a_finished_run_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(TrainConfig(epochs=3).to_dict()))
    (run / "split.json").write_text(json.dumps({"train": ["a", "b", "c"], "validation": ["d"]}))
    (run / "validation.json").write_text(json.dumps({
        "d": {"WT": 0.8, "TC": 0.6, "ET": 0.4}, "e": {"WT": 0.6, "TC": 0.4, "ET": 0.2}}))
    info, scalars = read_events(trial_from_run(run))
    assert scalars["validation/dice_wt"][1] == pytest.approx(0.7)
    assert scalars["validation/dice_mean"][1] == pytest.approx((0.7 + 0.5 + 0.3) / 3)
    assert info.hparams["train_cases"].number_value == 3
