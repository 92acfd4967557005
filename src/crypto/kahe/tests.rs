//! End-to-end tests of key-additive aggregation: exact sums from every qualified answering
//! set, the error model, and what a malicious participant, member or coordinator can do.

use std::collections::BTreeMap;

use proptest::prelude::*;
use rand::{Rng, SeedableRng};

use super::*;
use crate::crypto::params::{Profile, Rounding};

/// A session of `k` members, threshold `t`, `participants` declared, with honest keys and
/// random updates in ±8.
struct Round {
    ctx: SessionContext,
    keys: BTreeMap<String, ParticipantKey>,
    updates: BTreeMap<String, Vec<f32>>,
}

fn name(i: usize) -> String {
    format!("p{i:03}")
}

fn context(profile: Profile, participants: u32, k: u32, t: u32, length: u64) -> SessionContext {
    let params = KaheParams::recommended(profile, participants, k, t, 8.0, 20).unwrap();
    SessionContext::new(params, [length as u8 ^ 0x5a; 32], length).unwrap()
}

impl Round {
    fn new(ctx: SessionContext, contributors: usize, seed: u64) -> Self {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let committee = ctx.committee();
        let keys = (0..contributors)
            .map(|i| (name(i), ParticipantKey::generate(committee)))
            .collect();
        let updates = (0..contributors)
            .map(|i| {
                let v = (0..ctx.length)
                    .map(|_| rng.gen_range(-8.0f32..8.0))
                    .collect();
                (name(i), v)
            })
            .collect();
        Round { ctx, keys, updates }
    }

    fn aggregate(&self) -> Aggregate {
        let mut acc = Accumulator::new(&self.ctx);
        for (p, key) in &self.keys {
            let sealed = key.encrypt(&self.ctx, &self.updates[p]).unwrap();
            acc.add(p, &sealed.bytes).unwrap();
        }
        acc.finish()
    }

    /// Every member's bundles, as the member stores them.
    fn held(&self, member: u32) -> BTreeMap<String, SeedBundle> {
        self.keys
            .iter()
            .map(|(p, key)| (p.clone(), key.bundle_for(member)))
            .collect()
    }

    fn releases(&self, request: &ReleaseRequest, answering: &[u32]) -> Vec<(u32, Vec<u8>)> {
        answering
            .iter()
            .map(|&m| {
                let held = self.held(m);
                (m, release(&self.ctx, m, request, |p| held.get(p)).unwrap())
            })
            .collect()
    }

    fn exact_fixed_sum(&self) -> Vec<i64> {
        let scale = (1u64 << self.ctx.params.frac_bits) as f64;
        let mut sum = vec![0i64; self.ctx.length as usize];
        for v in self.updates.values() {
            for (s, &x) in sum.iter_mut().zip(v) {
                *s += (x as f64 * scale).round() as i64;
            }
        }
        sum
    }
}

fn refs(v: &[(u32, Vec<u8>)]) -> Vec<(u32, &[u8])> {
    v.iter().map(|(m, b)| (*m, b.as_slice())).collect()
}

#[test]
fn every_qualified_answering_set_decodes_the_exact_sum() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for k in 1..=7u32 {
        for t in (k / 2 + 1)..=k {
            let length = 2048 + rng.gen_range(1..300u64);
            let ctx = context(Profile::Fast, 6, k, t, length);
            let round = Round::new(ctx, 3 + (k as usize % 3), 100 + k as u64 * 10 + t as u64);
            let aggregate = round.aggregate();
            let exact = round.exact_fixed_sum();
            // Every answering set of exactly t members (larger ones only add choices).
            for group in 0u32..(1 << k) {
                if group.count_ones() != t {
                    continue;
                }
                let answering: Vec<u32> = (0..k).filter(|j| group & (1 << j) != 0).collect();
                let assignment = round.ctx.committee().assign(&answering).unwrap();
                let request = aggregate.request(assignment);
                let active: Vec<u32> = answering
                    .iter()
                    .copied()
                    .filter(|&m| request.assignment.contains(&m))
                    .collect();
                let releases = round.releases(&request, &active);
                let fixed = aggregate.combine_fixed(&request, &refs(&releases)).unwrap();
                assert_eq!(fixed, exact, "k={k} t={t} answering={answering:?}");
            }
        }
    }
}

