"""Flower without a SuperLink: a Grid that hands each message to a ClientApp in this process.

For tests and examples. Flower's own simulation engine (``flwr.simulation``) needs Ray;
this needs nothing. The ServerApp and ClientApp are the ones a deployment would run
(``flwr run``), each client with its own node config (e.g. its ``fhenode-url``):

    grid = LocalGrid(client_app, [{"fhenode-url": url} for url in urls])
    run_server_app(server_app, grid, run_config={"num-server-rounds": 3})

Messages are delivered one after another, in the order pushed, in the calling thread.
"""

from __future__ import annotations

import copy
import logging
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict, UserConfig
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

# Internal to flwr, but a Message can only be created once the process knows which run and
# node it is (a SuperLink or the simulation engine sets this up).
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

log = logging.getLogger(__name__)

#: The node id Flower gives the server side (``flwr.common.constant.SUPERLINK_NODE_ID``).
SERVER_NODE_ID = 1
#: Node ids of the clients: FIRST_CLIENT_ID, FIRST_CLIENT_ID + 1, ...
FIRST_CLIENT_ID = 101
#: ``flwr.common.constant.ErrorCode.CLIENT_APP_RAISED_EXCEPTION``.
CLIENT_APP_RAISED_EXCEPTION = 2


def _set_id(message: Message) -> None:
    # Flower's own grids assign message ids this way: the SuperLink's job, not the sender's.
    message.metadata.__dict__["_message_id"] = uuid4().hex


class LocalGrid(Grid):
    """A :class:`flwr.serverapp.Grid` over one ClientApp per node config, in-process.

    Every reply is kept in :attr:`replies` and every exception a ClientApp raised in
    :attr:`errors` (the server gets an error reply instead, as from a real SuperNode).
    """

    def __init__(
        self,
        client_app: ClientApp,
        node_configs: Sequence[UserConfig],
        *,
        run_id: int = 1,
        run_config: Optional[UserConfig] = None,
    ) -> None:
        TaskIdentity.run_id = run_id
        TaskIdentity.node_id = SERVER_NODE_ID
        TaskIdentity.task_id = 0
        self._run = Run.create_empty(run_id)
        self._clients: Dict[int, Tuple[ClientApp, Context]] = {}
        for i, config in enumerate(node_configs):
            node_id = FIRST_CLIENT_ID + i
            context = Context(run_id, node_id, dict(config), RecordDict(), dict(run_config or {}))
            self._clients[node_id] = (client_app, context)
        self._waiting: Dict[str, Message] = {}
        self.replies: List[Message] = []
        self.errors: List[BaseException] = []

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: Optional[float] = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._clients)

    def context(self, node_id: int) -> Context:
        """The context of a client node (its node config, its state)."""
        return self._clients[node_id][1]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Runs each message through its node's ClientApp now (on a copy, as if it had been
        sent over the network); its reply waits to be pulled."""
        ids = []
        for message in messages:
            _set_id(message)
            app, context = self._clients[message.metadata.dst_node_id]
            try:
                reply = app(copy.deepcopy(message), context)
            except Exception as e:  # a SuperNode answers with an error reply
                log.exception("ClientApp of node %d raised", message.metadata.dst_node_id)
                self.errors.append(e)
                reason = f"{type(e).__name__}: {e}"
                reply = Message(Error(CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=message)
            _set_id(reply)
            self.replies.append(reply)
            self._waiting[message.metadata.message_id] = reply
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._waiting.pop(i) for i in message_ids if i in self._waiting]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: Optional[float] = None
    ) -> Iterable[Message]:
        """Every reply at once: the ClientApps ran when the messages were pushed."""
        return self.pull_messages(self.push_messages(messages))


def run_server_app(
    server_app: ServerApp,
    grid: LocalGrid,
    run_config: Optional[Mapping[str, object]] = None,
) -> Context:
    """Runs ``server_app`` against ``grid`` in this thread; returns the server's context."""
    context = Context(
        grid.run.run_id, SERVER_NODE_ID, {}, RecordDict(), dict(run_config or {})  # type: ignore[arg-type]
    )
    server_app(grid, context)
    return context
