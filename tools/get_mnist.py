#!/usr/bin/env python3
"""Check the md5 of the four MNIST files in data/mnist/, or fetch them with --download DIR.

    python tools/get_mnist.py [--dir data/mnist] [--download DIR]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from netspec.commands.base import run as run_command  # noqa: E402
from netspec.commands.data import get_mnist_command  # noqa: E402

if __name__ == "__main__":
    run_command(get_mnist_command)
