"""Turning what callers hold (numpy arrays, torch tensors, nested lists, scalars) into numpy.

torch is never imported: a tensor is recognised by its ``.detach()`` method, so the package
works the same with or without torch installed.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple, Union

import numpy as np

Shape = Tuple[int, ...]


class BFloat16:
    """Float values to be stored as bfloat16, which numpy has no dtype for.

    Holds them as float32; :mod:`fhenode.safetensors` writes each as the upper 16 bits of its
    float32, rounded to nearest even. Torch ``bfloat16`` tensors become one of these.
    """

    def __init__(self, values: Any):
        self.values = np.asarray(values, dtype=np.float32)

    @property
    def shape(self) -> Shape:
        return self.values.shape

    def bits(self) -> np.ndarray:
        """The bfloat16 bit patterns (uint16), rounded to nearest even; NaNs stay NaNs."""
        f32 = np.asarray(self.values, dtype="<f4")
        wide = f32.view("<u4").astype(np.uint64)
        rounded = (wide + 0x7FFF + ((wide >> 16) & 1)) >> 16
        quiet_nan = (wide >> 16) | 0x40
        return np.asarray(np.where(np.isnan(f32), quiet_nan, rounded), dtype=np.uint16)

    def __repr__(self) -> str:
        return f"BFloat16(shape={self.shape})"


Tensor = Union[np.ndarray, BFloat16]


def is_torch_tensor(value: Any) -> bool:
    """Whether ``value`` looks like a torch tensor (duck typing: torch need not be installed)."""
    return hasattr(value, "detach") and hasattr(value, "cpu") and hasattr(value, "numpy")


def to_numpy(value: Any) -> Tensor:
    """``value`` as a numpy array of its own dtype (a :class:`BFloat16` for bfloat16 data).

    Torch tensors are detached and copied to the CPU; lists and scalars go through
    ``numpy.asarray`` (so Python floats become float64 and Python ints int64).
    """
    if isinstance(value, (np.ndarray, BFloat16)):
        return value
    if is_torch_tensor(value):
        tensor = value.detach().cpu()
        if str(getattr(tensor, "dtype", "")) == "torch.bfloat16":
            return BFloat16(tensor.float().numpy())
        return np.asarray(tensor.numpy())
    return np.asarray(value)


def flat_float32(value: Any) -> np.ndarray:
    """``value`` flattened in C order as little-endian float32, the node's raw update form."""
    array = to_numpy(value)
    if isinstance(array, BFloat16):
        array = array.values
    return np.asarray(array, dtype="<f4").reshape(-1)


def shapes_of(tensors: Mapping[str, Any]) -> Dict[str, Shape]:
    """The shape of each named tensor, for a session's ``shapes``."""
    return {name: tuple(int(d) for d in to_numpy(t).shape) for name, t in tensors.items()}


def as_shapes(shapes: Mapping[str, Any]) -> Dict[str, Shape]:
    """Shapes given as tuples/lists of ints, or as arrays (anything with ``.shape``)."""
    out: Dict[str, Shape] = {}
    for name, spec in shapes.items():
        dims = spec.shape if hasattr(spec, "shape") else spec
        if not isinstance(dims, (tuple, list)):
            raise TypeError(
                f"shape of {name!r} must be a tuple of ints or an array, not {type(spec).__name__}"
            )
        out[name] = tuple(int(d) for d in dims)
    return out
