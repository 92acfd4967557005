//! The supervisor: opens the store, starts the actors in order, wires their handles, serves the
//! API, and stops everything in reverse order (flushing the store) on a signal, on request, or
//! when an actor panics.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::FutureExt;
use libp2p::PeerId;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, info_span, Instrument};

use crate::actors::aggregation::{self, AggregationHandle};
use crate::actors::inference::{self, InferenceHandle};
use crate::actors::keys::{self, KeysHandle};
use crate::actors::series::{self, SeriesHandle};
use crate::api::{self, ApiState};
use crate::config::Config;
use crate::metrics::{ActorLabels, Metrics, NodeMetrics};
use crate::net::{self, NetworkHandle};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Network(#[from] net::NetError),
    #[error("cannot bind the API on {addr}: {source}")]
    ApiBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("actor `{0}` panicked; the node was shut down")]
    ActorPanicked(&'static str),
    #[error("signal handling: {0}")]
    Signal(std::io::Error),
    /// The store failed a write and will not take another until it is opened again (sled
    /// keeps its first I/O error for good); space is back, so the node stops to reopen it.
    #[error("the store failed a write and space is back: the node must start again to reopen it")]
    StoreNeedsReopen,
}

/// How long stopping may take, from SIGTERM to exit: systemd's default stop timeout is 90 s,
/// and an operator's `kill` should see the process gone within 10 s.
pub const SHUTDOWN_WITHIN: Duration = Duration::from_secs(8);

/// Watches the store: once a write has failed for want of space and the disk has room again,
/// asks the node to stop (`fatal`) so that it starts again with the store reopened, intact.
/// sled keeps its first write error for good, so this is the only way back short of an
/// operator's restart.
async fn watch_store(
    store: Store,
    reopen: std::sync::Arc<std::sync::atomic::AtomicBool>,
    fatal: CancellationToken,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Only a disk that was full: one failing otherwise would fail again after a restart,
        // and restarting in a loop would hide it; it stays not ready for its operator.
        if !store.failed_for_space() {
            continue;
        }
        let health = store.health();
        let room = health.min_free_bytes.max(1 << 20);
        if health.free_bytes.is_some_and(|free| free >= room) {
            error!(
                last_error = health.last_error.as_deref().unwrap_or(""),
                "the store failed a write and space is back: stopping to reopen it"
            );
            reopen.store(true, std::sync::atomic::Ordering::Release);
            fatal.cancel();
            return;
        }
    }
}

/// A running node. Dropping it without [`Node::shutdown`] still cancels every task.
pub struct Node {
    pub peer_id: PeerId,
    pub api_addr: SocketAddr,
    pub network: NetworkHandle,
    pub keys: KeysHandle,
    pub aggregation: AggregationHandle,
    pub series: SeriesHandle,
    pub inference: InferenceHandle,
    pub store: Store,
    pub metrics: NodeMetrics,
    api_stop: CancellationToken,
    actors_stop: CancellationToken,
    /// Cancelled when an actor panics.
    fatal: CancellationToken,
    panicked: std::sync::Arc<std::sync::Mutex<Option<&'static str>>>,
    /// Set by the store watch: the node stops so that it can start again (see
    /// [`NodeError::StoreNeedsReopen`]).
    reopen_store: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// In shutdown order: API first, network last.
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.api_stop.cancel();
        self.actors_stop.cancel();
    }
}

/// Spawns `future` as actor `name`: a panic is logged, counted, and cancels `fatal` so the node
/// comes down instead of running on with a dead actor.
fn supervise(
    name: &'static str,
    future: impl std::future::Future<Output = ()> + Send + 'static,
    metrics: NodeMetrics,
    fatal: CancellationToken,
    panicked: std::sync::Arc<std::sync::Mutex<Option<&'static str>>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if std::panic::AssertUnwindSafe(future)
            .catch_unwind()
            .await
            .is_err()
        {
            error!(actor = name, "actor panicked; shutting the node down");
            metrics
                .actor_panics
                .get_or_create(&ActorLabels { actor: name })
                .inc();
            if let Ok(mut slot) = panicked.lock() {
                slot.get_or_insert(name);
            }
            fatal.cancel();
        }
    })
}

