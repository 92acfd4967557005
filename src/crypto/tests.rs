//! End-to-end tests of the crypto layer: correctness against plaintext, the noise model against
//! measured noise, every refusal path, and compatibility with tfhe's own encrypt/decrypt.

use proptest::prelude::*;
use rand::{Rng, SeedableRng};

use super::codec::{self, decode_fixed};
use super::engine::ProfileTorus;
use super::wire::{self, Wire};
use super::*;

pub(crate) struct Committee {
    pub params: SessionParams,
    pub tag: SessionTag,
    pub shares: Vec<SecretKeyShare>,
    pub key: CollectivePublicKey,
}

/// Runs a full key ceremony (commitments, then shares) for a committee.
pub(crate) fn committee(params: &SessionParams, session: &str) -> Committee {
    let tag = SessionTag::derive(session);
    let (shares, key) = local_ceremony(params, tag).unwrap();
    Committee {
        params: params.clone(),
        tag,
        shares,
        key,
    }
}

fn random_updates(
    rng: &mut impl Rng,
    participants: usize,
    length: usize,
    clip: f64,
) -> Vec<Vec<f32>> {
    (0..participants)
        .map(|_| {
            (0..length)
                .map(|_| match rng.gen_range(0..10) {
                    0 => clip as f32,
                    1 => -(clip as f32),
                    2 => {
                        (clip * rng.gen_range(1.0..4.0)) as f32 * if rng.gen() { 1.0 } else { -1.0 }
                    }
                    _ => rng.gen_range(-clip..clip) as f32,
                })
                .collect()
        })
        .collect()
}

/// Every member's partial decryption of `request`.
fn partials(c: &mut Committee, request: &DecryptionRequest) -> Vec<PartialDecryption> {
    c.shares
        .iter_mut()
        .map(|s| s.partial_decrypt(request, 1).unwrap())
        .collect()
}

/// Finishes the sum, has every member decrypt it, and combines.
fn decrypt(c: &mut Committee, acc: Accumulator) -> DecryptedSum {
    let (aggregate, request) = acc.finish().unwrap();
    aggregate.combine(&partials(c, &request)).unwrap()
}

/// Encrypts, aggregates, decrypts; returns the decrypted sum and the exact f64 sum of the
/// clipped inputs.
fn round(c: &mut Committee, updates: &[Vec<f32>]) -> (DecryptedSum, Vec<f64>) {
    let length = updates[0].len();
    let mut acc = Accumulator::new(&c.key, length as u64).unwrap();
    for (i, u) in updates.iter().enumerate() {
        let (ct, _) = c.key.encrypt(u).unwrap();
        acc.add(&format!("p{i}"), &ct).unwrap();
    }
    let result = decrypt(c, acc);
    let clip = c.params.clip;
    let exact = (0..length)
        .map(|j| {
            updates
                .iter()
                .map(|u| (u[j] as f64).clamp(-clip, clip))
                .sum()
        })
        .collect();
    (result, exact)
}

fn check_sum_and_mean(result: &DecryptedSum, exact: &[f64]) -> Result<(), TestCaseError> {
    let k = result.contributors as f64;
    let mean = result.mean();
    for (j, (&got, &want)) in result.sum.iter().zip(exact).enumerate() {
        // The exact bound plus float slack for the f32 inputs.
        prop_assert!(
            (got - want).abs() <= result.sum_error_bound * (1.0 + 1e-9) + 1e-9,
            "sum[{}] = {} vs {} (bound {})",
            j,
            got,
            want,
            result.sum_error_bound
        );
        prop_assert!((mean[j] - want / k).abs() <= result.mean_error_bound * (1.0 + 1e-9) + 1e-12);
    }
    Ok(())
}

fn case_strategy(profile: Profile) -> impl Strategy<Value = (usize, u32, usize, u64)> {
    // Up to a second chunk: partly filled slots and chunks both occur.
    let p = profile.params();
    (
        1..p.chunk_values() + 2 * p.ring_dim,
        1u32..=7,
        1usize..=50,
        any::<u64>(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    #[test]
    fn secure_sum_and_mean_match_plaintext((length, committee_size, participants, seed) in case_strategy(Profile::Secure)) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let params = SessionParams::recommended(Profile::Secure, participants as u32, committee_size, 8.0).unwrap();
        let mut c = committee(&params, &format!("prop-secure-{seed}"));
        let updates = random_updates(&mut rng, participants, length, params.clip);
        let (result, exact) = round(&mut c, &updates);
        check_sum_and_mean(&result, &exact)?;
    }

    #[test]
    fn fast_sum_and_mean_match_plaintext((length, committee_size, participants, seed) in case_strategy(Profile::Fast)) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let params = SessionParams::recommended(Profile::Fast, participants as u32, committee_size, 4.0).unwrap();
        let mut c = committee(&params, &format!("prop-fast-{seed}"));
        let updates = random_updates(&mut rng, participants, length, params.clip);
        let (result, exact) = round(&mut c, &updates);
        check_sum_and_mean(&result, &exact)?;
    }
}

