//! One prometheus-client registry for the whole node: libp2p's own metrics, bandwidth, the
//! node's `fhenode_` families and process metrics. Labels are bounded: never a peer or
//! session id.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActorLabels {
    pub actor: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: &'static str,
    pub tfhe: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteOnlyLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    pub protocol: &'static str,
    pub outcome: &'static str,
}

/// An inference request's scheme (an implemented one, or "unknown" when the request names none
/// that fhenode implements) and outcome ("ok", "refused" for client errors, "failed").
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InferenceLabels {
    pub scheme: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SchemeLabels {
    pub scheme: &'static str,
}

/// The node's own metric families. Cheap to clone: every field is an `Arc` inside.
#[derive(Clone, Debug)]
pub struct NodeMetrics {
    pub peers_connected: Gauge,
    pub actor_mailbox_depth: Family<ActorLabels, Gauge>,
    pub actor_panics: Family<ActorLabels, Counter>,
    pub store_size: Gauge,
    pub store_flush_duration: Histogram,
    pub api_requests: Family<RouteLabels, Counter>,
    pub api_request_duration: Family<RouteOnlyLabels, Histogram>,
    pub rpc_requests: Family<ProtocolLabels, Counter>,
    pub rpc_bytes_received: Counter,
    pub gossip_messages: Family<OutcomeLabels, Counter>,
    pub start_time: Gauge<f64, AtomicU64>,
    pub sessions: Family<PhaseLabels, Gauge>,
    pub session_outcomes: Family<OutcomeLabels, Counter>,
    pub sessions_expired: Counter,
    pub phase_duration: Family<PhaseLabels, Histogram>,
    pub submissions: Family<OutcomeLabels, Counter>,
    pub submission_bytes: Counter,
    pub crypto_duration: Family<OpLabels, Histogram>,
    pub key_releases: Family<OutcomeLabels, Counter>,
    pub inference_requests: Family<InferenceLabels, Counter>,
    pub inference_duration: Family<SchemeLabels, Histogram>,
    pub inference_queue_depth: Gauge,
    pub inference_pbs: Counter,
    pub eval_key_cache_bytes: Gauge,
}

/// The registry plus the handles the node updates. Built once at start; the registry is
/// read-only afterwards, so scrapes need no lock.
pub struct Metrics {
    pub registry: Registry,
    pub node: NodeMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn duration_buckets() -> impl Iterator<Item = f64> {
    // 100 µs … ~100 s
    exponential_buckets(1e-4, 4.0, 11)
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let node = NodeMetrics {
            peers_connected: Gauge::default(),
            actor_mailbox_depth: Family::default(),
            actor_panics: Family::default(),
            store_size: Gauge::default(),
            store_flush_duration: Histogram::new(duration_buckets()),
            api_requests: Family::default(),
            api_request_duration: Family::new_with_constructor(|| {
                Histogram::new(duration_buckets())
            }),
            rpc_requests: Family::default(),
            rpc_bytes_received: Counter::default(),
            gossip_messages: Family::default(),
            start_time: Gauge::default(),
            sessions: Family::default(),
            session_outcomes: Family::default(),
            sessions_expired: Counter::default(),
            phase_duration: Family::new_with_constructor(|| Histogram::new(duration_buckets())),
            submissions: Family::default(),
            submission_bytes: Counter::default(),
            crypto_duration: Family::new_with_constructor(|| Histogram::new(duration_buckets())),
            key_releases: Family::default(),
            inference_requests: Family::default(),
            inference_duration: Family::new_with_constructor(|| Histogram::new(duration_buckets())),
            inference_queue_depth: Gauge::default(),
            inference_pbs: Counter::default(),
            eval_key_cache_bytes: Gauge::default(),
        };
        let fhenode = registry.sub_registry_with_prefix("fhenode");
        // A gauge fixed at 1 rather than an OpenMetrics `info`: promtool and the classic text
        // parser do not know the `info` type.
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                tfhe: "1.8.2",
            })
            .set(1);
        fhenode.register(
            "build_info",
            "Version of this fhenode build (always 1)",
            build_info,
        );
        fhenode.register_with_unit(
            "start_time",
            "Unix time the node started",
            Unit::Seconds,
            node.start_time.clone(),
        );
        fhenode.register(
            "peers_connected",
            "Peers with at least one open connection",
            node.peers_connected.clone(),
        );
        fhenode.register(
            "actor_mailbox_depth",
            "Messages waiting in each actor's mailbox",
            node.actor_mailbox_depth.clone(),
        );
        fhenode.register(
            "actor_panics",
            "Actors that panicked (the node then shuts down)",
            node.actor_panics.clone(),
        );
        fhenode.register_with_unit(
            "store_size",
            "Size of the sled database on disk",
            Unit::Bytes,
            node.store_size.clone(),
        );
        fhenode.register_with_unit(
            "store_flush_duration",
            "Time to make the store durable at a checkpoint",
            Unit::Seconds,
            node.store_flush_duration.clone(),
        );
        fhenode.register(
            "api_requests",
            "HTTP API requests by route and status",
            node.api_requests.clone(),
        );
        fhenode.register_with_unit(
            "api_request_duration",
            "HTTP API request duration by route",
            Unit::Seconds,
            node.api_request_duration.clone(),
        );
        fhenode.register(
            "rpc_requests",
            "Request-response exchanges by direction and outcome",
            node.rpc_requests.clone(),
        );
        fhenode.register_with_unit(
            "rpc_received",
            "Request and response payload bytes received over the request-response protocol",
            Unit::Bytes,
            node.rpc_bytes_received.clone(),
        );
        fhenode.register(
            "gossip_messages",
            "Gossipsub messages by outcome",
            node.gossip_messages.clone(),
        );
        fhenode.register(
            "sessions",
            "Sessions this node coordinates, by phase",
            node.sessions.clone(),
        );
        fhenode.register(
            "session_outcomes",
            "Coordinated sessions that ended, by outcome (done or failed)",
            node.session_outcomes.clone(),
        );
        fhenode.register(
            "sessions_expired",
            "Joined sessions dropped because their coordinator never ended them within their \
             deadlines",
            node.sessions_expired.clone(),
        );
        fhenode.register_with_unit(
            "session_phase_duration",
            "Time coordinated sessions spent in each phase",
            Unit::Seconds,
            node.phase_duration.clone(),
        );
        fhenode.register(
            "submissions",
            "Encrypted-update submissions received by the coordinator, by outcome",
            node.submissions.clone(),
        );
        fhenode.register_with_unit(
            "submission_received",
            "Ciphertext bytes received in submissions",
            Unit::Bytes,
            node.submission_bytes.clone(),
        );
        fhenode.register_with_unit(
            "crypto_operation_duration",
            "Duration of crypto operations by op (prepare, encrypt, accumulate, release, combine)",
            Unit::Seconds,
            node.crypto_duration.clone(),
        );
        fhenode.register(
            "key_releases",
            "Key-release requests this node answered or refused as a committee member",
            node.key_releases.clone(),
        );
        fhenode.register(
            "inference_requests",
            "Encrypted inference requests by scheme and outcome",
            node.inference_requests.clone(),
        );
        fhenode.register_with_unit(
            "inference_duration",
            "Time to evaluate an encrypted inference request, by scheme",
            Unit::Seconds,
            node.inference_duration.clone(),
        );
        fhenode.register(
            "inference_queue_depth",
            "Inference requests waiting for a free worker of the evaluation pool",
            node.inference_queue_depth.clone(),
        );
        fhenode.register(
            "inference_pbs",
            "Programmable bootstraps (activation lookups) evaluated for inference",
            node.inference_pbs.clone(),
        );
        fhenode.register_with_unit(
            "eval_key_cache",
            "Evaluation keys held in memory for inference contexts",
            Unit::Bytes,
            node.eval_key_cache_bytes.clone(),
        );
        registry.register_collector(Box::new(ProcessCollector));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        node.start_time.set(now);
        Metrics { registry, node }
    }

    /// Freezes the registry for serving.
    pub fn into_shared(self) -> (Arc<Registry>, NodeMetrics) {
        (Arc::new(self.registry), self.node)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Renders the registry in the OpenMetrics text format.
pub fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

/// Renders the registry in the classic Prometheus text format (0.0.4), for clients that do not
/// ask for OpenMetrics (curl, `promtool check metrics`). prometheus-client only writes
/// OpenMetrics; the two differ in that a counter's HELP/TYPE lines name the family without
/// `_total` there, and in the `# UNIT` and `# EOF` lines, which 0.0.4 does not have.
pub fn render_classic(registry: &Registry) -> Result<String, std::fmt::Error> {
    let open = render(registry)?;
    let mut out = String::with_capacity(open.len());
    let mut counters = std::collections::HashSet::new();
    for line in open.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(name) = rest.strip_suffix(" counter") {
                counters.insert(name.to_string());
            }
        }
    }
    for line in open.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|r| (p, r)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    out.push_str(&format!("{prefix}{name}_total {tail}"));
                } else {
                    out.push_str(line);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    Ok(out)
}

