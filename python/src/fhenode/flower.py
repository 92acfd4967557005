"""Flower integration: FedAvg in which the Flower server never sees a client's model update.

Plain FedAvg has every client send its trained arrays to the server, which averages them.
Here each round's average is computed by fhenode instead:

* :class:`FhenodeFedAvg` (server side) creates, on a coordinator node, one ``weighted_mean``
  session per round with the model's shapes, and sends its id to the clients in the train
  message (with the global model, as usual). The clients answer with ``num-examples`` and a
  receipt, **no arrays**; the strategy then reads the weighted mean from the coordinator
  node and makes it the new global model. Any reply carrying arrays is refused
  (:func:`check_no_arrays`).
* :func:`fhenode_mod` (client side) lets the ClientApp's train function run unchanged, then
  submits the arrays it returned to the client's **own** node (which encrypts them), weighted
  by ``num-examples``, and strips them from the reply.

Written for Flower's Message API (``flwr.app``, ``flwr.serverapp``, ``flwr.clientapp``), tested
with ``flwr`` 1.42; install with ``pip install 'fhenode[flower]'``. Client nodes are told
which fhenode node is theirs in their node config: ``fhenode-url`` (and ``fhenode-token``
when the node's API needs one), e.g. ``flower-supernode --node-config
"fhenode-url='http://127.0.0.1:8470'"``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

try:
    from flwr.app import (
        Array,
        ArrayRecord,
        ConfigRecord,
        Context,
        Message,
        MetricRecord,
        RecordDict,
    )
    from flwr.clientapp.typing import ClientAppCallable
    from flwr.serverapp import Grid
    from flwr.serverapp.strategy import FedAvg
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "fhenode.flower needs flwr with the Message API (flwr.app, flwr.serverapp): "
        "pip install 'fhenode[flower]'"
    ) from e

from .client import Node

log = logging.getLogger(__name__)

#: Config keys of the train message (ConfigRecord) and of the client's node config.
SESSION_KEY = "fhenode-session"
WEIGHT_KEY = "fhenode-weight-key"
READY_TIMEOUT_KEY = "fhenode-ready-timeout"
URL_KEY = "fhenode-url"
TOKEN_KEY = "fhenode-token"
#: Name of the ConfigRecord in a client's reply that holds its node's receipt.
RECEIPT_KEY = "fhenode-receipt"



class ArraysInReply(RuntimeError):
    """A client's reply carried model arrays: it would have shown its update to the server."""


def check_no_arrays(replies: Iterable[Message]) -> None:
    """Raises :class:`ArraysInReply` if any reply carries an ArrayRecord (empty or not)."""
    for reply in replies:
        if reply.has_content() and reply.content.array_records:
            raise ArraysInReply(
                f"reply from node {reply.metadata.src_node_id} carries arrays "
                f"{sorted(reply.content.array_records)}: with fhenode a client submits its "
                "update to its own node and replies with num-examples only (is fhenode_mod "
                "installed on the ClientApp?)"
            )


@dataclass
class RoundInfo:
    """What the nodes reported about one round's aggregate."""

    session: str
    contributors: int
    total_weight: Optional[float]
    error_bound: float
    clipped: int


