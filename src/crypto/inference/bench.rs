//! Plain timing (no criterion) behind `fhenode bench inference`: each figure is the median of
//! repeated runs in this process, ratios are against the inference targets (the `*_target_ms`
//! fields below) and against one programmable bootstrap measured in the same run.

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::wire::InferenceWire;
use super::{
    Activation, InferenceError, Layer, LinearClientKey, LinearConfig, LinearModel, MlpClientKey,
    MlpConfig, MlpParams, Model, QuantizedModel,
};

/// What `fhenode bench inference` prints (serialisable for `--json`).
#[derive(Clone, Debug, Serialize)]
pub struct InferenceBenchReport {
    /// Seed example (4 → 1): encrypt + evaluate + decrypt, milliseconds (median).
    pub seed_end_to_end_ms: f64,
    pub seed_encrypt_ms: f64,
    pub seed_evaluate_ms: f64,
    pub seed_decrypt_ms: f64,
    /// Target 0.07 ms (TenSEAL here: 6.9 ms).
    pub seed_target_ms: f64,
    pub seed_result: f64,
    pub seed_ciphertext_bytes: usize,
    pub seed_result_bytes: usize,
    /// 784 → 10 evaluation, milliseconds (median). Target 25 ms (TenSEAL here: 255 ms).
    pub linear_784x10_evaluate_ms: f64,
    pub linear_784x10_target_ms: f64,
    pub linear_784x10_ciphertext_bytes: usize,
    pub linear_784x10_result_bytes: usize,
    /// The mlp figures (absent with `quick`).
    pub mlp: Option<MlpBench>,
}

#[derive(Clone, Debug, Serialize)]
pub struct MlpBench {
    pub params: String,
    pub client_keygen_ms: f64,
    pub evaluation_keygen_ms: f64,
    pub evaluation_key_bytes: usize,
    pub server_key_load_ms: f64,
    /// One programmable bootstrap, milliseconds (median).
    pub single_pbs_ms: f64,
    /// A 4-8-2 ReLU network: encrypted evaluation, milliseconds (median).
    pub inference_ms: f64,
    pub pbs_count: usize,
    /// inference_ms / (pbs_count × single_pbs_ms): ≤ 2 means the linear parts cost next to
    /// nothing (below 1 when rayon runs bootstraps in parallel).
    pub ratio_to_pbs: f64,
    pub ciphertext_bytes: usize,
    pub result_bytes: usize,
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v.get(v.len() / 2).map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

fn time<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let out = f();
    (out, t.elapsed())
}

/// The 4-8-2 ReLU network of the benchmarks and tests (fixed random weights).
pub fn bench_mlp_model() -> Model {
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut dense = |n_in: usize, n_out: usize, activation: Activation| Layer {
        weights: (0..n_out)
            .map(|_| (0..n_in).map(|_| rng.gen_range(-1.0f32..=1.0)).collect())
            .collect(),
        biases: (0..n_out).map(|_| rng.gen_range(-0.5f32..=0.5)).collect(),
        activation,
    };
    Model {
        layers: vec![dense(4, 8, Activation::Relu), dense(8, 2, Activation::None)],
    }
}

/// A random 784 → 10 layer (MNIST logistic regression shape).
pub fn bench_784x10_model() -> Model {
    let mut rng = rand::rngs::StdRng::seed_from_u64(784);
    Model::linear(
        (0..10)
            .map(|_| (0..784).map(|_| rng.gen_range(-0.5f32..=0.5)).collect())
            .collect(),
        (0..10).map(|_| rng.gen_range(-1.0f32..=1.0)).collect(),
    )
}

/// Runs the inference benchmarks. `quick` skips the mlp part (key generation takes seconds).
pub fn bench_inference(quick: bool) -> Result<InferenceBenchReport, InferenceError> {
    // Seed example.
    let key = LinearClientKey::generate();
    let seed = Model::linear(vec![vec![0.1, 0.2, 0.3, 0.4]], vec![0.5]);
    let compiled = LinearModel::compile(&seed, &LinearConfig::default())?;
    let spec = compiled.input_spec();
    let x = [1.0f32, 2.0, 3.0, 4.0];
    let (mut e2e, mut enc, mut eval, mut dec) = (vec![], vec![], vec![], vec![]);
    let mut seed_result = 0.0;
    let mut sizes = (0, 0);
    for i in 0..400 {
        let t0 = Instant::now();
        let (ct, d1) = time(|| key.encrypt(&spec, &x));
        let ct = ct?;
        let (r, d2) = time(|| compiled.evaluate(&ct));
        let r = r?;
        let (y, d3) = time(|| key.decrypt(&r));
        let y = y?;
        let total = t0.elapsed();
        if i >= 20 {
            e2e.push(total);
            enc.push(d1);
            eval.push(d2);
            dec.push(d3);
        }
        seed_result = y[0];
        sizes = (ct.to_bytes().len(), r.to_bytes().len());
    }

    // 784 → 10.
    let big = LinearModel::compile(&bench_784x10_model(), &LinearConfig::with_input_bound(1.0))?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let xb: Vec<f32> = (0..784).map(|_| rng.gen_range(0.0f32..=1.0)).collect();
    let ctb = key.encrypt(&big.input_spec(), &xb)?;
    let mut evals = vec![];
    let mut big_sizes = (ctb.to_bytes().len(), 0);
    for _ in 0..30 {
        let (r, d) = time(|| big.evaluate(&ctb));
        big_sizes.1 = r?.to_bytes().len();
        evals.push(d);
    }

    let mlp = if quick {
        None
    } else {
        Some(bench_mlp(MlpParams::Message2Carry2)?)
    };

    Ok(InferenceBenchReport {
        seed_end_to_end_ms: median(e2e),
        seed_encrypt_ms: median(enc),
        seed_evaluate_ms: median(eval),
        seed_decrypt_ms: median(dec),
        seed_target_ms: 0.07,
        seed_result,
        seed_ciphertext_bytes: sizes.0,
        seed_result_bytes: sizes.1,
        linear_784x10_evaluate_ms: median(evals),
        linear_784x10_target_ms: 25.0,
        linear_784x10_ciphertext_bytes: big_sizes.0,
        linear_784x10_result_bytes: big_sizes.1,
        mlp,
    })
}

