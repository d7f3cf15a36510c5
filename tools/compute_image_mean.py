#!/usr/bin/env python3
"""Per-pixel mean of an LMDB as a .binaryproto (Caffe's compute_image_mean).

    python tools/compute_image_mean.py data/mnist/mnist_train_lmdb mnist_mean.binaryproto
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from netspec.commands.base import run as run_command  # noqa: E402
from netspec.commands.data import compute_image_mean_command  # noqa: E402

if __name__ == "__main__":
    run_command(compute_image_mean_command)
