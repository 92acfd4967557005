"""Federated logistic regression over three fhenode nodes with the plain Python client.

Starts three ``fhenode run`` processes on loopback ($FHENODE_BIN, else
target/release/fhenode), one per participant. Each round node 0 opens a ``weighted_mean``
session; every participant trains on its own data from the current model and submits the
result to **its own** node, weighted by its number of examples; every participant then reads
the weighted mean from its own node and continues from it. No node, and no participant,
ever sees another participant's model in the clear.

    python examples/logistic_regression.py [--rounds 5] [--seed 0]
"""

from __future__ import annotations

import argparse

from fhenode.testing import LocalCluster

import logreg

WAIT = 120.0  # bound on every wait on the nodes, in seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    parts, test = logreg.make_data(args.seed)
    with LocalCluster(3) as nodes:
        for node in nodes:
            # Short long polls: a node may answer a long poll only when it times out, not
            # when the session's phase changes.
            node.poll_secs = 1.0
        ids = [node.peer_id for node in nodes]
        models = [logreg.initial_model() for _ in nodes]  # each participant's copy
        print(f"round 0: accuracy {logreg.accuracy(models[0], test):.3f}")
        for round_ in range(1, args.rounds + 1):
            info = nodes[0].create_session(
                committee=ids,
                participants=ids,
                threshold=2,
                shapes={name: value.shape for name, value in models[0].items()},
                result="weighted_mean",
                max_weight=10_000,
                profile="fast",
                deadline_secs=int(WAIT),
            )
            session = info["id"]
            # In a deployment each participant does this on its own machine, concurrently.
            for node, model, data in zip(nodes, models, parts):
                update = logreg.train(model, data)
                node.wait_ready(session, timeout=WAIT)
                node.submit(session, update, weight=len(data[1]))
            results = [node.result(session, wait=WAIT) for node in nodes]
            models = [dict(result.tensors) for result in results]
            print(
                f"round {round_}: accuracy {logreg.accuracy(models[0], test):.3f} "
                f"(session {session}, total weight {results[0].total_weight:g}, "
                f"error bound {results[0].error_bound:.1e})"
            )


if __name__ == "__main__":
    main()