/// Tells the service manager about a state change; a no-op when NOTIFY_SOCKET is unset. A
/// failure is logged, never fatal: the node works the same without systemd.
fn notify_systemd(state: sd_notify::NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(false, &[state]) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

/// Hands each inbound peer request to the actor that owns its kind.
async fn route_inbound(
    mut inbound: tokio::sync::mpsc::Receiver<net::InboundRequest>,
    aggregation: AggregationHandle,
    inference: InferenceHandle,
    stop: CancellationToken,
) {
    loop {
        let request = tokio::select! {
            _ = stop.cancelled() => break,
            r = inbound.recv() => match r {
                Some(r) => r,
                None => break,
            },
        };
        let net::InboundRequest {
            peer,
            request,
            reply,
        } = request;
        match request {
            net::Request::Aggregation(bytes) => {
                let aggregation = aggregation.clone();
                tokio::spawn(async move {
                    let _ = reply.send(aggregation.inbound(peer, bytes).await);
                });
            }
            net::Request::Inference(bytes) => {
                let inference = inference.clone();
                tokio::spawn(async move {
                    let _ = reply.send(inference.inbound(peer, bytes).await);
                });
            }
            other => {
                let _ = reply.send(net::Response::unsupported(&other));
            }
        }
    }
}

impl Node {
    /// Starts a node from a validated configuration.
    pub async fn start(config: Config) -> Result<Node, NodeError> {
        let started = Instant::now();
        // Opening reads the database and may wait for its lock: off the executor.
        let data_dir = config.data_dir.clone();
        let store = tokio::task::spawn_blocking(move || Store::open(&data_dir))
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))??;
        store.set_min_free_bytes(config.store.min_free_bytes);
        let keypair = store.identity()?;
        let peer_id = keypair.public().to_peer_id();
        let span = info_span!("node", %peer_id);
        let _enter = span.enter();

        let Metrics {
            mut registry,
            node: metrics,
        } = Metrics::new();
        let api_stop = CancellationToken::new();
        let actors_stop = CancellationToken::new();
        // Until the node is whole, an early return (a taken API port, a bad listen address)
        // stops every actor already spawned: they would otherwise run on, holding the store's
        // lock and the p2p ports, with nothing left to stop them.
        let stop_on_error = actors_stop.clone().drop_guard();
        let fatal = CancellationToken::new();
        let panicked = std::sync::Arc::new(std::sync::Mutex::new(None));
        let sup =
            |name, fut| supervise(name, fut, metrics.clone(), fatal.clone(), panicked.clone());

        let (keys, keys_task) =
            keys::spawn(store.clone(), metrics.clone(), actors_stop.child_token());
        let keys_task = sup("keys", keys_task.instrument(info_span!("keys")).boxed());
        let (inbound_tx, inbound_rx) = tokio::sync::mpsc::channel(256);
        let (network, net_task) = net::spawn(
            keypair.clone(),
            &config.p2p,
            &mut registry,
            metrics.clone(),
            Some(inbound_tx),
            Some(crate::store::peers::PeerBook::new(store.clone())),
            actors_stop.child_token(),
        )?;
        let (aggregation, agg_task) = aggregation::spawn(
            aggregation::AggregationDeps {
                me: peer_id,
                identity: keypair,
                store: store.clone(),
                network: network.clone(),
                keys: keys.clone(),
                metrics: metrics.clone(),
                default_profile: config.profile,
                prepare_budget_bytes: config.aggregation.prepare_budget_bytes,
                unreachable_after: Duration::from_secs(config.p2p.unreachable_after_secs),
                max_sessions_per_peer: config.aggregation.max_sessions_per_peer,
                max_pending_bytes: config.aggregation.max_pending_bytes,
                plans_per_minute_per_peer: config.aggregation.plans_per_minute_per_peer,
                expire_grace: Duration::from_secs(config.aggregation.expire_grace_secs),
                policy: crate::session::roles::LocalPolicy {
                    min_contributors_floor: config.aggregation.min_contributors_floor,
                    allowed_profiles: config
                        .aggregation
                        .allowed_profiles
                        .iter()
                        .map(|p| p.name().to_string())
                        .collect(),
                },
            },
            actors_stop.child_token(),
        );
        let agg_task = sup(
            "aggregation",
            agg_task.instrument(info_span!("aggregation")).boxed(),
        );
        let (series, series_task) = series::spawn(
            series::SeriesDeps {
                store: store.clone(),
                aggregation: aggregation.clone(),
            },
            actors_stop.child_token(),
        );
        let series_task = sup(
            "series",
            series_task.instrument(info_span!("series")).boxed(),
        );
        let (inference, inf_task) = inference::spawn(
            inference::InferenceDeps {
                me: peer_id,
                store: store.clone(),
                network: network.clone(),
                metrics: metrics.clone(),
                limits: inference::InferenceLimits::from(&config.inference),
            },
            actors_stop.child_token(),
        );
        let inf_task = sup(
            "inference",
            inf_task.instrument(info_span!("inference")).boxed(),
        );
        let router_task = sup(
            "router",
            route_inbound(
                inbound_rx,
                aggregation.clone(),
                inference.clone(),
                actors_stop.child_token(),
            )
            .boxed(),
        );
        let net_task = sup(
            "network",
            async move {
                if let Err(e) = net_task.await {
                    if e.is_panic() {
                        std::panic::resume_unwind(e.into_panic());
                    }
                }
            }
            .boxed(),
        );

        let sampler = {
            // Mailbox depths; the store size is read at each scrape by the API.
            let (metrics, network, keys, aggregation, series, inference) = (
                metrics.clone(),
                network.clone(),
                keys.clone(),
                aggregation.clone(),
                series.clone(),
                inference.clone(),
            );
            let stop = actors_stop.child_token();
            sup(
                "sampler",
                async move {
                    let mut tick = tokio::time::interval(Duration::from_secs(1));
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tick.tick() => {}
                        }
                        for (actor, depth) in [
                            ("network", network.mailbox_depth()),
                            ("keys", keys.mailbox_depth()),
                            ("aggregation", aggregation.mailbox_depth()),
                            ("series", series.mailbox_depth()),
                            ("inference", inference.mailbox_depth()),
                        ] {
                            metrics
                                .actor_mailbox_depth
                                .get_or_create(&ActorLabels { actor })
                                .set(depth as i64);
                        }
                    }
                }
                .boxed(),
            )
        };

        let reopen_store = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let store_watch = sup(
            "store-watch",
            watch_store(
                store.clone(),
                reopen_store.clone(),
                fatal.clone(),
                actors_stop.child_token(),
            )
            .boxed(),
        );

        let listener = tokio::net::TcpListener::bind(config.api.listen)
            .await
            .map_err(|source| NodeError::ApiBind {
                addr: config.api.listen,
                source,
            })?;
        let api_addr = listener.local_addr().map_err(|source| NodeError::ApiBind {
            addr: config.api.listen,
            source,
        })?;
        let state = ApiState {
            network: network.clone(),
            keys: keys.clone(),
            aggregation: aggregation.clone(),
            series: series.clone(),
            inference: inference.clone(),
            store: store.clone(),
            registry: std::sync::Arc::new(registry),
            metrics: metrics.clone(),
            started,
            profile: config.profile,
            token: config.api.token.clone(),
            max_body_bytes: config.api.max_body_bytes,
            creations: std::sync::Arc::new(api::limit::CreationLimit::per_minute(
                config.api.sessions_per_minute,
            )),
            stopping: api_stop.clone(),
        };
        let stop = api_stop.clone();
        let api_task = sup(
            "api",
            async move {
                if let Err(e) =
                    api::serve(listener, state, async move { stop.cancelled().await }).await
                {
                    error!(error = %e, "API server failed");
                }
            }
            .instrument(info_span!("api", addr = %api_addr))
            .boxed(),
        );
        info!(%api_addr, "node started");
        stop_on_error.disarm();
        Ok(Node {
            peer_id,
            api_addr,
            network,
            keys,
            aggregation,
            series,
            inference,
            store,
            metrics,
            api_stop,
            actors_stop,
            fatal,
            panicked,
            reopen_store,
            tasks: vec![
                ("api", api_task),
                ("sampler", sampler),
                ("store-watch", store_watch),
                ("router", router_task),
                ("inference", inf_task),
                ("series", series_task),
                ("aggregation", agg_task),
                ("keys", keys_task),
                ("network", net_task),
            ],
        })
    }

    /// A token that, once cancelled, makes [`Node::run_until_stopped`] return.
    pub fn fatal_token(&self) -> CancellationToken {
        self.fatal.clone()
    }

    /// Runs until SIGINT/SIGTERM or an actor panic, then shuts down in order. Under systemd
    /// (`Type=notify`, NOTIFY_SOCKET set) it reports READY=1 first, since the actors run and
    /// the API listens once [`Node::start`] has returned, and STOPPING=1 when shutdown begins;
    /// without NOTIFY_SOCKET both are no-ops.
    pub async fn run_until_stopped(self) -> Result<(), NodeError> {
        // On Unix the handlers are installed before READY=1: a service manager may send
        // SIGTERM the moment it reads READY, and a signal with no handler yet kills the
        // process outright. (Elsewhere Ctrl-C is watched from the first poll, after READY.)
        #[cfg(unix)]
        let stop_signal = {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate()).map_err(NodeError::Signal)?;
            let mut int = signal(SignalKind::interrupt()).map_err(NodeError::Signal)?;
            async move {
                tokio::select! {
                    _ = int.recv() => info!("SIGINT received"),
                    _ = term.recv() => info!("SIGTERM received"),
                }
            }
        };
        #[cfg(not(unix))]
        let stop_signal = async {
            if tokio::signal::ctrl_c().await.is_ok() {
                info!("Ctrl-C received");
            }
        };
        notify_systemd(sd_notify::NotifyState::Ready);
        tokio::select! {
            _ = stop_signal => {}
            _ = self.fatal.cancelled() => {}
        }
        notify_systemd(sd_notify::NotifyState::Stopping);
        self.shutdown().await
    }

    /// Stops the API, then the actors (in reverse start order), then flushes the store, all
    /// within [`SHUTDOWN_WITHIN`]: an actor stuck in a store write (a full disk) or a flush
    /// that never returns is left behind, since every acknowledged write was flushed already.
    pub async fn shutdown(mut self) -> Result<(), NodeError> {
        let deadline = tokio::time::Instant::now() + SHUTDOWN_WITHIN;
        self.api_stop.cancel();
        let tasks = std::mem::take(&mut self.tasks);
        for (name, task) in tasks {
            if name != "api" {
                self.actors_stop.cancel();
            }
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                error!(actor = name, "did not stop in time; left behind");
            }
        }
        // The flush gets at least a second, even when the actors took all the time.
        let flush_by = deadline.max(tokio::time::Instant::now() + Duration::from_secs(1));
        let reopen = self.reopen_store.load(std::sync::atomic::Ordering::Acquire);
        match tokio::time::timeout_at(flush_by, self.store.flush_async()).await {
            // The failed store is reopened next: what it held durably is all there is.
            Ok(Err(e)) if reopen => error!(error = %e, "the failed store's last flush failed"),
            Ok(flushed) => info!(flushed = flushed?, "store flushed; node stopped"),
            Err(_) => error!("the store's last flush did not finish in time; node stopped"),
        }
        let panicked = self.panicked.lock().ok().and_then(|slot| *slot);
        match panicked {
            Some(actor) => Err(NodeError::ActorPanicked(actor)),
            None if reopen => Err(NodeError::StoreNeedsReopen),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[tokio::test]
    async fn a_panicking_actor_is_counted_and_brings_the_node_down() {
        let metrics = Metrics::new();
        let fatal = CancellationToken::new();
        let panicked = std::sync::Arc::new(std::sync::Mutex::new(None));
        let task = supervise(
            "doomed",
            async { panic!("injected fault") },
            metrics.node.clone(),
            fatal.clone(),
            panicked.clone(),
        );
        tokio::time::timeout(Duration::from_secs(5), fatal.cancelled())
            .await
            .expect("the supervisor must cancel the node");
        task.await
            .expect("the supervising task itself does not panic");
        assert_eq!(*panicked.lock().unwrap(), Some("doomed"));
        let count = metrics
            .node
            .actor_panics
            .get_or_create(&ActorLabels { actor: "doomed" })
            .get();
        assert_eq!(count, 1);
        let text = crate::metrics::render(&metrics.registry).unwrap();
        assert!(
            text.contains("fhenode_actor_panics_total{actor=\"doomed\"} 1"),
            "{text}"
        );
    }
}