#[test]
fn secure_default_precision_beats_flower() {
    // Mean of values in ±8 over 10 participants: ≤ 2.5e-6 max error (Flower SecAgg+: 2.2e-6).
    let params = SessionParams::recommended(Profile::Secure, 10, 3, 8.0).unwrap();
    let mut c = committee(&params, "precision");
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let updates: Vec<Vec<f32>> = (0..10)
        .map(|_| (0..5000).map(|_| rng.gen_range(-8.0f32..8.0)).collect())
        .collect();
    let (result, exact) = round(&mut c, &updates);
    let max_err = result
        .mean()
        .iter()
        .zip(&exact)
        .map(|(m, e)| (m - e / 10.0).abs())
        .fold(0.0, f64::max);
    assert!(max_err <= 2.5e-6, "max error {max_err}");
    assert!(result.mean_error_bound <= 2.5e-6);
}

/// Test-only view of the exact phase noise, which needs the collective secret.
fn aggregate_noise<T: ProfileTorus>(
    c: &Committee,
    request: &DecryptionRequest,
    bodies: &[T],
    expected_fixed_sums: &[i64],
) -> Vec<f64> {
    let ring = T::ring();
    let n = ring.n();
    let p = T::PROFILE.params();
    let mut mask = vec![T::ZERO; request.mask.len() / codec::packed_width(p.mask_keep_bits)];
    codec::unpack_into(&request.mask, p.mask_keep_bits, &mut mask);
    let mut scratch = ring.scratch();
    let mut noise = Vec::new();
    for (chunk, body) in mask.chunks(n).zip(bodies.chunks(p.chunk_values())) {
        let m_ntt = ring.forward(chunk);
        let mut phase: Vec<T> = body.to_vec();
        for share in &c.shares {
            let bits = share.secret_bits_for_tests();
            for (ph_slot, bits) in phase.chunks_mut(n).zip(bits.chunks(n)) {
                let mut s: Vec<T> = bits.iter().map(|&b| T::from_u128(b)).collect();
                s.reverse();
                let mut prod = vec![T::ZERO; n];
                ring.product(&m_ntt, &ring.forward_binary(&s), &mut prod, &mut scratch);
                for (j, ph) in ph_slot.iter_mut().enumerate() {
                    *ph = ph.wrapping_sub(prod[n - 1 - j]);
                }
            }
        }
        noise.extend(phase);
    }
    let shift = T::BITS - c.params.plaintext_bits as usize;
    noise
        .iter()
        .zip(expected_fixed_sums)
        .map(|(&ph, &m)| {
            let delta_m = T::from_u128((m as i128 as u128) << shift);
            let e = ph.wrapping_sub(delta_m).to_u128();
            // Signed interpretation at this width.
            if T::BITS == 128 {
                e as i128 as f64
            } else {
                e as u64 as i64 as f64
            }
        })
        .collect()
}

fn std_and_max(v: &[f64]) -> (f64, f64) {
    let var = v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64;
    (var.sqrt(), v.iter().fold(0.0f64, |m, x| m.max(x.abs())))
}

/// The one slow test: the noise of `participants` summed ciphertexts under a full committee,
/// measured with the collective secret, against the documented bounds; then decrypted with
/// flooding and checked exactly.
///
/// Most of this noise is `(k/2)·(X·1)` for the collective secret's mean k/2 and some iid X: a
/// random walk along each chunk, so one chunk's sample deviation fluctuates by tens of percent.
/// The deviation is estimated over `chunks` independent chunks and checked loosely; the max
/// against the 10σ bound is the hard check.
fn noise_at_limits(profile: Profile, participants: u32, committee_size: u32, chunks: usize) {
    let params = SessionParams::recommended(profile, participants, committee_size, 8.0).unwrap();
    let budget = params.budget();
    let mut c = committee(&params, &format!("noise-{profile}"));
    let n = chunks * profile.params().ring_dim;
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut acc = Accumulator::new(&c.key, n as u64).unwrap();
    let mut fixed_sums = vec![0i64; n];
    for i in 0..participants {
        let u: Vec<f32> = (0..n).map(|_| rng.gen_range(-8.0f32..8.0)).collect();
        for (s, &v) in fixed_sums.iter_mut().zip(&u) {
            *s += (v as f64 * 2f64.powi(params.frac_bits as i32)).round() as i64;
        }
        let (ct, _) = c.key.encrypt(&u).unwrap();
        acc.add(&format!("p{i}"), &ct).unwrap();
    }
    let (aggregate, request) = acc.finish().unwrap();
    let noise =
        typed!(aggregate.bodies_for_tests(), b => aggregate_noise(&c, &request, b, &fixed_sums));
    let (std, max) = std_and_max(&noise);
    let model_std = 2f64.powf(budget.aggregate_std_log2);
    println!(
        "{profile}: K={participants} k={committee_size}: measured std 2^{:.2} (model 2^{:.2}), max 2^{:.2} (bound 2^{:.2})",
        std.log2(), budget.aggregate_std_log2, max.log2(), budget.aggregate_bound_log2
    );
    // The model is an expectation over keys; each run draws a fresh committee, and the
    // measured deviation moves with it: log2(measured/model) had a spread of 0.33–0.43 over 30–40
    // runs of each test (max +1.06, min −1.0), hardly less with 4× the chunks. The old 1.6×/0.5×
    // band failed about one run in twenty; this one sits about 4 spreads out. It still catches a
    // model off by a factor of k or of √K; the max against the bound below is the hard check.
    assert!(
        std <= 3.0 * model_std,
        "noise std far above the model: 2^{:.2} against 2^{:.2}",
        std.log2(),
        budget.aggregate_std_log2
    );
    assert!(
        std >= 0.35 * model_std,
        "model far above the measured noise, it is wrong: 2^{:.2} against 2^{:.2}",
        std.log2(),
        budget.aggregate_std_log2
    );
    assert!(
        max.log2() < budget.aggregate_bound_log2,
        "noise beyond the documented bound"
    );

    // Now through the real partial decryptions, flooding included.
    let partials = partials(&mut c, &request);
    let total = typed!(aggregate.bodies_for_tests(), b => {
        let mut phase = b.clone();
        let keep = budget.partial_keep_bits;
        for p in &partials {
            let mut d = vec![Default::default(); phase.len()];
            codec::unpack_into(&p.values, keep, &mut d);
            for (x, y) in phase.iter_mut().zip(&d) {
                *x = x.wrapping_sub(*y);
            }
        }
        let shift = phase_shift(&params, &phase);
        phase.iter().zip(&fixed_sums).map(|(&ph, &m)| signed_noise(ph, m, shift)).collect::<Vec<f64>>()
    });
    let (_, total_max) = std_and_max(&total);
    println!(
        "{profile}: total max 2^{:.2} (bound 2^{:.2})",
        total_max.log2(),
        budget.total_bound_log2
    );
    assert!(total_max.log2() < budget.total_bound_log2);
    let result = aggregate.combine(&partials).unwrap();
    for (j, (&got, &m)) in result.sum.iter().zip(&fixed_sums).enumerate() {
        assert_eq!(
            got,
            m as f64 / 2f64.powi(params.frac_bits as i32),
            "value {j}"
        );
    }
}

