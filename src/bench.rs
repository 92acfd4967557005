//! `fhenode bench crypto`: the crypto layer's throughput next to plaintext baselines measured
//! in the same run, so figures from a shared, noisy machine can be compared as ratios.

use std::hint::black_box;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::crypto::kahe::{self, Accumulator, KaheParams, ParticipantKey, SeedBundle};
use crate::crypto::{CryptoError, Profile};

/// The shape of one benchmark run.
#[derive(Clone, Debug)]
pub struct CryptoBenchConfig {
    pub profile: Profile,
    pub params: usize,
    pub participants: u32,
    pub committee: u32,
    /// Members needed to decrypt; the committee size when absent.
    pub threshold: Option<u32>,
    pub clip: f64,
}

impl Default for CryptoBenchConfig {
    fn default() -> Self {
        CryptoBenchConfig {
            profile: Profile::Secure,
            params: 1_000_000,
            participants: 10,
            committee: 3,
            threshold: None,
            clip: 8.0,
        }
    }
}

/// What one run measured. Rates are values (parameters) per second; `*_ratio` fields divide a
/// crypto rate by its plaintext baseline from the same run.
#[derive(Clone, Debug, Serialize)]
pub struct CryptoBenchReport {
    pub profile: String,
    pub params: usize,
    pub participants: u32,
    pub committee: u32,
    pub threshold: u32,
    pub plaintext_bits: u32,
    pub wire_bits: u32,
    pub frac_bits: u32,
    pub threads: usize,
    /// One participant's encryption, whole (the pad and the values).
    pub encrypt_values_per_s: f64,
    /// One participant's pad, drawn ahead of the update.
    pub prepare_values_per_s: f64,
    /// Adding the values to a prepared pad: what a submission costs once the pad is drawn.
    pub seal_values_per_s: f64,
    /// Adding every participant's update to the running sum (values × participants / time).
    pub accumulate_values_per_s: f64,
    /// One member's key release, per value of the update (seeds expanded once, then one
    /// product per polynomial).
    pub release_values_per_s: f64,
    /// CPU seconds of one member's release: grows with the participants once and with the
    /// update's length once.
    pub release_cpu_s: f64,
    /// Subtracting the releases and decoding.
    pub combine_values_per_s: f64,
    /// Serialised ciphertext bytes per parameter (envelope included).
    pub bytes_per_param: f64,
    /// Bytes of seeds one participant sends the whole committee.
    pub seed_bytes_per_participant: u64,
    /// Largest |decrypted mean − plaintext mean|.
    pub max_abs_error: f64,
    /// The quantisation bound that error must stay under.
    pub error_bound: f64,
    /// Baseline: summing the participants' f32 vectors in the clear.
    pub plaintext_sum_values_per_s: f64,
    /// Baseline: a wrapping u64 add loop over the same number of values.
    pub plaintext_u64_add_values_per_s: f64,
    /// plaintext u64 add rate ÷ accumulation rate.
    pub accumulate_slowdown_vs_u64_add: f64,
    /// plaintext f32 sum rate ÷ encryption rate.
    pub encrypt_slowdown_vs_f32_sum: f64,
    /// CPU time (all threads) of the round's cryptography: every participant's encryption,
    /// the checks and the sum, the answering members' releases, and the combine.
    pub crypto_cpu_s: f64,
}

fn rate(values: usize, start: Instant) -> f64 {
    values as f64 / start.elapsed().as_secs_f64().max(1e-9)
}