#[test]
fn the_secure_profile_decodes_a_mean_within_its_bound() {
    let ctx = context(Profile::Secure, 10, 5, 4, 3 * 4096 + 5);
    let round = Round::new(ctx, 10, 1);
    let aggregate = round.aggregate();
    let request = aggregate.request(round.ctx.committee().assign(&[0, 2, 3, 4]).unwrap());
    let releases = round.releases(&request, &[0, 2, 3, 4]);
    let sum = aggregate.combine(&request, &refs(&releases)).unwrap();
    let bound = round.ctx.params.mean_error_bound();
    for (i, s) in sum.sum.iter().enumerate() {
        let mean: f64 = round.updates.values().map(|v| v[i] as f64).sum::<f64>() / 10.0;
        assert!(
            (s / 10.0 - mean).abs() <= bound,
            "value {i}: {} vs {mean}",
            s / 10.0
        );
    }
}

/// The error of each decoded coefficient, in wire units, against the model: a sum of K + |T|
/// roundings (uniform on ±½, variance 1/12 each) and the switched noise, never above the bound
/// that sized the wire.
#[test]
fn measured_error_matches_the_model_and_stays_within_the_bound() {
    for (profile, participants, k, t) in [(Profile::Fast, 50, 5, 3), (Profile::Secure, 20, 7, 5)] {
        let ctx = context(profile, participants, k, t, 4 * 4096);
        let round = Round::new(ctx.clone(), participants as usize, 3);
        let aggregate = round.aggregate();
        let answering: Vec<u32> = (0..t).collect();
        let request = aggregate.request(ctx.committee().assign(&answering).unwrap());
        let releases = round.releases(&request, &answering);
        let phase = aggregate.phase(&request, &refs(&releases)).unwrap();
        let exact = round.exact_fixed_sum();
        let p = &ctx.params;
        let modulus = 1i128 << p.wire_bits;
        let errors: Vec<f64> = phase
            .iter()
            .zip(&exact)
            .map(|(&x, &m)| {
                let expected = (m as i128 * (1i128 << p.delta_log2())).rem_euclid(modulus);
                let mut e = (x as i128 - expected).rem_euclid(modulus);
                if e > modulus / 2 {
                    e -= modulus;
                }
                e as f64
            })
            .collect();
        let max = errors.iter().fold(0f64, |a, e| a.max(e.abs()));
        assert!(
            max.log2() < p.error_bound_log2(p.wire_bits),
            "{profile}: max {max}"
        );
        let n = errors.len() as f64;
        let mean = errors.iter().sum::<f64>() / n;
        let std = (errors.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / n).sqrt();
        let sigma2 = (2f64.powi(2 * p.ring().noise_log2 as i32 + 1) + 1.0) / 6.0;
        let switched = sigma2 * 2f64.powi(2 * (p.wire_bits as i32 - 64));
        let terms = participants as f64 + releases.len() as f64;
        let model = (terms / 12.0 + participants as f64 * switched).sqrt();
        assert!(
            (0.9..1.1).contains(&(std / model)),
            "{profile}: std {std} against model {model}"
        );
        assert!(mean.abs() < 0.1 * model, "{profile}: mean {mean}");
    }
}

