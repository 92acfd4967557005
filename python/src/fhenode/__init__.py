"""fhenode: the Python client of an fhenode node.

Federated learning without showing anyone your update: each participant submits its update
to its own node, which encrypts it; the committee's nodes only ever decrypt the aggregate.

    from fhenode import Node, shapes_of

    node = Node("http://127.0.0.1:8470")
    node.wait_ready(session_id)
    node.submit(session_id, {"w": w, "b": b})
    result = node.result(session_id, wait=300)
    result.tensors["w"]
"""

from .arrays import BFloat16, shapes_of, to_numpy
from .client import Node
from .errors import (
    BadInput,
    Conflict,
    FhenodeError,
    InvalidSpec,
    NotAllowed,
    NotFound,
    SessionFailed,
    Timeout,
    Unauthorized,
    Unavailable,
    UnknownSession,
    Unreachable,
    UnsupportedFormat,
)
from .result import Result

__version__ = "0.1.0"

__all__ = [
    "BFloat16",
    "BadInput",
    "Conflict",
    "FhenodeError",
    "InvalidSpec",
    "Node",
    "NotAllowed",
    "NotFound",
    "Result",
    "SessionFailed",
    "Timeout",
    "Unauthorized",
    "Unavailable",
    "UnknownSession",
    "Unreachable",
    "UnsupportedFormat",
    "shapes_of",
    "to_numpy",
]