fn phase_shift<T: ProfileTorus>(params: &SessionParams, _: &[T]) -> usize {
    T::BITS - params.plaintext_bits as usize
}

fn signed_noise<T: ProfileTorus>(ph: T, m: i64, shift: usize) -> f64 {
    let e = ph
        .wrapping_sub(T::from_u128((m as i128 as u128) << shift))
        .to_u128();
    if T::BITS == 128 {
        e as i128 as f64
    } else {
        e as u64 as i64 as f64
    }
}

#[test]
fn secure_noise_at_max_participants_and_committee() {
    noise_at_limits(Profile::Secure, 1000, 16, 4);
}

#[test]
fn fast_noise_at_max_participants_and_committee() {
    noise_at_limits(Profile::Fast, 256, 8, 8);
}

#[test]
fn centring_makes_noise_grow_as_sqrt_k() {
    // `fast` with a committee of one: there the e·r offset that the centring removes dominates
    // the uncentred sum, so both growth laws are visible at small K. Both sums use the same key
    // (the offset's size depends on the key's error E) and the smaller is a prefix of the larger.
    let params = SessionParams::recommended(Profile::Fast, 256, 1, 8.0).unwrap();
    let c = committee(&params, "centre");
    let n = 4 * Profile::Fast.params().ring_dim;
    let zeros = vec![0f32; n];
    let cts: Vec<_> = (0..256).map(|_| c.key.encrypt(&zeros).unwrap().0).collect();
    let Typed::Fast(pk) = &c.key.core else {
        unreachable!()
    };
    let ring = u64::ring();
    let ones_mask = ring.forward(&pk.ones_mask);
    // Noise of the all-ones encryption, slot by slot: E_l·1.
    let mut ones_noise = Vec::new();
    for (slot, bits) in c.shares[0]
        .secret_bits_for_tests()
        .chunks(ring.n())
        .enumerate()
    {
        let mut s: Vec<u64> = bits.iter().map(|&b| b as u64).collect();
        s.reverse();
        let mut prod = vec![0u64; ring.n()];
        ring.product(
            &ones_mask,
            &ring.forward_binary(&s),
            &mut prod,
            &mut ring.scratch(),
        );
        let body = &pk.ones_body_rev[slot * ring.n()..(slot + 1) * ring.n()];
        ones_noise.extend(
            (0..ring.n()).map(|j| body[j].wrapping_sub(prod[ring.n() - 1 - j]) as i64 as f64),
        );
    }
    let measure = |k: usize| -> (f64, f64) {
        let mut acc = Accumulator::new(&c.key, n as u64).unwrap();
        for (i, ct) in cts[..k].iter().enumerate() {
            acc.add(&format!("p{i}"), ct).unwrap();
        }
        let (aggregate, request) = acc.finish().unwrap();
        let Typed::Fast(bodies) = aggregate.bodies_for_tests() else {
            unreachable!()
        };
        let centred = aggregate_noise(&c, &request, bodies, &vec![0; n]);
        // Undo the correction: add back ⌊K/2⌋ times E·1.
        let h = (k / 2) as f64;
        let raw: Vec<f64> = centred
            .iter()
            .enumerate()
            .map(|(j, e)| e + h * ones_noise[j % ones_noise.len()])
            .collect();
        (std_and_max(&centred).0, std_and_max(&raw).0)
    };
    let (c64, r64) = measure(64);
    let (c256, r256) = measure(256);
    let model = 2f64.powf(params.budget().aggregate_std_log2);
    println!("K=64: centred {c64:.3e} raw {r64:.3e}; K=256: centred {c256:.3e} raw {r256:.3e} model {model:.3e}");
    // ×4 contributors: √4 = 2 when centred; close to 4 (linear) without.
    assert!(
        (1.6..2.5).contains(&(c256 / c64)),
        "centred growth {}",
        c256 / c64
    );
    // Without centring the linear term takes over: the raw sum grows clearly faster. (How much
    // faster depends on the random key: 2.8–3.7 seen for ×4 contributors.)
    assert!(
        r256 / r64 > c256 / c64 + 0.4,
        "raw growth {} vs centred {}",
        r256 / r64,
        c256 / c64
    );
    assert!(r256 > 2.0 * c256, "raw {r256:e} vs centred {c256:e}");
    assert!(c256 <= 1.6 * model && c256 >= 0.5 * model);
}

