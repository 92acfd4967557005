"""A finished session's result, from the node's safetensors answer (or its JSON one)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Dict, ItemsView, Iterator, KeysView, Mapping, Optional

import numpy as np

from . import safetensors
from .errors import FhenodeError


@dataclass
class Result:
    """The aggregate: ``tensors`` by name (float64), with the facts the node reports.

    ``error_bound`` is the largest error of any value from fixed-point rounding;
    ``total_weight`` is set for weighted sessions only.
    """

    session: str
    kind: str
    tensors: Dict[str, np.ndarray]
    contributors: int
    error_bound: float
    clipped: int
    total_weight: Optional[float] = None
    metadata: Dict[str, str] = field(default_factory=dict)

    @property
    def values(self) -> np.ndarray:
        """Every value, flat: the tensors concatenated in name order, as the node lays them out."""
        parts = [self.tensors[name].reshape(-1) for name in sorted(self.tensors)]
        return np.concatenate(parts) if parts else np.zeros(0)

    # Dict-like over the tensors: ``result["w"]``, ``dict(result)``, ``for name in result``.
    # (``values`` is the flat vector above, not dict.values.)
    def __getitem__(self, name: str) -> np.ndarray:
        return self.tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def __contains__(self, name: object) -> bool:
        return name in self.tensors

    def keys(self) -> KeysView[str]:
        return self.tensors.keys()

    def items(self) -> ItemsView[str, np.ndarray]:
        return self.tensors.items()

    @classmethod
    def from_safetensors(cls, data: bytes) -> "Result":
        """Parses the node's answer: F64 tensors and string ``__metadata__``."""
        try:
            tensors, meta = safetensors.loads(data)
        except ValueError as e:
            raise FhenodeError(f"malformed result: {e}", code="bad_result") from None
        weight = meta.get("total_weight")
        try:
            return cls(
                session=meta.get("session", ""),
                kind=meta.get("kind", ""),
                tensors={k: np.asarray(v, dtype=np.float64) for k, v in tensors.items()},
                contributors=int(meta.get("contributors", 0)),
                error_bound=float(meta.get("error_bound", "nan")),
                clipped=int(meta.get("clipped", 0)),
                total_weight=float(weight) if weight is not None else None,
                metadata=meta,
            )
        except ValueError as e:
            raise FhenodeError(f"malformed result metadata {meta}: {e}", code="bad_result") from None

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> "Result":
        """Parses the JSON form (nodes without safetensors results): one tensor ``values``."""
        weight = body.get("total_weight")
        return cls(
            session=str(body.get("session", "")),
            kind=str(body.get("kind", "")),
            tensors={"values": np.asarray(body.get("values", []), dtype=np.float64)},
            contributors=int(body.get("contributors", 0)),
            error_bound=float(body.get("error_bound", float("nan"))),
            clipped=int(body.get("clipped", 0)),
            total_weight=float(weight) if weight is not None else None,
            metadata={k: str(v) for k, v in body.items() if k != "values"},
        )

    @classmethod
    def from_body(cls, content_type: str, body: bytes) -> "Result":
        """Parses a result answer by its Content-Type."""
        essence = content_type.split(";")[0].strip().lower()
        if essence in ("application/safetensors", "application/x-safetensors"):
            return cls.from_safetensors(body)
        if essence == "application/json":
            return cls.from_json(json.loads(body.decode("utf-8")))
        raise FhenodeError(f"unexpected result Content-Type {content_type!r}", code="bad_result")
