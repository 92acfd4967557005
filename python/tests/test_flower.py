"""The Flower integration: FedAvg through fhenode equals plain FedAvg, and no client reply
carries arrays.

Three ClientApps (with ``fhenode_mod``), each bound to one node of the ``cluster`` fixture,
train a numpy logistic regression for three rounds under :class:`FhenodeFedAvg`, driven by
Flower's own ``Strategy.start`` over :class:`LocalGrid` (in-process: Flower's simulation
engine needs Ray). The same training is replayed with a plain numpy FedAvg to compare.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import (  # noqa: E402
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
    UserConfig,
)
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402

from fhenode import Node  # noqa: E402
from fhenode.flower import (  # noqa: E402
    ArraysInReply,
    FhenodeFedAvg,
    check_no_arrays,
    fhenode_mod,
)
from fhenode.flower_local import LocalGrid, run_server_app  # noqa: E402

ROUNDS = 3
SIZES = [60, 100, 160]  # examples per client: unequal, so the weighting matters
FEATURES = 4
EPOCHS, LR = 5, 0.5
WAIT = 60.0  # bound on every wait on the nodes and on the clients' replies


def partition(index: int) -> Tuple[np.ndarray, np.ndarray]:
    """Client ``index``'s data: fixed seeds, labels from a fixed linear rule plus noise."""
    rng = np.random.default_rng(100 + index)
    x = rng.normal(size=(SIZES[index], FEATURES))
    truth = np.array([1.5, -2.0, 0.5, 1.0])
    y = (x @ truth + 0.3 + rng.normal(scale=0.5, size=SIZES[index]) > 0).astype(np.float64)
    return x, y


def local_train(
    w0: np.ndarray, b0: np.ndarray, x: np.ndarray, y: np.ndarray
) -> Tuple[np.ndarray, np.ndarray]:
    """Full-batch gradient descent on the logistic loss: deterministic, float64."""
    w, b = w0.copy(), float(b0)
    for _ in range(EPOCHS):
        p = 1.0 / (1.0 + np.exp(-(x @ w + b)))
        w -= LR * x.T @ (p - y) / len(y)
        b -= LR * float(np.mean(p - y))
    return w, np.asarray(b)


def client_app() -> ClientApp:
    app = ClientApp(mods=[fhenode_mod])

    @app.train()
    def train(message: Message, context: Context) -> Message:
        arrays = message.content.array_records["arrays"]
        x, y = partition(int(context.node_config["partition"]))
        w, b = local_train(arrays["w"].numpy(), arrays["b"].numpy(), x, y)
        content = RecordDict(
            {
                "arrays": ArrayRecord({"w": Array(w), "b": Array(b)}),
                "metrics": MetricRecord({"num-examples": len(y)}),
            }
        )
        return Message(content, reply_to=message)

    return app


def initial_arrays() -> Dict[str, np.ndarray]:
    return {"w": np.zeros(FEATURES), "b": np.asarray(0.0)}  # "b" is 0-d


def plain_fedavg() -> Dict[str, np.ndarray]:
    """The reference: the same rounds, averaged in the clear, weighted by examples."""
    model = initial_arrays()
    for _ in range(ROUNDS):
        updates = [local_train(model["w"], model["b"], *partition(i)) for i in range(3)]
        model = {
            "w": np.average([u[0] for u in updates], axis=0, weights=SIZES),
            "b": np.asarray(np.average([u[1] for u in updates], weights=SIZES)),
        }
    return model


