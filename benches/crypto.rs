//! `cargo bench --bench crypto`: one aggregation round of 1,000,000 parameters, 10 participants
//! and a committee of 3, per profile, next to plaintext baselines measured in the same run.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rand::{Rng, SeedableRng};

use fhenode::crypto::wire::Wire;
use fhenode::crypto::{
    local_ceremony, Accumulator, Profile, SecretKeyShare, SessionParams, SessionTag,
};

const PARAMS: usize = 1_000_000;
const PARTICIPANTS: u32 = 10;
const COMMITTEE: u32 = 3;

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
    let words: Vec<u128> = (0..PARAMS as u128)
        .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .collect();
    group.bench_function("u128_add_of_10", |b| {
        b.iter(|| {
            let mut acc = vec![0u128; PARAMS];
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
    let params = SessionParams::recommended(profile, PARTICIPANTS, COMMITTEE, 8.0).expect("params");
    let tag = SessionTag::derive("criterion");
    let (shares, key) = local_ceremony(&params, tag).expect("ceremony");
    let updates = updates();
    let encrypted: Vec<_> = updates
        .iter()
        .map(|u| key.encrypt(u).expect("encrypt").0)
        .collect();
    println!(
        "{profile}: {:.2} bytes per parameter on the wire",
        encrypted[0].to_bytes().len() as f64 / PARAMS as f64
    );

    let mut group = c.benchmark_group(format!("{profile}"));
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));

    group.throughput(Throughput::Elements(PARAMS as u64));
    // A participant's path: straight into the wire form.
    group.bench_function("encrypt_one_update", |b| {
        b.iter(|| key.encrypt_to_bytes(&updates[0]).expect("encrypt"))
    });

    group.throughput(Throughput::Elements((PARAMS * encrypted.len()) as u64));
    group.bench_function("accumulate_10", |b| {
        b.iter(|| {
            let mut acc = Accumulator::new(&key, PARAMS as u64).expect("accumulator");
            for (i, u) in encrypted.iter().enumerate() {
                acc.add(&i.to_string(), u).expect("add");
            }
            acc.finish().expect("finish")
        })
    });

    let mut acc = Accumulator::new(&key, PARAMS as u64).expect("accumulator");
    for (i, u) in encrypted.iter().enumerate() {
        acc.add(&i.to_string(), u).expect("add");
    }
    let (aggregate, request) = acc.finish().expect("finish");
    // A share answers once, so each iteration reloads it from its stored form.
    let stored = shares[0].to_secret_bytes();
    group.throughput(Throughput::Elements(PARAMS as u64));
    group.bench_function("partial_decrypt_one_member", |b| {
        b.iter_batched(
            || SecretKeyShare::from_secret_bytes(&stored).expect("share"),
            |mut share| {
                share
                    .partial_decrypt(&request, PARTICIPANTS)
                    .expect("partial")
            },
            BatchSize::PerIteration,
        )
    });

    let partials: Vec<_> = shares
        .into_iter()
        .map(|mut s| s.partial_decrypt(&request, PARTICIPANTS).expect("partial"))
        .collect();
    group.bench_function("combine_and_decode", |b| {
        b.iter(|| aggregate.combine(&partials).expect("combine"))
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
