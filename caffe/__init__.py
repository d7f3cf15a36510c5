"""`import caffe` for pycaffe code, served by netspec.

Unedited modules that say `import caffe`, `from caffe import layers as L, params as P`,
`from caffe.proto import caffe_pb2`, `import caffe.draw`, `from caffe.io import ...` or
`from caffe.coord_map import crop` get netspec's objects: the very same ones as
`import netspec` (`caffe.Net is netspec.Net`, one caffe_pb2), so Python layers, helper
modules and the script that drives them all agree.

A real Caffe comes first. When another `caffe` package on sys.path has Caffe's compiled
`_caffe` module, this one steps aside and loads that one instead: installing netspec
never changes what an existing Caffe setup runs, and `import netspec as caffe` still
picks netspec explicitly. NETSPEC_CAFFE=netspec in the environment keeps netspec as
`caffe` even then. (A real Caffe that comes earlier on sys.path, e.g. through
PYTHONPATH, is found before this package is even looked at.)

When netspec itself runs a net with Python layers, their modules' `import caffe`
gets this package whatever else is installed (netspec.layers.python binds the name
first), since their layers must subclass netspec's Layer.
"""
import importlib
import importlib.util
import os
import sys


def _real_caffe_spec():
    """The spec of another `caffe` package that has Caffe's compiled _caffe module, or None."""
    if os.environ.get("NETSPEC_CAFFE", "").strip().lower() == "netspec" or globals().get("_netspec_only"):
        return None
    here = os.path.realpath(os.path.dirname(os.path.abspath(__file__)))
    for entry in sys.path:
        folder = os.path.join(os.path.abspath(entry or os.curdir), "caffe")
        init = os.path.join(folder, "__init__.py")
        if not os.path.isfile(init) or os.path.realpath(folder) == here:
            continue
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        if any(n.startswith("_caffe") and n.endswith((".so", ".pyd")) for n in names):
            return importlib.util.spec_from_file_location("caffe", init, submodule_search_locations=[folder])
    return None


# pycaffe's submodules, each netspec's module of the same role.
_SUBMODULES = {
    "proto": "netspec.proto", "proto.caffe_pb2": "netspec.proto.caffe_pb2", "io": "netspec.io",
    "draw": "netspec.draw", "net_spec": "netspec.net_spec", "coord_map": "netspec.coord_map",
    "classifier": "netspec.classifier", "detector": "netspec.detector", "pycaffe": "netspec.pycaffe",
}

_real = _real_caffe_spec()
if _real is not None:
    _module = importlib.util.module_from_spec(_real)
    sys.modules[__name__] = _module          # the import statement hands out the real Caffe
    _real.loader.exec_module(_module)
else:
    import netspec as _netspec

    for _short, _target in _SUBMODULES.items():
        sys.modules[f"{__name__}.{_short}"] = importlib.import_module(_target)
    from netspec import proto, io, draw, net_spec, coord_map, classifier, detector, pycaffe  # noqa: E402,F401
    from netspec import (  # noqa: E402,F401  (pycaffe 1.0's top-level names)
        Net, Layer, TRAIN, TEST, set_mode_cpu, set_mode_gpu, set_device, set_random_seed, layer_type_list,
        __version__)
    from netspec.solver import (  # noqa: E402,F401
        SGDSolver, NesterovSolver, AdaGradSolver, RMSPropSolver, AdaDeltaSolver, AdamSolver, get_solver)
    from netspec.pycaffe import (  # noqa: E402,F401
        NCCL, Timer, init_log, log, has_nccl, solver_count, set_solver_count, solver_rank, set_solver_rank,
        set_multiprocess)
    from netspec.classifier import Classifier  # noqa: E402,F401
    from netspec.detector import Detector  # noqa: E402,F401
    from netspec.net_spec import layers, params, NetSpec, to_proto  # noqa: E402,F401

    def __getattr__(name):
        # Anything else netspec offers (Blob, NetspecError, ...) under the same name.
        return getattr(_netspec, name)
