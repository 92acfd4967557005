//! End-to-end tests of both schemes, their failure modes and their wire formats.

use std::sync::OnceLock;

use proptest::prelude::*;
use rand::{Rng, SeedableRng};

use super::mlp::{encrypt_levels_for_tests, pbs_noise_for_tests, shortint_decrypt_for_tests};
use super::wire::{self, InferenceWire};
use super::*;

fn seed_model() -> Model {
    Model::linear(vec![vec![0.1, 0.2, 0.3, 0.4]], vec![0.5])
}

fn random_affine(rng: &mut impl Rng, n_in: usize, n_out: usize, scale: f32) -> Model {
    Model::linear(
        (0..n_out)
            .map(|_| (0..n_in).map(|_| rng.gen_range(-scale..=scale)).collect())
            .collect(),
        (0..n_out).map(|_| rng.gen_range(-4.0f32..=4.0)).collect(),
    )
}

/// Encrypts, evaluates, decrypts; checks the result is exactly the fixed-point reference and
/// within the promised bounds of the float model.
fn check_linear(model: &Model, config: &LinearConfig, key: &LinearClientKey, x: &[f32]) {
    let compiled = LinearModel::compile(model, config).unwrap();
    let ct = key.encrypt(&compiled.input_spec(), x).unwrap();
    let result = compiled.evaluate(&ct).unwrap();
    let got = key.decrypt(&result).unwrap();
    let exact = compiled.eval_quantized(x).unwrap();
    assert_eq!(
        got, exact,
        "decryption differs from the fixed-point reference"
    );
    let xf: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let float = model.eval_plain_f64(&xf).unwrap();
    let per_input = compiled.error_bound_for(x).unwrap();
    for j in 0..got.len() {
        let err = (got[j] - float[j]).abs();
        let slack = 1e-9 * (1.0 + float[j].abs());
        assert!(
            err <= per_input[j] + slack,
            "output {j}: error {err} > bound for this input {}",
            per_input[j]
        );
        assert!(
            err <= compiled.error_bound() + slack,
            "output {j}: error {err} > worst-case bound {}",
            compiled.error_bound()
        );
    }
}

fn linear_key() -> &'static LinearClientKey {
    static KEY: OnceLock<LinearClientKey> = OnceLock::new();
    KEY.get_or_init(LinearClientKey::generate)
}

#[test]
fn linear_seed_example() {
    let key = linear_key();
    let model = seed_model();
    let compiled = LinearModel::compile(&model, &LinearConfig::default()).unwrap();
    let x = [1.0f32, 2.0, 3.0, 4.0];
    let ct = key.encrypt(&compiled.input_spec(), &x).unwrap();
    let y = key.decrypt(&compiled.evaluate(&ct).unwrap()).unwrap();
    assert_eq!(y.len(), 1);
    assert!((y[0] - 3.5).abs() <= 1e-3, "{y:?}");
    assert!(compiled.error_bound_for(&x).unwrap()[0] <= 1e-3);
    check_linear(&model, &LinearConfig::default(), key, &x);
    // A client that declares a tight bound gets a tighter worst case.
    let tight = LinearModel::compile(&model, &LinearConfig::for_input(&x)).unwrap();
    assert!(tight.error_bound() < compiled.error_bound());
    assert!(tight.error_bound() <= 1e-3, "{}", tight.error_bound());
    eprintln!("default: {compiled:?}\nfor_input: {tight:?}");
    // Sizes: seed + 8 bytes per value in; one LWE (N coefficients) out.
    let ct_bytes = ct.to_bytes().len();
    assert!(ct_bytes < 200, "{ct_bytes}");
}

#[test]
fn linear_multilayer_models_are_composed() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let a = random_affine(&mut rng, 6, 5, 1.0);
    let b = random_affine(&mut rng, 5, 3, 1.0);
    let model = Model {
        layers: vec![a.layers[0].clone(), b.layers[0].clone()],
    };
    let x: Vec<f32> = (0..6).map(|_| rng.gen_range(-8.0f32..8.0)).collect();
    check_linear(
        &model,
        &LinearConfig::with_input_bound(8.0),
        linear_key(),
        &x,
    );
}

#[test]
fn linear_784_by_10() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(784);
    let model = random_affine(&mut rng, 784, 10, 0.5);
    let x: Vec<f32> = (0..784).map(|_| rng.gen_range(0.0f32..=1.0)).collect();
    check_linear(
        &model,
        &LinearConfig::with_input_bound(1.0),
        linear_key(),
        &x,
    );
}

