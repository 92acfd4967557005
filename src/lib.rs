//! fhenode: a node daemon for privacy-preserving federated learning.
//!
//! Layers, each depending only on those above it in this list:
//! - [`crypto`]: pure, synchronous threshold encryption and aggregation (no I/O); beside it
//!   [`runtime`] (mailboxes, retries, blocking work) and [`codes`] (error codes), which import
//!   nothing else of the crate;
//! - [`config`], [`store`] (sled), [`metrics`] (prometheus-client);
//! - [`net`]: the libp2p swarm and the wire protocol, owned by the network actor;
//! - [`actors`]: keys, aggregation, inference, each a task behind a typed handle;
//! - [`api`] (axum) and [`node`], the supervisor that starts and stops everything.

pub mod actors;
pub mod api;
pub mod bench;
pub mod client;
pub mod codes;
pub mod config;
pub mod crypto;
pub mod demo;
pub mod inference;
pub mod metrics;
pub mod net;
pub mod node;
pub mod runtime;
pub mod session;
pub mod store;
pub mod telemetry;
pub mod tensors;
