"""`type: "Python"` layers: a user class loaded from `python_param { module layer }`.

The user's class subclasses netspec.Layer (pycaffe's caffe.Layer) and has the
same four methods as every built-in layer, so the net drives both alike.
"""
import difflib
import importlib
import os
import sys
import traceback

from .. import glog
from ..errors import NetspecError
from .base import Layer, register
from .proposal import BUILTIN_PYTHON_LAYERS, missing_module_hint


_NETSPEC_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _user_frame(exc):
    """`file:line` of the innermost frame in the user's code (not netspec, the stdlib or site-packages)."""
    skip = (_NETSPEC_DIR + os.sep, sys.prefix + os.sep, sys.base_prefix + os.sep)
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        name = os.path.abspath(frame.filename) if not frame.filename.startswith("<") else frame.filename
        if frame.filename.startswith("<") or name.startswith(skip):
            continue
        shown = os.path.relpath(name) if name.startswith(os.getcwd() + os.sep) else name
        return f"{shown}:{frame.lineno}"
    return None


def _user_error(layer_param, stage, exc):
    where = _user_frame(exc)
    return NetspecError(f"layer '{layer_param.name}' (Python {layer_param.python_param.module}."
                        f"{layer_param.python_param.layer}): {stage} raised {type(exc).__name__}: {exc}"
                        + (f" (at {where})" if where else ""))


@register("Python")
class PythonLayer(Layer):
    """Creates the user's layer at construction and hands every call to it."""

    def __new__(cls, layer_param, phase=None):
        p = layer_param.python_param
        if not p.module or not p.layer:
            raise NetspecError(f"layer '{layer_param.name}' (Python): python_param needs both module and layer")
        if "" not in sys.path and "." not in sys.path:
            sys.path.append("")      # pycaffe users rely on modules beside the working directory
        try:
            module = importlib.import_module(p.module)
        except (ImportError, SyntaxError) as e:
            builtin = _builtin_stand_in(layer_param, e)
            if builtin is not None:
                return builtin
            if isinstance(e, SyntaxError):
                raise _user_error(layer_param, f"importing '{p.module}'", e) from None
            hint = missing_module_hint(p.module, p.layer) or "; put it on PYTHONPATH or in the working directory"
            raise NetspecError(f"layer '{layer_param.name}' (Python): cannot import module '{p.module}' "
                               f"({e}){hint}") from None
        except Exception as e:  # noqa: BLE001 - the user's module raised while importing
            raise _user_error(layer_param, f"importing '{p.module}'", e) from None
        user_cls = getattr(module, p.layer, None)
        if user_cls is None:
            classes = [n for n, v in vars(module).items() if isinstance(v, type)]
            near = difflib.get_close_matches(p.layer, classes, n=1)
            raise NetspecError(f"layer '{layer_param.name}' (Python): module '{p.module}' has no class "
                               f"'{p.layer}'" + (f" (did you mean '{near[0]}'?)" if near else ""))
        try:
            return _GuardedUserLayer(user_cls(layer_param))
        except TypeError:
            # pycaffe-style classes take no constructor arguments; Layer.__init__ sets the attributes.
            obj = user_cls.__new__(user_cls)
            Layer.__init__(obj, layer_param, phase)
            return _GuardedUserLayer(obj)


def _builtin_stand_in(layer_param, exc):
    """netspec's own version of a well-known fork Python layer whose module does not import
    (py-faster-rcnn's are Python 2 code needing compiled parts), or None."""
    p = layer_param.python_param
    cls = BUILTIN_PYTHON_LAYERS.get((p.module, p.layer))
    if cls is None:
        return None
    glog.info(f"layer '{layer_param.name}': module '{p.module}' does not import ({type(exc).__name__}: "
              f"{exc}); using netspec's built-in {p.module}.{p.layer}", "layer_factory.hpp:77")
    return cls(layer_param)


class _GuardedUserLayer:
    """Wraps a user layer so that its exceptions name the layer instead of escaping as tracebacks."""

    def __init__(self, inner):
        object.__setattr__(self, "_inner", inner)

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __setattr__(self, name, value):
        setattr(self._inner, name, value)

    def _call(self, stage, *args):
        try:
            return getattr(self._inner, stage)(*args)
        except NetspecError:
            raise
        except Exception as e:  # noqa: BLE001 - any user error becomes one readable line
            raise _user_error(self._inner.layer_param, stage, e) from e

    def setup(self, bottom, top):
        return self._call("setup", bottom, top)

    def reshape(self, bottom, top):
        return self._call("reshape", bottom, top)

    def forward(self, bottom, top):
        return self._call("forward", bottom, top)

    def backward(self, top, propagate_down, bottom):
        return self._call("backward", top, propagate_down, bottom)
