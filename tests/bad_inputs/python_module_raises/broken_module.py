"""A user module with a mistake that shows up at import time."""
import netspec

SCALE = {"double": 2}["triple"]


class Double(netspec.Layer):
    pass