#[test]
fn a_garbage_participant_shifts_the_sum_by_its_own_contribution_only() {
    let ctx = context(Profile::Fast, 6, 3, 2, 2048 + 100);
    // Two runs with different honest updates and the same malicious body and seeds.
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let evil_key = ParticipantKey::generate(ctx.committee());
    let mut garbage = ParticipantKey::generate(ctx.committee())
        .encrypt(&ctx, &vec![0.0; ctx.length as usize])
        .unwrap()
        .bytes;
    // A body that is no encryption at all: random fields, envelope resealed.
    let body_start = 6 + wire::UPDATE_HEADER;
    let end = garbage.len() - 32;
    rng.fill(&mut garbage[body_start..end]);
    let digest = blake3::hash(&garbage[..end]);
    garbage[end..].copy_from_slice(digest.as_bytes());
    let mut shifts = Vec::new();
    for seed in [1, 2] {
        let mut round = Round::new(ctx.clone(), 4, seed);
        let honest = round.exact_fixed_sum();
        let mut acc = Accumulator::new(&ctx);
        for (p, key) in &round.keys {
            acc.add(p, &key.encrypt(&ctx, &round.updates[p]).unwrap().bytes)
                .unwrap();
        }
        acc.add("zz-evil", &garbage).unwrap();
        let aggregate = acc.finish();
        round.keys.insert(
            "zz-evil".into(),
            ParticipantKey::from_seeds(
                ctx.committee(),
                evil_key.seeds().to_vec().into(),
                (*evil_key.encryption_seed()).into(),
            )
            .unwrap(),
        );
        let request = aggregate.request(ctx.committee().assign(&[0, 1]).unwrap());
        let releases = round.releases(&request, &[0, 1]);
        let fixed = aggregate.combine_fixed(&request, &refs(&releases)).unwrap();
        // The published sum is refused as corrupt rather than released.
        assert!(matches!(
            aggregate.combine(&request, &refs(&releases)),
            Err(CryptoError::Overflow(_))
        ));
        let w = ctx.params.plaintext_bits;
        shifts.push(
            fixed
                .iter()
                .zip(&honest)
                .map(|(f, h)| (f - h).rem_euclid(1 << w))
                .collect::<Vec<i64>>(),
        );
    }
    // The shift does not depend on the honest updates (up to one unit of rounding).
    let w = ctx.params.plaintext_bits;
    for (a, b) in shifts[0].iter().zip(&shifts[1]) {
        let d = (a - b).rem_euclid(1 << w);
        assert!(d <= 1 || d == (1 << w) - 1, "{a} vs {b}");
    }
}

#[test]
fn releases_for_another_contributor_set_or_assignment_are_refused() {
    let ctx = context(Profile::Fast, 6, 3, 2, 100);
    let round = Round::new(ctx.clone(), 3, 4);
    let aggregate = round.aggregate();
    let request = aggregate.request(ctx.committee().assign(&[0, 1]).unwrap());
    let good_owned = round.releases(&request, &[0, 1]);
    let good = refs(&good_owned);
    // A release for a smaller S.
    let mut smaller = request.clone();
    smaller.contributors.pop();
    let other = round.releases(&smaller, &[0]);
    let e = aggregate
        .combine(&request, &[(0, &other[0].1), good[1]])
        .unwrap_err();
    assert!(e.to_string().contains("another contributor set"), "{e}");
    // A missing member, a repeated one.
    let e = aggregate.combine(&request, &[good[0]]).unwrap_err();
    assert!(e.to_string().contains("no release covers"), "{e}");
    let e = aggregate
        .combine(&request, &[good[0], good[0], good[1]])
        .unwrap_err();
    assert!(e.to_string().contains("twice"), "{e}");
    // A release made for another assignment.
    let other_assignment = aggregate.request(ctx.committee().assign(&[1, 2]).unwrap());
    let r1 = round.releases(&other_assignment, &[1]);
    let e = aggregate
        .combine(&request, &[good[0], (1, &r1[0].1)])
        .unwrap_err();
    assert!(e.to_string().contains("assigned"), "{e}");
    // A release sent by one member in another's name.
    let e = aggregate
        .combine(&request, &[(1, good[0].1), good[1]])
        .unwrap_err();
    assert!(e.to_string().contains("made out as"), "{e}");
    // An empty release from a member with no set (member 2 here), its bodies garbage.
    let empty_sets = wire::ReleaseHeader {
        contributors_digest: request.contributors_digest(&ctx),
        member: 2,
        sets: Vec::new(),
    };
    let (mut empty, _) = wire::release_frame(&ctx, &empty_sets);
    crate::crypto::wire::seal_frame(&mut empty);
    let e = aggregate
        .combine(&request, &[good[0], good[1], (2, &empty)])
        .unwrap_err();
    assert!(e.to_string().contains("assigned"), "{e}");
    // Another session's release.
    let ctx2 = SessionContext::new(ctx.params.clone(), [9; 32], ctx.length).unwrap();
    let held = round.held(1);
    let foreign = release(&ctx2, 1, &request, |p| held.get(p)).unwrap();
    assert!(matches!(
        aggregate.combine(&request, &[good[0], (1, &foreign)]),
        Err(CryptoError::WrongSession { .. })
    ));
}

