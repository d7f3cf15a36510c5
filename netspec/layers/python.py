"""`type: "Python"` layers: a user class loaded from `python_param { module layer }`.

The user's class subclasses netspec.Layer (pycaffe's caffe.Layer) and has the
same four methods as every built-in layer, so the net drives both alike.
"""
import difflib
import importlib
import importlib.util
import inspect
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


class PythonLayerError(NetspecError, RuntimeError):
    """A user's Python layer raised. pycaffe lets the layer's own exception through, and its tests
    expect RuntimeError; this is a NetspecError (one line in the CLI) and both of those."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""      # not KeyError's quoted repr


_ERROR_CLASSES = {}


def _error_class(exc):
    """PythonLayerError that is also an instance of the user's exception class, where Python allows."""
    base = type(exc)
    if base not in _ERROR_CLASSES:
        try:
            _ERROR_CLASSES[base] = type(f"PythonLayer{base.__name__}", (PythonLayerError, base), {})
        except TypeError:                # e.g. a final or layout-incompatible exception class
            _ERROR_CLASSES[base] = PythonLayerError
    return _ERROR_CLASSES[base]


def _user_error(layer_param, stage, exc):
    where = _user_frame(exc)
    message = (f"layer '{layer_param.name}' (Python {layer_param.python_param.module}."
               f"{layer_param.python_param.layer}): {stage} raised {type(exc).__name__}: {exc}"
               + (f" (at {where})" if where else ""))
    cls = _error_class(exc)
    try:
        error = cls.__new__(cls, message)     # not __init__: the user's class may take other arguments
        error.args = (message,)
        return error
    except Exception:  # noqa: BLE001 - a class that cannot be made this way
        return PythonLayerError(message)


def _is_missing(module, exc):
    """Whether the ImportError says `module` itself (or a package above it) is not on the path, as
    opposed to an import inside the module failing."""
    name = getattr(exc, "name", None)
    return isinstance(exc, ModuleNotFoundError) and name is not None and (
        module == name or module.startswith(name + "."))


def bind_caffe_name():
    """Make `import caffe` in user layer modules give netspec's caffe package, even when a real
    Caffe is installed: layers netspec runs must subclass netspec's Layer. A `caffe` imported
    already (the user's own choice) is left alone."""
    if "caffe" in sys.modules:
        return
    folder = os.path.join(os.path.dirname(_NETSPEC_DIR), "caffe")
    init = os.path.join(folder, "__init__.py")
    if not os.path.isfile(init):
        return
    spec = importlib.util.spec_from_file_location("caffe", init, submodule_search_locations=[folder])
    module = importlib.util.module_from_spec(spec)
    module._netspec_only = True          # read by caffe/__init__.py: do not step aside
    sys.modules["caffe"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["caffe"]
        raise


class UserCodeExit(NetspecError):
    """The user's Python layer called sys.exit(): an error, never a quiet exit 0."""


def _user_exit(layer_param, stage, exc):
    return UserCodeExit(f"layer '{layer_param.name}' (Python {layer_param.python_param.module}."
                        f"{layer_param.python_param.layer}): {stage} called sys.exit({exc.code!r}); a layer "
                        "must raise an exception to stop training")


def _takes_layer_param(user_cls):
    """Whether the class is built as pycaffe builds it, `cls(layer_param)`, rather than `cls()`."""
    try:
        signature = inspect.signature(user_cls)
    except (TypeError, ValueError):        # no signature to read (a C type): pycaffe's way
        return True
    try:
        signature.bind(None)
        return True
    except TypeError:
        return False


@register("Python")
class PythonLayer(Layer):
    """Creates the user's layer at construction and hands every call to it."""

    def __new__(cls, layer_param, phase=None):
        p = layer_param.python_param
        if not p.module or not p.layer:
            raise NetspecError(f"layer '{layer_param.name}' (Python): python_param needs both module and layer")
        if "" not in sys.path and "." not in sys.path:
            sys.path.append("")      # pycaffe users rely on modules beside the working directory
        bind_caffe_name()
        try:
            module = importlib.import_module(p.module)
        except (ImportError, SyntaxError) as e:
            builtin = _builtin_stand_in(layer_param, e)
            if builtin is not None:
                return builtin
            if isinstance(e, SyntaxError) or not _is_missing(p.module, e):
                # The module was found; it, or an import inside it, failed: say what failed.
                raise _user_error(layer_param, f"importing '{p.module}'", e) from None
            hint = missing_module_hint(p.module, p.layer) or "; put it on PYTHONPATH or in the working directory"
            raise NetspecError(f"layer '{layer_param.name}' (Python): cannot import module '{p.module}' "
                               f"({e}){hint}") from None
        except SystemExit as e:
            raise _user_exit(layer_param, f"importing '{p.module}'", e) from None
        except Exception as e:  # noqa: BLE001 - the user's module raised while importing
            raise _user_error(layer_param, f"importing '{p.module}'", e) from None
        user_cls = getattr(module, p.layer, None)
        if user_cls is None:
            classes = [n for n, v in vars(module).items() if isinstance(v, type)]
            near = difflib.get_close_matches(p.layer, classes, n=1)
            raise NetspecError(f"layer '{layer_param.name}' (Python): module '{p.module}' has no class "
                               f"'{p.layer}'" + (f" (did you mean '{near[0]}'?)" if near else ""))
        if not isinstance(user_cls, type) or not issubclass(user_cls, Layer):
            what = "a class" if isinstance(user_cls, type) else f"a {type(user_cls).__name__}, not a class"
            raise NetspecError(f"layer '{layer_param.name}' (Python): '{p.module}.{p.layer}' is {what}; "
                               "python_param.layer must name a class that subclasses caffe.Layer (netspec.Layer)")
        try:
            if _takes_layer_param(user_cls):
                return _GuardedUserLayer(user_cls(layer_param))
            # A class whose __init__ takes no arguments: Layer's attributes first, then the user's __init__.
            obj = user_cls.__new__(user_cls)
            Layer.__init__(obj, layer_param, phase)
            obj.__init__()
            return _GuardedUserLayer(obj)
        except NetspecError:
            raise
        except SystemExit as e:
            raise _user_exit(layer_param, "__init__", e) from None
        except Exception as e:  # noqa: BLE001 - the user's own __init__ raised: surface it, named
            raise _user_error(layer_param, "__init__", e) from None


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
        except SystemExit as e:
            raise _user_exit(self._inner.layer_param, stage, e) from None
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
