#!/usr/bin/env python
"""Plot training logs with Caffe's chart types (0..7, see --help):
python tools/plot_training_log.py CHART_TYPE OUT.png LOG [LOG ...]. Same as `netspec plot-log`."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from netspec.commands.logs import plot_log_command  # noqa: E402

if __name__ == "__main__":
    plot_log_command(prog_name="plot_training_log.py")