#[test]
fn a_member_refuses_what_it_cannot_or_must_not_answer() {
    let ctx = context(Profile::Fast, 6, 3, 2, 100);
    let round = Round::new(ctx.clone(), 3, 5);
    let aggregate = round.aggregate();
    let request = aggregate.request(ctx.committee().assign(&[0, 1]).unwrap());
    // Lacking one contributor's seeds.
    let mut held = round.held(0);
    held.remove(&name(1));
    let e = release(&ctx, 0, &request, |p| held.get(p)).unwrap_err();
    assert!(e.to_string().contains("holds no seeds"), "{e}");
    // Another member's bundle passed off as its own.
    let other = round.held(1);
    assert!(release(&ctx, 0, &request, |p| other.get(p)).is_err());
    // An assignment that gives it a set it belongs to.
    let held = round.held(0);
    let sets = ctx.committee().sets();
    let forged = ReleaseRequest {
        contributors: request.contributors.clone(),
        assignment: sets.iter().map(|_| 0).collect(),
    };
    assert!(release(&ctx, 0, &forged, |p| held.get(p)).is_err());
    // Unsorted or repeated contributors, and more than declared.
    let mut unsorted = request.clone();
    unsorted.contributors.reverse();
    assert!(release(&ctx, 0, &unsorted, |p| held.get(p)).is_err());
    let mut many = request.clone();
    many.contributors = (0..7).map(name).collect();
    assert!(release(&ctx, 0, &many, |p| held.get(p)).is_err());
    // The same request answers byte-identically.
    let a = release(&ctx, 0, &request, |p| held.get(p)).unwrap();
    let b = release(&ctx, 0, &request, |p| held.get(p)).unwrap();
    assert_eq!(a, b);
}

#[test]
fn a_prepared_encryption_refuses_bad_values_and_seals_once() {
    let ctx = context(Profile::Fast, 6, 3, 2, 3000);
    let key = ParticipantKey::generate(ctx.committee());
    let mut prepared = key.prepare(&ctx).unwrap();
    let mut values = vec![0.5f32; 3000];
    values[17] = f32::NAN;
    assert_eq!(
        prepared.seal_in_place(&values, None).unwrap_err(),
        CryptoError::NonFinite { index: 17 }
    );
    assert!(matches!(
        prepared.seal_in_place(&values[..10], None),
        Err(CryptoError::LengthMismatch { .. })
    ));
    values[17] = 0.5;
    let sealed = prepared.seal_in_place(&values, None).unwrap();
    assert!(prepared.seal_in_place(&values, None).is_err());
    assert_eq!(sealed.bytes.len(), wire::update_len(&ctx));
    // Another session, another length, another profile: refused by the accumulator.
    let other = context(Profile::Fast, 6, 3, 2, 3001);
    assert!(Accumulator::new(&other).add("p", &sealed.bytes).is_err());
    let mut acc = Accumulator::new(&ctx);
    acc.add("p", &sealed.bytes).unwrap();
    assert!(matches!(
        acc.add("p", &sealed.bytes),
        Err(CryptoError::DuplicateContributor(_))
    ));
}