#[test]
fn tfhe_decrypts_our_ciphertexts_and_we_decrypt_tfhes() {
    use tfhe::core_crypto::prelude::*;
    let params = SessionParams::recommended(Profile::Fast, 2, 1, 8.0).unwrap();
    let mut c = committee(&params, "tfhe-compat");
    let n = Profile::Fast.params().ring_dim;
    let values: Vec<f32> = (0..n).map(|i| (i as f32 / 300.0) - 3.0).collect();
    // N values fill slot 0 only: mask and slot-0 bodies are an ordinary tfhe compact list
    // under the slot-0 secret.
    let s: Vec<u64> = c.shares[0].secret_bits_for_tests()[..n]
        .iter()
        .map(|&b| b as u64)
        .collect();
    let key = LweSecretKey::from_container(s);

    // Ours → tfhe: unpack the wire chunk to a full compact list, expand, decrypt each LWE.
    let (ct, _) = c.key.encrypt(&values).unwrap();
    let chunk = &ct.chunks[0];
    let mut raw = vec![0u64; 2 * n];
    codec::unpack_into(
        &chunk.mask,
        Profile::Fast.params().mask_keep_bits,
        &mut raw[..n],
    );
    codec::unpack_into(
        &chunk.body,
        Profile::Fast.params().body_keep_bits,
        &mut raw[n..],
    );
    let list = LweCompactCiphertextList::from_container(
        raw,
        LweSize(n + 1),
        LweCiphertextCount(n),
        CiphertextModulus::new_native(),
    );
    let mut expanded = LweCiphertextList::new(
        0u64,
        LweSize(n + 1),
        LweCiphertextCount(n),
        CiphertextModulus::new_native(),
    );
    expand_lwe_compact_ciphertext_list(&mut expanded, &list);
    for (j, lwe) in expanded.iter().enumerate() {
        let pt = decrypt_lwe_ciphertext(&key, &lwe);
        let got = codec::fixed_to_f64(&params, decode_fixed(&params, pt.0));
        assert!(
            (got - values[j] as f64).abs() <= params.mean_error_bound(),
            "value {j}: {got}"
        );
    }

    // tfhe → ours: tfhe's own compact-PK encryption under the collective key, aggregated and
    // threshold-decrypted by our path.
    let pk = c.key.tfhe_public_key_for_tests_u64();
    let mut plaintexts = vec![0u64; n];
    codec::encode_into(&params, &values, &mut plaintexts, 0, || 0.5).unwrap();
    let mut out = LweCompactCiphertextList::new(
        0u64,
        LweSize(n + 1),
        LweCiphertextCount(n),
        CiphertextModulus::new_native(),
    );
    let mut seeder = new_seeder();
    let mut gen = tfhe::core_crypto::commons::generators::NoiseRandomGenerator::<
        DefaultRandomGenerator,
    >::new(seeder.as_mut());
    let noise = TUniform::<u64>::new(Profile::Fast.params().noise_log2);
    encrypt_lwe_compact_ciphertext_list_with_compact_public_key(
        &pk,
        &mut out,
        &PlaintextList::from_container(plaintexts),
        noise,
        noise,
        &mut gen,
    );
    let container = out.into_container();
    let mut chunk = EncryptedChunk {
        index: 0,
        count: n as u32,
        ..Default::default()
    };
    codec::pack_rounded(
        &container[..n],
        Profile::Fast.params().mask_keep_bits,
        &mut chunk.mask,
    );
    codec::pack_rounded(
        &container[n..],
        Profile::Fast.params().body_keep_bits,
        &mut chunk.body,
    );
    let update = EncryptedUpdate {
        profile: Profile::Fast,
        tag: c.tag,
        key_id: c.key.key_id(),
        length: n as u64,
        chunks: vec![chunk],
    };
    let mut acc = Accumulator::new(&c.key, n as u64).unwrap();
    acc.add("tfhe", &update).unwrap();
    let (aggregate, request) = acc.finish().unwrap();
    let partial = c.shares[0].partial_decrypt(&request, 1).unwrap();
    let result = aggregate.combine(&[partial]).unwrap();
    for (j, &got) in result.sum.iter().enumerate() {
        assert!(
            (got - values[j] as f64).abs() <= params.mean_error_bound(),
            "value {j}: {got}"
        );
    }
}

