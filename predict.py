#!/usr/bin/env python
"""Segment BraTS cases: ``python predict.py --help`` (the same as ``unet3d-predict``)."""

import sys

from unet3d.cli import predict_main

if __name__ == "__main__":
    sys.exit(predict_main())
