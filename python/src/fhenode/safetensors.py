"""A small reader and writer of the safetensors format, in pure Python and numpy.

Layout: an 8-byte little-endian header length N; N bytes of JSON mapping each tensor name to
``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets into the data that follows),
plus an optional ``"__metadata__"`` of string values; then the tensors' raw bytes,
little-endian, C order. The header is padded with spaces so the data starts 8-byte aligned.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from .arrays import BFloat16, Shape, to_numpy

METADATA_KEY = "__metadata__"

# The safetensors dtype of each numpy dtype (by kind and size), and back.
_DTYPES: Dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_CODES: Dict[Tuple[str, int], str] = {(dt.kind, dt.itemsize): code for code, dt in _DTYPES.items()}
_BF16 = np.dtype("<u2")

DTYPES = tuple(_DTYPES) + ("BF16",)
"""The safetensors dtypes this module reads and writes."""


def _encode(name: str, value: Any) -> Tuple[str, Shape, bytes]:
    """The dtype code, shape and raw bytes of one tensor."""
    array = to_numpy(value)
    if isinstance(array, BFloat16):
        return "BF16", array.shape, array.bits().astype(_BF16).tobytes()
    if array.dtype.name == "bfloat16":  # ml_dtypes' numpy bfloat16
        return "BF16", array.shape, array.view(np.uint16).astype(_BF16).tobytes()
    code = _CODES.get((array.dtype.kind, array.dtype.itemsize))
    if code is None:
        raise TypeError(f"tensor {name!r} has dtype {array.dtype}, which safetensors cannot hold")
    data = np.asarray(array, dtype=_DTYPES[code]).tobytes(order="C")
    return code, array.shape, data


def dumps(tensors: Mapping[str, Any], metadata: Optional[Mapping[str, str]] = None) -> bytes:
    """Serialises named tensors (each keeps its dtype) in the mapping's order."""
    header: Dict[str, Any] = {}
    if metadata:
        header[METADATA_KEY] = {str(k): str(v) for k, v in metadata.items()}
    chunks = []
    offset = 0
    for name, value in tensors.items():
        if not isinstance(name, str) or name == METADATA_KEY:
            raise ValueError(f"{name!r} cannot name a tensor")
        code, shape, data = _encode(name, value)
        header[name] = {
            "dtype": code,
            "shape": [int(d) for d in shape],
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def loads(data: bytes) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    """The tensors (native byte order; BF16 as float32) and the metadata of a safetensors file."""
    if len(data) < 8:
        raise ValueError("not safetensors: shorter than its 8-byte header length")
    (size,) = struct.unpack_from("<Q", data)
    if size > len(data) - 8:
        raise ValueError(f"safetensors header of {size} bytes runs past the end ({len(data)})")
    try:
        header = json.loads(bytes(data[8 : 8 + size]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"safetensors header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise ValueError("safetensors header is not a JSON object")
    metadata = {str(k): str(v) for k, v in (header.pop(METADATA_KEY, None) or {}).items()}
    body = memoryview(data)[8 + size :]
    tensors: Dict[str, np.ndarray] = {}
    for name, info in header.items():
        code = info.get("dtype")
        dtype = _BF16 if code == "BF16" else _DTYPES.get(code)
        if dtype is None:
            raise ValueError(f"tensor {name!r} has unsupported dtype {code!r}")
        shape = tuple(int(d) for d in info["shape"])
        begin, end = (int(o) for o in info["data_offsets"])
        if not 0 <= begin <= end <= len(body):
            raise ValueError(f"tensor {name!r} lies outside the data ({begin}..{end})")
        if end - begin != math.prod(shape) * dtype.itemsize:
            raise ValueError(f"tensor {name!r}: {end - begin} bytes do not fit {code} {shape}")
        raw = np.frombuffer(body[begin:end], dtype=dtype)
        if code == "BF16":
            array = (raw.astype(np.uint32) << 16).view(np.float32)
        else:
            array = raw.astype(dtype.newbyteorder("="))
        tensors[name] = array.reshape(shape)
    return tensors, metadata