#[test]
fn linear_784_by_10_precision() {
    let model = super::bench::bench_784x10_model();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for bound in [1.0f64, 255.0] {
        let c = LinearModel::compile(&model, &LinearConfig::with_input_bound(bound)).unwrap();
        // Typical error (fixed point vs float, which encryption reproduces exactly).
        let mut typical = 0f64;
        for _ in 0..20 {
            let x: Vec<f32> = (0..784)
                .map(|_| rng.gen_range(0.0..=bound as f32))
                .collect();
            let q = c.eval_quantized(&x).unwrap();
            let xf: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            let f = model.eval_plain_f64(&xf).unwrap();
            for (a, b) in q.iter().zip(&f) {
                typical = typical.max((a - b).abs());
            }
        }
        eprintln!("784x10, |x| <= {bound}: {c:?}; largest error on 20 random inputs {typical:.2e}");
        assert!(typical <= c.error_bound());
        assert!(c.error_bound() < 0.5 * bound, "{c:?}");
    }
}

#[test]
fn linear_several_chunks() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(2058);
    // 2048 + 10: an NTT chunk and a direct chunk; 3000: two NTT chunks.
    for n_in in [2058usize, 3000] {
        let model = random_affine(&mut rng, n_in, 2, 0.25);
        let x: Vec<f32> = (0..n_in).map(|_| rng.gen_range(-1.0f32..=1.0)).collect();
        check_linear(
            &model,
            &LinearConfig::with_input_bound(1.0),
            linear_key(),
            &x,
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn linear_random_affine_layers(
        n_in in 1usize..=64,
        n_out in 1usize..=16,
        bound_log2 in 0i32..=8,
        scale in prop::sample::select(vec![0.01f32, 0.5, 4.0]),
        seed in any::<u64>(),
    ) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let model = random_affine(&mut rng, n_in, n_out, scale);
        let bound = 2f64.powi(bound_log2);
        let x: Vec<f32> = (0..n_in)
            .map(|_| rng.gen_range(-bound as f32..=bound as f32))
            .collect();
        check_linear(&model, &LinearConfig::with_input_bound(bound), linear_key(), &x);
    }
}

#[test]
fn linear_refuses_wrong_inputs_and_keys() {
    let key = linear_key();
    let compiled = LinearModel::compile(&seed_model(), &LinearConfig::default()).unwrap();
    let spec = compiled.input_spec();
    assert!(matches!(
        key.encrypt(&spec, &[1.0, 2.0, 3.0]),
        Err(InferenceError::InputLength {
            expected: 4,
            got: 3
        })
    ));
    assert!(matches!(
        key.encrypt(&spec, &[1.0, f32::NAN, 3.0, 4.0]),
        Err(InferenceError::NonFinite { index: 1 })
    ));
    assert!(matches!(
        key.encrypt(&spec, &[1.0, 2.0, 300.0, 4.0]),
        Err(InferenceError::OutOfRange { index: 2, .. })
    ));
    // A result decrypted under another key.
    let ct = key.encrypt(&spec, &[1.0, 2.0, 3.0, 4.0]).unwrap();
    let result = compiled.evaluate(&ct).unwrap();
    let other = LinearClientKey::generate();
    let e = other.decrypt(&result).unwrap_err();
    assert!(matches!(e, InferenceError::WrongKey { .. }), "{e}");
    assert!(e.to_string().contains("another key"));
    // A ciphertext made for another model (different input count / encoding).
    let wider = LinearModel::compile(
        &Model::linear(vec![vec![1.0; 5]], vec![0.0]),
        &LinearConfig::default(),
    )
    .unwrap();
    assert!(matches!(
        wider.evaluate(&ct),
        Err(InferenceError::ModelMismatch { .. })
    ));
    // Forged: bodies that do not match the declared input count.
    let mut forged = ct.clone();
    forged.bodies.pop();
    assert!(matches!(
        compiled.evaluate(&forged),
        Err(InferenceError::Malformed { .. })
    ));
}

