"""A pickle reader that never runs code from the file.

Network pickles from NVIDIA are "persistence" pickles: every module is rebuilt by
``torch_utils.persistence._reconstruct_persistent_obj(meta)``, and ``meta['module_src']`` is Python
source that NVIDIA's loader ``exec``\\ s. A plain ``pickle.load`` therefore runs whatever the file
says. :class:`SafeUnpickler` instead admits an explicit allow-list of globals and turns the
persistence call (and the TensorFlow ``Network`` class of the original StyleGAN2 pickles) into plain
data objects; any other global is refused with an :class:`UnsafeCheckpointError` naming it.

Why the allowed globals are harmless:

- data containers and numpy/torch rebuild helpers only build data (no attribute lookup, no import);
- tensor storages arrive as ``torch.save`` payloads, which we read with ``torch.load(weights_only=True)``;
- everything we hand to the pickle machine is created fresh for each load (closures and throw-away
  classes), so a crafted ``BUILD`` opcode that sets attributes on them cannot change anything outside
  that one load. Builtin types (``OrderedDict``, ``set``, ``numpy.dtype``) reject attribute writes.
"""
import _compat_pickle
import collections
import io
import pickle
import warnings

import numpy as np
import torch

from pulse_ext.checkpoints.errors import CheckpointError, UnsafeCheckpointError

# numpy moved its pickle helpers from numpy.core to numpy._core in 2.0; pickles name either.
_NUMPY_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]
_NUMPY_SCALAR = np.float64(0).__reduce__()[0]

_TORCH_DTYPE_NAMES = frozenset(
    name for name in dir(torch) if isinstance(getattr(torch, name, None), torch.dtype))


class PersistentObject:
    """What ``_reconstruct_persistent_obj(meta)`` would have built, kept as data.

    Attributes: ``class_name`` (str), ``module_src`` (str, never executed), ``version``, ``state``
    (the module ``__dict__``: ``_parameters``, ``_buffers``, ``_modules``, ``_init_args``,
    ``_init_kwargs`` and plain attributes).
    """

    def __init__(self, class_name, module_src, version, state):
        self.class_name = class_name
        self.module_src = module_src
        self.version = version
        self.state = state

    def __repr__(self):
        return f"PersistentObject({self.class_name!r})"


class TFNetwork:
    """The ``__setstate__`` state of ``dnnlib.tflib.network.Network`` (original TF StyleGAN2), as data.

    ``state`` holds ``version``, ``name``, ``static_kwargs``, ``components`` (name -> TFNetwork),
    ``build_module_src`` (never executed), ``build_func_name`` and ``variables`` ([(name, ndarray)]).
    """

    def __init__(self, state):
        self.state = state

    def __repr__(self):
        return f"TFNetwork({self.state.get('name')!r})"


