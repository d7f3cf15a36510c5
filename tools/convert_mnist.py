#!/usr/bin/env python3
"""Convert MNIST IDX files to a Caffe LMDB (Caffe's convert_mnist_data).

    python tools/convert_mnist.py data/mnist/train-images-idx3-ubyte.gz \\
        data/mnist/train-labels-idx1-ubyte.gz data/mnist/mnist_train_lmdb --backend=lmdb
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from netspec.commands.base import run as run_command  # noqa: E402
from netspec.commands.data import convert_mnist_command  # noqa: E402

if __name__ == "__main__":
    run_command(convert_mnist_command)
