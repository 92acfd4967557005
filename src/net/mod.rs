//! The network actor: owns the libp2p swarm (TCP + Noise + Yamux, QUIC, identify, ping, mDNS,
//! Kademlia, gossipsub, the `/fhenode/rpc/1` request-response protocol, connection limits) and
//! turns it into typed commands and inbound-request messages.

mod book;
pub mod protocol;
pub mod rpc;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    connection_limits, gossipsub, identify, identity::Keypair, kad, mdns, noise, ping,
    request_response, tcp, yamux, Multiaddr, PeerId, Swarm,
};
use libp2p_metrics::Recorder;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::config::P2pConfig;
use crate::metrics::{NodeMetrics, OutcomeLabels, ProtocolLabels};
use crate::runtime::Mailbox;
use crate::store::peers::PeerBook;
pub use protocol::{Request, Response, RpcCodec};

use libp2p::metrics as libp2p_metrics;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("the network actor has stopped")]
    Stopped,
    #[error("request of {size} bytes exceeds p2p.max_request_bytes = {limit}")]
    RequestTooLarge { size: usize, limit: usize },
    #[error("request to {peer} failed: {reason}")]
    Outbound { peer: PeerId, reason: String },
    #[error("cannot dial {addr}: {reason}")]
    Dial { addr: String, reason: String },
    #[error("cannot publish: {0}")]
    Publish(String),
    #[error("network setup: {0}")]
    Setup(String),
}

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    limits: connection_limits::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    gossipsub: gossipsub::Behaviour,
    rpc: request_response::Behaviour<RpcCodec>,
}

/// A connected peer as the API reports it.
#[derive(Clone, Debug, Serialize)]
pub struct PeerInfo {
    pub peer_id: String,
    pub addresses: Vec<String>,
    pub protocols: Vec<String>,
    pub agent_version: Option<String>,
    pub connections: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct NetStatus {
    pub peer_id: String,
    pub listen_addrs: Vec<String>,
    pub connected_peers: usize,
}

/// A request from a peer for another actor, with the channel for its answer.
#[derive(Debug)]
pub struct InboundRequest {
    pub peer: PeerId,
    pub request: Request,
    pub reply: oneshot::Sender<Response>,
}

enum Command {
    Status(oneshot::Sender<NetStatus>),
    Peers(oneshot::Sender<Vec<PeerInfo>>),
    Dial(Multiaddr, oneshot::Sender<Result<(), NetError>>),
    Request {
        peer: PeerId,
        request: Request,
        reply: oneshot::Sender<Result<Response, NetError>>,
    },
    Publish(Vec<u8>, oneshot::Sender<Result<(), NetError>>),
}

/// Cloneable handle to the network actor.
#[derive(Clone, Debug)]
pub struct NetworkHandle {
    mailbox: Mailbox<Command>,
    peer_id: PeerId,
    max_request_bytes: usize,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Status(_) => "Status",
            Command::Peers(_) => "Peers",
            Command::Dial(..) => "Dial",
            Command::Request { .. } => "Request",
            Command::Publish(..) => "Publish",
        })
    }
}