#[test]
fn linear_refuses_activations_naming_the_layer() {
    let model = Model {
        layers: vec![
            Layer {
                weights: vec![vec![1.0]],
                biases: vec![0.0],
                activation: Activation::None,
            },
            Layer {
                weights: vec![vec![1.0]],
                biases: vec![0.0],
                activation: Activation::Relu,
            },
        ],
    };
    let e = LinearModel::compile(&model, &LinearConfig::default()).unwrap_err();
    assert!(
        e.to_string().contains("layer 1") && e.to_string().contains("mlp"),
        "{e}"
    );
    let bad = LinearConfig {
        input_bound: f64::NAN,
        ..LinearConfig::default()
    };
    assert!(matches!(
        LinearModel::compile(&seed_model(), &bad),
        Err(InferenceError::InvalidConfig(_))
    ));
}

#[test]
fn linear_infeasible_models_are_refused() {
    // Weights of 2^40 on inputs up to 2^30 cannot fit a 64-bit torus.
    let model = Model::linear(vec![vec![1e12, -1e12]], vec![0.0]);
    let e = LinearModel::compile(&model, &LinearConfig::with_input_bound(1e9)).unwrap_err();
    assert!(matches!(e, InferenceError::Infeasible(_)), "{e}");
}

#[test]
fn linear_wire_round_trips() {
    let key = linear_key();
    let compiled = LinearModel::compile(&seed_model(), &LinearConfig::default()).unwrap();
    let ct = key
        .encrypt(&compiled.input_spec(), &[1.0, 2.0, 3.0, 4.0])
        .unwrap();
    let bytes = ct.to_bytes();
    let back = LinearCiphertext::from_bytes(&bytes, LinearCiphertext::DEFAULT_MAX_LEN).unwrap();
    assert_eq!(back, ct);
    let result = compiled.evaluate(&back).unwrap();
    let rbytes = result.to_bytes();
    let rback = LinearResult::from_bytes(&rbytes, LinearResult::DEFAULT_MAX_LEN).unwrap();
    assert_eq!(rback, result);
    // The persisted key decrypts the same result.
    let secret = key.to_secret_bytes();
    let loaded = LinearClientKey::from_secret_bytes(&secret).unwrap();
    assert_eq!(loaded.key_id(), key.key_id());
    assert_eq!(
        loaded.decrypt(&rback).unwrap(),
        key.decrypt(&result).unwrap()
    );
    assert!(format!("{loaded:?}").contains("redacted"));
    // Tampering, truncation, wrong kind and oversize are refused with a clear message.
    let mut tampered = bytes.clone();
    tampered[10] ^= 1;
    assert!(LinearCiphertext::from_bytes(&tampered, 1 << 20)
        .unwrap_err()
        .to_string()
        .contains("digest"));
    assert!(LinearCiphertext::from_bytes(&bytes[..bytes.len() - 1], 1 << 20).is_err());
    assert!(LinearResult::from_bytes(&bytes, 1 << 20)
        .unwrap_err()
        .to_string()
        .contains("kind"));
    assert!(LinearCiphertext::from_bytes(&bytes, 10)
        .unwrap_err()
        .to_string()
        .contains("limit"));
    // A well-framed message with an inconsistent shape.
    let mut forged = ct.clone();
    forged.bodies.push(0);
    let e = LinearCiphertext::from_bytes(&forged.to_bytes(), 1 << 20).unwrap_err();
    assert!(matches!(e, InferenceError::Malformed { .. }), "{e}");
    // A key record whose id does not match its bits.
    let mut rec = secret.to_vec();
    let body_end = rec.len() - 32;
    rec[body_end - 1] ^= 1; // flip a key bit
    let digest = blake3::hash(&rec[..body_end]);
    rec[body_end..].copy_from_slice(digest.as_bytes());
    assert!(LinearClientKey::from_secret_bytes(&rec)
        .unwrap_err()
        .to_string()
        .contains("key id"));
}