def _make_allowed_globals():
    """Fresh objects for one load: see the module docstring for why they are fresh."""

    class EasyDict(dict):  # dnnlib.util.EasyDict without attribute magic: a plain dict
        pass

    class NetworkStub:  # dnnlib.tflib.network.Network: remembers the state it is given
        def __setstate__(self, state):
            if not isinstance(state, dict):
                raise CheckpointError(f"TensorFlow Network state must be a dict, got {type(state).__name__}")
            self.captured = TFNetwork(state)

    def reconstruct_persistent_obj(meta):
        if not isinstance(meta, dict):
            raise CheckpointError(f"persistence meta must be a dict, got {type(meta).__name__}")
        if meta.get("type") != "class":
            raise CheckpointError(f"persistence meta type {meta.get('type')!r} is not 'class'")
        class_name, module_src = meta.get("class_name"), meta.get("module_src")
        state = meta.get("state")
        if not isinstance(class_name, str) or not isinstance(module_src, str) or not isinstance(state, dict):
            raise CheckpointError("persistence meta lacks class_name/module_src/state")
        return PersistentObject(class_name, module_src, meta.get("version"), dict(state))

    def load_from_bytes(payload):
        if not isinstance(payload, (bytes, bytearray)):
            raise CheckpointError(f"tensor storage payload must be bytes, got {type(payload).__name__}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TypedStorage deprecation chatter
                return torch.load(io.BytesIO(bytes(payload)), map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for bad payloads
            raise CheckpointError(f"tensor storage inside the pickle is unreadable ({exc})") from None

    def rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, *rest):
        if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
            raise CheckpointError(f"tensor rebuilt from {type(storage).__name__}, expected a storage")
        if backward_hooks:  # hooks are callables: a tensor file has no business carrying them
            raise CheckpointError("tensor rebuilt with backward hooks")
        return torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
                                               collections.OrderedDict(), *rest)

    def rebuild_parameter(data, requires_grad, backward_hooks):
        if not isinstance(data, torch.Tensor) or backward_hooks:
            raise CheckpointError("parameter rebuilt from a non-tensor or with backward hooks")
        return torch.nn.Parameter(data, requires_grad=bool(requires_grad))

    allowed = {
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): reconstruct_persistent_obj,
        ("dnnlib.util", "EasyDict"): EasyDict,
        ("dnnlib", "EasyDict"): EasyDict,
        ("dnnlib.tflib.network", "Network"): NetworkStub,
        ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
        ("torch.storage", "_load_from_bytes"): load_from_bytes,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("numpy", "dtype"): np.dtype,
        ("numpy", "ndarray"): np.ndarray,
    }
    for numpy_core in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(numpy_core, "_reconstruct")] = _NUMPY_RECONSTRUCT
        allowed[(numpy_core, "scalar")] = _NUMPY_SCALAR
    return allowed, NetworkStub


class SafeUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that admits only the allow-list above; see the module docstring."""

    def __init__(self, file):
        super().__init__(file)
        self._allowed, self._network_stub = _make_allowed_globals()

    def find_class(self, module, name):
        # Protocol 0-2 pickles name Python 2 modules (__builtin__, copy_reg); map them as pickle does.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        obj = self._allowed.get((module, name))
        if obj is not None:
            return obj
        if module == "torch" and name in _TORCH_DTYPE_NAMES:
            return getattr(torch, name)
        raise UnsafeCheckpointError(
            f"refused global '{module}.{name}': not on the allow-list of data types "
            "(the file may be malicious, or a format pulse_ext does not read)", f"{module}.{name}")

    def persistent_load(self, pid):
        raise UnsafeCheckpointError(f"refused persistent id {pid!r} in a plain pickle")

    def load(self):
        return _unwrap_networks(super().load(), self._network_stub)


def _unwrap_networks(obj, network_stub, _depth=0):
    """Replace NetworkStub instances (only possible inside tuples/lists/dicts) by their TFNetwork."""
    if isinstance(obj, network_stub):
        captured = getattr(obj, "captured", None)
        if captured is None:
            raise CheckpointError("TensorFlow Network object without state")
        state = captured.state
        components = state.get("components")
        if isinstance(components, dict):
            state["components"] = {k: _unwrap_networks(v, network_stub, _depth + 1) for k, v in components.items()}
        return captured
    if _depth > 4:
        return obj
    if isinstance(obj, tuple):
        return tuple(_unwrap_networks(v, network_stub, _depth + 1) for v in obj)
    if isinstance(obj, list):
        return [_unwrap_networks(v, network_stub, _depth + 1) for v in obj]
    return obj


def safe_load_pickle(fileobj):
    """Read one pickle from ``fileobj`` with :class:`SafeUnpickler`; malformed data -> CheckpointError."""
    try:
        return SafeUnpickler(fileobj).load()
    except CheckpointError:
        raise
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, RuntimeError, OverflowError, MemoryError, UnicodeDecodeError) as exc:
        detail = "file ends early (truncated download?)" if isinstance(exc, EOFError) else f"{type(exc).__name__}: {exc}"
        raise CheckpointError(f"corrupt or truncated pickle: {detail}") from None