impl NetworkHandle {
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Messages waiting in the actor's mailbox.
    pub fn mailbox_depth(&self) -> usize {
        self.mailbox.depth()
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NetError> {
        self.mailbox.ask(make).await.map_err(|_| NetError::Stopped)
    }

    pub async fn status(&self) -> Result<NetStatus, NetError> {
        self.ask(Command::Status).await
    }

    pub async fn peers(&self) -> Result<Vec<PeerInfo>, NetError> {
        self.ask(Command::Peers).await
    }

    pub async fn dial(&self, addr: Multiaddr) -> Result<(), NetError> {
        self.ask(|tx| Command::Dial(addr, tx)).await?
    }

    /// Sends `request` to `peer` and waits for its answer. Oversized requests are refused here,
    /// before anything is sent.
    pub async fn request(&self, peer: PeerId, request: Request) -> Result<Response, NetError> {
        let size = protocol::encoded_len(&request);
        if size > self.max_request_bytes {
            return Err(NetError::RequestTooLarge {
                size,
                limit: self.max_request_bytes,
            });
        }
        self.ask(|reply| Command::Request {
            peer,
            request,
            reply,
        })
        .await?
    }

    /// Announces a small message on the gossipsub topic.
    pub async fn publish(&self, data: Vec<u8>) -> Result<(), NetError> {
        self.ask(|tx| Command::Publish(data, tx)).await?
    }
}

#[derive(Default)]
struct PeerEntry {
    addresses: BTreeSet<Multiaddr>,
    protocols: Vec<String>,
    agent_version: Option<String>,
    connections: u32,
}

type PendingInbound = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = (request_response::ResponseChannel<Response>, Response)>
            + Send,
    >,
>;

struct NetworkActor {
    swarm: Swarm<Behaviour>,
    rx: mpsc::Receiver<Command>,
    inbound: Option<mpsc::Sender<InboundRequest>>,
    metrics: NodeMetrics,
    recorder: libp2p_metrics::Metrics,
    peers: HashMap<PeerId, PeerEntry>,
    pending: HashMap<
        request_response::OutboundRequestId,
        (PeerId, oneshot::Sender<Result<Response, NetError>>),
    >,
    answering: FuturesUnordered<PendingInbound>,
    last_bootstrap: Option<Instant>,
    /// When the next Kademlia bootstrap is due, and the wait after it: 1 s after a new
    /// fhenode peer is identified, doubling to [`BOOTSTRAP_EVERY`]. A peer's answer to a
    /// bootstrap lists only the peers it knew then: peers that joined at the same moment
    /// find each other on the next one, seconds later rather than half a minute.
    next_bootstrap: std::pin::Pin<Box<tokio::time::Sleep>>,
    bootstrap_wait: Duration,
    topic: gossipsub::IdentTopic,
    book: book::AddressBook,
}

/// Builds the swarm, starts listening and dialling (the bootstrap peers, and the peers
/// `book` remembers), and spawns the actor. Inbound requests other than `Echo` go to
/// `inbound` (answered with an error when it is `None`).
pub fn spawn(
    keypair: Keypair,
    cfg: &P2pConfig,
    registry: &mut Registry,
    metrics: NodeMetrics,
    inbound: Option<mpsc::Sender<InboundRequest>>,
    book: Option<PeerBook>,
    cancel: CancellationToken,
) -> Result<(NetworkHandle, tokio::task::JoinHandle<()>), NetError> {
    let peer_id = keypair.public().to_peer_id();
    let setup = |e: &dyn std::fmt::Display| NetError::Setup(e.to_string());
    let cfg_b = cfg.clone();
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| setup(&e))?
        .with_quic()
        .with_bandwidth_metrics(registry)
        .with_behaviour(|key| build_behaviour(key, &cfg_b))
        .map_err(|e| setup(&e))?
        .with_swarm_config(|c| {
            c.with_idle_connection_timeout(Duration::from_secs(cfg_b.idle_timeout_secs))
        })
        .build();
    let recorder = libp2p_metrics::Metrics::new(registry);

    swarm.behaviour_mut().kad.set_mode(Some(kad::Mode::Server));
    let topic = gossipsub::IdentTopic::new(protocol::ANNOUNCE_TOPIC);
    swarm
        .behaviour_mut()
        .gossipsub
        .subscribe(&topic)
        .map_err(|e| setup(&e))?;
    for addr in &cfg.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| NetError::Setup(format!("cannot listen on {addr}: {e}")))?;
    }
    for addr in &cfg.bootstrap {
        if let Some(peer) = peer_of(addr) {
            swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
        }
        if let Err(e) = swarm.dial(addr.clone()) {
            warn!(%addr, error = %e, "cannot dial bootstrap peer");
        }
    }
    // Known peers are dialled at their recorded addresses, which stay out of Kademlia's
    // routing table: a peer that restarted elsewhere would otherwise be dialled at its stale
    // addresses only, and never found again. Once connected, identify brings its present
    // ones.
    let book = book::AddressBook::new(book);
    for (peer, addresses) in book.known() {
        if peer == peer_id || swarm.is_connected(&peer) {
            continue;
        }
        let dial = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
            .addresses(addresses)
            .build();
        if let Err(e) = swarm.dial(dial) {
            debug!(%peer, error = %e, "cannot redial a known peer");
        }
    }

    let (mailbox, rx) = Mailbox::new("network", 256);
    let actor = NetworkActor {
        swarm,
        rx,
        inbound,
        metrics,
        recorder,
        peers: HashMap::new(),
        pending: HashMap::new(),
        answering: FuturesUnordered::new(),
        last_bootstrap: None,
        next_bootstrap: Box::pin(tokio::time::sleep(BOOTSTRAP_SOON)),
        bootstrap_wait: BOOTSTRAP_SOON,
        topic,
        book,
    };
    let task = tokio::spawn(
        actor
            .run(cancel)
            .instrument(info_span!("network", %peer_id)),
    );
    Ok((
        NetworkHandle {
            mailbox,
            peer_id,
            max_request_bytes: cfg.max_request_bytes,
        },
        task,
    ))
}

