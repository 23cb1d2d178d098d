"""Lesion-wise Dice and HD95 by panoptica (run with .venv-panoptica's Python by
tests/unet3d/test_lesionwise.py).

Usage: panoptica_worker.py CASES.npz OUT.json
CASES.npz holds, per case, ``<case>/pred`` and ``<case>/truth`` (binary masks of one region,
named ``<case>:<region>``) and ``<case>:<region>/spacing``. Prints nothing; writes
``{"<case>:<region>": {"dice": .., "hd95": .., "lesions": .., "false_positives": ..}}``.

The settings are those closest to the BraTS 2023 rules: connected components (26) as
instances, every overlapping prediction matched (many to one allowed), Dice and HD95 per
matched lesion; the 50 mm^3 lesion threshold and the 374 mm penalty are applied on
panoptica's per-lesion lists, as the challenge's code does on its table.
"""

import json
import sys

import numpy as np
import panoptica
from panoptica import (
    CCABackend,
    ConnectedComponentsInstanceApproximator,
    InputType,
    Metric,
    MetricMode,
    NaiveThresholdMatching,
    Panoptica_Evaluator,
)
from panoptica.utils.edge_case_handling import (
    EdgeCaseHandler,
    EdgeCaseResult,
    MetricZeroTPEdgeCaseHandling,
)
from panoptica.utils.label_group import LabelMergeGroup
from panoptica.utils.segmentation_class import SegmentationClassGroups

PENALTY, THRESHOLD_MM3 = 374.0, 50.0


def evaluator():
    handling = {metric: MetricZeroTPEdgeCaseHandling(no_instances_result=EdgeCaseResult.NAN,
                                                     default_result=default)
                for metric, default in ((Metric.DSC, EdgeCaseResult.ZERO),
                                        (Metric.IOU, EdgeCaseResult.ZERO),
                                        (Metric.HD95, EdgeCaseResult.INF))}
    return Panoptica_Evaluator(
        expected_input=InputType.SEMANTIC,
        instance_approximator=ConnectedComponentsInstanceApproximator(
            cca_backend=CCABackend.cc3d),
        instance_matcher=NaiveThresholdMatching(matching_metric=Metric.IOU,
                                                matching_threshold=0.0,
                                                allow_many_to_one=True),
        segmentation_class_groups=SegmentationClassGroups({"region": LabelMergeGroup([1])}),
        instance_metrics=[Metric.DSC, Metric.IOU, Metric.HD95], global_metrics=[Metric.DSC],
        edge_case_handler=EdgeCaseHandler(listmetric_zeroTP_handling=handling))


def lesionwise(result, voxel_mm3):
    dices = list(result.get_list_metric(Metric.DSC, MetricMode.ALL)) if result.tp else []
    hd95s = list(result.get_list_metric(Metric.HD95, MetricMode.ALL)) if result.tp else []
    keep = [i for i, v in enumerate(result.instance_volume_matched_ref_list)
            if v * voxel_mm3 > THRESHOLD_MM3]
    missed = sum(v * voxel_mm3 > THRESHOLD_MM3 for v in result.instance_volume_unmatched_ref_list)
    count = len(keep) + missed + result.fp
    if count == 0:
        return {"dice": 1.0, "hd95": 0.0, "lesions": 0, "false_positives": 0}
    return {"dice": sum(dices[i] for i in keep) / count,
            "hd95": (sum(hd95s[i] for i in keep) + PENALTY * (missed + result.fp)) / count,
            "lesions": len(keep) + missed, "false_positives": int(result.fp)}


def main(source, target):
    panoptica.disable_citation_reminder()
    arrays = np.load(source)
    names = sorted({key.rsplit("/", 1)[0] for key in arrays.files})
    found = {}
    for name in names:
        spacing = tuple(float(s) for s in arrays[f"{name}/spacing"])
        results = evaluator().evaluate(arrays[f"{name}/pred"].astype(np.uint8),
                                       arrays[f"{name}/truth"].astype(np.uint8),
                                       voxelspacing=spacing, verbose=False)
        found[name] = lesionwise(results["region"], float(np.prod(spacing)))
    with open(target, "w") as handle:
        json.dump(found, handle)


if __name__ == "__main__":
    main(*sys.argv[1:])
