#!/usr/bin/env python3
"""Blobs of a trained net saved as float Datums in LMDBs or LevelDBs (Caffe's extract_features).

    python tools/extract_features.py snapshots/lenet_iter_10000.caffemodel \
        models/lenet/lenet_train_test.prototxt ip2 lenet_ip2_lmdb 10 lmdb
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from netspec.commands.base import run as run_command  # noqa: E402
from netspec.commands.data import extract_features_command  # noqa: E402

if __name__ == "__main__":
    run_command(extract_features_command)