// ---------------------------------------------------------------- refusals

fn small_session(profile: Profile, session: &str) -> (Committee, EncryptedUpdate) {
    let params = SessionParams::recommended(profile, 5, 3, 8.0).unwrap();
    let c = committee(&params, session);
    let (ct, _) = c.key.encrypt(&[1.0, 2.0, 3.0]).unwrap();
    (c, ct)
}

#[test]
fn missing_or_foreign_partials_are_refused() {
    let (mut c, ct) = small_session(Profile::Fast, "neg-partials");
    let (mut other, other_ct) = small_session(Profile::Fast, "neg-partials-other");
    let mut acc = Accumulator::new(&c.key, 3).unwrap();
    acc.add("a", &ct).unwrap();
    let (aggregate, request) = acc.finish().unwrap();
    let partials = partials(&mut c, &request);

    let e = aggregate.combine(&partials[..2]).unwrap_err();
    assert!(e.to_string().contains("missing from members [2]"), "{e}");

    let mut dup = partials.clone();
    dup[2] = partials[1].clone();
    assert!(aggregate
        .combine(&dup)
        .unwrap_err()
        .to_string()
        .contains("two partials"));

    let mut acc = Accumulator::new(&other.key, 3).unwrap();
    acc.add("a", &other_ct).unwrap();
    let (_, other_request) = acc.finish().unwrap();
    let foreign = other.shares[2].partial_decrypt(&other_request, 1).unwrap();
    let mut mixed = partials.clone();
    mixed[2] = foreign;
    assert!(matches!(
        aggregate.combine(&mixed),
        Err(CryptoError::WrongSession { .. })
    ));

    // A member asked to decrypt another session's request refuses.
    assert!(matches!(
        c.shares[0].partial_decrypt(&other_request, 1),
        Err(CryptoError::KeyAlreadyUsed) | Err(CryptoError::WrongSession { .. })
    ));
    let fresh = committee(&c.params, "neg-partials");
    let mut fresh_share = fresh.shares.into_iter().next().unwrap();
    assert!(matches!(
        fresh_share.partial_decrypt(&other_request, 1),
        Err(CryptoError::WrongSession { .. })
    ));

    // A corrupted partial is caught by the range check instead of returning garbage.
    let mut corrupt = partials.clone();
    for b in corrupt[0].values.iter_mut() {
        *b ^= 0x5a;
    }
    assert!(matches!(
        aggregate.combine(&corrupt),
        Err(CryptoError::Overflow(_))
    ));
    // And the untouched set still decrypts.
    let sum = aggregate.combine(&partials).unwrap();
    assert!((sum.sum[2] - 3.0).abs() <= sum.sum_error_bound);
}

#[test]
fn a_key_share_answers_one_request_only() {
    let (mut c, ct) = small_session(Profile::Secure, "single-use");
    let mut acc = Accumulator::new(&c.key, 3).unwrap();
    acc.add("a", &ct).unwrap();
    let (_, request) = acc.finish().unwrap();
    let first = c.shares[0].partial_decrypt(&request, 1).unwrap();
    // The same request again: the same bytes (a retransmission leaks nothing new).
    assert_eq!(c.shares[0].partial_decrypt(&request, 1).unwrap(), first);
    // A different aggregate: refused, also after a round trip through the key store.
    let (ct2, _) = c.key.encrypt(&[5.0, 5.0, 5.0]).unwrap();
    let mut acc = Accumulator::new(&c.key, 3).unwrap();
    acc.add("a", &ct).unwrap();
    acc.add("b", &ct2).unwrap();
    let (_, request2) = acc.finish().unwrap();
    assert_eq!(
        c.shares[0].partial_decrypt(&request2, 1),
        Err(CryptoError::KeyAlreadyUsed)
    );
    let mut restored = SecretKeyShare::from_secret_bytes(&c.shares[0].to_secret_bytes()).unwrap();
    assert_eq!(
        restored.partial_decrypt(&request2, 1),
        Err(CryptoError::KeyAlreadyUsed)
    );
    assert_eq!(restored.partial_decrypt(&request, 1).unwrap(), first);
    // Too few contributors for the policy: refused before anything is produced.
    assert!(matches!(
        c.shares[1].partial_decrypt(&request2, 3),
        Err(CryptoError::DecryptionRefused(_))
    ));
    assert!(c.shares[1].answered().is_none());
}

#[test]
fn secrets_are_redacted_and_round_trip() {
    let (c, _) = small_session(Profile::Fast, "redact");
    let dbg = format!("{:?}", c.shares[0]);
    assert!(dbg.contains("redacted"), "{dbg}");
    assert!(!dbg.contains("bits"), "{dbg}");
    let bytes = c.shares[1].to_secret_bytes();
    let back = SecretKeyShare::from_secret_bytes(&bytes).unwrap();
    assert_eq!(
        back.secret_bits_for_tests(),
        c.shares[1].secret_bits_for_tests()
    );
    assert_eq!(back.collective(), c.shares[1].collective());
    assert!(SecretKeyShare::from_secret_bytes(&bytes[..bytes.len() - 3]).is_err());
    assert!(SecretKeyShare::from_secret_bytes(b"garbage").is_err());
}

