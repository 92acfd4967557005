//! `cargo bench --bench inference`: encrypted inference next to its targets (listed below) and,
//! for the mlp scheme, next to one programmable bootstrap measured in the same run.
//!
//! * `linear/seed_end_to_end`: the seed example (4 → 1), encrypt + evaluate + decrypt;
//!   target ≤ 0.07 ms (TenSEAL: 6.9 ms here);
//! * `linear/784x10_evaluate`: a 784 → 10 layer, evaluation only; target ≤ 25 ms (TenSEAL:
//!   255 ms here);
//! * `mlp/single_pbs` and `mlp/4_8_2_inference`: a ReLU 4-8-2 network (8 bootstraps) must
//!   cost at most 2 × (8 × one bootstrap).
//!
//! A JSON summary with the ratios ([`fhenode::crypto::inference::bench::bench_inference`],
//! the same figures `fhenode bench inference` would print) closes the run.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use rand::{Rng, SeedableRng};

use fhenode::crypto::inference::bench::{bench_784x10_model, bench_inference, bench_mlp_model};
use fhenode::crypto::inference::{
    InferenceWire, LinearClientKey, LinearConfig, LinearModel, MlpClientKey, MlpConfig,
    MlpEvaluationKey, MlpParams, MlpServerKey, Model, QuantizedModel,
};

fn linear(c: &mut Criterion) {
    let key = LinearClientKey::generate();
    let seed = Model::linear(vec![vec![0.1, 0.2, 0.3, 0.4]], vec![0.5]);
    let compiled = LinearModel::compile(&seed, &LinearConfig::default()).unwrap();
    let spec = compiled.input_spec();
    let x = [1.0f32, 2.0, 3.0, 4.0];
    let ct = key.encrypt(&spec, &x).unwrap();
    let result = compiled.evaluate(&ct).unwrap();

    let mut group = c.benchmark_group("linear");
    group
        .sample_size(50)
        .measurement_time(Duration::from_secs(3));
    group.bench_function("seed_end_to_end", |b| {
        b.iter(|| {
            let ct = key.encrypt(&spec, black_box(&x)).unwrap();
            let r = compiled.evaluate(&ct).unwrap();
            black_box(key.decrypt(&r).unwrap())
        })
    });
    group.bench_function("seed_encrypt", |b| {
        b.iter(|| black_box(key.encrypt(&spec, black_box(&x)).unwrap()))
    });
    group.bench_function("seed_evaluate", |b| {
        b.iter(|| black_box(compiled.evaluate(black_box(&ct)).unwrap()))
    });
    group.bench_function("seed_decrypt", |b| {
        b.iter(|| black_box(key.decrypt(black_box(&result)).unwrap()))
    });

    let big =
        LinearModel::compile(&bench_784x10_model(), &LinearConfig::with_input_bound(1.0)).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let xb: Vec<f32> = (0..784).map(|_| rng.gen_range(0.0f32..=1.0)).collect();
    let ctb = key.encrypt(&big.input_spec(), &xb).unwrap();
    group.bench_function("784x10_evaluate", |b| {
        b.iter(|| black_box(big.evaluate(black_box(&ctb)).unwrap()))
    });
    group.bench_function("784x10_encrypt", |b| {
        b.iter(|| black_box(key.encrypt(&big.input_spec(), black_box(&xb)).unwrap()))
    });
    group.finish();
}

fn mlp(c: &mut Criterion) {
    let params = MlpParams::Message2Carry2;
    let client = MlpClientKey::generate(params);
    let bytes = client.evaluation_key().to_bytes();
    let server = MlpServerKey::from_bytes(&bytes, MlpEvaluationKey::DEFAULT_MAX_LEN).unwrap();
    let q = QuantizedModel::compile(
        &bench_mlp_model(),
        &MlpConfig::with_range(params, -1.0, 1.0),
    )
    .unwrap();
    let x = [0.3f32, -0.2, 0.9, -0.7];
    let ct = client.encrypt(&q.input_spec(), &x).unwrap();

    let mut group = c.benchmark_group("mlp");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    group.bench_function("single_pbs", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| server.bench_single_pbs()).sum())
    });
    group.bench_function(format!("4_8_2_inference_{}_pbs", q.pbs_count()), |b| {
        b.iter(|| black_box(server.evaluate(&q, black_box(&ct)).unwrap()))
    });
    group.finish();
}

fn summary(_: &mut Criterion) {
    for (name, us) in fhenode::crypto::inference::bench::bench_linear_internals() {
        println!("  {name}: {us:.2} µs");
    }
    match bench_inference(false) {
        Ok(report) => println!(
            "\ninference summary: {}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        ),
        Err(e) => println!("\ninference summary failed: {e}"),
    }
}

criterion_group!(benches, linear, mlp, summary);
criterion_main!(benches);