@pytest.mark.node
def test_fhenode_fedavg_equals_plain_fedavg(cluster: List[Node]) -> None:
    ids = [n.peer_id for n in cluster]
    strategy = FhenodeFedAvg(
        cluster[0],
        participants=ids,
        threshold=2,
        profile="fast",
        max_weight=1000,
        deadline_secs=120,
        ready_timeout=WAIT,
        result_timeout=WAIT,
        fraction_evaluate=0.0,  # no federated evaluation: only training is compared
    )
    final: Dict[str, ArrayRecord] = {}
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        start = ArrayRecord({k: Array(v) for k, v in initial_arrays().items()})
        result = strategy.start(grid=grid, initial_arrays=start, num_rounds=ROUNDS, timeout=WAIT)
        final["arrays"] = result.arrays

    configs: List[UserConfig] = [
        {"fhenode-url": node.url, "partition": i} for i, node in enumerate(cluster)
    ]
    grid = LocalGrid(client_app(), configs)
    run_server_app(server, grid)

    assert grid.errors == []
    assert len(grid.replies) == ROUNDS * len(cluster)
    check_no_arrays(grid.replies)  # no client reply carried model arrays
    assert all(r.content.config_records["fhenode-receipt"]["session"] for r in grid.replies)

    assert sorted(strategy.rounds) == list(range(1, ROUNDS + 1))
    for info in strategy.rounds.values():
        assert info.contributors == 3 and info.total_weight == sum(SIZES) and info.clipped == 0

    # Each round's mean is exact up to the fixed-point rounding error_bound, per value. Its
    # error carries into the next round through local training, which on this convex,
    # smooth loss with LR below 2/L does not amplify it (gradient steps are non-expansive in
    # the 2-norm), so after ROUNDS rounds the error is at most ROUNDS * bound * sqrt(size)
    # in the 2-norm; 10 * ROUNDS * bound per value covers that (sqrt(5) < 10) with slack.
    bound = max(info.error_bound for info in strategy.rounds.values())
    assert 0 < bound < 1e-5
    expected = plain_fedavg()
    got = final["arrays"]
    assert set(got) == {"w", "b"}
    for name, want in expected.items():
        value = got[name].numpy()
        assert value.dtype == np.float64 and value.shape == want.shape, name
        np.testing.assert_allclose(value, want, rtol=0, atol=10 * ROUNDS * bound, err_msg=name)
    # ... and the rounds did move the model (the comparison is not between two zeros).
    assert np.abs(got["w"].numpy()).max() > 0.1


def test_guard_refuses_a_reply_with_arrays() -> None:
    """A ClientApp without fhenode_mod returns its arrays: the strategy refuses the round
    before asking any node for anything (the node below does not exist)."""
    plain = ClientApp()

    @plain.train()
    def train(message: Message, context: Context) -> Message:
        content = RecordDict(
            {
                "arrays": message.content.array_records["arrays"],
                "metrics": MetricRecord({"num-examples": 10}),
            }
        )
        return Message(content, reply_to=message)

    grid = LocalGrid(plain, [{}])
    content = RecordDict(
        {
            "arrays": ArrayRecord({"w": Array(np.ones(3))}),
            "config": ConfigRecord({"fhenode-session": "s-1"}),
        }
    )
    message = Message(content, next(iter(grid.get_node_ids())), "train")
    replies = list(grid.send_and_receive([message]))
    assert len(replies) == 1 and replies[0].content.array_records
    strategy = FhenodeFedAvg(Node("http://127.0.0.1:9"), participants=["peer"])
    with pytest.raises(ArraysInReply):
        strategy.aggregate_train(1, replies)
    with pytest.raises(ArraysInReply):
        check_no_arrays(replies)


def test_mod_passes_other_messages_through() -> None:
    """Without a session id in its config (e.g. plain FedAvg), a train message is answered
    by the train function unchanged, arrays included; no node is contacted."""
    app = ClientApp(mods=[fhenode_mod])

    @app.train()
    def train(message: Message, context: Context) -> Message:
        return Message(RecordDict({"arrays": message.content.array_records["arrays"]}), reply_to=message)

    grid = LocalGrid(app, [{"fhenode-url": "http://127.0.0.1:9"}])
    content = RecordDict({"arrays": ArrayRecord({"w": Array(np.ones(3))})})
    message = Message(content, next(iter(grid.get_node_ids())), "train")
    (reply,) = grid.send_and_receive([message])
    np.testing.assert_array_equal(reply.content.array_records["arrays"]["w"].numpy(), np.ones(3))


def test_round_without_enough_clients_keeps_the_model() -> None:
    """A client that fails means the round's session cannot finish: the strategy does not
    wait for it (the node below does not exist) and keeps the global model."""
    failing = ClientApp(mods=[fhenode_mod])

    @failing.train()
    def train(message: Message, context: Context) -> Message:
        raise RuntimeError("out of memory")

    grid = LocalGrid(failing, [{"fhenode-url": "http://127.0.0.1:9"}])
    content = RecordDict(
        {
            "arrays": ArrayRecord({"w": Array(np.ones(3))}),
            "config": ConfigRecord({"fhenode-session": "s-1"}),
        }
    )
    message = Message(content, next(iter(grid.get_node_ids())), "train")
    replies = list(grid.send_and_receive([message]))
    assert len(grid.errors) == 1 and replies[0].has_error()
    strategy = FhenodeFedAvg(Node("http://127.0.0.1:9"), participants=["peer"])
    strategy._sessions[1] = "s-1"  # as configure_train would have left it
    assert strategy.aggregate_train(1, replies) == (None, None)