/// The mlp figures for one parameter set: key generation, one PBS, a 4-8-2 inference.
pub fn bench_mlp(params: MlpParams) -> Result<MlpBench, InferenceError> {
    let (client, d_ck) = time(|| MlpClientKey::generate(params));
    let (ek, d_ek) = time(|| client.evaluation_key());
    let ek_bytes = ek.to_bytes();
    let (server, d_load) = time(|| {
        super::MlpServerKey::from_bytes(&ek_bytes, super::MlpEvaluationKey::DEFAULT_MAX_LEN)
    });
    let server = server?;
    let model = bench_mlp_model();
    let q = QuantizedModel::compile(&model, &MlpConfig::with_range(params, -1.0, 1.0))?;
    let x = [0.3f32, -0.2, 0.9, -0.7];
    let ct = client.encrypt(&q.input_spec(), &x)?;
    let _ = server.bench_single_pbs();
    let pbs: Vec<Duration> = (0..10).map(|_| server.bench_single_pbs()).collect();
    let mut runs = vec![];
    let mut result_bytes = 0;
    for _ in 0..5 {
        let (r, d) = time(|| server.evaluate(&q, &ct));
        let r = r?;
        result_bytes = r.to_bytes().len();
        if client.decrypt_levels(&r)? != q.eval_levels(&x)? {
            return Err(InferenceError::Decryption(
                "benchmark inference differs from the quantised model".into(),
            ));
        }
        runs.push(d);
    }
    let single = median(pbs);
    let inference = median(runs);
    Ok(MlpBench {
        params: params.name().into(),
        client_keygen_ms: d_ck.as_secs_f64() * 1e3,
        evaluation_keygen_ms: d_ek.as_secs_f64() * 1e3,
        evaluation_key_bytes: ek_bytes.len(),
        server_key_load_ms: d_load.as_secs_f64() * 1e3,
        single_pbs_ms: single,
        inference_ms: inference,
        pbs_count: q.pbs_count(),
        ratio_to_pbs: inference / (q.pbs_count() as f64 * single),
        ciphertext_bytes: ct.to_bytes().len(),
        result_bytes,
    })
}

/// Timings of the linear scheme's building blocks, microseconds (median): for profiling.
pub fn bench_linear_internals() -> Vec<(&'static str, f64)> {
    use super::rlwe;
    let n = super::linear::LINEAR_N;
    let mut out = Vec::new();
    let mut run = |name: &'static str, f: &mut dyn FnMut()| {
        let mut v = Vec::new();
        for _ in 0..200 {
            let t = Instant::now();
            f();
            v.push(t.elapsed());
        }
        out.push((name, median(v) * 1e3));
    };
    let mut a = vec![0u64; n];
    run("expand_mask (2048 u64)", &mut || {
        rlwe::expand_mask(&[1; 16], 0, &mut a)
    });
    let mut bytes = vec![0u8; n * 8];
    run("blake3 xof 16 KiB", &mut || {
        blake3::Hasher::new()
            .update(b"x")
            .finalize_xof()
            .fill(&mut bytes)
    });
    run("fresh_seed (OsRng)", &mut || {
        std::hint::black_box(rlwe::fresh_seed());
    });
    run("noise_generator", &mut || {
        std::hint::black_box(rlwe::noise_generator());
    });
    let sk = rlwe::RlweSecret::generate(n);
    let mut g = rlwe::noise_generator();
    let pts = [1u64 << 40, 2 << 40, 3 << 40, 4 << 40];
    run("encrypt_chunk (4 values)", &mut || {
        std::hint::black_box(sk.encrypt_chunk(
            &[1; 16],
            0,
            &pts,
            tfhe::core_crypto::prelude::DynamicDistribution::new_t_uniform(17),
            &mut g,
        ));
    });
    let w = [3i64, -5, 7, 11];
    let mut acc = vec![0u64; n];
    run("weight_product (4 weights)", &mut || {
        rlwe::weight_product(&w, &a, &mut acc)
    });
    let mut packed = Vec::new();
    run("pack 2048 → 40 bits", &mut || {
        packed.clear();
        rlwe::pack(&acc, 40, &mut packed);
    });
    let mut un = vec![0u64; n];
    run("unpack 2048 ← 40 bits", &mut || {
        rlwe::unpack(&packed, 40, &mut un)
    });
    run("dot_binary 2048", &mut || {
        std::hint::black_box(rlwe::dot_binary(&un, sk.bits()));
    });
    out
}
