#!/usr/bin/env python
"""Train the 3D U-Net: ``python train.py --help`` (the same as ``unet3d-train``)."""

import sys

from unet3d.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