/// Frames arbitrary payload bytes as a valid message of `kind` (passes magic/version/digest).
fn framed(kind: wire::Kind, payload: &[u8]) -> Vec<u8> {
    wire::frame(kind, payload)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn decoding_garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        use wire::Kind::*;
        for kind in [LinearCiphertext, LinearResult, MlpCiphertext, MlpResult, LinearClientKey, MlpClientKey, MlpEvaluationKey] {
            let f = framed(kind, &bytes);
            let _ = super::LinearCiphertext::from_bytes(&f, 1 << 20);
            let _ = super::LinearResult::from_bytes(&f, 1 << 20);
            let _ = super::MlpCiphertext::from_bytes(&f, 1 << 20);
            let _ = super::MlpResult::from_bytes(&f, 1 << 20);
            let _ = super::MlpEvaluationKey::from_bytes(&f, 1 << 20);
            let _ = super::LinearClientKey::from_secret_bytes(&f);
            let _ = super::MlpClientKey::from_secret_bytes(&f);
            // Raw (unframed) garbage too.
            let _ = super::LinearCiphertext::from_bytes(&bytes, 1 << 20);
            let _ = super::MlpEvaluationKey::from_bytes(&bytes, 1 << 20);
        }
    }

    #[test]
    fn mutated_ciphertexts_never_panic(flip in 0usize..400, value in any::<u8>(), cut in 0usize..400) {
        let key = linear_key();
        let compiled = LinearModel::compile(&seed_model(), &LinearConfig::default()).unwrap();
        let ct = key.encrypt(&compiled.input_spec(), &[1.0, 2.0, 3.0, 4.0]).unwrap();
        let bytes = ct.to_bytes();
        // Re-frame a mutated payload so it passes the digest and reaches the parser.
        let payload = &bytes[6..bytes.len() - 32];
        let mut p = payload.to_vec();
        let i = flip % p.len();
        p[i] = value;
        p.truncate(cut.max(1).min(p.len()));
        if let Ok(c) = super::LinearCiphertext::from_bytes(&framed(wire::Kind::LinearCiphertext, &p), 1 << 20) {
            // Whatever decodes is shape-consistent: evaluation either works or refuses.
            let _ = compiled.evaluate(&c);
        }
    }
}

// ---------------------------------------------------------------------------------------
// mlp

struct MlpFixture {
    client: MlpClientKey,
    server: MlpServerKey,
    eval_key_bytes: usize,
}

fn mlp_fixture() -> &'static MlpFixture {
    static F: OnceLock<MlpFixture> = OnceLock::new();
    F.get_or_init(|| {
        let client = MlpClientKey::generate(MlpParams::Message2Carry2);
        let bytes = client.evaluation_key().to_bytes();
        let server = MlpServerKey::from_bytes(&bytes, MlpEvaluationKey::DEFAULT_MAX_LEN).unwrap();
        MlpFixture {
            client,
            server,
            eval_key_bytes: bytes.len(),
        }
    })
}

fn network(seed: u64, hidden: Activation) -> Model {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut dense = |n_in: usize, n_out: usize, activation: Activation| Layer {
        weights: (0..n_out)
            .map(|_| (0..n_in).map(|_| rng.gen_range(-1.0f32..=1.0)).collect())
            .collect(),
        biases: (0..n_out).map(|_| rng.gen_range(-0.5f32..=0.5)).collect(),
        activation,
    };
    Model {
        layers: vec![dense(4, 8, hidden), dense(8, 2, Activation::None)],
    }
}

fn samples(seed: u64, count: usize) -> Vec<Vec<f32>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..count)
        .map(|_| (0..4).map(|_| rng.gen_range(-1.0f32..=1.0)).collect())
        .collect()
}