class FhenodeFedAvg(FedAvg):
    """FedAvg whose aggregation runs in fhenode: the server never receives client arrays.

    ``node`` is the coordinator's node (the one the strategy talks to). ``participants`` are
    the fhenode peer ids of the clients' nodes; as the session's participant list is fixed
    when a round starts, every participant must train in every round (so ``fraction_train``
    defaults to 1 and ``min_train_nodes``/``min_available_nodes`` to their number; sampling
    fewer nodes than participants leaves the session waiting until its deadline unless
    ``min_participants`` allows it). ``committee`` (peer ids holding the key shares, default:
    the participants) and ``threshold`` are the session's. Each client's weight is its
    ``num-examples`` (the ``weighted_by_key``), an integer from 1 to ``max_weight``.
    ``ready_timeout`` bounds a client's wait for its node to be ready, ``result_timeout``
    the server's wait for the aggregate. Other keyword arguments go to :class:`FedAvg`.
    """

    def __init__(
        self,
        node: Node,
        participants: Sequence[str],
        committee: Optional[Sequence[str]] = None,
        *,
        threshold: Optional[int] = None,
        min_participants: Optional[int] = None,
        max_weight: int = 100_000,
        profile: Optional[str] = None,
        clip: Optional[float] = None,
        frac_bits: Optional[int] = None,
        deadline_secs: Optional[int] = None,
        ready_timeout: float = 120.0,
        result_timeout: float = 300.0,
        **fedavg: Any,
    ) -> None:
        if not participants:
            raise ValueError("at least one participant (an fhenode peer id) is needed")
        fedavg.setdefault("fraction_train", 1.0)
        fedavg.setdefault("min_train_nodes", len(participants))
        fedavg.setdefault("min_available_nodes", len(participants))
        super().__init__(**fedavg)
        self.node = node
        self.participants = list(participants)
        self.committee = list(committee) if committee is not None else list(participants)
        self.session_options: Dict[str, Any] = dict(
            threshold=threshold,
            min_participants=min_participants,
            max_weight=max_weight,
            profile=profile,
            clip=clip,
            frac_bits=frac_bits,
            deadline_secs=deadline_secs,
        )
        self.ready_timeout = ready_timeout
        self.result_timeout = result_timeout
        #: The model's tensors as sent in the last train message: name -> (dtype, shape).
        self._layout: Dict[str, Tuple[np.dtype, Tuple[int, ...]]] = {}
        #: The session of each round still being trained.
        self._sessions: Dict[int, str] = {}
        #: What the nodes reported about each finished round.
        self.rounds: Dict[int, RoundInfo] = {}

    def summary(self) -> None:
        super().summary()
        log.info(
            "fhenode: coordinator %s, %d participants, committee of %d",
            self.node.url,
            len(self.participants),
            len(self.committee),
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Opens this round's session and tells the clients its id, with the global model."""
        if self.fraction_train == 0.0:
            return []
        layout = {}
        for name, array in arrays.items():
            layout[name] = (np.dtype(array.dtype), tuple(int(d) for d in array.shape))
        info = self.node.create_session(
            committee=self.committee,
            participants=self.participants,
            shapes={name: shape for name, (_, shape) in layout.items()},
            result="weighted_mean",
            **self.session_options,
        )
        self._layout = layout
        self._sessions[server_round] = str(info["id"])
        config[SESSION_KEY] = str(info["id"])
        config[WEIGHT_KEY] = self.weighted_by_key
        config[READY_TIMEOUT_KEY] = float(self.ready_timeout)
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> Tuple[Optional[ArrayRecord], Optional[MetricRecord]]:
        """Checks that no reply carries arrays, then takes the round's weighted mean from the
        coordinator node as the new global model."""
        replies = list(replies)
        check_no_arrays(replies)
        valid, _ = self._check_and_log_replies(replies, is_train=True, validate=False)
        session = self._sessions.pop(server_round, None)
        needed = self.session_options["min_participants"] or len(self.participants)
        if session is None or len(valid) < needed:
            # The session cannot finish before its deadline: no new model this round.
            log.warning(
                "round %d: %d of the %d clients needed replied; the model is not updated",
                server_round,
                len(valid),
                needed,
            )
            return None, None
        contents = [reply.content for reply in valid]
        weights = [_weight(content, self.weighted_by_key) for content in contents]
        for reply, content in zip(valid, contents):
            receipt = content.config_records.get(RECEIPT_KEY)
            if receipt is None or receipt.get("session") != session:
                raise RuntimeError(
                    f"reply from node {reply.metadata.src_node_id} has no receipt for "
                    f"session {session!r}"
                )

        result = self.node.result(session, wait=self.result_timeout)
        self.rounds[server_round] = RoundInfo(
            session, result.contributors, result.total_weight, result.error_bound, result.clipped
        )
        if result.total_weight is not None and result.total_weight != sum(weights):
            log.warning(
                "round %d: the nodes' total weight %s differs from the replies' %s "
                "(a client reported a num-examples other than its weight)",
                server_round,
                result.total_weight,
                sum(weights),
            )
        if result.clipped:
            log.warning("round %d: %d values were clipped", server_round, result.clipped)

        arrays = ArrayRecord()
        for name, (dtype, shape) in self._layout.items():
            if name not in result.tensors:
                raise RuntimeError(f"session {session!r} result has no tensor {name!r}")
            arrays[name] = Array(np.asarray(result.tensors[name], dtype=dtype).reshape(shape))
        metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        metrics["fhenode-error-bound"] = float(result.error_bound)
        metrics["fhenode-clipped"] = int(result.clipped)
        return arrays, metrics

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> Optional[MetricRecord]:
        """FedAvg's, after checking that no evaluation reply carries arrays either."""
        replies = list(replies)
        check_no_arrays(replies)
        return super().aggregate_evaluate(server_round, replies)


def _weight(content: RecordDict, key: str) -> int:
    """The reply's weight: ``key`` of its only MetricRecord, a positive integer."""
    metrics = list(content.metric_records.values())
    if len(metrics) != 1 or key not in metrics[0]:
        raise RuntimeError(f"expected one MetricRecord with {key!r} in each reply")
    value = metrics[0][key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RuntimeError(f"{key!r} must be a number, got {value!r}")
    if value != int(value) or value < 1:
        raise RuntimeError(f"{key!r} must be a positive integer (a weight), got {value!r}")
    return int(value)


def _train_session(message: Message) -> Optional[Tuple[str, str, float]]:
    """``(session, weight key, ready timeout)`` if this is a train message for fhenode."""
    if message.metadata.message_type.split(".")[0] != "train" or not message.has_content():
        return None
    for config in message.content.config_records.values():
        if SESSION_KEY in config:
            weight_key = str(config.get(WEIGHT_KEY, "num-examples"))
            ready = float(config.get(READY_TIMEOUT_KEY, 120.0))  # type: ignore[arg-type]
            return str(config[SESSION_KEY]), weight_key, ready
    return None


def _own_node(context: Context) -> Node:
    """This client's fhenode node, named by ``fhenode-url`` (and ``fhenode-token``) in its
    node config, else in the run config."""
    for config in (context.node_config, context.run_config):
        if URL_KEY in config:
            token = config.get(TOKEN_KEY)
            return Node(str(config[URL_KEY]), token=str(token) if token else None)
    raise KeyError(f"no {URL_KEY!r} in the node config: which fhenode node is this client's?")


def fhenode_mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """ClientApp mod: on a train message carrying an fhenode session id, runs the train
    function as usual, submits the arrays it returned to this client's own node (named by
    ``fhenode-url`` in the node config) with ``weight = num-examples``, and replies with the
    metrics and the node's receipt only: the update leaves this machine encrypted, never as
    arrays in the reply. Other messages pass through untouched.

        app = ClientApp(mods=[fhenode_mod])
    """
    found = _train_session(message)
    if found is None:
        return call_next(message, context)
    session, weight_key, ready_timeout = found
    reply = call_next(message, context)
    if reply.has_error():
        return reply

    records = list(reply.content.array_records.values())
    if len(records) != 1:
        raise ValueError(f"the train function must return one ArrayRecord, got {len(records)}")
    weight = _weight(reply.content, weight_key)
    node = _own_node(context)
    node.wait_ready(session, timeout=ready_timeout)
    tensors = {name: array.numpy() for name, array in records[0].items()}
    receipt = node.submit(session, tensors, weight=weight)

    content = RecordDict()
    for name, record in reply.content.items():
        if not isinstance(record, ArrayRecord):
            content[name] = record
    content[RECEIPT_KEY] = ConfigRecord(
        {k: v for k, v in receipt.items() if isinstance(v, (str, int, float, bool))}
    )
    return Message(content, reply_to=message)


__all__: List[str] = [
    "ArraysInReply",
    "FhenodeFedAvg",
    "RoundInfo",
    "check_no_arrays",
    "fhenode_mod",
]
