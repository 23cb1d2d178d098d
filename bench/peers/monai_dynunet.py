#!/usr/bin/env python
"""The peer of bench/bench_vs_monai.py: MONAI's DynUNet through its sliding-window inferer.

Runs inside the peer's own virtual environment (torch, monai, numpy, nibabel;
never this project's). The network is MONAI's DynUNet in the nnU-Net / Isensee
BraTS configuration: 5 levels, 16..256 filters, residual blocks, instance norm,
leaky ReLU 0.01, 3 sigmoid region outputs, untrained (timing does not depend on
the weights). The pipeline mirrors predict.py's: read the four modalities with
nibabel, crop to the brain, z-score inside it, infer, turn regions into BraTS
labels, un-crop and write a NIfTI with the T1's header. Prints one JSON line:
the wall time from files to written NIfTI for each of ``--repeats`` runs, and
each run's stages: read (nibabel decode), preprocess (crop, z-score), network
(the forward calls alone, timed inside the predictor), blend+post (the rest of
``sliding_window_inference``: padding, windows, blending; then regions to
labels, un-crop) and write.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.networks.nets import DynUNet

MODALITIES = ("t1", "t1ce", "t2", "flair")


def build(precision: str) -> torch.nn.Module:
    torch.manual_seed(0)
    net = DynUNet(spatial_dims=3, in_channels=4, out_channels=3,
                  kernel_size=[3] * 5, strides=[1, 2, 2, 2, 2],
                  upsample_kernel_size=[2, 2, 2, 2], filters=[16, 32, 64, 128, 256],
                  norm_name=("instance", {"affine": True}),
                  act_name=("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
                  deep_supervision=False, res_block=True)
    return net.eval()


def segment(case: Path, out: Path, net: torch.nn.Module, precision: str, overlap: float,
            roi: int, blend: str = "gaussian") -> dict:
    """One case, files to NIfTI; returns the seconds of each stage (see the module doc).

    ``roi`` 0: one window as large as the cropped volume, rounded up to a multiple
    of 16 (the network's stride), i.e. a whole-volume pass.
    """
    start = time.perf_counter()
    files = [next(case.glob(f"*_{m}.nii*")) for m in MODALITIES]
    ref = nib.load(str(files[0]))
    image = np.stack([np.asanyarray(nib.load(str(f)).dataobj).astype(np.float32)
                      for f in files], axis=-1)
    read = time.perf_counter()
    mask = (image != 0).any(-1)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(mask))
    cropped, inside = image[box], mask[box]
    for c in range(cropped.shape[-1]):
        values = cropped[..., c][inside]
        cropped[..., c][inside] = (values - values.mean()) / max(values.std(), 1e-8)
        cropped[..., c][~inside] = 0
    x = torch.from_numpy(np.ascontiguousarray(cropped.transpose(3, 0, 1, 2)))[None]
    size = tuple(s + (-s % 16) for s in x.shape[2:]) if roi == 0 else (roi,) * 3
    preprocessed = time.perf_counter()
    calls = []

    def predictor(batch):
        begin = time.perf_counter()
        result = net(batch)
        calls.append(time.perf_counter() - begin)
        return result

    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16,
                                                enabled=precision == "bf16"):
        logits = sliding_window_inference(x, roi_size=size, sw_batch_size=1,
                                          predictor=predictor, overlap=overlap, mode=blend)
    regions = (torch.sigmoid(logits.float())[0] > 0.5).numpy()
    labels = np.zeros(regions.shape[1:], np.uint8)
    labels[regions[0]] = 2
    labels[regions[1]] = 1
    labels[regions[2]] = 4
    full = np.zeros(image.shape[:3], np.uint8)
    full[box] = labels
    post = time.perf_counter()
    nib.save(nib.Nifti1Image(full, ref.affine, ref.header), str(out / f"{case.name}.nii.gz"))
    written = time.perf_counter()
    network = sum(calls)
    return {"read": read - start, "preprocess": preprocessed - read, "network": network,
            "blend+post": post - preprocessed - network, "write": written - post,
            "total": written - start, "calls": len(calls), "cropped": list(x.shape[2:]),
            "roi": list(size)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--roi", type=int, default=128,
                        help="window size; 0: one window over the whole cropped volume")
    parser.add_argument("--blend", choices=("gaussian", "constant"), default="gaussian")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    net = build(args.precision)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [segment(Path(args.case), out, net, args.precision, args.overlap, args.roi, args.blend)
            for _ in range(args.repeats)]
    print(json.dumps({"times": [r["total"] for r in runs], "runs": runs,
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