#[test]
fn weighted_updates_decode_to_the_exact_weighted_sum_and_the_weights_sum() {
    // 4096 values and the weight: the weight's coefficient opens a polynomial of its own.
    let (participants, length, max_weight) = (5u32, 4096u64, 1000u32);
    let params = KaheParams::recommended_weighted(
        Profile::Fast,
        participants,
        3,
        2,
        8.0,
        20,
        Some(max_weight),
    )
    .unwrap();
    let unweighted = KaheParams::recommended(Profile::Fast, participants, 3, 2, 8.0, 20).unwrap();
    // Σ w·m < 5 · 1000 · 8 · 2^20: ten more plaintext bits than the unweighted sum.
    assert_eq!(params.plaintext_bits, unweighted.plaintext_bits + 10);
    let ctx = SessionContext::new(params.clone(), [3; 32], params.coefficients(length)).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut acc = Accumulator::new(&ctx);
    let mut keys = BTreeMap::new();
    let scale = (1u64 << 20) as f64;
    let mut exact = vec![0i64; length as usize + 1];
    for (i, weight) in [1u32, 7, 1000, 250, 3].into_iter().enumerate() {
        let key = ParticipantKey::generate(ctx.committee());
        // Values beyond the clip too: a weight multiplies the clipped value.
        let values: Vec<f32> = (0..length).map(|_| rng.gen_range(-9.0f32..9.0)).collect();
        let prepared = key.prepare(&ctx).unwrap();
        assert!(matches!(
            key.prepare(&ctx).unwrap().seal(&values),
            Err(CryptoError::InvalidParams(_))
        ));
        assert!(key
            .prepare(&ctx)
            .unwrap()
            .seal_weighted(&values, max_weight + 1)
            .is_err());
        assert!(key
            .prepare(&ctx)
            .unwrap()
            .seal_weighted(&values, 0)
            .is_err());
        let sealed = prepared.seal_weighted(&values, weight).unwrap();
        let clipped = values.iter().filter(|v| v.abs() > 8.0).count() as u64;
        assert_eq!(sealed.clipped, clipped);
        for (s, &x) in exact.iter_mut().zip(&values) {
            *s += weight as i64 * (x.clamp(-8.0, 8.0) as f64 * scale).round() as i64;
        }
        exact[length as usize] += (weight as i64) << 20;
        acc.add(&name(i), &sealed.bytes).unwrap();
        keys.insert(name(i), key);
    }
    let aggregate = acc.finish();
    let request = aggregate.request(ctx.committee().assign(&[0, 1]).unwrap());
    let releases: Vec<(u32, Vec<u8>)> = [0u32, 1]
        .iter()
        .filter(|m| request.assignment.contains(m))
        .map(|&m| {
            let held: BTreeMap<String, SeedBundle> = keys
                .iter()
                .map(|(p, k)| (p.clone(), k.bundle_for(m)))
                .collect();
            (m, release(&ctx, m, &request, |p| held.get(p)).unwrap())
        })
        .collect();
    let fixed = aggregate.combine_fixed(&request, &refs(&releases)).unwrap();
    assert_eq!(fixed, exact);
    assert_eq!(fixed[length as usize], (1 + 7 + 1000 + 250 + 3) << 20);
    // An unweighted context refuses a weight.
    let plain = context(Profile::Fast, 5, 3, 2, 10);
    let key = ParticipantKey::generate(plain.committee());
    assert!(key
        .prepare(&plain)
        .unwrap()
        .seal_weighted(&[0.0; 10], 1)
        .is_err());
}

