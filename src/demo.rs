//! `fhenode demo`: a local network of nodes in one process, on loopback, with temporary stores.

use std::time::{Duration, Instant};

use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;

use crate::config::Config;
use crate::net::{Request, Response};
use crate::node::{Node, NodeError};

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("demo: {0}")]
    Failed(String),
}

/// A configuration for a node that lives only on loopback: ephemeral ports, no mDNS.
pub fn loopback_config(data_dir: &std::path::Path, bootstrap: Vec<Multiaddr>) -> Config {
    let mut config = Config::default();
    config.data_dir = data_dir.to_path_buf();
    config.p2p.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().expect("static multiaddr")];
    config.p2p.bootstrap = bootstrap;
    config.p2p.mdns = false;
    config.api.listen = ([127, 0, 0, 1], 0).into();
    config
}

/// Waits until the node listens somewhere and returns a dialable address with `/p2p/<id>`.
pub async fn dial_address(node: &Node, timeout: Duration) -> Result<Multiaddr, DemoError> {
    let deadline = Instant::now() + timeout;
    loop {
        let status = node
            .network
            .status()
            .await
            .map_err(|e| DemoError::Failed(e.to_string()))?;
        if let Some(addr) = status.listen_addrs.iter().find_map(|a| a.parse::<Multiaddr>().ok()) {
            return Ok(addr.with(Protocol::P2p(node.peer_id)));
        }
        if Instant::now() > deadline {
            return Err(DemoError::Failed("node did not start listening".into()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every node is connected to every other one.
pub async fn wait_for_full_mesh(nodes: &[Node], timeout: Duration) -> Result<Duration, DemoError> {
    let start = Instant::now();
    loop {
        let mut complete = true;
        for node in nodes {
            let peers = node
                .network
                .peers()
                .await
                .map_err(|e| DemoError::Failed(e.to_string()))?;
            let others = nodes.iter().filter(|n| n.peer_id != node.peer_id);
            if !others.into_iter().all(|o| peers.iter().any(|p| p.peer_id == o.peer_id.to_string())) {
                complete = false;
                break;
            }
        }
        if complete {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            return Err(DemoError::Failed(format!(
                "nodes did not all discover each other within {timeout:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts `count` nodes that bootstrap from the first, waits for the mesh, exchanges one
/// request between the last and the first, and stops them all.
pub async fn run(count: usize) -> Result<(), DemoError> {
    if count < 2 {
        return Err(DemoError::Failed("the demo needs at least 2 nodes".into()));
    }
    let dirs: Vec<_> = (0..count)
        .map(|_| tempfile::tempdir().map_err(|e| DemoError::Failed(e.to_string())))
        .collect::<Result<_, _>>()?;
    let start = Instant::now();
    let first = Node::start(loopback_config(dirs[0].path(), vec![])).await?;
    let boot = dial_address(&first, Duration::from_secs(10)).await?;
    let mut nodes = vec![first];
    for dir in &dirs[1..] {
        nodes.push(Node::start(loopback_config(dir.path(), vec![boot.clone()])).await?);
    }
    println!("started {count} nodes in {:?}", start.elapsed());
    for node in &nodes {
        println!("  {}  api http://{}", node.peer_id, node.api_addr);
    }
    let took = wait_for_full_mesh(&nodes, Duration::from_secs(30)).await?;
    println!("all {count} nodes discovered each other in {took:?} (bootstrap + Kademlia)");

    let payload = vec![42u8; 4 << 20];
    let t = Instant::now();
    let (last, first) = (&nodes[count - 1], &nodes[0]);
    match last.network.request(first.peer_id, Request::Echo(payload.clone())).await {
        Ok(Response::Echo(back)) if back == payload => {
            println!("echoed {} MiB over /fhenode/rpc/1 in {:?}", payload.len() >> 20, t.elapsed())
        }
        other => return Err(DemoError::Failed(format!("echo failed: {other:?}"))),
    }
    for node in nodes {
        node.shutdown().await?;
    }
    println!("all nodes stopped cleanly");
    Ok(())
}
