"""netspec: Caffe's nets, solvers and files on numpy.

pycaffe scripts run unchanged with `import netspec as caffe`:

    net = caffe.Net('models/lenet/lenet.prototxt', caffe.TEST)
    solver = caffe.SGDSolver('solvers/lenet_solver.prototxt')
"""
from .proto import caffe_pb2  # noqa: F401
from .errors import NetspecError, ParseError  # noqa: F401
from .blob import Blob  # noqa: F401
from .layers import LAYER_REGISTRY, Layer  # noqa: F401
from .net import Net, TRAIN, TEST  # noqa: F401
from . import glog as _glog, rng as _rng
from .threads import set_threads, get_threads  # noqa: F401  (NETSPEC_THREADS, else the cores we may use)

_glog.ensure_configured()     # pycaffe logs net setup and training to stderr from the start

__version__ = "0.1.0"


def set_mode_cpu():
    """netspec always runs on the CPU; kept for pycaffe scripts."""


def set_mode_gpu():
    raise NetspecError("netspec runs on the CPU only; remove set_mode_gpu() (set_mode_cpu() is accepted)")


def set_device(device_id):
    raise NetspecError("netspec runs on the CPU only; there are no GPU devices to select")


def set_random_seed(seed):
    _rng.set_seed(seed)


def layer_type_list():
    return sorted(LAYER_REGISTRY)


def __getattr__(name):
    # Solvers, the NetSpec builder and io helpers load on first use to keep `import netspec` light.
    lazy = {
        "SGDSolver": "solver", "NesterovSolver": "solver", "AdaGradSolver": "solver",
        "RMSPropSolver": "solver", "AdaDeltaSolver": "solver", "AdamSolver": "solver",
        "get_solver": "solver", "Solver": "solver",
        "NetSpec": "net_spec", "to_proto": "net_spec", "layers": "net_spec", "params": "net_spec",
        "Classifier": "classifier", "Detector": "detector",
        "init_log": "pycaffe", "log": "pycaffe", "Timer": "pycaffe", "has_nccl": "pycaffe", "NCCL": "pycaffe",
        "solver_count": "pycaffe", "solver_rank": "pycaffe", "set_solver_count": "pycaffe",
        "set_solver_rank": "pycaffe", "set_multiprocess": "pycaffe", "set_on_divergence": "solver",
    }
    submodules = ("io", "draw", "coord_map", "net_spec", "proto", "classifier", "detector", "pycaffe")
    import importlib
    if name in lazy:
        return getattr(importlib.import_module(f".{lazy[name]}", __name__), name)
    if name in submodules:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'netspec' has no attribute {name!r}")