fn build_behaviour(
    key: &Keypair,
    cfg: &P2pConfig,
) -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
    let peer_id = key.public().to_peer_id();
    let limits = connection_limits::ConnectionLimits::default()
        .with_max_established(Some(cfg.max_connections))
        .with_max_established_per_peer(Some(cfg.max_connections_per_peer));
    let identify = identify::Behaviour::new(
        identify::Config::new(protocol::IDENTIFY_PROTOCOL.to_string(), key.public())
            .with_agent_version(format!("fhenode/{}", env!("CARGO_PKG_VERSION"))),
    );
    let mdns = if cfg.mdns {
        Some(mdns::tokio::Behaviour::new(
            mdns::Config::default(),
            peer_id,
        )?)
    } else {
        None
    };
    let mut kad_cfg = kad::Config::new(protocol::KAD_PROTOCOL);
    kad_cfg.set_query_timeout(Duration::from_secs(30));
    let kad = kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), kad_cfg);
    let gossip_cfg = gossipsub::ConfigBuilder::default()
        .max_transmit_size(cfg.max_gossip_bytes)
        .validation_mode(gossipsub::ValidationMode::Strict)
        .heartbeat_interval(Duration::from_secs(1))
        // Announcements are small and rare; the default (5000) preallocates a queue of about
        // a megabyte per connection, gigabytes on a fully meshed network of 50 nodes.
        .connection_handler_queue_len(128)
        .build()?;
    let gossipsub = gossipsub::Behaviour::new(
        gossipsub::MessageAuthenticity::Signed(key.clone()),
        gossip_cfg,
    )?;
    let rpc = request_response::Behaviour::with_codec(
        RpcCodec::new(cfg.max_request_bytes, cfg.max_response_bytes),
        [(
            protocol::RPC_PROTOCOL,
            request_response::ProtocolSupport::Full,
        )],
        request_response::Config::default()
            .with_request_timeout(Duration::from_secs(cfg.request_timeout_secs)),
    );
    Ok(Behaviour {
        limits: connection_limits::Behaviour::new(limits),
        identify,
        ping: ping::Behaviour::new(ping::Config::new()),
        mdns: Toggle::from(mdns),
        kad,
        gossipsub,
        rpc,
    })
}

fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::P2p(peer) => Some(peer),
        _ => None,
    })
}

/// Longest wait between two Kademlia bootstraps.
const BOOTSTRAP_EVERY: Duration = Duration::from_secs(30);
/// The first wait after a new fhenode peer is identified (see `next_bootstrap`).
const BOOTSTRAP_SOON: Duration = Duration::from_secs(1);
/// Shortest time between two bootstraps: peers identified together start one, not one each.
/// Below [`BOOTSTRAP_SOON`], so that the follow-up a second later is not swallowed.
const BOOTSTRAP_MIN_GAP: Duration = Duration::from_millis(500);

