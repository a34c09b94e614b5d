"""Unpickling that cannot run code: only allow-listed globals are resolved.

A pickle is a program: ``GLOBAL os system`` + ``REDUCE`` runs a shell command on load. The
files this project unpickles (CIFAR's python batches, fairseq's ``.pt`` checkpoints with
their configs) only ever need containers, numpy arrays, tensors and config objects, so
every other global either stops the load (:data:`NUMPY_ARRAYS`: CIFAR) or becomes an inert
stand-in object that holds its arguments and state but executes nothing (checkpoints: a
fairseq config dataclass or enum that is not installed here, or anything else). With that,
third-party checkpoints load without ``torch.load(weights_only=False)``'s code execution and
without an opt-in.
"""
from __future__ import annotations

import pickle
import types
from typing import IO, Any, Callable, FrozenSet, Tuple

import torch

Global = Tuple[str, str]
NUMPY_ARRAYS: FrozenSet[Global] = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
})
_CONTAINERS: FrozenSet[Global] = frozenset(
    [("collections", "OrderedDict"), ("collections", "defaultdict"), ("typing", "Any"),
     ("argparse", "Namespace"), ("torch._tensor", "_rebuild_from_type_v2"),
     ("torch.serialization", "_get_layout"), ("torch", "Size"), ("torch", "device")]
    + [("builtins", n) for n in ("dict", "list", "tuple", "set", "frozenset", "int", "float",
                                 "str", "bytes", "bool", "complex", "bytearray")])
_OMEGACONF = frozenset({"DictConfig", "ListConfig", "Metadata", "ContainerMetadata", "AnyNode",
                        "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "EnumNode",
                        "BytesNode", "PathNode", "ValueNode"})


def checkpoint_global(module: str, name: str) -> bool:
    """Globals a torch checkpoint with a fairseq/OmegaConf config may reference."""
    if (module, name) in _CONTAINERS or (module, name) in NUMPY_ARRAYS:
        return True
    if module == "torch._utils":
        return name.startswith("_rebuild_")
    if module == "torch":
        return isinstance(getattr(torch, name, None), torch.dtype)
    return module.startswith("omegaconf") and name in _OMEGACONF


class Inert:
    """Stands in for a global that is not allowed: keeps what the pickle gives it, runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __call__(self, *args: Any, **kwargs: Any) -> "Inert":  # e.g. getattr(cls, "method")(...)
        return Inert(*args, **kwargs)


class RestrictedUnpickler(pickle.Unpickler):
    """``find_class`` resolves only globals for which ``allowed(module, name)`` holds; the
    others become :class:`Inert` subclasses (``stub=True``) or stop the load."""

    allowed: Callable[[str, str], bool] = staticmethod(checkpoint_global)
    stub: bool = True

    def find_class(self, module: str, name: str) -> Any:
        if self.allowed(module, name):
            return super().find_class(module, name)
        if self.stub:
            return type(name, (Inert,), {"__module__": f"inert.{module}"})
        raise pickle.UnpicklingError(f"the pickle references {module}.{name}, which is not "
                                     f"allowed here (only plain data and numpy arrays)")


class _ArraysOnly(RestrictedUnpickler):
    allowed = staticmethod(lambda module, name: (module, name) in NUMPY_ARRAYS)
    stub = False


def load_arrays(f: IO[bytes], **kwargs: Any) -> Any:
    """``pickle.load`` of a file of plain containers and numpy arrays (CIFAR's batches);
    any other global raises :class:`pickle.UnpicklingError`."""
    return _ArraysOnly(f, **kwargs).load()


# a module object for ``torch.load(..., pickle_module=checkpoint_pickle)``
checkpoint_pickle = types.ModuleType("mmkd_checkpoint_pickle")
checkpoint_pickle.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]
checkpoint_pickle.load = lambda f, **kw: RestrictedUnpickler(f, **kw).load()  # type: ignore[attr-defined]
