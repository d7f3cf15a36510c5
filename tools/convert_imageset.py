#!/usr/bin/env python3
"""A folder of images and a list file become a Caffe LMDB or LevelDB (Caffe's convert_imageset).

    python tools/convert_imageset.py --resize_height=256 --resize_width=256 --shuffle \
        data/images/ data/images/train.txt data/images_train_lmdb
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from netspec.commands.base import run as run_command  # noqa: E402
from netspec.commands.data import convert_imageset_command  # noqa: E402

if __name__ == "__main__":
    run_command(convert_imageset_command)
