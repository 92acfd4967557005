"""Secure aggregation end to end on three real nodes (the ``cluster`` fixture).

Node 0 coordinates; all three form the committee (threshold 2) and all three participate,
each submitting to its own node. Results are read from a participant's node.
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import pytest

import fhenode
from fhenode import Node

WAIT = 120.0  # bound on each wait for a phase
_ids = itertools.count()


def create(cluster: List[Node], **spec: Any) -> str:
    """A fast session coordinated by node 0 with every node on the committee and taking part."""
    ids = [n.peer_id for n in cluster]
    spec.setdefault("id", f"py-{int(time.time())}-{next(_ids)}")
    info = cluster[0].create_session(
        committee=ids, participants=ids, threshold=2, profile="fast", deadline_secs=120, **spec
    )
    return str(info["id"])


def run(
    cluster: List[Node],
    session: str,
    updates: Sequence[Any],
    weights: Optional[Sequence[float]] = None,
) -> fhenode.Result:
    """Each node submits its update once it may, then the result is read from node 1."""
    for i, (node, update) in enumerate(zip(cluster, updates)):
        node.wait_ready(session, timeout=WAIT)
        receipt = node.submit(session, update, weight=None if weights is None else weights[i])
        assert receipt["session"] == session
    return cluster[1].result(session, wait=WAIT)


def assert_close(result: fhenode.Result, name: str, expected: np.ndarray) -> None:
    assert dict(result)[name] is result.tensors[name]  # a result reads as a dict of arrays
    got = result[name]
    assert got.dtype == np.float64
    assert got.shape == expected.shape, name
    error = np.abs(got - expected)
    assert (error <= result.error_bound + 1e-12).all(), (name, error.max(), result.error_bound)


def updates_for(cluster: List[Node], seed: int) -> List[Dict[str, np.ndarray]]:
    """One dict of four tensors per participant, their keys inserted in a different order."""
    rng = np.random.default_rng(seed)
    orders = [["w", "b", "h", "s"], ["s", "h", "b", "w"], ["h", "w", "s", "b"]]
    updates = []
    for order in orders[: len(cluster)]:
        tensors: Dict[str, np.ndarray] = {
            "w": rng.uniform(-1, 1, (3, 4)).astype(np.float32),
            "b": rng.uniform(-1, 1, 5),  # float64
            "h": rng.uniform(-1, 1, (2, 2)).astype(np.float16),
            "s": np.array(rng.uniform(-1, 1), dtype=np.float32),  # 0-d
        }
        updates.append({name: tensors[name] for name in order})
    return updates


def mean_of(updates: Sequence[Mapping[str, np.ndarray]], name: str, weights=None) -> np.ndarray:
    stacked = np.stack([np.asarray(u[name], dtype=np.float64) for u in updates])
    return np.average(stacked, axis=0, weights=weights)


def test_flat_values_mean(cluster: List[Node]) -> None:
    rng = np.random.default_rng(1)
    updates = [rng.uniform(-2, 2, 6).astype(np.float32) for _ in cluster]
    session = create(cluster, length=6)
    result = run(cluster, session, updates)
    assert result.contributors == 3 and result.kind == "mean"
    expected = np.mean(np.stack(updates).astype(np.float64), axis=0)
    assert result.values.shape == (6,)
    assert (np.abs(result.values - expected) <= result.error_bound + 1e-12).all()


def test_named_tensors_mean(cluster: List[Node]) -> None:
    updates = updates_for(cluster, seed=2)
    session = create(cluster, shapes=fhenode.shapes_of(updates[0]))
    result = run(cluster, session, updates)
    assert result.contributors == 3
    assert set(result.tensors) == {"w", "b", "h", "s"}
    for name in result.tensors:
        assert_close(result, name, mean_of(updates, name))
    # Any participant gets the same result.
    again = cluster[2].result(session)
    np.testing.assert_array_equal(again.values, result.values)


def test_integer_tensor_is_refused_by_name(cluster: List[Node]) -> None:
    session = create(cluster, shapes={"w": (3,), "steps": (2,)})
    cluster[0].wait_ready(session, timeout=WAIT)
    update = {"w": np.zeros(3, np.float32), "steps": np.array([1, 2], dtype=np.int64)}
    with pytest.raises(fhenode.BadInput) as info:
        cluster[0].submit(session, update)
    assert "steps" in info.value.message


def test_weighted_mean(cluster: List[Node]) -> None:
    updates = updates_for(cluster, seed=3)
    weights = [10, 20, 70]
    session = create(
        cluster, shapes=fhenode.shapes_of(updates[0]), result="weighted_mean", max_weight=1000
    )
    cluster[0].wait_ready(session, timeout=WAIT)
    with pytest.raises(fhenode.BadInput):
        cluster[0].submit(session, updates[0])  # no weight
    with pytest.raises(fhenode.BadInput):
        cluster[0].submit(session, updates[0], weight=1001)  # above max_weight
    result = run(cluster, session, updates, weights)
    assert result.total_weight == 100
    for name in ["w", "b", "h", "s"]:
        assert_close(result, name, mean_of(updates, name, weights))


def test_unknown_content_type_is_unsupported(cluster: List[Node]) -> None:
    session = create(cluster, length=2)
    with pytest.raises(fhenode.UnsupportedFormat):
        cluster[0]._request(
            "POST", f"/v1/sessions/{session}/update", body=b"1,2\n", content_type="text/csv"
        )


def test_series_of_three_rounds_across_a_participant_restart(cluster: Any) -> None:
    """A 3-round series; node 2 is killed (SIGKILL) between rounds 1 and 2, restarted, and
    takes part in round 2."""
    ids = [n.peer_id for n in cluster]
    created = cluster[0].create_series(
        id=f"series-{int(time.time())}-{next(_ids)}",
        committee=ids,
        participants=ids,
        threshold=2,
        profile="fast",
        deadline_secs=120,
        length=4,
        rounds=3,
    )
    series = str(created["id"])
    assert created["planned_rounds"] == 3
    assert [r["session"] for r in created["rounds"]] == [Node.round_session(series, 1)]
    for round_ in (1, 2, 3):
        if round_ == 2:
            cluster.restart(2)
        session = Node.round_session(series, round_)
        updates = [np.full(4, round_ + i, np.float32) for i in range(len(cluster))]
        result = run(cluster, session, updates)
        assert result.contributors == 3, round_
        expected = np.mean(np.stack(updates).astype(np.float64), axis=0)
        assert (np.abs(result.values - expected) <= result.error_bound + 1e-12).all()
    deadline = time.monotonic() + WAIT
    while not (info := cluster[0].series(series))["finished"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert info["failure"] is None
    assert [(r["round"], r["phase"], r["submissions"]) for r in info["rounds"]] == [
        (1, "done", 3),
        (2, "done", 3),
        (3, "done", 3),
    ]
    with pytest.raises(fhenode.UnknownSession):
        cluster[1].series(series)  # only the coordinator runs it