/// Runs the whole pipeline once (keys, encryption, sum, releases by t members, combine) and
/// checks the decrypted mean against the plaintext mean.
pub fn run_crypto_bench(cfg: &CryptoBenchConfig) -> Result<CryptoBenchReport, CryptoError> {
    if cfg.params == 0 || cfg.participants == 0 {
        return Err(CryptoError::InvalidParams(
            "bench needs at least one parameter and one participant".into(),
        ));
    }
    let threshold = cfg.threshold.unwrap_or(cfg.committee);
    let params = KaheParams::recommended(
        cfg.profile,
        cfg.participants,
        cfg.committee,
        threshold,
        cfg.clip,
        kahe::DEFAULT_FRAC_BITS,
    )?;
    let ctx = kahe::SessionContext::new(params.clone(), [7; 32], cfg.params as u64)?;
    let committee = ctx.committee();

    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let clip = cfg.clip as f32;
    let updates: Vec<Vec<f32>> = (0..cfg.participants)
        .map(|_| {
            (0..cfg.params)
                .map(|_| rng.gen_range(-clip..=clip))
                .collect()
        })
        .collect();

    // Baselines first, on the same data.
    let start = Instant::now();
    let mut plain_sum = vec![0f32; cfg.params];
    for update in &updates {
        for (acc, v) in plain_sum.iter_mut().zip(update) {
            *acc += *v;
        }
    }
    black_box(&plain_sum);
    let plaintext_sum_values_per_s = rate(cfg.params * updates.len(), start);

    let words: Vec<u64> = (0..cfg.params).map(|_| rng.gen()).collect();
    let start = Instant::now();
    let mut acc = vec![0u64; cfg.params];
    for _ in 0..updates.len() {
        for (a, w) in acc.iter_mut().zip(black_box(&words)) {
            *a = a.wrapping_add(*w);
        }
        black_box(&acc);
    }
    let plaintext_u64_add_values_per_s = rate(cfg.params * updates.len(), start);
    drop((acc, words));

    let crypto_cpu = cpu_time::ProcessTime::now();
    let keys: Vec<ParticipantKey> = (0..cfg.participants)
        .map(|_| ParticipantKey::generate(committee))
        .collect();
    // One participant's pad and seal, timed apart; the others encrypt in one step.
    let start = Instant::now();
    let prepared = keys[0].prepare(&ctx)?;
    let prepare_values_per_s = rate(cfg.params, start);
    let start = Instant::now();
    let first = prepared.seal(&updates[0])?;
    let seal_values_per_s = rate(cfg.params, start);
    let start = Instant::now();
    let mut encrypted = vec![first.bytes];
    for (key, update) in keys.iter().zip(&updates).skip(1) {
        encrypted.push(key.encrypt(&ctx, update)?.bytes);
    }
    let encrypt_values_per_s = rate(cfg.params * (updates.len() - 1).max(1), start);
    let bytes_per_param = encrypted[0].len() as f64 / cfg.params as f64;
    let seed_bytes_per_participant = (0..committee.size())
        .map(|m| keys[0].bundle_for(m).seeds.len() as u64 * 32)
        .sum();

    let start = Instant::now();
    let mut accumulator = Accumulator::new(&ctx);
    for (i, update) in encrypted.iter().enumerate() {
        accumulator.add(&format!("participant-{i:04}"), update)?;
    }
    let aggregate = accumulator.finish();
    let accumulate_values_per_s = rate(cfg.params * updates.len(), start);
    drop(encrypted);

    // The first t members answer; each holds its bundles of every participant.
    let answering: Vec<u32> = (0..threshold).collect();
    let request = aggregate.request(committee.assign(&answering)?);
    let held: Vec<std::collections::BTreeMap<String, SeedBundle>> = answering
        .iter()
        .map(|&m| {
            keys.iter()
                .enumerate()
                .map(|(i, k)| (format!("participant-{i:04}"), k.bundle_for(m)))
                .collect()
        })
        .collect();
    let mut releases = Vec::with_capacity(answering.len());
    let release_cpu = cpu_time::ProcessTime::now();
    let start = Instant::now();
    for (&m, held) in answering.iter().zip(&held) {
        releases.push((m, kahe::release(&ctx, m, &request, |p| held.get(p))?));
    }
    let release_values_per_s = rate(cfg.params * answering.len(), start);
    let release_cpu_s = release_cpu.elapsed().as_secs_f64() / answering.len() as f64;

    let start = Instant::now();
    let refs: Vec<(u32, &[u8])> = releases.iter().map(|(m, b)| (*m, b.as_slice())).collect();
    let decrypted = aggregate.combine(&request, &refs)?;
    let combine_values_per_s = rate(cfg.params, start);
    let crypto_cpu_s = crypto_cpu.elapsed().as_secs_f64();

    let k = cfg.participants as f64;
    let mut exact = vec![0f64; cfg.params];
    for update in &updates {
        for (e, v) in exact.iter_mut().zip(update) {
            *e += *v as f64;
        }
    }
    let max_abs_error = decrypted
        .sum
        .iter()
        .zip(&exact)
        .map(|(s, e)| (s / k - e / k).abs())
        .fold(0f64, f64::max);

    Ok(CryptoBenchReport {
        profile: cfg.profile.to_string(),
        params: cfg.params,
        participants: cfg.participants,
        committee: cfg.committee,
        threshold,
        plaintext_bits: params.plaintext_bits,
        wire_bits: params.wire_bits,
        frac_bits: params.frac_bits,
        threads: rayon::current_num_threads(),
        encrypt_values_per_s,
        prepare_values_per_s,
        seal_values_per_s,
        accumulate_values_per_s,
        release_values_per_s,
        release_cpu_s,
        combine_values_per_s,
        bytes_per_param,
        seed_bytes_per_participant,
        max_abs_error,
        error_bound: params.mean_error_bound(),
        plaintext_sum_values_per_s,
        plaintext_u64_add_values_per_s,
        accumulate_slowdown_vs_u64_add: plaintext_u64_add_values_per_s / accumulate_values_per_s,
        encrypt_slowdown_vs_f32_sum: plaintext_sum_values_per_s / encrypt_values_per_s,
        crypto_cpu_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_bench_decrypts_within_its_bound() {
        for profile in Profile::ALL {
            let report = run_crypto_bench(&CryptoBenchConfig {
                profile,
                params: 3000,
                participants: 3,
                committee: 3,
                threshold: Some(2),
                clip: 8.0,
            })
            .unwrap();
            assert!(report.max_abs_error <= report.error_bound, "{report:?}");
            assert!(report.bytes_per_param > 0.0);
        }
    }
}

/// The shape of `fhenode bench round`.
#[derive(Clone, Debug)]
pub struct RoundBenchConfig {
    pub profile: Profile,
    pub params: usize,
    pub participants: usize,
    pub committee: usize,
    /// Encrypted rounds, each followed by a plaintext round on the same network; the report
    /// gives medians (the machine is shared: single rounds vary by tens of percent).
    pub rounds: usize,
}

/// Encrypted rounds on a local network, each next to a plaintext FedAvg round on the same
/// network. Timings are medians over the rounds; the ratios are medians of each round's ratio
/// to the plaintext round run right after it.
#[derive(Clone, Debug, Serialize)]
pub struct RoundBenchReport {
    pub profile: String,
    pub params: usize,
    pub participants: usize,
    pub committee: usize,
    pub rounds: usize,
    /// Time for the local network to settle (before anything is timed).
    pub mesh_s: f64,
    /// Create → the plan stored by the committee, every participant's key drawn and its seeds
    /// held by the members.
    pub setup_s: f64,
    /// Slowest participant's encryption of its update.
    pub encrypt_max_s: f64,
    pub encrypt_mean_s: f64,
    /// First submission sent → last one acknowledged (all participants at once).
    pub submit_s: f64,
    /// Last submission acknowledged → result decrypted (sum, holdings, key releases, combine).
    pub after_last_submission_s: f64,
    pub accumulate_s: f64,
    pub decrypt_and_combine_s: f64,
    /// Create → result, at the coordinator.
    pub round_s: f64,
    /// Create → every participant holds the result (pushed after the round; waited for so that
    /// it does not run into the plaintext round measured next).
    pub result_delivered_s: f64,
    pub bytes_per_param: f64,
    /// Largest error over all rounds.
    pub max_abs_error: f64,
    pub error_bound: f64,
    /// The same participants sending their f32 updates in the clear and the sum computed.
    pub plaintext_round_s: f64,
    pub round_slowdown_vs_plaintext: f64,
    /// CPU time (all threads, user + system) the process spent on each round: steadier than
    /// wall time on a shared machine, where other load stretches the wall clock.
    pub round_cpu_s: f64,
    pub plaintext_round_cpu_s: f64,
    pub round_cpu_vs_plaintext: f64,
    /// Every round's wall time, encrypted and plaintext, in order.
    pub round_s_each: Vec<f64>,
    pub plaintext_round_s_each: Vec<f64>,
    /// The steady state: a further encrypted round per round above whose session
    /// is created, keyed and opened, and whose participants' encryptions are prepared, before
    /// the updates exist (while the participants train). Timed from the updates handed to
    /// their nodes to the result at the coordinator: sealing, upload, sum, key releases
    /// and combine. The ratios use the same plaintext round as the round above.
    pub steady_round_s: f64,
    pub steady_round_slowdown_vs_plaintext: f64,
    pub steady_round_cpu_s: f64,
    pub steady_round_cpu_vs_plaintext: f64,
    /// Slowest participant's sealing of its update into its prepared encryption.
    pub steady_seal_max_s: f64,
    /// Off the critical path: session open at the coordinator → every participant prepared.
    pub steady_prepare_s: f64,
    pub steady_round_s_each: Vec<f64>,
    /// The plaintext round with payloads of the encrypted update's size (`bytes_per_param`
    /// per parameter): what the bytes alone cost on this network, the part of the encrypted
    /// round's ratio that no faster encryption, storage or decryption can remove. Measured
    /// right after each plaintext round; the ratios are to it.
    pub wire_floor_round_s: f64,
    pub wire_floor_slowdown_vs_plaintext: f64,
    pub wire_floor_round_cpu_s: f64,
    pub wire_floor_cpu_vs_plaintext: f64,
    /// CPU time of the round's cryptography alone, measured in this run after the rounds
    /// with no network (`bench crypto` at the same shape): every participant encrypting in
    /// full, the sum, the answering members' key releases, and the combine.
    pub crypto_cpu_s: f64,
    /// `wire_floor_round_cpu_s + crypto_cpu_s`: the CPU no encrypted round of this shape can
    /// go below on this network, before storage and seed delivery, and its ratio to the
    /// plaintext round's CPU. On two cores, the wall time cannot go below about half of it.
    pub cpu_floor_s: f64,
    pub cpu_floor_vs_plaintext: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Demo(#[from] crate::demo::DemoError),
    #[error(transparent)]
    Node(#[from] crate::node::NodeError),
    #[error("round benchmark: {0}")]
    Failed(String),
}

/// Waits until every node reaches the coordinator and then until the network stops growing:
/// nodes dial the peers they discover, and the rounds are timed on a settled network rather
/// than during the handshakes of its forming (a network of more than about 40 nodes never
/// becomes a full mesh: Kademlia's buckets hold 20 peers).
async fn settle(nodes: &[crate::node::Node]) -> Result<std::time::Duration, BenchError> {
    use std::time::Duration;
    let start = Instant::now();
    let (mut last, mut since) = (usize::MAX, Instant::now());
    loop {
        let mut total = 0;
        for node in nodes {
            total += node.network.peers().await.map(|p| p.len()).unwrap_or(0);
        }
        let coordinator = nodes[0].network.peers().await.map(|p| p.len()).unwrap_or(0);
        if total != last {
            (last, since) = (total, Instant::now());
        } else if coordinator + 1 >= nodes.len() && since.elapsed() >= Duration::from_secs(2) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > Duration::from_secs(120) {
            return Err(BenchError::Failed(format!(
                "the local network did not settle within 120 s ({coordinator} peers reached the \
                 coordinator)"
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What one encrypted round measured.
struct SecureRound {
    /// Open → every participant's encryption prepared (steady rounds; NaN otherwise).
    prepare_s: f64,
    /// Updates handed in → result at the coordinator, wall and CPU.
    online_s: f64,
    online_cpu_s: f64,
    setup_s: f64,
    encrypt_max_s: f64,
    encrypt_mean_s: f64,
    submit_s: f64,
    after_last_submission_s: f64,
    accumulate_s: f64,
    decrypt_and_combine_s: f64,
    round_s: f64,
    result_delivered_s: f64,
    cpu_s: f64,
    /// One participant's encrypted update on the wire.
    bytes_sent: usize,
    bytes_per_param: f64,
    max_abs_error: f64,
    error_bound: f64,
}

/// Waits until every node holds its prepared encryption for session `id`.
async fn wait_prepared(nodes: &[crate::node::Node], id: &str) -> Result<(), BenchError> {
    let timeout = std::time::Duration::from_secs(120);
    for node in nodes {
        crate::demo::wait_info(node, id, |info| info.prepared, timeout).await?;
    }
    Ok(())
}

/// One encrypted round as session `id`: node 0 coordinates, the first `committee` nodes hold
/// the key, every node submits its update: at once when the session opens, or (`steady`) once
/// every participant has prepared its encryption.
async fn secure_round(
    cfg: &RoundBenchConfig,
    nodes: &[crate::node::Node],
    updates: &[Vec<f32>],
    id: &str,
    steady: bool,
) -> Result<SecureRound, BenchError> {
    use crate::demo::wait_phase;
    use crate::session::{Phase, ResultKind, SessionSpec};
    use std::time::Duration;

    let fail = |m: String| BenchError::Failed(m);
    let ids: Vec<String> = nodes.iter().map(|n| n.peer_id.to_string()).collect();
    let round = Instant::now();
    let round_cpu = cpu_time::ProcessTime::now();
    let spec = SessionSpec {
        id: Some(id.into()),
        length: Some(cfg.params as u64),
        profile: Some(cfg.profile),
        committee: ids[..cfg.committee].to_vec(),
        participants: ids.clone(),
        deadline_secs: Some(3600),
        result: ResultKind::Mean,
        ..Default::default()
    };
    let coordinator = &nodes[0];
    coordinator
        .aggregation
        .create(spec)
        .await
        .map_err(|e| fail(e.to_string()))?;
    wait_phase(
        coordinator,
        id,
        |p| p >= Phase::Collecting,
        Duration::from_secs(120),
    )
    .await?;
    // Every participant's seeds reach the committee before its body can go out.
    let t = cfg.committee;
    for node in nodes {
        crate::demo::wait_info(
            node,
            id,
            |info| info.seeds_delivered >= t,
            Duration::from_secs(120),
        )
        .await?;
    }
    let setup_s = round.elapsed().as_secs_f64();
    let prepare_s = if steady {
        wait_prepared(nodes, id).await?;
        round.elapsed().as_secs_f64() - setup_s
    } else {
        f64::NAN
    };
    let online_cpu = cpu_time::ProcessTime::now();
    let submit_start = Instant::now();
    let receipts = futures::future::join_all(
        nodes
            .iter()
            .zip(updates)
            .map(|(node, u)| node.aggregation.submit(id, u.clone())),
    )
    .await;
    let submit_s = submit_start.elapsed().as_secs_f64();
    let receipts = receipts
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(e.to_string()))?;
    let last_ack = Instant::now();
    wait_phase(
        coordinator,
        id,
        Phase::is_terminal,
        Duration::from_secs(600),
    )
    .await?;
    let after_last_submission_s = last_ack.elapsed().as_secs_f64();
    let round_s = round.elapsed().as_secs_f64();
    let cpu_s = round_cpu.elapsed().as_secs_f64();
    let online_s = submit_start.elapsed().as_secs_f64();
    let online_cpu_s = online_cpu.elapsed().as_secs_f64();
    if steady && !receipts.iter().all(|r| r.prepared) {
        return Err(fail(
            "a steady round's update was not sealed into a prepared encryption".into(),
        ));
    }
    for node in &nodes[1..] {
        wait_phase(node, id, Phase::is_terminal, Duration::from_secs(120)).await?;
    }
    let result_delivered_s = round.elapsed().as_secs_f64();
    let info = coordinator
        .aggregation
        .get(id)
        .await
        .map_err(|e| fail(e.to_string()))?;
    if info.phase != Phase::Done {
        return Err(fail(format!("the round failed: {:?}", info.failure)));
    }
    let result = coordinator
        .aggregation
        .result(id)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let k = updates.len() as f64;
    let max_abs_error = result
        .values
        .iter()
        .enumerate()
        .map(|(j, v)| (v - updates.iter().map(|u| u[j] as f64).sum::<f64>() / k).abs())
        .fold(0f64, f64::max);
    let ms = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => b.saturating_sub(a) as f64 / 1e3,
        _ => f64::NAN,
    };
    let t = &info.timings;
    let encrypt: Vec<f64> = receipts.iter().map(|r| r.encrypt_ms / 1e3).collect();
    Ok(SecureRound {
        prepare_s,
        online_s,
        online_cpu_s,
        setup_s,
        encrypt_max_s: encrypt.iter().cloned().fold(0.0, f64::max),
        encrypt_mean_s: encrypt.iter().sum::<f64>() / encrypt.len() as f64,
        submit_s,
        after_last_submission_s,
        accumulate_s: ms(t.closed_ms, t.decrypting_ms),
        decrypt_and_combine_s: ms(t.decrypting_ms, t.finished_ms),
        round_s,
        result_delivered_s,
        cpu_s,
        bytes_sent: receipts[0].bytes_sent as usize,
        bytes_per_param: receipts[0].bytes_sent as f64 / cfg.params as f64,
        max_abs_error,
        error_bound: result.error_bound,
    })
}

/// Each update's f32 bytes repeated to `len` bytes: the payloads of the wire floor, the
/// plaintext round at an encrypted update's size (what its bytes are does not matter to Noise).
fn repeated_to(payloads: &[Vec<u8>], len: usize) -> Vec<Vec<u8>> {
    payloads
        .iter()
        .map(|plain| {
            let mut payload = plain.repeat(len.div_ceil(plain.len().max(1)));
            payload.truncate(len);
            payload
        })
        .collect()
}

/// Every node but the coordinator sends its payload to it in the clear, in pieces of the
/// submissions' size; then the updates' sum is computed. Wall and CPU time. With the updates'
/// f32 bytes as payloads, this is the plaintext FedAvg baseline.
async fn clear_round(
    nodes: &[crate::node::Node],
    payloads: &[Vec<u8>],
    updates: &[Vec<f32>],
) -> Result<(f64, f64), BenchError> {
    use crate::net::{Request, Response};
    let plain = Instant::now();
    let plain_cpu = cpu_time::ProcessTime::now();
    let uploads = nodes[1..].iter().zip(&payloads[1..]).map(|(node, bytes)| {
        let network = node.network.clone();
        let to = nodes[0].peer_id;
        async move {
            for piece in bytes.chunks(crate::session::messages::PIECE_BYTES) {
                match network.request(to, Request::Sink(piece.to_vec())).await {
                    Ok(Response::Sunk(_)) => {}
                    other => return Err(format!("clear upload failed: {other:?}")),
                }
            }
            Ok(())
        }
    });
    for r in futures::future::join_all(uploads).await {
        r.map_err(BenchError::Failed)?;
    }
    let mut sum = vec![0f32; updates[0].len()];
    for u in updates {
        for (s, v) in sum.iter_mut().zip(u) {
            *s += *v;
        }
    }
    black_box(&sum);
    Ok((
        plain.elapsed().as_secs_f64(),
        plain_cpu.elapsed().as_secs_f64(),
    ))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Runs `cfg.rounds` encrypted rounds across `participants` in-process nodes on loopback, each
/// followed by the plaintext baseline on the same network.
pub async fn run_round_bench(cfg: &RoundBenchConfig) -> Result<RoundBenchReport, BenchError> {
    if cfg.participants == 0 || cfg.committee == 0 || cfg.committee > cfg.participants {
        return Err(BenchError::Failed(
            "need 1..=participants committee members".into(),
        ));
    }
    if cfg.params == 0 || cfg.rounds == 0 {
        return Err(BenchError::Failed(
            "need at least one parameter and one round".into(),
        ));
    }
    let (_dirs, nodes) = crate::demo::start_local_network(cfg.participants).await?;
    let mesh_s = settle(&nodes).await?.as_secs_f64();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let updates: Vec<Vec<f32>> = (0..cfg.participants)
        .map(|_| {
            (0..cfg.params)
                .map(|_| rng.gen_range(-1.0f32..1.0))
                .collect()
        })
        .collect();

    let mut secure = Vec::with_capacity(cfg.rounds);
    let mut steady = Vec::with_capacity(cfg.rounds);
    let mut plain = Vec::with_capacity(cfg.rounds);
    let mut wire = Vec::with_capacity(cfg.rounds);
    let plain_payloads: Vec<Vec<u8>> = updates
        .iter()
        .map(|u| u.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    for r in 0..cfg.rounds {
        secure.push(secure_round(cfg, &nodes, &updates, &format!("bench-{r}"), false).await?);
        let id = format!("bench-steady-{r}");
        steady.push(secure_round(cfg, &nodes, &updates, &id, true).await?);
        plain.push(clear_round(&nodes, &plain_payloads, &updates).await?);
        let wire_payloads = repeated_to(&plain_payloads, secure[r].bytes_sent);
        wire.push(clear_round(&nodes, &wire_payloads, &updates).await?);
    }
    for node in nodes {
        node.shutdown().await?;
    }
    // The cryptography alone, on the now idle process.
    let crypto_cfg = CryptoBenchConfig {
        profile: cfg.profile,
        params: cfg.params,
        participants: cfg.participants as u32,
        committee: cfg.committee as u32,
        ..CryptoBenchConfig::default()
    };
    let crypto = tokio::task::spawn_blocking(move || run_crypto_bench(&crypto_cfg))
        .await
        .map_err(|e| BenchError::Failed(format!("the crypto benchmark stopped: {e}")))??;
    let wire_floor_round_cpu_s = median(wire.iter().map(|w| w.1).collect());
    let plaintext_round_cpu_s = median(plain.iter().map(|p| p.1).collect());
    let cpu_floor_s = wire_floor_round_cpu_s + crypto.crypto_cpu_s;
    let med = |f: fn(&SecureRound) -> f64| median(secure.iter().map(f).collect());
    let steady_med = |f: fn(&SecureRound) -> f64| median(steady.iter().map(f).collect());
    // Each round's figure over the plaintext round run beside it, then the median.
    let ratio_of = |rounds: Vec<f64>, g: fn(&(f64, f64)) -> f64| {
        median(rounds.iter().zip(&plain).map(|(s, p)| s / g(p)).collect())
    };
    let ratio = |f: fn(&SecureRound) -> f64, g| ratio_of(secure.iter().map(f).collect(), g);
    let steady_ratio = |f: fn(&SecureRound) -> f64, g| ratio_of(steady.iter().map(f).collect(), g);
    Ok(RoundBenchReport {
        profile: cfg.profile.to_string(),
        params: cfg.params,
        participants: cfg.participants,
        committee: cfg.committee,
        rounds: cfg.rounds,
        mesh_s,
        setup_s: med(|s| s.setup_s),
        encrypt_max_s: med(|s| s.encrypt_max_s),
        encrypt_mean_s: med(|s| s.encrypt_mean_s),
        submit_s: med(|s| s.submit_s),
        after_last_submission_s: med(|s| s.after_last_submission_s),
        accumulate_s: med(|s| s.accumulate_s),
        decrypt_and_combine_s: med(|s| s.decrypt_and_combine_s),
        round_s: med(|s| s.round_s),
        result_delivered_s: med(|s| s.result_delivered_s),
        bytes_per_param: secure[0].bytes_per_param,
        max_abs_error: secure
            .iter()
            .chain(&steady)
            .map(|s| s.max_abs_error)
            .fold(0.0, f64::max),
        error_bound: secure[0].error_bound,
        plaintext_round_s: median(plain.iter().map(|p| p.0).collect()),
        round_slowdown_vs_plaintext: ratio(|s| s.round_s, |p| p.0),
        round_cpu_s: med(|s| s.cpu_s),
        plaintext_round_cpu_s,
        round_cpu_vs_plaintext: ratio(|s| s.cpu_s, |p| p.1),
        round_s_each: secure.iter().map(|s| s.round_s).collect(),
        plaintext_round_s_each: plain.iter().map(|p| p.0).collect(),
        steady_round_s: steady_med(|s| s.online_s),
        steady_round_slowdown_vs_plaintext: steady_ratio(|s| s.online_s, |p| p.0),
        steady_round_cpu_s: steady_med(|s| s.online_cpu_s),
        steady_round_cpu_vs_plaintext: steady_ratio(|s| s.online_cpu_s, |p| p.1),
        steady_seal_max_s: steady_med(|s| s.encrypt_max_s),
        steady_prepare_s: steady_med(|s| s.prepare_s),
        steady_round_s_each: steady.iter().map(|s| s.online_s).collect(),
        wire_floor_round_s: median(wire.iter().map(|w| w.0).collect()),
        wire_floor_slowdown_vs_plaintext: ratio_of(wire.iter().map(|w| w.0).collect(), |p| p.0),
        wire_floor_round_cpu_s,
        wire_floor_cpu_vs_plaintext: ratio_of(wire.iter().map(|w| w.1).collect(), |p| p.1),
        crypto_cpu_s: crypto.crypto_cpu_s,
        cpu_floor_s,
        cpu_floor_vs_plaintext: cpu_floor_s / plaintext_round_cpu_s,
    })
}