/// Standard `process_*` metrics (CPU, memory, fds, threads) read by the `metrics-process` crate
/// at each scrape.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = metrics_process::collector::collect();
        if let Some(v) = m.cpu_seconds_total {
            let c = ConstCounter::new(v);
            let e = encoder.encode_descriptor(
                "process_cpu",
                "Total user and system CPU time spent",
                Some(&Unit::Seconds),
                c.metric_type(),
            )?;
            c.encode(e)?;
        }
        let gauges: [(&str, &str, Option<Unit>, Option<u64>); 6] = [
            (
                "process_open_fds",
                "Number of open file descriptors",
                None,
                m.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                None,
                m.max_fds,
            ),
            (
                "process_virtual_memory",
                "Virtual memory size",
                Some(Unit::Bytes),
                m.virtual_memory_bytes,
            ),
            (
                "process_resident_memory",
                "Resident memory size",
                Some(Unit::Bytes),
                m.resident_memory_bytes,
            ),
            (
                "process_start_time",
                "Start time of the process since the Unix epoch",
                Some(Unit::Seconds),
                m.start_time_seconds,
            ),
            ("process_threads", "Number of OS threads", None, m.threads),
        ];
        for (name, help, unit, value) in gauges {
            if let Some(v) = value {
                let g = ConstGauge::new(v as i64);
                let e = encoder.encode_descriptor(name, help, unit.as_ref(), g.metric_type())?;
                g.encode(e)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_node_and_process_families() {
        let m = Metrics::new();
        m.node
            .api_requests
            .get_or_create(&RouteLabels {
                method: "GET".into(),
                route: "/healthz".into(),
                status: 200,
            })
            .inc();
        let text = render(&m.registry).unwrap();
        for family in [
            "fhenode_build_info{",
            "fhenode_peers_connected ",
            "fhenode_api_requests_total{",
            "fhenode_start_time_seconds ",
            "process_resident_memory_bytes ",
            "process_cpu_seconds_total ",
            "process_open_fds ",
            "# TYPE fhenode_inference_requests counter\n",
            "# TYPE fhenode_inference_duration_seconds histogram\n",
            "fhenode_inference_queue_depth 0\n",
            "fhenode_inference_pbs_total 0\n",
            "fhenode_eval_key_cache_bytes 0\n",
        ] {
            assert!(text.contains(family), "missing {family} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
        let classic = render_classic(&m.registry).unwrap();
        assert!(
            classic.contains("# TYPE fhenode_api_requests_total counter\n"),
            "{classic}"
        );
        assert!(
            classic.contains("# HELP process_cpu_seconds_total "),
            "{classic}"
        );
        assert!(!classic.contains("# EOF") && !classic.contains("# UNIT"));
    }
}