#[test]
fn ceremony_refuses_rogue_keys() {
    let params = SessionParams::recommended(Profile::Fast, 5, 2, 8.0).unwrap();
    let tag = SessionTag::derive("rogue");
    let (_, p0) = SecretKeyShare::generate(&params, tag, 0).unwrap();
    let (_, p1) = SecretKeyShare::generate(&params, tag, 1).unwrap();
    let mut ceremony = KeyCeremony::new(params.clone(), tag).unwrap();
    ceremony.add_commitment(p0.commitment()).unwrap();
    // Revealing before every member committed is refused.
    assert!(ceremony.add_share(p0.clone()).is_err());
    ceremony.add_commitment(p1.commitment()).unwrap();
    // A share chosen after seeing others' (here: altered) fails its commitment.
    let mut rogue = p1.clone();
    rogue.body[0] ^= 1;
    assert!(ceremony
        .add_share(rogue)
        .unwrap_err()
        .to_string()
        .contains("commitment"));
    // A second, different commitment is refused; the same one is idempotent.
    let mut c2 = p1.commitment();
    c2.digest[0] ^= 1;
    assert!(ceremony.add_commitment(c2).is_err());
    ceremony.add_commitment(p1.commitment()).unwrap();
    assert!(ceremony.finish().is_err());
    ceremony.add_share(p0).unwrap();
    ceremony.add_share(p1).unwrap();
    ceremony.finish().unwrap();
    // Out-of-committee and other-session messages.
    let six = SessionParams::recommended(Profile::Fast, 5, 6, 8.0).unwrap();
    let (_, p5) = SecretKeyShare::generate(&six, tag, 5).unwrap();
    assert!(ceremony.add_commitment(p5.commitment()).is_err());
    let (_, elsewhere) =
        SecretKeyShare::generate(&params, SessionTag::derive("elsewhere"), 0).unwrap();
    assert!(matches!(
        ceremony.add_commitment(elsewhere.commitment()),
        Err(CryptoError::WrongSession { .. })
    ));
}

#[test]
fn accumulator_refuses_bad_updates_and_changes_nothing() {
    let (c, ct) = small_session(Profile::Secure, "acc-neg");
    let (fast, fast_ct) = small_session(Profile::Fast, "acc-neg");
    let (other, other_ct) = small_session(Profile::Secure, "acc-neg-other");
    let _ = (&fast, &other);
    let mut acc = Accumulator::new(&c.key, 3).unwrap();
    assert!(matches!(
        acc.add("x", &fast_ct),
        Err(CryptoError::ProfileMismatch { .. })
    ));
    assert!(matches!(
        acc.add("x", &other_ct),
        Err(CryptoError::WrongSession { .. })
    ));
    let (long, _) = c.key.encrypt(&[1.0; 4]).unwrap();
    assert!(matches!(
        acc.add("x", &long),
        Err(CryptoError::LengthMismatch {
            expected: 3,
            got: 4
        })
    ));
    let mut cut = ct.clone();
    cut.chunks[0].body.pop();
    assert!(matches!(
        acc.add("x", &cut),
        Err(CryptoError::Malformed { .. })
    ));
    let mut wrong_key = ct.clone();
    wrong_key.key_id.0[0] ^= 1;
    assert!(matches!(
        acc.add("x", &wrong_key),
        Err(CryptoError::WrongKey { .. })
    ));
    assert!(acc.contributors().is_empty());
    acc.add("x", &ct).unwrap();
    assert!(matches!(
        acc.add("x", &ct),
        Err(CryptoError::DuplicateContributor(_))
    ));
    assert_eq!(acc.contributors(), ["x"]);
    assert!(c.key.encrypt(&[]).is_err());
    assert!(matches!(
        c.key.encrypt(&[f32::NAN]),
        Err(CryptoError::NonFinite { index: 0 })
    ));
}

// ---------------------------------------------------------------- wire format

/// Encryption writes the wire form in place: it must be exactly what serialising the decoded
/// update gives, for partly filled last chunks and slots too.
#[test]
fn in_place_encryption_is_the_serialised_update() {
    for profile in Profile::ALL {
        let params = SessionParams::recommended(profile, 4, 2, 8.0).unwrap();
        let c = committee(&params, "in-place");
        let n = profile.params().chunk_values();
        for len in [1, n - 1, n, n + 1, 2 * n + 5] {
            let values: Vec<f32> = (0..len).map(|i| (i % 17) as f32 - 8.0).collect();
            let (bytes, clipped) = c.key.encrypt_to_bytes(&values).unwrap();
            assert_eq!(clipped, 0);
            let update = EncryptedUpdate::from_bytes(&bytes, bytes.len()).unwrap();
            assert_eq!(update.to_bytes(), bytes, "{profile} {len}");
            assert_eq!(
                wire::envelope_digest(&bytes).unwrap(),
                bytes[bytes.len() - 32..]
            );
        }
    }
}