fn argmax(v: &[f64]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

/// Runs `count` encrypted inferences and checks each against the quantised model exactly.
fn check_mlp(model: &Model, config: &MlpConfig, inputs: &[Vec<f32>]) -> QuantizedModel {
    let f = mlp_fixture();
    let q = QuantizedModel::compile(model, config).unwrap();
    let spec = q.input_spec();
    let mut agree_float = 0;
    for x in inputs {
        let ct = f.client.encrypt(&spec, x).unwrap();
        let ct = MlpCiphertext::from_bytes(&ct.to_bytes(), MlpCiphertext::DEFAULT_MAX_LEN).unwrap();
        let result = f.server.evaluate(&q, &ct).unwrap();
        let result = MlpResult::from_bytes(&result.to_bytes(), MlpResult::DEFAULT_MAX_LEN).unwrap();
        let levels = f.client.decrypt_levels(&result).unwrap();
        assert_eq!(levels, q.eval_levels(x).unwrap(), "input {x:?}");
        let values = f.client.decrypt(&result).unwrap();
        let expected = q.eval_plain(x).unwrap();
        assert_eq!(values, expected);
        assert_eq!(argmax(&values), argmax(&expected));
        let float: Vec<f64> = model
            .eval_plain(x)
            .unwrap()
            .iter()
            .map(|&v| v as f64)
            .collect();
        agree_float += (argmax(&float) == argmax(&values)) as usize;
    }
    eprintln!(
        "{} PBS per inference; argmax agrees with the float model on {agree_float}/{} inputs",
        q.pbs_count(),
        inputs.len()
    );
    q
}

#[test]
fn mlp_extraction_matches_tfhe_decryption() {
    let f = mlp_fixture();
    let levels: Vec<u64> = (0..16).collect();
    assert_eq!(
        shortint_decrypt_for_tests(&f.client, &f.server, &levels),
        levels
    );
    eprintln!("m2c2 evaluation key: {} bytes", f.eval_key_bytes);
}

#[test]
fn mlp_bootstrap_noise_matches_tfhe_formula() {
    // The widened outputs trust tfhe's formula for the bootstrap output noise: check it.
    let f = mlp_fixture();
    let sigma = super::quant::pbs_output_std(MlpParams::Message2Carry2);
    let noise = pbs_noise_for_tests(&f.client, &f.server, 16);
    let std = (noise.iter().map(|&e| (e as f64).powi(2)).sum::<f64>() / noise.len() as f64).sqrt();
    let max = noise.iter().map(|e| e.unsigned_abs()).max().unwrap_or(0) as f64;
    eprintln!(
        "bootstrap output noise: std 2^{:.2}, max 2^{:.2}, formula σ 2^{:.2}",
        std.log2(),
        max.log2(),
        sigma.log2()
    );
    assert!(std < 2.0 * sigma && max < 6.0 * sigma);
}

#[test]
fn mlp_relu_4_8_2_matches_quantised_model() {
    let model = network(42, Activation::Relu);
    let config = MlpConfig {
        calibration: samples(1, 64),
        ..MlpConfig::default()
    };
    let q = check_mlp(&model, &config, &samples(2, 3));
    assert_eq!(q.pbs_count(), 8);
}

#[test]
fn mlp_sigmoid_4_8_2_matches_quantised_model() {
    let model = network(7, Activation::Sigmoid);
    let config = MlpConfig::with_range(MlpParams::Message2Carry2, -1.0, 1.0);
    let q = check_mlp(&model, &config, &samples(3, 3));
    assert_eq!(q.pbs_count(), 8);
}

#[test]
fn mlp_table_activation_on_the_output() {
    // 2-3-1 with a custom table on the output: 3 + 1 bootstraps, the last one at full width.
    let model = Model {
        layers: vec![
            Layer {
                weights: vec![vec![1.0, -0.5], vec![0.3, 0.8], vec![-0.7, 0.2]],
                biases: vec![0.1, 0.0, -0.2],
                activation: Activation::Relu,
            },
            Layer {
                weights: vec![vec![0.6, -0.4, 0.9]],
                biases: vec![0.05],
                activation: Activation::Table {
                    min: -1.0,
                    max: 1.0,
                    values: vec![0.0, 1.0, 4.0, 9.0, 16.0],
                },
            },
        ],
    };
    let config = MlpConfig::with_range(MlpParams::Message2Carry2, -1.0, 1.0);
    let inputs = vec![vec![0.5, -0.5], vec![-1.0, 1.0]];
    let q = check_mlp(&model, &config, &inputs);
    assert_eq!(q.pbs_count(), 4);
}

#[test]
fn mlp_refuses_other_keys_and_models() {
    let f = mlp_fixture();
    let model = network(42, Activation::Relu);
    let config = MlpConfig::with_range(MlpParams::Message2Carry2, -1.0, 1.0);
    let q = QuantizedModel::compile(&model, &config).unwrap();
    let x = [0.1f32, 0.2, -0.3, 0.4];
    // Encrypted under another client key: refused before any bootstrap.
    let other = MlpClientKey::generate(MlpParams::Message2Carry2);
    let ct = other.encrypt(&q.input_spec(), &x).unwrap();
    let e = f.server.evaluate(&q, &ct).unwrap_err();
    assert!(matches!(e, InferenceError::WrongKey { .. }), "{e}");
    // Quantised for another model (other input ranges). An input quantised like this
    // model's is valid for any model with the same input spec.
    let q2 = QuantizedModel::compile(
        &network(43, Activation::Relu),
        &MlpConfig::with_range(MlpParams::Message2Carry2, -2.0, 2.0),
    )
    .unwrap();
    let ct = f.client.encrypt(&q2.input_spec(), &x).unwrap();
    assert!(matches!(
        f.server.evaluate(&q, &ct),
        Err(InferenceError::ModelMismatch { .. })
    ));
    // Wrong input length.
    assert!(matches!(
        f.client.encrypt(&q.input_spec(), &[0.0; 3]),
        Err(InferenceError::InputLength {
            expected: 4,
            got: 3
        })
    ));
    // A result for another key.
    let ct = encrypt_levels_for_tests(&f.client, &q, &[0, 1, 2, 3]);
    let _ = ct; // (evaluating it would cost bootstraps; the decrypt check below is enough)
    let fake = MlpResult {
        params: MlpParams::Message2Carry2,
        key_id: other.key_id(),
        delta_log2: MlpParams::Message2Carry2.delta_log2(),
        decode: q.output_decode(),
        masks: vec![0; 2 * MlpParams::Message2Carry2.lwe_dimension() * 4],
        bodies: vec![0, 0],
    };
    assert!(matches!(
        f.client.decrypt(&fake),
        Err(InferenceError::WrongKey { .. })
    ));
}

#[test]
fn mlp_keys_round_trip() {
    let f = mlp_fixture();
    let secret = f.client.to_secret_bytes();
    let loaded = MlpClientKey::from_secret_bytes(&secret).unwrap();
    assert_eq!(loaded.key_id(), f.client.key_id());
    assert!(format!("{loaded:?}").contains("redacted"));
    // An evaluation key whose parameters are not what it claims is refused.
    let mut bytes = f.client.evaluation_key().to_bytes();
    let body_end = bytes.len() - 32;
    // The parameter tag is the first payload field (a u32 enum index in fixint bincode).
    bytes[6] = 1;
    let digest = blake3::hash(&bytes[..body_end]);
    bytes[body_end..].copy_from_slice(digest.as_bytes());
    let e = MlpEvaluationKey::from_bytes(&bytes, MlpEvaluationKey::DEFAULT_MAX_LEN).unwrap_err();
    assert!(e.to_string().contains("server key for"), "{e}");
}

#[test]
fn mlp_quantised_accuracy_is_reported() {
    // Plain (no encryption): how close the quantised models get to the float ones.
    for (name, hidden) in [("relu", Activation::Relu), ("sigmoid", Activation::Sigmoid)] {
        let model = network(42, hidden);
        for params in MlpParams::ALL {
            let config = MlpConfig {
                params,
                calibration: samples(1, 256),
                ..MlpConfig::default()
            };
            let q = QuantizedModel::compile(&model, &config).unwrap();
            let test = samples(9, 500);
            let agree = test
                .iter()
                .filter(|x| {
                    let f: Vec<f64> = model
                        .eval_plain(x)
                        .unwrap()
                        .iter()
                        .map(|&v| v as f64)
                        .collect();
                    argmax(&f) == argmax(&q.eval_plain(x).unwrap())
                })
                .count();
            eprintln!("{name} {params}: argmax agreement with float {agree}/500");
            assert!(agree >= 300, "{name} {params}: {agree}/500");
        }
    }
}

#[test]
#[ignore = "m3c3 keys take ~40 s to generate and ~10 s to load; run with --ignored"]
fn mlp_m3c3_end_to_end() {
    let params = MlpParams::Message3Carry3;
    let client = MlpClientKey::generate(params);
    let bytes = client.evaluation_key().to_bytes();
    eprintln!("m3c3 evaluation key: {} bytes", bytes.len());
    let server = MlpServerKey::from_bytes(&bytes, MlpEvaluationKey::DEFAULT_MAX_LEN).unwrap();
    let model = network(42, Activation::Relu);
    let q = QuantizedModel::compile(&model, &MlpConfig::with_range(params, -1.0, 1.0)).unwrap();
    let levels: Vec<u64> = (0..64).collect();
    assert_eq!(
        shortint_decrypt_for_tests(&client, &server, &levels),
        levels
    );
    for x in samples(4, 2) {
        let ct = client.encrypt(&q.input_spec(), &x).unwrap();
        let r = server.evaluate(&q, &ct).unwrap();
        assert_eq!(
            client.decrypt_levels(&r).unwrap(),
            q.eval_levels(&x).unwrap()
        );
    }
}