#[test]
fn ten_participants_send_four_bytes_per_value_and_a_thousand_six() {
    let ctx = context(Profile::Secure, 10, 5, 4, 1 << 20);
    let bytes = wire::update_len(&ctx) as f64 / ctx.length as f64;
    assert!(bytes < 4.001, "{bytes}");
    let ctx = context(Profile::Secure, 1000, 10, 6, 1 << 20);
    assert!((wire::update_len(&ctx) as f64 / ctx.length as f64) < 6.001);
}

#[test]
fn seed_bundles_are_checked_and_redacted() {
    let c = Committee::new(5, 4).unwrap();
    let key = ParticipantKey::generate(c);
    let bundle = key.bundle_for(2);
    bundle.check(c, 2).unwrap();
    assert!(bundle.check(c, 3).is_err());
    let mut short = bundle.clone();
    short.seeds.pop();
    assert!(short.check(c, 2).is_err());
    assert!(!format!("{bundle:?}").contains(&format!("{:?}", bundle.seeds[0])));
    assert!(!format!("{key:?}").contains(&format!("{:?}", &key.seeds()[0][0..4])));
    // Fresh keys differ.
    assert_ne!(key.seeds(), ParticipantKey::generate(c).seeds());
}

#[test]
fn a_key_seals_an_update_to_the_same_bytes_every_time_and_another_update_to_others() {
    let mut params = KaheParams::recommended(Profile::Fast, 4, 3, 2, 8.0, 20).unwrap();
    params.rounding = Rounding::Stochastic;
    let ctx = SessionContext::new(params, [7; 32], 3000).unwrap();
    let key = ParticipantKey::generate(ctx.committee());
    let update: Vec<f32> = (0..3000).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
    let first = key.encrypt(&ctx, &update).unwrap();
    // The key as its store gives it back (after a restart) seals the same bytes.
    let restored = ParticipantKey::from_seeds(
        ctx.committee(),
        key.seeds().to_vec().into(),
        (*key.encryption_seed()).into(),
    )
    .unwrap();
    let again = restored.encrypt(&ctx, &update).unwrap();
    assert_eq!(first.bytes, again.bytes);
    assert_eq!(first.digest, again.digest);
    let mut other = update.clone();
    other[1234] += 0.5;
    assert_ne!(key.encrypt(&ctx, &other).unwrap().digest, first.digest);
    // Another key's randomness is its own.
    let stranger = ParticipantKey::generate(ctx.committee());
    assert_ne!(stranger.encryption_seed(), key.encryption_seed());
    assert!(!format!("{key:?}").contains(&format!("{:?}", &key.encryption_seed()[0..4])));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn garbage_never_parses_or_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let ctx = context(Profile::Fast, 6, 3, 2, 20);
        prop_assert!(wire::update_bodies(&ctx, &bytes).is_err());
        prop_assert!(wire::parse_release(&ctx, &bytes).is_err());
    }

    #[test]
    fn wire_forms_round_trip_and_refuse_any_changed_byte(length in 1u64..300, flip in any::<prop::sample::Index>()) {
        let ctx = context(Profile::Fast, 6, 3, 2, length);
        let key = ParticipantKey::generate(ctx.committee());
        let values: Vec<f32> = (0..length).map(|i| i as f32 / 64.0 - 2.0).collect();
        let sealed = key.encrypt(&ctx, &values).unwrap();
        prop_assert_eq!(wire::update_bodies(&ctx, &sealed.bytes).unwrap().len(), ctx.body_bytes());
        let mut bad = sealed.bytes.clone();
        let i = flip.index(bad.len());
        bad[i] ^= 1;
        prop_assert!(wire::update_bodies(&ctx, &bad).is_err());

        let request = ReleaseRequest { contributors: vec!["p".into()], assignment: ctx.committee().assign(&[0, 1]).unwrap() };
        let bundle = key.bundle_for(0);
        let rel = release(&ctx, 0, &request, |_| Some(&bundle)).unwrap();
        // A well-formed envelope around a hostile header: every count and length refused.
        for count in [0u32, 1, 3, 4, u32::MAX] {
            let mut hostile = rel.clone();
            hostile[6 + 77..6 + 81].copy_from_slice(&count.to_le_bytes());
            let end = hostile.len() - 32;
            let digest = blake3::hash(&hostile[..end]);
            hostile[end..].copy_from_slice(digest.as_bytes());
            let sets = wire::parse_release(&ctx, &hostile).map(|(h, _)| h.sets.len());
            prop_assert!(sets.is_err() || sets == Ok(count as usize));
        }
        let mut short = rel[..6 + 60].to_vec();
        let digest = blake3::hash(&short);
        short.extend_from_slice(digest.as_bytes());
        prop_assert!(wire::parse_release(&ctx, &short).is_err());
        let (header, bodies) = wire::parse_release(&ctx, &rel).unwrap();
        prop_assert_eq!(header.member, 0);
        prop_assert_eq!(bodies.len(), ctx.body_bytes());
        let mut bad = rel.clone();
        let i = flip.index(bad.len());
        bad[i] ^= 0x80;
        prop_assert!(wire::parse_release(&ctx, &bad).is_err());
    }
}

