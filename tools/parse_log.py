#!/usr/bin/env python
"""Parse a training log into LOG.train and LOG.test CSV tables, as Caffe's
tools/extra/parse_log.py does: python tools/parse_log.py LOGFILE [OUTPUT_DIR]
[--delimiter ,] [--format csv|json]. Same as `netspec parse-log`."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from netspec.commands.logs import parse_log_command  # noqa: E402

if __name__ == "__main__":
    parse_log_command(prog_name="parse_log.py")
