"""The same federated logistic regression, run by Flower with fhenode doing the averaging.

``server_app`` uses :class:`fhenode.flower.FhenodeFedAvg`: each round it opens a session on
the coordinator's node and sends its id with the global model; ``client_app`` trains as any
Flower client would, and :func:`fhenode.flower.fhenode_mod` submits the trained model to the
client's own node and replies with ``num-examples`` only. The Flower server reads the
weighted mean from the coordinator's node: it never receives a client's model.

Here the three Flower clients and the server run in this process over
:class:`fhenode.flower_local.LocalGrid` (no SuperLink, no Ray), next to three
``fhenode run`` processes on loopback ($FHENODE_BIN, else target/release/fhenode).

    pip install './python[flower]'
    python examples/flower_logistic_regression.py [--rounds 5] [--seed 0]
"""

from __future__ import annotations

import argparse
import logging
from typing import List, Optional

from flwr.app import (
    Array,
    ArrayRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
    UserConfig,
)
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fhenode import Node
from fhenode.flower import FhenodeFedAvg, fhenode_mod
from fhenode.flower_local import LocalGrid, run_server_app
from fhenode.testing import LocalCluster

import logreg

WAIT = 120.0  # bound on every wait on the nodes and on the clients, in seconds

# -- the ClientApp: plain Flower training, plus fhenode_mod --------------------------------

client_app = ClientApp(mods=[fhenode_mod])


@client_app.train()
def train(message: Message, context: Context) -> Message:
    """Trains on this client's partition (``partition-id`` in its node config) and returns
    the model and num-examples, as for plain FedAvg: fhenode_mod takes it from there."""
    parts, _ = logreg.make_data(int(context.run_config["seed"]))
    data = parts[int(context.node_config["partition-id"])]
    model = {name: array.numpy() for name, array in message.content.array_records["arrays"].items()}
    trained = logreg.train(model, data)
    content = RecordDict(
        {
            "arrays": ArrayRecord({name: Array(v) for name, v in trained.items()}),
            "metrics": MetricRecord({"num-examples": len(data[1])}),
        }
    )
    return Message(content, reply_to=message)


# -- the ServerApp: FedAvg through fhenode, accuracy on a held-out set ----------------------

server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """Reads the coordinator's node and the participants' peer ids from the run config."""
    config = context.run_config
    _, test = logreg.make_data(int(config["seed"]))
    strategy = FhenodeFedAvg(
        Node(str(config["fhenode-url"])),
        participants=str(config["fhenode-participants"]).split(","),
        threshold=2,
        max_weight=10_000,
        profile="fast",
        deadline_secs=int(WAIT),
        ready_timeout=WAIT,
        result_timeout=WAIT,
        fraction_evaluate=0.0,  # evaluated centrally below instead
    )

    def evaluate(round_: int, arrays: ArrayRecord) -> Optional[MetricRecord]:
        model = {name: array.numpy() for name, array in arrays.items()}
        acc = logreg.accuracy(model, test)
        info = strategy.rounds.get(round_)
        detail = f" (session {info.session}, error bound {info.error_bound:.1e})" if info else ""
        print(f"round {round_}: accuracy {acc:.3f}{detail}", flush=True)
        return MetricRecord({"accuracy": acc})

    initial = ArrayRecord({name: Array(v) for name, v in logreg.initial_model().items()})
    strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=int(config["num-server-rounds"]),
        timeout=WAIT,
        evaluate_fn=evaluate,
    )


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true", help="show Flower's log")
    args = parser.parse_args()
    if not args.verbose:
        logging.getLogger("flwr").setLevel(logging.ERROR)

    with LocalCluster(3) as nodes:
        run_config: UserConfig = {
            "num-server-rounds": args.rounds,
            "seed": args.seed,
            "fhenode-url": nodes[0].url,
            "fhenode-participants": ",".join(node.peer_id for node in nodes),
        }
        # Each Flower client is bound to its own fhenode node.
        node_configs: List[UserConfig] = [
            {"fhenode-url": node.url, "partition-id": i, "num-partitions": len(nodes)}
            for i, node in enumerate(nodes)
        ]
        grid = LocalGrid(client_app, node_configs, run_config=run_config)
        run_server_app(server_app, grid, run_config)
        assert not grid.errors, grid.errors
        sent = sum(len(r.content.array_records) for r in grid.replies if r.has_content())
        print(f"{len(grid.replies)} client replies, {sent} of them with arrays")


if __name__ == "__main__":
    run()