/// Timings of one 10 × 1M round's cryptography, next to a plaintext sum of the same updates
/// measured in the same run (`cargo test --release --lib -- --ignored kahe_timings --nocapture`).
/// A measurement, not a check: speed targets are for benchmarks.
#[test]
#[ignore]
fn kahe_timings() {
    use std::time::Instant;
    let length = 1u64 << 20;
    let ctx = context(Profile::Secure, 10, 5, 4, length);
    let round = Round::new(ctx.clone(), 10, 11);
    let t = Instant::now();
    let mut plain = vec![0f32; length as usize];
    for u in round.updates.values() {
        for (s, v) in plain.iter_mut().zip(u) {
            *s += v;
        }
    }
    let plain_s = t.elapsed().as_secs_f64();
    std::hint::black_box(&plain);
    let key = &round.keys[&name(0)];
    let t = Instant::now();
    let prepared = key.prepare(&ctx).unwrap();
    let prepare_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let sealed = prepared.seal(&round.updates[&name(0)]).unwrap();
    let seal_s = t.elapsed().as_secs_f64();
    let mut acc = Accumulator::new(&ctx);
    let mut add_s = 0.0;
    for (p, k) in &round.keys {
        let bytes = if p == &name(0) {
            sealed.bytes.clone()
        } else {
            k.encrypt(&ctx, &round.updates[p]).unwrap().bytes
        };
        let t = Instant::now();
        acc.add(p, &bytes).unwrap();
        add_s += t.elapsed().as_secs_f64();
    }
    let aggregate = acc.finish();
    let request = aggregate.request(ctx.committee().assign(&[0, 1, 2, 3]).unwrap());
    let t = Instant::now();
    let releases = round.releases(&request, &[0, 1, 2, 3]);
    let release_s = t.elapsed().as_secs_f64() / 4.0;
    let t = Instant::now();
    aggregate.combine(&request, &refs(&releases)).unwrap();
    let combine_s = t.elapsed().as_secs_f64();
    println!(
        "values {length}: plaintext sum of 10 {plain_s:.4} s; prepare {prepare_s:.4} s \
         ({:.1} M values/s); seal {seal_s:.4} s; prepare+seal {:.1} M values/s; add 10 {add_s:.4} s; \
         release per member {release_s:.4} s; combine {combine_s:.4} s; {:.3} B/value",
        length as f64 / prepare_s / 1e6,
        length as f64 / (prepare_s + seal_s) / 1e6,
        sealed.bytes.len() as f64 / length as f64
    );
}
