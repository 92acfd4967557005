//! `cargo bench --bench crypto`: one aggregation round of 1,000,000 parameters, 10 participants
//! and a committee of 5 with threshold 4, per profile, next to plaintext baselines measured in
//! the same run.

use std::hint::black_box;
use std::time::Duration;

use std::collections::BTreeMap;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::{Rng, SeedableRng};

use fhenode::crypto::kahe::{
    self, Accumulator, KaheParams, ParticipantKey, SeedBundle, SessionContext,
};
use fhenode::crypto::Profile;

const PARAMS: usize = 1_000_000;
const PARTICIPANTS: u32 = 10;
const COMMITTEE: u32 = 5;
const THRESHOLD: u32 = 4;

fn updates() -> Vec<Vec<f32>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    (0..PARTICIPANTS)
        .map(|_| (0..PARAMS).map(|_| rng.gen_range(-8.0f32..=8.0)).collect())
        .collect()
}

fn baselines(c: &mut Criterion) {
    let updates = updates();
    let mut group = c.benchmark_group("plaintext");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements((PARAMS * updates.len()) as u64));
    group.bench_function("f32_sum_of_10", |b| {
        b.iter(|| {
            let mut sum = vec![0f32; PARAMS];
            for u in &updates {
                for (s, v) in sum.iter_mut().zip(u) {
                    *s += *v;
                }
            }
            black_box(sum)
        })
    });
    let words: Vec<u64> = (0..PARAMS as u64)
        .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .collect();
    group.bench_function("u64_add_of_10", |b| {
        b.iter(|| {
            let mut acc = vec![0u64; PARAMS];
            for _ in 0..PARTICIPANTS {
                for (a, w) in acc.iter_mut().zip(black_box(&words)) {
                    *a = a.wrapping_add(*w);
                }
            }
            black_box(acc)
        })
    });
    group.finish();
}

fn round(c: &mut Criterion, profile: Profile) {
    let params = KaheParams::recommended(profile, PARTICIPANTS, COMMITTEE, THRESHOLD, 8.0, 20)
        .expect("params");
    let ctx = SessionContext::new(params, [1; 32], PARAMS as u64).expect("context");
    let committee = ctx.committee();
    let keys: Vec<ParticipantKey> = (0..PARTICIPANTS)
        .map(|_| ParticipantKey::generate(committee))
        .collect();
    let updates = updates();
    let encrypted: Vec<Vec<u8>> = keys
        .iter()
        .zip(&updates)
        .map(|(k, u)| k.encrypt(&ctx, u).expect("encrypt").bytes)
        .collect();
    println!(
        "{profile}: {:.2} bytes per parameter on the wire",
        encrypted[0].len() as f64 / PARAMS as f64
    );

    let mut group = c.benchmark_group(format!("{profile}"));
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));

    group.throughput(Throughput::Elements(PARAMS as u64));
    // A participant's path: the pad drawn ahead, then the values sealed into it.
    group.bench_function("prepare_one_update", |b| {
        b.iter(|| keys[0].prepare(&ctx).expect("prepare"))
    });
    group.bench_function("encrypt_one_update", |b| {
        b.iter(|| keys[0].encrypt(&ctx, &updates[0]).expect("encrypt"))
    });

    group.throughput(Throughput::Elements((PARAMS * encrypted.len()) as u64));
    let name = |i: usize| format!("p{i:02}");
    let sum = || {
        let mut acc = Accumulator::new(&ctx);
        for (i, u) in encrypted.iter().enumerate() {
            acc.add(&name(i), u).expect("add");
        }
        acc.finish()
    };
    group.bench_function("accumulate_10", |b| b.iter(sum));

    let aggregate = sum();
    let answering: Vec<u32> = (0..THRESHOLD).collect();
    let request = aggregate.request(committee.assign(&answering).expect("assign"));
    let held: Vec<BTreeMap<String, SeedBundle>> = answering
        .iter()
        .map(|&m| {
            keys.iter()
                .enumerate()
                .map(|(i, k)| (name(i), k.bundle_for(m)))
                .collect()
        })
        .collect();
    group.throughput(Throughput::Elements(PARAMS as u64));
    group.bench_function("release_one_member", |b| {
        b.iter(|| kahe::release(&ctx, 0, &request, |p| held[0].get(p)).expect("release"))
    });

    let releases: Vec<(u32, Vec<u8>)> = answering
        .iter()
        .zip(&held)
        .map(|(&m, h)| {
            (
                m,
                kahe::release(&ctx, m, &request, |p| h.get(p)).expect("release"),
            )
        })
        .collect();
    let refs: Vec<(u32, &[u8])> = releases.iter().map(|(m, b)| (*m, b.as_slice())).collect();
    group.bench_function("combine_and_decode", |b| {
        b.iter(|| aggregate.combine(&request, &refs).expect("combine"))
    });
    group.finish();
}

fn secure(c: &mut Criterion) {
    round(c, Profile::Secure);
}

fn fast(c: &mut Criterion) {
    round(c, Profile::Fast);
}

criterion_group!(benches, baselines, secure, fast);
criterion_main!(benches);