/// A participant prepares its encryption of zero before its update exists and seals the update
/// into it later: sealed updates sum and decrypt exactly; each preparation draws fresh
/// randomness; a preparation for another length is refused.
#[test]
fn prepared_encryptions_seal_into_updates_that_decrypt() {
    for profile in Profile::ALL {
        let params = SessionParams::recommended(profile, 4, 2, 8.0).unwrap();
        let mut c = committee(&params, "prepared");
        let len = profile.params().chunk_values() + 3;
        let updates: Vec<Vec<f32>> = (0..3)
            .map(|p| (0..len).map(|i| ((i * 7 + p) % 17) as f32 - 8.0).collect())
            .collect();
        let prepared: Vec<PreparedEncryption> = (0..updates.len())
            .map(|_| c.key.prepare(len as u64).unwrap())
            .collect();
        assert_eq!(prepared[0].length(), len as u64);
        assert_eq!(prepared[0].key_id(), c.key.key_id());
        assert!(!format!("{:?}", prepared[0]).contains("frame"));
        let short = c.key.prepare(len as u64 - 1).unwrap();
        assert!(matches!(
            short.seal(&updates[0]),
            Err(CryptoError::LengthMismatch { .. })
        ));
        let zeros = vec![0f32; 5];
        let (z1, _) = c.key.prepare(5).unwrap().seal(&zeros).unwrap();
        let (z2, _) = c.key.prepare(5).unwrap().seal(&zeros).unwrap();
        assert_ne!(z1, z2, "two preparations drew the same randomness");

        let mut acc = Accumulator::new(&c.key, len as u64).unwrap();
        for (i, (pad, u)) in prepared.into_iter().zip(&updates).enumerate() {
            let (bytes, clipped) = pad.seal(u).unwrap();
            assert_eq!(clipped, 0);
            let update = EncryptedUpdate::from_bytes(&bytes, bytes.len()).unwrap();
            assert_eq!(
                update.to_bytes(),
                bytes,
                "{profile}: the sealed wire form decodes"
            );
            acc.add(&format!("p{i}"), &update).unwrap();
        }
        let result = decrypt(&mut c, acc);
        for (j, got) in result.sum.iter().enumerate() {
            let want: f64 = updates.iter().map(|u| u[j] as f64).sum();
            assert_eq!(*got, want, "{profile}: value {j}");
        }
    }
}

/// The aggregator's path (checked wire bytes read in place) sums exactly like decoded updates,
/// and refuses what does not belong to its session.
#[test]
fn checked_updates_sum_like_decoded_ones() {
    let params = SessionParams::recommended(Profile::Fast, 5, 3, 8.0).unwrap();
    let c = committee(&params, "checked");
    let other = committee(&params, "checked-other");
    let updates: Vec<Vec<u8>> = [[1.0f32, 2.0, 3.0], [0.5, -4.0, 7.0]]
        .iter()
        .map(|u| c.key.encrypt_to_bytes(u).unwrap().0)
        .collect();
    let mut decoded = Accumulator::new(&c.key, 3).unwrap();
    let mut checked = Accumulator::new(&c.key, 3).unwrap();
    for (i, bytes) in updates.iter().enumerate() {
        let who = format!("p{i}");
        decoded
            .add(&who, &EncryptedUpdate::from_bytes(bytes, 1 << 20).unwrap())
            .unwrap();
        let update = CheckedUpdate::check(bytes.clone(), 1 << 20, &c.key, 3).unwrap();
        checked.add_checked(&who, &update).unwrap();
        assert!(matches!(
            checked.add_checked(&who, &update),
            Err(CryptoError::DuplicateContributor(_))
        ));
    }
    let (a, ra) = decoded.finish().unwrap();
    let (b, rb) = checked.finish().unwrap();
    assert_eq!(ra, rb);
    assert_eq!(a.request_digest(), b.request_digest());

    let bytes = &updates[0];
    assert!(matches!(
        CheckedUpdate::check(bytes.clone(), 1 << 20, &other.key, 3),
        Err(CryptoError::WrongSession { .. })
    ));
    assert!(matches!(
        CheckedUpdate::check(bytes.clone(), 1 << 20, &c.key, 4),
        Err(CryptoError::LengthMismatch { .. })
    ));
    let mut tampered = bytes.clone();
    tampered[40] ^= 1;
    assert!(CheckedUpdate::check(tampered, 1 << 20, &c.key, 3)
        .unwrap_err()
        .to_string()
        .contains("digest"));
    assert!(CheckedUpdate::check(bytes.clone(), 100, &c.key, 3)
        .unwrap_err()
        .to_string()
        .contains("limit"));
    // Checked against one session's key, refused by another session's accumulator.
    let update = CheckedUpdate::check(bytes.clone(), 1 << 20, &c.key, 3).unwrap();
    let mut foreign = Accumulator::new(&other.key, 3).unwrap();
    assert!(matches!(
        foreign.add_checked("p0", &update),
        Err(CryptoError::WrongKey { .. })
    ));
}

