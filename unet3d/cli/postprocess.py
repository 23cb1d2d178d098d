"""``unet3d-postprocess``: choose a model's post-processing on validation cases and store it.

Examples:
    unet3d-postprocess --model models/m.keras --data /data/brats --cases ID1 ID2 --write
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from data_generators.geometry import load_case_for_model
from data_generators.io import find_case
from data_generators.preprocessing import preprocess_case
from unet3d.artifacts import load_artifact, write_plan
from unet3d.env import prepare_backend
from unet3d.inference.pipeline import PredictSettings, probabilities_to_classes, resolve_tta
from unet3d.inference.predictor import WindowPredictor
from unet3d.postprocessing import PostProcessing, choose
from unet3d.precision import resolve_precision
from unet3d_base.errors import InputError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="unet3d-postprocess",
        description="Choose a model's post-processing on validation cases and store it.")
    parser.add_argument("--model", required=True, help="the .keras model")
    parser.add_argument("--data", required=True, help="folder of case folders with labels")
    parser.add_argument("--cases", nargs="+", required=True, help="validation case ids")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="fp32")
    parser.add_argument("--write", action="store_true", help="store the choice in the model")
    parser.add_argument("--also", nargs="*", default=[],
                        help=".tflite exports of the same model to store it in too")
    args = parser.parse_args(argv)
    prepare_backend()
    try:
        plan, table = _choose_for(args)
    except InputError as err:
        print(f"unet3d-postprocess: error: {err}", file=sys.stderr)
        return 2
    width = max(len(k) for k in table)
    print(f"{'candidate':{width}}  WT     TC     ET     mean")
    for name, scores in table.items():
        print(f"{name:{width}}  {scores['WT']:.3f}  {scores['TC']:.3f}  {scores['ET']:.3f}  "
              f"{scores['mean']:.3f}")
    print(f"chosen on {len(plan.chosen_on)} cases: {plan.describe()}")
    if args.write:
        for target in [args.model, *args.also]:
            write_plan(target, plan)
            print(f"stored in {target}")
    return 0


def _choose_for(args: argparse.Namespace) -> tuple[PostProcessing, dict]:
    model = load_artifact(args.model, precision=resolve_precision(args.precision))
    # a model whose stored plan mirrors keeps mirroring: the plan is chosen on what it predicts
    mirroring = resolve_tta(model.postprocessing, PredictSettings())
    predictor = WindowPredictor(model.predict_fn, stride=model.stride, patch_size=model.patch_size,
                                base_filters=model.base_filters, spatial_dims=model.spatial_dims,
                                tta=mirroring)
    class_maps, truths = {}, {}
    for case_id in args.cases:
        case = find_case(Path(args.data) / case_id, modalities=model.modalities,
                         require_label=True)
        image, label, _, _ = load_case_for_model(case, model.label_convention)
        cropped, label, _ = preprocess_case(image, label, model.normalization)
        class_maps[case_id] = probabilities_to_classes(predictor(cropped), model.output_mode)
        truths[case_id] = label
    plan, table = choose(class_maps, truths)
    return dataclasses.replace(plan, mirroring=mirroring), table


if __name__ == "__main__":  # through the entry point, which answers a full disk too
    from unet3d.cli import postprocess_main

    sys.exit(postprocess_main())