impl NetworkActor {
    async fn run(mut self, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                command = self.rx.recv() => match command {
                    Some(c) => self.on_command(c),
                    None => break,
                },
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                Some((channel, response)) = self.answering.next(), if !self.answering.is_empty() => {
                    if self.swarm.behaviour_mut().rpc.send_response(channel, response).is_err() {
                        debug!("peer went away before its answer was ready");
                    }
                }
                _ = &mut self.next_bootstrap => {
                    self.bootstrap();
                    self.bootstrap_after((self.bootstrap_wait * 2).min(BOOTSTRAP_EVERY));
                }
                Some(written) = self.book.writes.join_next(), if !self.book.writes.is_empty() => {
                    if let Err(e) = written {
                        warn!(error = %e, "an address-book write did not finish");
                    }
                }
            }
        }
        info!("network actor stopped");
    }

    /// Schedules the next bootstrap `wait` from now (one timer, reset: the loop polls it on
    /// every event).
    fn bootstrap_after(&mut self, wait: Duration) {
        self.bootstrap_wait = wait;
        self.next_bootstrap
            .as_mut()
            .reset(tokio::time::Instant::now() + wait);
    }

    fn bootstrap(&mut self) {
        if self
            .last_bootstrap
            .is_some_and(|t| t.elapsed() < BOOTSTRAP_MIN_GAP)
        {
            return;
        }
        if self.swarm.behaviour_mut().kad.bootstrap().is_ok() {
            self.last_bootstrap = Some(Instant::now());
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Status(reply) => {
                let _ = reply.send(NetStatus {
                    peer_id: self.swarm.local_peer_id().to_string(),
                    listen_addrs: self.swarm.listeners().map(|a| a.to_string()).collect(),
                    connected_peers: self.peers.len(),
                });
            }
            Command::Peers(reply) => {
                let mut list: Vec<PeerInfo> = self
                    .peers
                    .iter()
                    .map(|(id, e)| PeerInfo {
                        peer_id: id.to_string(),
                        addresses: e.addresses.iter().map(|a| a.to_string()).collect(),
                        protocols: e.protocols.clone(),
                        agent_version: e.agent_version.clone(),
                        connections: e.connections,
                    })
                    .collect();
                list.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
                let _ = reply.send(list);
            }
            Command::Dial(addr, reply) => {
                let result = self.swarm.dial(addr.clone()).map_err(|e| NetError::Dial {
                    addr: addr.to_string(),
                    reason: e.to_string(),
                });
                let _ = reply.send(result);
            }
            Command::Request {
                peer,
                request,
                reply,
            } => {
                let id = self.swarm.behaviour_mut().rpc.send_request(&peer, request);
                self.pending.insert(id, (peer, reply));
            }
            Command::Publish(data, reply) => {
                let topic = self.topic.clone();
                let result = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(topic, data)
                    .map(|_| ())
                    .map_err(|e| NetError::Publish(e.to_string()));
                let _ = reply.send(result);
            }
        }
    }

    fn count_rpc(&self, protocol: &'static str, outcome: &'static str) {
        self.metrics
            .rpc_requests
            .get_or_create(&ProtocolLabels { protocol, outcome })
            .inc();
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        self.recorder.record(&event);
        match event {
            SwarmEvent::NewListenAddr { address, .. } => info!(%address, "listening"),
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                let entry = self.peers.entry(peer_id).or_default();
                entry.connections += 1;
                entry
                    .addresses
                    .insert(endpoint.get_remote_address().clone());
                self.metrics.peers_connected.set(self.peers.len() as i64);
                debug!(peer = %peer_id, "connected");
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                endpoint,
                num_established,
                ..
            } => {
                if num_established == 0 {
                    self.peers.remove(&peer_id);
                } else if let Some(entry) = self.peers.get_mut(&peer_id) {
                    entry.connections = num_established;
                    entry.addresses.remove(endpoint.get_remote_address());
                }
                self.metrics.peers_connected.set(self.peers.len() as i64);
                debug!(peer = %peer_id, "disconnected");
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                debug!(peer = ?peer_id, %error, "outgoing connection failed");
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Identify(e) => {
                self.recorder.record(&e);
                if let identify::Event::Received { peer_id, info, .. } = e {
                    let is_fhenode = info.protocols.contains(&protocol::KAD_PROTOCOL);
                    if let Some(entry) = self.peers.get_mut(&peer_id) {
                        entry.protocols = info.protocols.iter().map(|p| p.to_string()).collect();
                        entry.agent_version = Some(info.agent_version.clone());
                    }
                    if is_fhenode {
                        self.book.seen(peer_id, &info.listen_addrs);
                        for addr in info.listen_addrs {
                            self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                        }
                        self.bootstrap();
                        self.bootstrap_after(BOOTSTRAP_SOON);
                    }
                }
            }
            BehaviourEvent::Ping(e) => self.recorder.record(&e),
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, addr) in found {
                    self.swarm.behaviour_mut().kad.add_address(&peer, addr);
                    if !self.swarm.is_connected(&peer) {
                        let _ = self.swarm.dial(peer);
                    }
                }
            }
            BehaviourEvent::Mdns(mdns::Event::Expired(_)) => {}
            BehaviourEvent::Kad(e) => {
                self.recorder.record(&e);
                if let kad::Event::RoutingUpdated { peer, .. } = e {
                    if peer != *self.swarm.local_peer_id() && !self.swarm.is_connected(&peer) {
                        let _ = self.swarm.dial(peer);
                    }
                }
            }
            BehaviourEvent::Gossipsub(e) => {
                self.recorder.record(&e);
                if let gossipsub::Event::Message { .. } = e {
                    self.metrics
                        .gossip_messages
                        .get_or_create(&OutcomeLabels {
                            outcome: "received",
                        })
                        .inc();
                }
            }
            BehaviourEvent::Rpc(e) => self.on_rpc_event(e),
            BehaviourEvent::Limits(never) => match never {},
        }
    }

    fn on_rpc_event(&mut self, event: request_response::Event<Request, Response>) {
        use request_response::{Event, Message};
        match event {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                self.metrics
                    .rpc_bytes_received
                    .inc_by(protocol::encoded_len(&request) as u64);
                let span = info_span!("rpc", %peer, kind = request.kind());
                let _guard = span.enter();
                match request {
                    Request::Echo(bytes) => {
                        self.count_rpc("echo", "answered");
                        let _ = self
                            .swarm
                            .behaviour_mut()
                            .rpc
                            .send_response(channel, Response::Echo(bytes));
                    }
                    Request::Sink(bytes) => {
                        self.count_rpc("sink", "answered");
                        let len = bytes.len() as u64;
                        let _ = self
                            .swarm
                            .behaviour_mut()
                            .rpc
                            .send_response(channel, Response::Sunk(len));
                    }
                    other => self.forward_inbound(peer, other, channel),
                }
            }
            Event::Message {
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                self.metrics
                    .rpc_bytes_received
                    .inc_by(protocol::encoded_len(&response) as u64);
                if let Some((_, reply)) = self.pending.remove(&request_id) {
                    self.count_rpc("outbound", "ok");
                    let _ = reply.send(Ok(response));
                }
            }
            Event::OutboundFailure {
                request_id,
                error,
                peer,
                ..
            } => {
                self.count_rpc("outbound", "failed");
                if let Some((_, reply)) = self.pending.remove(&request_id) {
                    let _ = reply.send(Err(NetError::Outbound {
                        peer,
                        reason: error.to_string(),
                    }));
                }
            }
            Event::InboundFailure { peer, error, .. } => {
                self.count_rpc("inbound", "failed");
                match error {
                    request_response::InboundFailure::ConnectionClosed => {
                        debug!(%peer, "connection closed before the answer was sent")
                    }
                    error => warn!(%peer, %error, "inbound request failed"),
                }
            }
            Event::ResponseSent { .. } => {}
        }
    }

    fn forward_inbound(
        &mut self,
        peer: PeerId,
        request: Request,
        channel: request_response::ResponseChannel<Response>,
    ) {
        let Some(inbound) = self.inbound.clone() else {
            self.count_rpc("inbound", "unsupported");
            let _ = self
                .swarm
                .behaviour_mut()
                .rpc
                .send_response(channel, Response::unsupported(&request));
            return;
        };
        self.count_rpc("inbound", "forwarded");
        // The owning actor answers asynchronously; the swarm keeps running meanwhile.
        self.answering.push(Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            let sent = inbound
                .send(InboundRequest {
                    peer,
                    request,
                    reply: tx,
                })
                .await;
            let response = match (sent, rx.await) {
                (Ok(()), Ok(response)) => response,
                _ => Response::Error {
                    code: "unavailable".into(),
                    message: "the node is shutting down".into(),
                },
            };
            (channel, response)
        }));
    }
}