#[test]
fn wire_round_trips_and_detects_damage() {
    let (mut c, ct) = small_session(Profile::Fast, "wire");
    let limit = 1 << 24;
    let bytes = ct.to_bytes();
    assert_eq!(EncryptedUpdate::from_bytes(&bytes, limit).unwrap(), ct);

    let mut tampered = bytes.clone();
    let mid = tampered.len() / 2;
    tampered[mid] ^= 0x01;
    assert!(EncryptedUpdate::from_bytes(&tampered, limit)
        .unwrap_err()
        .to_string()
        .contains("digest"));
    let e = EncryptedUpdate::from_bytes(&bytes[..bytes.len() - 10], limit).unwrap_err();
    assert!(e.to_string().contains("digest"), "{e}");
    assert!(EncryptedUpdate::from_bytes(&bytes[..10], limit)
        .unwrap_err()
        .to_string()
        .contains("truncated"));
    assert!(EncryptedUpdate::from_bytes(&bytes, 100)
        .unwrap_err()
        .to_string()
        .contains("limit"));
    assert!(DecryptionRequest::from_bytes(&bytes, limit)
        .unwrap_err()
        .to_string()
        .contains("kind"));
    let mut v2 = bytes.clone();
    v2[4] = 2;
    assert!(EncryptedUpdate::from_bytes(&v2, limit)
        .unwrap_err()
        .to_string()
        .contains("version"));

    // Key material and the decryption messages round-trip too.
    let key = CollectivePublicKey::from_bytes(&c.key.to_bytes(), limit).unwrap();
    assert_eq!(key.key_id(), c.key.key_id());
    let mut acc = Accumulator::new(&key, 3).unwrap();
    acc.add("a", &ct).unwrap();
    let (_, request) = acc.finish().unwrap();
    let back = DecryptionRequest::from_bytes(&request.to_bytes(), limit).unwrap();
    assert_eq!(back.digest(), request.digest());
    let partial = c.shares[0].partial_decrypt(&request, 1).unwrap();
    assert_eq!(
        PartialDecryption::from_bytes(&partial.to_bytes(), limit).unwrap(),
        partial
    );
}

/// Builds a correctly framed message around an arbitrary payload.
fn frame(kind: wire::Kind, payload: &[u8]) -> Vec<u8> {
    let mut out = wire::MAGIC.to_vec();
    out.push(wire::VERSION);
    out.push(kind as u8);
    out.extend_from_slice(payload);
    let d = blake3::hash(&out);
    out.extend_from_slice(d.as_bytes());
    out
}

#[test]
fn hostile_lengths_never_allocate() {
    // An EncryptedUpdate whose chunk vector claims 2^62 entries, validly framed.
    let mut payload = Vec::new();
    payload.extend_from_slice(&0u32.to_le_bytes()); // profile variant
    payload.extend_from_slice(&[0u8; 64]); // tag + key id
    payload.extend_from_slice(&3u64.to_le_bytes()); // length
    payload.extend_from_slice(&(1u64 << 62).to_le_bytes()); // chunk count
    payload.extend_from_slice(&[0u8; 16]);
    let e = EncryptedUpdate::from_bytes(&frame(wire::Kind::EncryptedUpdate, &payload), 1 << 20)
        .unwrap_err();
    assert!(matches!(e, CryptoError::Wire(_)), "{e}");
    // A byte string claiming 2^60 bytes.
    let mut payload = Vec::new();
    payload.extend_from_slice(&[0u8; 8]);
    payload.extend_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(
        EncryptedChunk::from_bytes(&frame(wire::Kind::EncryptedChunk, &payload), 1 << 20).is_err()
    );
    // Shape-valid framing around a wrong-shaped update is refused by validation.
    let (_, ct) = small_session(Profile::Fast, "hostile");
    let mut bad = ct.clone();
    bad.length = 5000;
    assert!(matches!(
        EncryptedUpdate::from_bytes(&bad.to_bytes(), 1 << 24),
        Err(CryptoError::Malformed { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512), kind in 1u8..=7) {
        let mut framed = bytes.clone();
        if framed.len() >= 6 {
            framed[..4].copy_from_slice(&wire::MAGIC);
            framed[4] = wire::VERSION;
            framed[5] = kind;
        }
        let _ = EncryptedUpdate::from_bytes(&framed, 1 << 20);
        let _ = DecryptionRequest::from_bytes(&framed, 1 << 20);
        let _ = PartialDecryption::from_bytes(&framed, 1 << 20);
        let _ = PublicKeyShare::from_bytes(&framed, 1 << 20);
        let _ = CollectivePublicKey::from_bytes(&framed, 1 << 20);
        // With a valid digest the payload parser itself sees the garbage.
        let reframed = frame(wire::Kind::EncryptedUpdate, &bytes);
        let _ = EncryptedUpdate::from_bytes(&reframed, 1 << 20);
        let reframed = frame(wire::Kind::CollectiveKey, &bytes);
        let _ = CollectivePublicKey::from_bytes(&reframed, 1 << 20);
    }
}

#[test]
fn bytes_per_parameter_meet_targets() {
    // The targets are 24 and 12; sharing each mask among 8 bodies reaches about half.
    for (profile, target) in [(Profile::Secure, 13.0), (Profile::Fast, 6.0)] {
        let params = SessionParams::recommended(profile, 10, 3, 8.0).unwrap();
        let c = committee(&params, "bytes");
        let n = 100 * profile.params().ring_dim;
        let (ct, _) = c.key.encrypt(&vec![0.5f32; n]).unwrap();
        let per_param = ct.to_bytes().len() as f64 / n as f64;
        assert!(per_param <= target, "{profile}: {per_param} bytes/param");
        assert_eq!(
            profile.params().ciphertext_bytes(n as u64),
            ct.payload_bytes() as u64
        );
    }
}
