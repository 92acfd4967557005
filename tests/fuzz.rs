//! Fuzzing of every decoder that takes bytes from a peer or from the API (issue #18 item 9).
//!
//! Each decoder family has two kinds of property:
//!
//! * **arbitrary bytes**: random byte strings (and, for text formats, random text of the
//!   format's alphabet) never panic: the decoder returns a value or an error;
//! * **structure-aware mutation**: valid encodings written by the crate's own encoders (real
//!   messages, real ciphertexts and keys, real `.npy`/`.npz`/safetensors files, real configs)
//!   are mutated by [`mutate`] (bit flips, byte and integer overwrites — lengths, counts and
//!   indices set to boundary values or nudged —, truncation, insertion, removal, duplication of
//!   a range, splicing two encodings, tokens of the format) and decoded. The decoder never
//!   panics, its largest single allocation stays bounded by the input ([`ALLOC_BUDGET`]), it
//!   returns promptly, and where the format carries a digest (the `FHEN`/`FHEI` envelopes) a
//!   changed byte is refused rather than decoded to another value. Digest-carrying formats
//!   are also mutated *inside* the envelope and sealed again, so that the payload parser
//!   behind the digest check is fuzzed too. What decodes is then used the way the receiving
//!   node uses it (a plan is checked and laid out, a release combined, a ciphertext
//!   evaluated, a result decrypted) and must not panic there either.
//!
//! Every family is a module with a bounded test (run by `cargo test`, a few dozen to a few
//! hundred cases per property) and an `#[ignore]`d `long` test that runs the same properties
//! with `FHENODE_FUZZ_CASES` cases (default 20000; the expensive families run a fraction, see
//! [`long_cases`]). Each property prints its case count, time, largest allocation and slowest
//! case:
//!
//! ```text
//! cargo test --release --test fuzz -- --ignored --nocapture
//! FHENODE_FUZZ_CASES=200000 cargo test --release --test fuzz -- --ignored --nocapture rpc
//! ```
//!
//! (Without `--release` it runs too: dependencies are optimised in the dev profile.)
//! A failure reports the input's bytes (hex) as well as the shrunk mutation.

use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::cell::Cell;
use std::fmt::Debug;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

// ---------------------------------------------------------------------------------------------
// Allocation watch: the largest single allocation made on this thread while armed.
// ---------------------------------------------------------------------------------------------

struct Watch;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = ARMED.try_with(|armed| {
        if armed.get() {
            let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
        }
    });
}

// SAFETY: every call is forwarded to the system allocator unchanged; `note` only touches
// const-initialised thread-locals without destructors (no allocation, no re-entrance).
unsafe impl GlobalAlloc for Watch {
    unsafe fn alloc(&self, layout: AllocLayout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: AllocLayout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: AllocLayout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: AllocLayout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static WATCH: Watch = Watch;

/// The largest allocation any decoder may make for an input of `len` bytes: a fixed slack
/// (buffers, capped pre-allocations, an `.npz`'s 1 MiB unpack budget, the RPC frame limit)
/// plus a small multiple of the input. Decoding must never size anything from a length field
/// alone.
fn alloc_budget(len: usize) -> usize {
    ALLOC_BUDGET + 64 * len
}
const ALLOC_BUDGET: usize = 4 << 20;
/// Slower than this for one decode is a finding (the inputs here are at most megabytes).
const SLOW: Duration = Duration::from_secs(20);

/// Statistics of one property's run.
#[derive(Default)]
struct Stats {
    /// Cases run (shrinking included).
    runs: Cell<u64>,
    /// Cases some decoder accepted (the rest were refused).
    decoded: Cell<u64>,
    largest: Cell<usize>,
    slowest: Cell<Duration>,
}

impl Stats {
    /// Counts a case that some decoder accepted.
    fn decoded(&self, accepted: bool) {
        self.decoded.set(self.decoded.get() + accepted as u64);
    }
}

fn hex_head(bytes: &[u8]) -> String {
    const SHOWN: usize = 2048;
    let head = &bytes[..bytes.len().min(SHOWN)];
    let more = if bytes.len() > SHOWN { "…" } else { "" };
    format!("{} bytes: {}{more}", bytes.len(), hex::encode(head))
}

/// Runs `decode` on `input`, turning a panic, an absurd allocation or a slow return into a
/// test failure that names the input's bytes.
fn guarded<T>(
    stats: &Stats,
    what: &str,
    input: &[u8],
    decode: impl FnOnce() -> T,
) -> Result<T, TestCaseError> {
    LARGEST.with(|l| l.set(0));
    ARMED.with(|a| a.set(true));
    let start = Instant::now();
    let result = catch_unwind(AssertUnwindSafe(decode));
    let elapsed = start.elapsed();
    ARMED.with(|a| a.set(false));
    let largest = LARGEST.with(|l| l.get());
    stats.largest.set(stats.largest.get().max(largest));
    stats.slowest.set(stats.slowest.get().max(elapsed));
    let value = result.map_err(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        TestCaseError::fail(format!(
            "{what} panicked ({message}) on {}",
            hex_head(input)
        ))
    })?;
    if largest > alloc_budget(input.len()) {
        return Err(TestCaseError::fail(format!(
            "{what} allocated {largest} bytes at once for {}",
            hex_head(input)
        )));
    }
    if elapsed > SLOW {
        return Err(TestCaseError::fail(format!(
            "{what} took {elapsed:?} on {}",
            hex_head(input)
        )));
    }
    Ok(value)
}

/// A failed expectation about a decoded input.
fn finding(what: &str, input: &[u8], why: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(format!("{what}: {why}; input {}", hex_head(input)))
}

// ---------------------------------------------------------------------------------------------
// Running: bounded in `cargo test`, long behind `--ignored`.
// ---------------------------------------------------------------------------------------------

/// Cases of a long run: `FHENODE_FUZZ_CASES` (default 20000) divided by `divisor` for the
/// families whose cases cost more (ciphertexts, keys, files).
fn long_cases(divisor: u32) -> u32 {
    let total = std::env::var("FHENODE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .unwrap_or(20_000);
    (total / divisor).max(1)
}

/// Runs `property` on `cases` values of `strategy`; panics with the shrunk failing value.
fn run<S>(
    name: &str,
    cases: u32,
    strategy: S,
    property: impl Fn(&Stats, S::Value) -> Result<(), TestCaseError>,
) where
    S: Strategy,
    S::Value: Debug,
{
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 512,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let stats = Stats::default();
    let start = Instant::now();
    let result = runner.run(&strategy, |value| {
        stats.runs.set(stats.runs.get() + 1);
        property(&stats, value)
    });
    eprintln!(
        "fuzz {name}: {} cases ({} decoded) in {:.1} s; largest allocation {} KiB; slowest case {:.1} ms",
        stats.runs.get(),
        stats.decoded.get(),
        start.elapsed().as_secs_f64(),
        stats.largest.get() >> 10,
        stats.slowest.get().as_secs_f64() * 1e3,
    );
    if let Err(e) = result {
        panic!("fuzz {name}: {e}");
    }
}

/// Declares a family's bounded test and its long `#[ignore]`d twin.
macro_rules! fuzz_tests {
    ($bounded:expr, $divisor:expr) => {
        #[test]
        fn bounded() {
            fuzz($bounded);
        }

        #[test]
        #[ignore = "long fuzzing run: FHENODE_FUZZ_CASES=N cargo test --release --test fuzz -- --ignored"]
        fn long() {
            fuzz(super::long_cases($divisor));
        }
    };
}

// ---------------------------------------------------------------------------------------------
// The shared mutation engine.
// ---------------------------------------------------------------------------------------------

/// Mutations near the ends of an input hit its headers (and a zip's central directory).
const WINDOW: usize = 512;

/// Where in the input a mutation applies.
#[derive(Clone, Debug)]
enum Pos {
    Anywhere(Index),
    Head(Index),
    Tail(Index),
}

impl Pos {
    /// A byte position in `0..len` (`len > 0`).
    fn at(&self, len: usize) -> usize {
        match self {
            Pos::Anywhere(i) => i.index(len),
            Pos::Head(i) => i.index(len.min(WINDOW)),
            Pos::Tail(i) => len - 1 - i.index(len.min(WINDOW)),
        }
    }

    /// A gap in `0..=len`.
    fn gap(&self, len: usize) -> usize {
        self.at(len + 1)
    }
}

/// A value written over a little-endian integer field.
#[derive(Clone, Debug)]
enum IntValue {
    Zero,
    One,
    /// All ones: the largest unsigned value, -1 signed.
    Max,
    /// The largest signed value.
    SignedMax,
    /// The input's own length (a length field that claims everything).
    InputLen,
    /// The field's current value plus a small delta (a length off by a few).
    Delta(i8),
    Any(u64),
}

#[derive(Clone, Debug)]
enum Mutation {
    FlipBit(Pos, u8),
    SetByte(Pos, u8),
    /// Overwrites a 1-, 2-, 4- or 8-byte little-endian integer (lengths, counts, indices).
    SetInt(Pos, usize, IntValue),
    Truncate(Pos),
    Remove(Pos, u8),
    Insert(Pos, Vec<u8>),
    /// Copies a range and inserts the copy elsewhere.
    Duplicate(Pos, u8, Pos),
    /// Keeps this input up to one point and another seed from another point on.
    Splice(Index, Pos, Pos),
    /// Writes (`true`) or inserts (`false`) a token of the format's dictionary.
    Token(Pos, Index, bool),
}

/// A seed and the mutations applied to it.
#[derive(Clone, Debug)]
struct Case {
    seed: Index,
    mutations: Vec<Mutation>,
}

fn pos() -> impl Strategy<Value = Pos> {
    prop_oneof![
        any::<Index>().prop_map(Pos::Anywhere),
        any::<Index>().prop_map(Pos::Head),
        any::<Index>().prop_map(Pos::Tail),
    ]
}

fn int_value() -> impl Strategy<Value = IntValue> {
    prop_oneof![
        Just(IntValue::Zero),
        Just(IntValue::One),
        Just(IntValue::Max),
        Just(IntValue::SignedMax),
        Just(IntValue::InputLen),
        any::<i8>().prop_map(IntValue::Delta),
        any::<u64>().prop_map(IntValue::Any),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (pos(), 0u8..8).prop_map(|(p, b)| Mutation::FlipBit(p, b)),
        2 => (pos(), any::<u8>()).prop_map(|(p, v)| Mutation::SetByte(p, v)),
        3 => (pos(), prop::sample::select(vec![1usize, 2, 4, 8]), int_value())
            .prop_map(|(p, w, v)| Mutation::SetInt(p, w, v)),
        1 => pos().prop_map(Mutation::Truncate),
        1 => (pos(), 1u8..=64).prop_map(|(p, n)| Mutation::Remove(p, n)),
        1 => (pos(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(p, b)| Mutation::Insert(p, b)),
        1 => (pos(), 1u8..=64, pos()).prop_map(|(f, n, t)| Mutation::Duplicate(f, n, t)),
        1 => (any::<Index>(), pos(), pos()).prop_map(|(o, a, f)| Mutation::Splice(o, a, f)),
        2 => (pos(), any::<Index>(), any::<bool>()).prop_map(|(p, t, w)| Mutation::Token(p, t, w)),
    ]
}

/// One to four mutations of one seed.
fn case() -> impl Strategy<Value = Case> {
    (any::<Index>(), prop::collection::vec(mutation(), 1..=4))
        .prop_map(|(seed, mutations)| Case { seed, mutations })
}

/// Tokens every binary format gets: boundary integers and magic numbers.
const BINARY_TOKENS: &[&[u8]] = &[
    b"\x00",
    b"\xff",
    b"\x00\x00\x00\x00",
    b"\xff\xff\xff\xff",
    b"\xff\xff\xff\xff\xff\xff\xff\xff",
    b"\x00\x00\x00\x80",
    b"\xff\xff\xff\x7f",
    b"\x01\x00\x00\x00\x00\x00\x00\x00",
    b"\x00\x00\x00\x00\x00\x00\x00\x01",
    b"FHEN\x01\x08",
    b"FHEN\x01\x09",
    b"FHEI\x01",
];

/// The input `case` makes of `seeds`, with `tokens` as the format's dictionary.
fn mutate(seeds: &[Vec<u8>], tokens: &[&[u8]], case: &Case) -> Vec<u8> {
    let mut out = seeds[case.seed.index(seeds.len())].clone();
    for m in &case.mutations {
        apply(&mut out, seeds, tokens, m);
    }
    out
}

fn apply(out: &mut Vec<u8>, seeds: &[Vec<u8>], tokens: &[&[u8]], m: &Mutation) {
    let len = out.len();
    match m {
        Mutation::Insert(p, bytes) => {
            let at = p.gap(len);
            out.splice(at..at, bytes.iter().copied());
        }
        Mutation::Token(p, t, overwrite) => {
            let token = if tokens.is_empty() {
                BINARY_TOKENS[t.index(BINARY_TOKENS.len())]
            } else {
                tokens[t.index(tokens.len())]
            };
            let at = p.gap(len);
            if *overwrite {
                let end = (at + token.len()).min(len);
                out.splice(at..end, token.iter().copied());
            } else {
                out.splice(at..at, token.iter().copied());
            }
        }
        Mutation::Splice(other, at, from) => {
            let other = &seeds[other.index(seeds.len())];
            let at = at.gap(len);
            let from = from.gap(other.len());
            out.truncate(at);
            out.extend_from_slice(&other[from..]);
        }
        _ if len == 0 => {}
        Mutation::FlipBit(p, bit) => out[p.at(len)] ^= 1 << bit,
        Mutation::SetByte(p, v) => out[p.at(len)] = *v,
        Mutation::SetInt(p, width, value) => {
            let at = p.at(len);
            let end = (at + width).min(len);
            let mut current = [0u8; 8];
            current[..end - at].copy_from_slice(&out[at..end]);
            let bits = 8 * *width as u32;
            let mask = if bits == 64 {
                u64::MAX
            } else {
                (1u64 << bits) - 1
            };
            let v = match value {
                IntValue::Zero => 0,
                IntValue::One => 1,
                IntValue::Max => u64::MAX,
                IntValue::SignedMax => mask >> 1,
                IntValue::InputLen => len as u64,
                IntValue::Delta(d) => u64::from_le_bytes(current).wrapping_add(*d as i64 as u64),
                IntValue::Any(v) => *v,
            } & mask;
            out[at..end].copy_from_slice(&v.to_le_bytes()[..end - at]);
        }
        Mutation::Truncate(p) => out.truncate(p.at(len)),
        Mutation::Remove(p, n) => {
            let at = p.at(len);
            let end = (at + *n as usize).min(len);
            out.drain(at..end);
        }
        Mutation::Duplicate(from, n, to) => {
            let at = from.at(len);
            let range = out[at..(at + *n as usize).min(len)].to_vec();
            let to = to.gap(len);
            out.splice(to..to, range);
        }
    }
}

/// Arbitrary bytes, up to `max` of them.
fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

/// Arbitrary text of JSON's and TOML's alphabet (more likely to get past a parser's first
/// byte than arbitrary bytes), or arbitrary bytes.
fn text_or_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        bytes(max),
        prop::string::string_regex(&format!(r#"[\[\]{{}}",:=. \n0-9a-zA-Z_eE+\-]{{0,{max}}}"#))
            .expect("regex")
            .prop_map(String::into_bytes),
    ]
}

/// Recomputes the BLAKE3 digest an envelope (`FHEN`, `FHEI`) ends with, so that a mutated
/// payload passes the digest check and reaches the parser behind it.
fn reseal(body: &[u8]) -> Vec<u8> {
    let mut out = body.to_vec();
    out.extend_from_slice(blake3::hash(body).as_bytes());
    out
}

/// An envelope without its digest: what [`reseal`] mutates.
fn unsealed(envelope: &[u8]) -> Vec<u8> {
    envelope[..envelope.len() - 32].to_vec()
}

/// Real peer ids (session plans check them).
fn peers(n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            libp2p::identity::Keypair::generate_ed25519()
                .public()
                .to_peer_id()
                .to_string()
        })
        .collect()
}

const JSON_TOKENS: &[&[u8]] = &[
    b"[",
    b"]",
    b"{",
    b"}",
    b",",
    b":",
    b"\"",
    b"null",
    b"true",
    b"-",
    b"0",
    b"-0",
    b"1e999",
    b"-1e400",
    b"3.5e38",
    b"1.7976931348623157e308",
    b"18446744073709551616",
    b"4294967296",
    b"-1",
    b"NaN",
    b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    b"]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
    b"\"\\u0000\"",
    b"\"\\ud800\"",
    b"\"\xff\"",
    b"\"values\"",
    b"\"tensors\"",
    b"\"weight\"",
    b"\"id\"",
    b"\"length\"",
    b"\"shapes\"",
    b"\"committee\"",
    b"\"participants\"",
    b"\"threshold\"",
    b"\"rounds\"",
    b"\"result\"",
    b"\"weighted_mean\"",
    b"\"max_weight\"",
    b"\"profile\"",
    b"\"layers\"",
    b"\"weights\"",
    b"\"biases\"",
    b"\"activation\"",
    b"\"relu\"",
    b"\"sigmoid\"",
    b"\"scheme\"",
    b"\"mlp\"",
    b"\"linear\"",
    b"\"input_range\"",
    b"\"calibration\"",
    b"\"input_bound\"",
    b"\"dtype\"",
    b"\"F32\"",
    b"\"F16\"",
    b"\"BF16\"",
    b"\"F64\"",
    b"\"I64\"",
    b"\"U8\"",
    b"\"BOOL\"",
    b"\"shape\"",
    b"\"data_offsets\"",
    b"\"__metadata__\"",
    b"\"activations\"",
    b"\"0.weight\"",
    b"\"1.bias\"",
    b"\"layers.999999.weight\"",
];

// ---------------------------------------------------------------------------------------------
// RPC frames: `/fhenode/rpc/1` requests and responses.
// ---------------------------------------------------------------------------------------------

mod rpc {
    use super::*;
    use fhenode::net::protocol::{Request, Response, RpcCodec, RPC_PROTOCOL};
    use futures::executor::block_on;
    use futures::io::Cursor;
    use libp2p::request_response::Codec;

    /// The codec's limits here: a length prefix may make it allocate up to this, no more.
    const LIMIT: usize = 64 << 10;

    fn codec() -> RpcCodec {
        RpcCodec::new(LIMIT, LIMIT)
    }

    fn write_request(req: Request) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        block_on(codec().write_request(&RPC_PROTOCOL, &mut out, req)).unwrap();
        out.into_inner()
    }

    fn write_response(res: Response) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        block_on(codec().write_response(&RPC_PROTOCOL, &mut out, res)).unwrap();
        out.into_inner()
    }

    fn seeds() -> &'static [Vec<u8>] {
        static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
        SEEDS.get_or_init(|| {
            let ended =
                fhenode::session::messages::encode(&fhenode::session::messages::AggMsg::Ended {
                    session: "s-1".into(),
                    reason: Some("deadline".into()),
                })
                .unwrap();
            let spec = fhenode::inference::messages::encode(
                &fhenode::inference::messages::InferMsg::Spec { model: "m".into() },
            );
            vec![
                write_request(Request::Echo(Vec::new())),
                write_request(Request::Echo(b"hello".to_vec())),
                write_request(Request::Aggregation(ended.clone())),
                write_request(Request::Inference(spec.clone())),
                write_request(Request::Sink(vec![7; 300])),
                write_response(Response::Echo(b"hello".to_vec())),
                write_response(Response::Aggregation(ended)),
                write_response(Response::Inference(spec)),
                write_response(Response::Sunk(1 << 40)),
                write_response(Response::Error {
                    code: "bad_input".into(),
                    message: "malformed session message: ünïcode".into(),
                }),
            ]
        })
    }

    /// Both readers on `input`; whatever decodes is written back as exactly the bytes it
    /// was read from (the frame's length prefix and body: bincode is canonical here).
    fn check(stats: &Stats, input: &[u8]) -> Result<(), TestCaseError> {
        let read_req = guarded(stats, "read_request", input, || {
            block_on(codec().read_request(&RPC_PROTOCOL, &mut Cursor::new(input.to_vec())))
        })?;
        let read_res = guarded(stats, "read_response", input, || {
            block_on(codec().read_response(&RPC_PROTOCOL, &mut Cursor::new(input.to_vec())))
        })?;
        stats.decoded(read_req.is_ok() || read_res.is_ok());
        let framed = |written: Vec<u8>| {
            let len = u32::from_le_bytes(input[..4].try_into().unwrap()) as usize;
            if written[..] != input[..4 + len] {
                return Err(finding("rpc frame", input, "decoded to another frame"));
            }
            Ok(())
        };
        if let Ok(req) = read_req {
            framed(write_request(req))?;
        }
        if let Ok(res) = read_res {
            framed(write_response(res))?;
        }
        Ok(())
    }

    fn fuzz(cases: u32) {
        run("rpc/arbitrary", cases, bytes(256), |s, b| check(s, &b));
        run("rpc/arbitrary_framed", cases, bytes(256), |s, b| {
            let mut framed = (b.len() as u32).to_le_bytes().to_vec();
            framed.extend_from_slice(&b);
            check(s, &framed)
        });
        run("rpc/mutated", cases, case(), |s, c| {
            check(s, &mutate(seeds(), &[], &c))
        });
    }

    fuzz_tests!(512, 1);
}

// ---------------------------------------------------------------------------------------------
// Aggregation session messages (`Request::Aggregation` bytes).
// ---------------------------------------------------------------------------------------------

mod session_messages {
    use super::*;
    use fhenode::crypto::kahe::{Committee, ParticipantKey, ReleaseRequest};
    use fhenode::crypto::Profile;
    use fhenode::session::messages::{decode, encode, AggMsg, AggReply, Attestation, Piece};
    use fhenode::session::roles::LocalPolicy;
    use fhenode::session::spec::MAX_LENGTH;
    use fhenode::session::{PackedResult, ResultKind, SessionPlan, SessionSpec};
    use fhenode::tensors::Layout;

    struct Fixture {
        seeds: Vec<Vec<u8>>,
        coordinator: String,
    }

    fn plans(coordinator: libp2p::PeerId) -> Vec<SessionPlan> {
        let committee = peers(3);
        let participants = peers(3);
        let flat = SessionSpec {
            id: Some("s-1".into()),
            length: Some(40),
            profile: Some(Profile::Fast),
            committee: committee.clone(),
            threshold: Some(2),
            participants: participants.clone(),
            ..SessionSpec::default()
        };
        let shaped = SessionSpec {
            id: Some("s-2".into()),
            length: None,
            shapes: Some(
                [("a".to_string(), vec![2, 3]), ("b".to_string(), vec![])]
                    .into_iter()
                    .collect(),
            ),
            result: ResultKind::WeightedMean,
            max_weight: Some(100),
            min_participants: Some(2),
            ..flat.clone()
        };
        [flat, shaped]
            .iter()
            .map(|s| s.validate(coordinator, Profile::Fast).unwrap())
            .collect()
    }

    fn fixture() -> &'static Fixture {
        static F: OnceLock<Fixture> = OnceLock::new();
        F.get_or_init(|| {
            let coordinator = libp2p::identity::Keypair::generate_ed25519()
                .public()
                .to_peer_id();
            let plans = plans(coordinator);
            let plan = &plans[0];
            let ctx = plan.context().unwrap();
            let key = ParticipantKey::generate(ctx.committee());
            let update = key.encrypt(&ctx, &[0.5; 40]).unwrap();
            let mut contributors = plan.participants.clone();
            contributors.sort();
            let request = ReleaseRequest {
                contributors: contributors.clone(),
                assignment: ctx.committee().assign(&[0, 1]).unwrap(),
            };
            let result = fhenode::session::SessionResult {
                session: "s-1".into(),
                kind: ResultKind::Mean,
                contributors: 3,
                contributor_ids: contributors.clone(),
                clipped: 2,
                error_bound: 1e-6,
                total_weight: None,
                values: (0..40).map(|i| (i as f64 - 20.0) / 1024.0 / 3.0).collect(),
            };
            let floats = fhenode::session::SessionResult {
                kind: ResultKind::WeightedMean,
                total_weight: Some(7.0),
                values: vec![std::f64::consts::PI, f64::MIN_POSITIVE, -0.0],
                ..result.clone()
            };
            let packed = |r: &fhenode::session::SessionResult| -> PackedResult {
                decode(&bincode::serialize(r).unwrap()).unwrap()
            };
            let messages = vec![
                AggMsg::Plan { plan: plan.clone() },
                AggMsg::Plan {
                    plan: plans[1].clone(),
                },
                AggMsg::Seeds {
                    session: "s-1".into(),
                    plan_digest: plan.digest(),
                    bundle: key.bundle_for(1),
                },
                AggMsg::SubmitPiece {
                    session: "s-1".into(),
                    digest: update.digest,
                    index: 0,
                    count: 1,
                    clipped: 0,
                    bytes: update.bytes[..update.bytes.len().min(300)].to_vec(),
                },
                AggMsg::Holdings {
                    session: "s-1".into(),
                    participants: contributors.clone(),
                },
                AggMsg::Release {
                    session: "s-1".into(),
                    request,
                    pins: vec![
                        Attestation {
                            member: 0,
                            signature: vec![0xa5; 64],
                        },
                        Attestation {
                            member: 2,
                            signature: vec![0x5a; 64],
                        },
                    ],
                },
                AggMsg::Result {
                    result: packed(&result),
                },
                AggMsg::Result {
                    result: packed(&floats),
                },
                AggMsg::Ended {
                    session: "s-1".into(),
                    reason: Some("too few participants".into()),
                },
                AggMsg::Ended {
                    session: "s-1".into(),
                    reason: None,
                },
                AggMsg::Pin {
                    session: "s-1".into(),
                    contributors,
                },
            ];
            let replies = [
                AggReply::Ack,
                AggReply::PieceAck {
                    index: 3,
                    complete: true,
                },
                AggReply::Held(plan.participants.clone()),
                AggReply::Release(vec![1; 100]),
                AggReply::Pinned(vec![2; 64]),
            ];
            let mut seeds: Vec<Vec<u8>> = messages.iter().map(|m| encode(m).unwrap()).collect();
            seeds.extend(replies.iter().map(|r| encode(r).unwrap()));
            seeds.push(
                Piece {
                    session: "s-1",
                    digest: [9; 32],
                    index: 1,
                    count: 2,
                    clipped: 5,
                    bytes: &[1, 2, 3],
                }
                .encode()
                .unwrap(),
            );
            Fixture {
                seeds,
                coordinator: coordinator.to_string(),
            }
        })
    }

    /// What a node does with a received plan before it joins (`actors::aggregation`'s
    /// `join`): every check must refuse or pass without panicking, and a plan that passes
    /// lays out exactly its length (the API sizes update buffers by the layout).
    fn joined(input: &[u8], plan: &SessionPlan) -> Result<(), TestCaseError> {
        if plan.check_coordinator(&plan.coordinator).is_err()
            || plan.length == 0
            || plan.length > MAX_LENGTH
        {
            return Ok(());
        }
        let Ok(ctx) = plan.context() else {
            return Ok(());
        };
        let policy = LocalPolicy {
            min_contributors_floor: 1,
            allowed_profiles: vec!["fast".into(), "secure".into()],
        };
        if policy.check(&plan.roster(), &plan.params).is_err() {
            return Ok(());
        }
        let layout = Layout::new(plan.shapes.as_ref(), plan.length);
        if layout.length() as u64 != plan.length {
            return Err(finding(
                "session plan",
                input,
                format!(
                    "a plan of length {} that lays out {} values was accepted",
                    plan.length,
                    layout.length()
                ),
            ));
        }
        let _ = (ctx.body_bytes(), plan.digest(), plan.peers());
        Ok(())
    }

    fn check(stats: &Stats, input: &[u8]) -> Result<(), TestCaseError> {
        let coordinator = &fixture().coordinator;
        let msg = guarded(stats, "AggMsg", input, || decode::<AggMsg>(input))?;
        let reply = guarded(stats, "AggReply", input, || decode::<AggReply>(input))?;
        let piece = guarded(stats, "Piece", input, || {
            Piece::decode(input).map(|p| p.map(|p| p.encode()))
        })?;
        stats.decoded(msg.is_ok() || reply.is_ok() || matches!(piece, Some(Ok(_))));
        // A borrowed piece is the owned message byte for byte.
        if let Some(Ok(Ok(again))) = piece {
            if again != input {
                return Err(finding("Piece", input, "re-encodes to other bytes"));
            }
        }
        let Ok(msg) = msg else { return Ok(()) };
        // Whatever decodes re-encodes to bytes that decode to the same encoding.
        let again = encode(&msg).unwrap();
        let back: AggMsg = decode(&again).map_err(|e| finding("AggMsg", input, e))?;
        if encode(&back).unwrap() != again {
            return Err(finding("AggMsg", input, "does not round-trip"));
        }
        guarded(
            stats,
            "AggMsg use",
            input,
            || -> Result<(), TestCaseError> {
                match msg {
                    AggMsg::Plan { mut plan } => {
                        joined(input, &plan)?;
                        plan.coordinator = coordinator.clone();
                        joined(input, &plan)
                    }
                    AggMsg::Seeds { bundle, .. } => {
                        let c = Committee::new(3, 2).unwrap();
                        let _ = bundle.check(c, bundle.member);
                        let _ = bundle.digest();
                        Ok(())
                    }
                    AggMsg::Result { result } => {
                        if let Ok(n) = result.value_count() {
                            let values = result.unpack().map(|r| r.values.len() as u64);
                            if values.as_ref().is_ok_and(|&v| v != n) {
                                return Err(finding("PackedResult", input, "counts differ"));
                            }
                        }
                        Ok(())
                    }
                    _ => Ok(()),
                }
            },
        )?
    }

    /// Regression: a coordinator's plan whose `shapes` do not add up to its `length` (which
    /// the crypto checks) was joined, and the participant's API then sized its update buffer
    /// by the shapes: `Layout::new` overflowed (a panic in debug builds), or a few bytes of
    /// plan made the node allocate terabytes when its user submitted.
    #[test]
    fn a_plan_whose_shapes_disagree_with_its_length_is_refused() {
        let stats = Stats::default();
        let coordinator = fixture().coordinator.parse().unwrap();
        let honest = plans(coordinator).pop().unwrap();
        assert!(honest.shapes.is_some());
        let hostile_shapes = [
            vec![("a".to_string(), vec![1u64 << 40])],
            vec![("a".to_string(), vec![2, 3])],
            (0..4)
                .map(|i| (format!("t{i}"), vec![1u64 << 62]))
                .collect(),
            vec![
                ("a".to_string(), vec![u64::MAX, 2]),
                ("b".to_string(), vec![7]),
            ],
        ];
        for shapes in hostile_shapes {
            let plan = SessionPlan {
                shapes: Some(shapes.into_iter().collect()),
                ..honest.clone()
            };
            let bytes = encode(&AggMsg::Plan { plan }).unwrap();
            check(&stats, &bytes).unwrap();
            let AggMsg::Plan { plan } = decode(&bytes).unwrap() else {
                unreachable!()
            };
            assert!(plan.context().is_err(), "{:?}", plan.shapes);
        }
        // The honest plan still joins.
        honest.context().unwrap();
    }

    /// Regression (found by `long`): a plan whose parameters carry a threshold of 2^31 or
    /// more made `KaheParams::validate` overflow computing 2·t (a panic in debug builds).
    #[test]
    fn a_plan_with_a_huge_threshold_is_refused() {
        let stats = Stats::default();
        let coordinator = fixture().coordinator.parse().unwrap();
        let honest = plans(coordinator).remove(0);
        for threshold in [1u32 << 31, (1 << 31) + 1, u32::MAX] {
            let mut plan = honest.clone();
            plan.params.threshold = threshold;
            let bytes = encode(&AggMsg::Plan { plan: plan.clone() }).unwrap();
            check(&stats, &bytes).unwrap();
            assert!(plan.context().is_err());
        }
    }

    fn fuzz(cases: u32) {
        run("session_messages/arbitrary", cases, bytes(512), |s, b| {
            check(s, &b)
        });
        run("session_messages/mutated", cases, case(), |s, c| {
            check(s, &mutate(&fixture().seeds, &[], &c))
        });
    }

    fuzz_tests!(512, 2);
}

// ---------------------------------------------------------------------------------------------
// Inference messages (`Request::Inference` bytes), ciphertext batches and their hex.
// ---------------------------------------------------------------------------------------------

mod inference_messages {
    use super::*;
    use fhenode::crypto::inference::{
        InferenceWire, LinearCiphertext, LinearConfig, LinearResult, MlpConfig, MlpParams, Model,
        QuantizedModel,
    };
    use fhenode::inference::messages::{
        decode, encode, unhex, Batch, InferMsg, InferReply, InputSpec,
    };
    use fhenode::inference::{ModelSpec, Scheme};

    fn seeds() -> &'static [Vec<u8>] {
        static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
        SEEDS.get_or_init(|| {
            let l = linear();
            let ct = l
                .key
                .encrypt(&l.model.input_spec(), &[1.0, -2.0, 0.5, 3.0])
                .unwrap();
            let result = l.model.evaluate(&ct).unwrap();
            let key_id = hex::encode(l.key.key_id().0);
            let batch = Batch::new(Scheme::Linear, key_id.clone(), vec![ct.to_bytes(); 2]);
            let results = Batch::new(Scheme::Linear, key_id, vec![result.to_bytes()]);
            let mlp = QuantizedModel::compile(
                &Model::linear(vec![vec![0.5, -0.25], vec![0.1, 0.2]], vec![0.0, 0.1]),
                &MlpConfig::with_range(MlpParams::Message2Carry2, -1.0, 1.0),
            )
            .unwrap();
            let messages = vec![
                encode(&InferMsg::Spec { model: "m".into() }),
                encode(&InferMsg::HasEvalKey {
                    context: "ctx-1".into(),
                    key_id: [3; 32],
                }),
                encode(&InferMsg::EvalKeyPiece {
                    context: "ctx-1".into(),
                    digest: [4; 32],
                    index: 0,
                    count: 2,
                    bytes: vec![5; 200],
                }),
                encode(&InferMsg::Evaluate {
                    model: "m".into(),
                    context: "ctx-1".into(),
                    batch: batch.to_bytes(),
                }),
                encode(&InferReply::Spec(InputSpec::Linear(l.model.input_spec()))),
                encode(&InferReply::Spec(InputSpec::Mlp(mlp.input_spec()))),
                encode(&InferReply::HasEvalKey(true)),
                encode(&InferReply::PieceAck { complete: false }),
                encode(&InferReply::Evaluated {
                    batch: results.to_bytes(),
                    computation_ms: 1.5,
                    pbs: 0,
                }),
                batch.to_bytes(),
                results.to_bytes(),
            ];
            messages
        })
    }

    pub(super) struct Linear {
        pub key: fhenode::crypto::inference::LinearClientKey,
        pub model: fhenode::crypto::inference::LinearModel,
    }

    pub(super) fn linear() -> &'static Linear {
        static L: OnceLock<Linear> = OnceLock::new();
        L.get_or_init(|| Linear {
            key: fhenode::crypto::inference::LinearClientKey::generate(),
            model: fhenode::crypto::inference::LinearModel::compile(
                &Model::linear(
                    vec![vec![0.1, 0.2, 0.3, 0.4], vec![-1.0, 0.5, 0.0, 2.0]],
                    vec![0.5, -0.5],
                ),
                &LinearConfig::default(),
            )
            .unwrap(),
        })
    }

    /// A batch as a model node reads it: then each row as the ciphertext it claims to be.
    pub(super) fn use_batch(bytes: &[u8]) {
        let l = linear();
        if let Ok(batch) = Batch::from_bytes(bytes, 1 << 20) {
            for row in &batch.rows {
                if let Ok(ct) = LinearCiphertext::from_bytes(row, 1 << 20) {
                    let _ = l.model.evaluate(&ct);
                }
                if let Ok(r) = LinearResult::from_bytes(row, 1 << 20) {
                    let _ = l.key.decrypt(&r);
                }
            }
        }
    }

    fn check(stats: &Stats, input: &[u8]) -> Result<(), TestCaseError> {
        let msg = guarded(stats, "InferMsg", input, || decode::<InferMsg>(input))?;
        let reply = guarded(stats, "InferReply", input, || decode::<InferReply>(input))?;
        let batch = guarded(stats, "Batch", input, || Batch::from_bytes(input, 1 << 20))?;
        guarded(stats, "unhex", input, || {
            let _ = unhex(&String::from_utf8_lossy(input));
        })?;
        stats.decoded(msg.is_ok() || reply.is_ok() || batch.is_ok());
        if let Ok(msg) = msg {
            let again = encode(&msg);
            let back: InferMsg = decode(&again).map_err(|e| finding("InferMsg", input, e))?;
            if encode(&back) != again {
                return Err(finding("InferMsg", input, "does not round-trip"));
            }
            if let InferMsg::Evaluate { batch, .. } = &msg {
                guarded(stats, "Evaluate batch", input, || use_batch(batch))?;
            }
        }
        if let Ok(reply) = reply {
            let again = encode(&reply);
            let back: InferReply = decode(&again).map_err(|e| finding("InferReply", input, e))?;
            if encode(&back) != again {
                return Err(finding("InferReply", input, "does not round-trip"));
            }
            guarded(stats, "InferReply use", input, || match &reply {
                InferReply::Spec(spec) => {
                    // The client publishes the spec and encrypts under it.
                    let _ = ModelSpec::new("m", spec, None);
                    if let InputSpec::Linear(s) = spec {
                        if s.inputs <= 4096 {
                            let _ = linear().key.encrypt(s, &vec![0.0; s.inputs as usize]);
                        }
                    }
                }
                InferReply::Evaluated { batch, .. } => use_batch(batch),
                _ => {}
            })?;
        }
        if let Ok(batch) = batch {
            if batch.to_bytes() != input {
                return Err(finding("Batch", input, "re-encodes to other bytes"));
            }
            guarded(stats, "Batch rows", input, || use_batch(input))?;
        }
        Ok(())
    }

    fn fuzz(cases: u32) {
        run("inference_messages/arbitrary", cases, bytes(512), |s, b| {
            check(s, &b)
        });
        run("inference_messages/mutated", cases, case(), |s, c| {
            check(s, &mutate(seeds(), &[], &c))
        });
        run("inference_messages/hex", cases, case(), |s, c| {
            // A batch as the API carries it (`ciphertext`, `encrypted_result`): hex.
            let hexed: Vec<Vec<u8>> = seeds()
                .iter()
                .map(|b| hex::encode(b).into_bytes())
                .collect();
            let input = mutate(&hexed, &[b"0x", b"g", b" ", b"\xc3\xa9", b"00"], &c);
            let decoded = guarded(s, "unhex", &input, || {
                unhex(&String::from_utf8_lossy(&input))
            })?;
            if let Ok(bytes) = decoded {
                guarded(s, "hex batch", &input, || use_batch(&bytes))?;
            }
            Ok(())
        });
    }

    fuzz_tests!(256, 4);
}

// ---------------------------------------------------------------------------------------------
// Aggregation ciphertexts and key releases (`FHEN` envelopes, `crypto::kahe::wire`).
// ---------------------------------------------------------------------------------------------

mod kahe_wire {
    use super::*;
    use fhenode::crypto::kahe::{
        release, wire, Accumulator, Aggregate, KaheParams, ParticipantKey, ReleaseRequest,
        SessionContext,
    };
    use fhenode::crypto::Profile;

    struct Fixture {
        ctx: SessionContext,
        updates: Vec<Vec<u8>>,
        releases: Vec<(u32, Vec<u8>)>,
        /// Updates, then releases: the seeds of the mutations.
        seeds: Vec<Vec<u8>>,
        request: ReleaseRequest,
        aggregate: Aggregate,
    }

    fn fixture() -> &'static Fixture {
        static F: OnceLock<Fixture> = OnceLock::new();
        F.get_or_init(|| {
            let params = KaheParams::recommended(Profile::Fast, 4, 3, 2, 8.0, 20).unwrap();
            let ctx = SessionContext::new(params, [7; 32], 40).unwrap();
            let names = ["p0", "p1", "p2"];
            let keys: Vec<ParticipantKey> = names
                .iter()
                .map(|_| ParticipantKey::generate(ctx.committee()))
                .collect();
            let updates: Vec<Vec<u8>> = keys
                .iter()
                .enumerate()
                .map(|(i, k)| {
                    let values: Vec<f32> = (0..40).map(|j| (i * j) as f32 / 16.0 - 2.0).collect();
                    k.encrypt(&ctx, &values).unwrap().bytes
                })
                .collect();
            let mut acc = Accumulator::new(&ctx);
            for (name, u) in names.iter().zip(&updates) {
                acc.add(name, u).unwrap();
            }
            let aggregate = acc.finish();
            let request = aggregate.request(ctx.committee().assign(&[0, 1]).unwrap());
            let releases: Vec<(u32, Vec<u8>)> = [0u32, 1]
                .into_iter()
                .filter(|m| request.assignment.contains(m))
                .map(|m| {
                    let bundles: Vec<_> = keys.iter().map(|k| k.bundle_for(m)).collect();
                    let bytes = release(&ctx, m, &request, |p| {
                        names.iter().position(|n| *n == p).map(|i| &bundles[i])
                    })
                    .unwrap();
                    (m, bytes)
                })
                .collect();
            // The honest round decrypts.
            let refs: Vec<(u32, &[u8])> = releases.iter().map(|(m, b)| (*m, &b[..])).collect();
            aggregate.combine(&request, &refs).unwrap();
            let mut seeds = updates.clone();
            seeds.extend(releases.iter().map(|(_, b)| b.clone()));
            Fixture {
                ctx,
                updates,
                releases,
                seeds,
                request,
                aggregate,
            }
        })
    }

    /// Every reader of an update or a release, on `input`; `Some(i)` for each that accepted it.
    fn decode_all(stats: &Stats, input: &[u8]) -> Result<(bool, bool, bool), TestCaseError> {
        let f = fixture();
        let update = guarded(stats, "update_bodies", input, || {
            wire::update_bodies(&f.ctx, input).map(|b| b.len())
        })?;
        if update.as_ref().is_ok_and(|&n| n != f.ctx.body_bytes()) {
            return Err(finding("update", input, "bodies of the wrong length"));
        }
        let release = guarded(stats, "parse_release", input, || {
            wire::parse_release(&f.ctx, input).map(|(h, b)| (h, b.len()))
        })?;
        if let Ok((header, len)) = &release {
            if *len != f.ctx.body_bytes() || header.sets.len() > f.ctx.committee().sets().len() {
                return Err(finding(
                    "release",
                    input,
                    "an impossible release was accepted",
                ));
            }
        }
        // The coordinator adds an update to the honest ones, then decrypts with the honest
        // releases; a member's release is combined with the honest other one.
        let added = guarded(stats, "Accumulator::add", input, || {
            let mut acc = Accumulator::new(&f.ctx);
            acc.add("p0", &f.updates[0])?;
            acc.add("p9", input)?;
            Ok::<_, fhenode::crypto::CryptoError>(acc.finish())
        })?;
        let combined = guarded(stats, "combine", input, || {
            f.releases
                .iter()
                .map(|(m, _)| {
                    let refs: Vec<(u32, &[u8])> = f
                        .releases
                        .iter()
                        .map(|(n, b)| (*n, if n == m { input } else { &b[..] }))
                        .collect();
                    f.aggregate.combine(&f.request, &refs).is_ok()
                })
                // Every substitution is tried (no short cut).
                .fold(false, |any, ok| any | ok)
        })?;
        stats.decoded(update.is_ok() || added.is_ok() || release.is_ok() || combined);
        Ok((update.is_ok() || added.is_ok(), release.is_ok(), combined))
    }

    fn fuzz(cases: u32) {
        run("kahe_wire/arbitrary", cases, bytes(512), |s, b| {
            let (u, r, c) = decode_all(s, &b)?;
            if u || r || c {
                return Err(finding("kahe wire", &b, "random bytes were accepted"));
            }
            Ok(())
        });
        // Through the envelope: any change is refused (the digest), whatever it is.
        run("kahe_wire/mutated", cases, case(), |s, c| {
            let f = fixture();
            let input = mutate(&f.seeds, &[], &c);
            let (u, r, comb) = decode_all(s, &input)?;
            let is_seed = f.seeds.contains(&input);
            if (u || r || comb) && !is_seed {
                return Err(finding(
                    "kahe wire",
                    &input,
                    "a changed message was accepted",
                ));
            }
            Ok(())
        });
        // Behind the envelope: the payload mutated and sealed again reaches the header parser.
        run("kahe_wire/resealed", cases, case(), |s, c| {
            let f = fixture();
            let bodies: Vec<Vec<u8>> = f.seeds.iter().map(|b| unsealed(b)).collect();
            let input = reseal(&mutate(&bodies, &[], &c));
            decode_all(s, &input).map(|_| ())
        });
    }

    fuzz_tests!(256, 8);
}

// ---------------------------------------------------------------------------------------------
// Inference ciphertexts, results and keys (`FHEI` envelopes, `crypto::inference::wire`).
// ---------------------------------------------------------------------------------------------

mod inference_wire {
    use super::inference_messages::linear;
    use super::*;
    use fhenode::crypto::inference::{
        InferenceWire, LinearCiphertext, LinearClientKey, LinearResult, MlpCiphertext,
        MlpClientKey, MlpConfig, MlpEvaluationKey, MlpParams, MlpResult, MlpServerKey, Model,
        QuantizedModel,
    };

    pub(super) struct Mlp {
        pub client: MlpClientKey,
        pub server: MlpServerKey,
        pub model: QuantizedModel,
        pub eval_key: Vec<u8>,
        pub ct: MlpCiphertext,
        pub result: MlpResult,
    }

    pub(super) fn mlp() -> &'static Mlp {
        static M: OnceLock<Mlp> = OnceLock::new();
        M.get_or_init(|| {
            let client = MlpClientKey::generate(MlpParams::Message2Carry2);
            let eval_key = client.evaluation_key().to_bytes();
            let server =
                MlpServerKey::from_bytes(&eval_key, MlpEvaluationKey::DEFAULT_MAX_LEN).unwrap();
            let model = QuantizedModel::compile(
                &Model::linear(vec![vec![0.5, -0.25], vec![0.1, 0.2]], vec![0.0, 0.1]),
                &MlpConfig::with_range(MlpParams::Message2Carry2, -1.0, 1.0),
            )
            .unwrap();
            let ct = client.encrypt(&model.input_spec(), &[0.5, -0.5]).unwrap();
            let result = server.evaluate(&model, &ct).unwrap();
            client.decrypt(&result).unwrap();
            Mlp {
                client,
                server,
                model,
                eval_key,
                ct,
                result,
            }
        })
    }

    /// Every small message of the family (the evaluation key has its own module).
    fn seeds() -> &'static [Vec<u8>] {
        static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
        SEEDS.get_or_init(|| {
            let l = linear();
            let m = mlp();
            let ct = l
                .key
                .encrypt(&l.model.input_spec(), &[1.0, 2.0, 3.0, 4.0])
                .unwrap();
            let result = l.model.evaluate(&ct).unwrap();
            vec![
                ct.to_bytes(),
                result.to_bytes(),
                m.ct.to_bytes(),
                m.result.to_bytes(),
                l.key.to_secret_bytes().to_vec(),
                m.client.to_secret_bytes().to_vec(),
            ]
        })
    }

    /// Every decoder of the family on `input`, and what a node does with what decodes;
    /// whether any accepted it.
    pub(super) fn decode_all(stats: &Stats, input: &[u8]) -> Result<bool, TestCaseError> {
        let l = linear();
        let m = mlp();
        let mut accepted = false;
        let lc = guarded(stats, "LinearCiphertext", input, || {
            LinearCiphertext::from_bytes(input, LinearCiphertext::DEFAULT_MAX_LEN)
        })?;
        if let Ok(ct) = lc {
            accepted = true;
            round_trips(input, &ct)?;
            guarded(stats, "linear evaluate", input, || {
                let _ = l.model.evaluate(&ct);
            })?;
        }
        let lr = guarded(stats, "LinearResult", input, || {
            LinearResult::from_bytes(input, LinearResult::DEFAULT_MAX_LEN)
        })?;
        if let Ok(r) = lr {
            accepted = true;
            round_trips(input, &r)?;
            guarded(stats, "linear decrypt", input, || {
                let _ = l.key.decrypt(&r);
            })?;
        }
        let mc = guarded(stats, "MlpCiphertext", input, || {
            MlpCiphertext::from_bytes(input, MlpCiphertext::DEFAULT_MAX_LEN)
        })?;
        if let Ok(ct) = mc {
            accepted = true;
            round_trips(input, &ct)?;
            // Bootstraps only for a ciphertext of this model's shape (a changed body still
            // evaluates, to garbage): a few PBS, not thousands.
            guarded(stats, "mlp evaluate", input, || {
                let _ = m.server.evaluate(&m.model, &ct);
            })?;
        }
        let mr = guarded(stats, "MlpResult", input, || {
            MlpResult::from_bytes(input, MlpResult::DEFAULT_MAX_LEN)
        })?;
        if let Ok(r) = mr {
            accepted = true;
            round_trips(input, &r)?;
            guarded(stats, "mlp decrypt", input, || {
                let _ = m.client.decrypt(&r);
            })?;
        }
        accepted |= guarded(stats, "LinearClientKey", input, || {
            LinearClientKey::from_secret_bytes(input).is_ok()
        })?;
        accepted |= guarded(stats, "MlpClientKey", input, || {
            MlpClientKey::from_secret_bytes(input).is_ok()
        })?;
        // Small inputs only: the evaluation key reader is fuzzed on real keys below.
        if input.len() < 1 << 16 {
            accepted |= guarded(stats, "MlpEvaluationKey", input, || {
                MlpEvaluationKey::from_bytes(input, 1 << 20).is_ok()
            })?;
        }
        stats.decoded(accepted);
        Ok(accepted)
    }

    /// What decodes encodes to bytes that decode again, to the same encoding.
    fn round_trips<T: InferenceWire>(input: &[u8], value: &T) -> Result<(), TestCaseError> {
        let again = value.to_bytes();
        let back = T::from_bytes(&again, usize::MAX).map_err(|e| finding("wire", input, e))?;
        if back.to_bytes() != again {
            return Err(finding("wire", input, "does not round-trip"));
        }
        Ok(())
    }

    fn fuzz(cases: u32) {
        run("inference_wire/arbitrary", cases, bytes(1024), |s, b| {
            if decode_all(s, &b)? {
                return Err(finding("inference wire", &b, "random bytes were accepted"));
            }
            Ok(())
        });
        run("inference_wire/mutated", cases, case(), |s, c| {
            let input = mutate(seeds(), &[], &c);
            if decode_all(s, &input)? && !seeds().contains(&input) {
                return Err(finding(
                    "inference wire",
                    &input,
                    "a changed message was accepted",
                ));
            }
            Ok(())
        });
        run("inference_wire/resealed", cases, case(), |s, c| {
            let bodies: Vec<Vec<u8>> = seeds().iter().map(|b| unsealed(b)).collect();
            decode_all(s, &reseal(&mutate(&bodies, &[], &c))).map(|_| ())
        });
    }

    fuzz_tests!(128, 10);
}

// ---------------------------------------------------------------------------------------------
// The mlp evaluation key a client uploads (≈ 30 MB; `MlpServerKey::from_bytes`).
// ---------------------------------------------------------------------------------------------

mod evaluation_key {
    use super::inference_wire::mlp;
    use super::*;
    use fhenode::crypto::inference::{InferenceWire, MlpEvaluationKey};

    fn check(stats: &Stats, input: &[u8]) -> Result<bool, TestCaseError> {
        let key = guarded(stats, "MlpEvaluationKey", input, || {
            MlpEvaluationKey::from_bytes(input, MlpEvaluationKey::DEFAULT_MAX_LEN)
        })?;
        stats.decoded(key.is_ok());
        Ok(key.is_ok())
    }

    fn fuzz(cases: u32) {
        let seeds = std::slice::from_ref(&mlp().eval_key);
        run("evaluation_key/mutated", cases, case(), |s, c| {
            let input = mutate(seeds, &[], &c);
            if check(s, &input)? && input != seeds[0] {
                return Err(finding(
                    "evaluation key",
                    &input,
                    "a changed key was accepted",
                ));
            }
            Ok(())
        });
        let bodies = vec![unsealed(&seeds[0])];
        run("evaluation_key/resealed", cases, case(), |s, c| {
            check(s, &reseal(&mutate(&bodies, &[], &c))).map(|_| ())
        });
    }

    fuzz_tests!(16, 200);
}

// ---------------------------------------------------------------------------------------------
// Update bodies: `.npy`, `.npz`, safetensors, JSON and raw `f32` (`tensors::read_body`, and
// `api::sessions::parse_update`, which puts them in a session's layout).
// ---------------------------------------------------------------------------------------------

mod update_bodies {
    use super::*;
    use fhenode::api::sessions::parse_update;
    use fhenode::tensors::{read_body, Body, IntegerPolicy, Layout, UpdateFormat};
    use npyz::WriterBuilder;
    use safetensors::tensor::{Dtype as StDtype, View};
    use std::borrow::Cow;
    use std::collections::{BTreeMap, HashMap};
    use std::io::Write;

    const FORMATS: [UpdateFormat; 5] = [
        UpdateFormat::Json,
        UpdateFormat::Raw,
        UpdateFormat::Npy,
        UpdateFormat::Npz,
        UpdateFormat::Safetensors,
    ];
    /// What an `.npz` may unpack to here.
    const UNPACK: u64 = 1 << 20;

    fn npy<T: npyz::Serialize + npyz::AutoSerialize + Copy>(
        shape: &[u64],
        values: &[T],
    ) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        {
            let mut writer = npyz::WriteOptions::<T>::new()
                .default_dtype()
                .shape(shape)
                .writer(&mut out)
                .begin_nd()
                .unwrap();
            writer.extend(values.iter().copied()).unwrap();
            writer.finish().unwrap();
        }
        out.into_inner()
    }

    /// An `.npy` of header text `header` and data, as numpy lays it out.
    fn npy_by_hand(header: &str, data: &[u8]) -> Vec<u8> {
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        let mut header = header.to_string();
        while !(10 + header.len() + 1).is_multiple_of(64) {
            header.push(' ');
        }
        header.push('\n');
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn npz(members: &[(&str, Vec<u8>)], deflate: bool) -> Vec<u8> {
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let method = if deflate {
            zip::CompressionMethod::Deflated
        } else {
            zip::CompressionMethod::Stored
        };
        let options = zip::write::SimpleFileOptions::default().compression_method(method);
        for (name, file) in members {
            zip.start_file(format!("{name}.npy"), options).unwrap();
            zip.write_all(file).unwrap();
        }
        zip.finish().unwrap().into_inner()
    }

    pub(super) struct Raw(pub StDtype, pub Vec<usize>, pub Vec<u8>);

    impl View for &Raw {
        fn dtype(&self) -> StDtype {
            self.0
        }
        fn shape(&self) -> &[usize] {
            &self.1
        }
        fn data(&self) -> Cow<'_, [u8]> {
            Cow::Borrowed(&self.2)
        }
        fn data_len(&self) -> usize {
            self.2.len()
        }
    }

    pub(super) fn safetensors_of(
        tensors: &[(&str, Raw)],
        metadata: Option<HashMap<String, String>>,
    ) -> Vec<u8> {
        safetensors::serialize(tensors.iter().map(|(n, r)| (*n, r)), metadata).unwrap()
    }

    fn le<T: Copy, const N: usize>(values: &[T], to: impl Fn(T) -> [u8; N]) -> Vec<u8> {
        values.iter().flat_map(|&v| to(v)).collect()
    }

    /// The session layout of the named seeds: `a` [2, 2], `b` [] and `c` [3].
    fn abc() -> Layout {
        let shapes: BTreeMap<String, Vec<u64>> = [("a", vec![2, 2]), ("b", vec![]), ("c", vec![3])]
            .into_iter()
            .map(|(n, s)| (n.to_string(), s))
            .collect();
        Layout::new(Some(&shapes), 8)
    }

    fn seeds() -> &'static [Vec<u8>] {
        static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
        SEEDS.get_or_init(|| {
            let a = [1.0f32, -2.0, 3.5, 4.0];
            let c = [0.25f64, 0.5, -0.75];
            let named = [
                ("a", npy(&[2, 2], &a)),
                ("b", npy(&[], &[7.0f32])),
                ("c", npy(&[3], &c)),
            ];
            let mut metadata = HashMap::new();
            metadata.insert("format".to_string(), "pt".to_string());
            let layout = abc();
            let flat: Vec<f64> = (0..8).map(|i| i as f64 / 4.0).collect();
            vec![
                // Raw little-endian f32.
                le(&a, f32::to_le_bytes),
                // JSON: flat, bare, named with a weight.
                br#"{"values": [1, -2.5, 3e-3, 4], "weight": 12}"#.to_vec(),
                b"[0.5, -1, 2, 1e10]".to_vec(),
                br#"{"tensors": {"a": [[1, 2], [3, 4]], "b": 5, "c": [0.1, 0.2, 0.3]}, "weight": 3}"#
                    .to_vec(),
                // .npy: f32, f64, a 0-d array, integers, big-endian f4 and f2, Fortran order.
                npy(&[2, 2], &a),
                npy(&[3], &c),
                npy(&[], &[1.5f64]),
                npy(&[2, 3], &[1i64, 2, 3, 4, 5, 6]),
                npy(&[4], &[1u8, 2, 3, 255]),
                npy_by_hand(
                    "{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }",
                    &[0x3f, 0x80, 0, 0, 0xc0, 0, 0, 0],
                ),
                npy_by_hand(
                    "{'descr': '<f2', 'fortran_order': True, 'shape': (3, 1), }",
                    &[0, 0x3c, 0, 0xc0, 0x00, 0x7c],
                ),
                // .npz: stored and deflated.
                npz(&named, false),
                npz(&named, true),
                npz(&[("values", npy(&[8], &[0.5f32; 8]))], true),
                // safetensors: several dtypes, with metadata, and as the crate writes results.
                safetensors_of(
                    &[
                        ("a", Raw(StDtype::F32, vec![2, 2], le(&a, f32::to_le_bytes))),
                        ("b", Raw(StDtype::BF16, vec![], vec![0x80, 0x3f])),
                        ("c", Raw(StDtype::F64, vec![3], le(&c, f64::to_le_bytes))),
                    ],
                    Some(metadata),
                ),
                safetensors_of(
                    &[
                        ("a", Raw(StDtype::F16, vec![2, 2], vec![0, 0x3c, 0, 0x40, 0, 0x42, 0, 0x44])),
                        ("b", Raw(StDtype::I64, vec![], 7i64.to_le_bytes().to_vec())),
                        ("c", Raw(StDtype::U8, vec![3], vec![1, 2, 3])),
                    ],
                    None,
                ),
                fhenode::tensors::write_safetensors(&layout, &flat, HashMap::new()).unwrap(),
            ]
        })
    }

    fn tokens() -> Vec<&'static [u8]> {
        let mut t: Vec<&'static [u8]> = JSON_TOKENS.to_vec();
        t.extend_from_slice(BINARY_TOKENS);
        t.extend_from_slice(&[
            b"\x93NUMPY\x01\x00",
            b"\x93NUMPY\x02\x00",
            b"\x93NUMPY\x03\x00",
            b"'descr'",
            b"'<f4'",
            b"'>f8'",
            b"'<f2'",
            b"'|b1'",
            b"'<i8'",
            b"'<c8'",
            b"'O'",
            b"'V8'",
            b"[('a', '<f4'), ('b', '<i2')]",
            b"'fortran_order'",
            b"True",
            b"False",
            b"'shape'",
            b"(",
            b")",
            b"(1000000000000, 1000000000000)",
            b"(0,)",
            b"(18446744073709551615,)",
            b"-1",
            b"PK\x03\x04",
            b"PK\x01\x02",
            b"PK\x05\x06",
            b"PK\x06\x06",
            b"PK\x06\x07",
            b".npy",
            b"/",
            b"../",
        ]);
        t
    }

    /// Reads `input` in every format, and puts what reads into layouts as the API does.
    fn check(stats: &Stats, input: &[u8]) -> Result<(), TestCaseError> {
        let abc = abc();
        let mut accepted = false;
        for format in FORMATS {
            let body = guarded(stats, "read_body", input, || {
                read_body(format, input, UNPACK)
            })?;
            accepted |= body.is_ok();
            if let Ok((body, _)) = &body {
                guarded(stats, "flatten", input, || flatten(body))?;
            }
            for integers in [IntegerPolicy::Refuse, IntegerPolicy::Include] {
                let _ = guarded(stats, "parse_update", input, || {
                    parse_update(format, input, &abc, integers)
                })?;
            }
        }
        stats.decoded(accepted);
        Ok(())
    }

    /// A body in a layout of its own shapes (what a session made for it would be).
    fn flatten(body: &Body<'_>) {
        let layout = match body {
            Body::Flat(elements) if elements.len() <= 1 << 20 => Layout::new(None, elements.len()),
            Body::Named(tensors) => {
                let mut shapes = BTreeMap::new();
                let mut total = 0u64;
                for (name, t) in tensors {
                    let n = t.elements.len();
                    total += n;
                    if total > 1 << 20 || fhenode::tensors::element_count(&t.shape) != Some(n) {
                        return;
                    }
                    shapes.insert(name.clone(), t.shape.clone());
                }
                Layout::new(Some(&shapes), total)
            }
            Body::Flat(_) => return,
        };
        let _ = layout.flatten(body, IntegerPolicy::Include);
        let _ = layout.flatten(body, IntegerPolicy::Refuse);
    }

    fn fuzz(cases: u32) {
        let tokens = tokens();
        run(
            "update_bodies/arbitrary",
            cases,
            text_or_bytes(512),
            |s, b| check(s, &b),
        );
        run(
            "update_bodies/after_magic",
            cases,
            (0usize..4, bytes(256)),
            |s, (m, b)| {
                let magic: [&[u8]; 4] = [
                    b"\x93NUMPY\x01\x00",
                    b"\x93NUMPY\x03\x00",
                    b"PK\x03\x04",
                    b"\x40\x00\x00\x00\x00\x00\x00\x00{",
                ];
                let mut input = magic[m].to_vec();
                input.extend_from_slice(&b);
                check(s, &input)
            },
        );
        run("update_bodies/mutated", cases, case(), |s, c| {
            check(s, &mutate(seeds(), &tokens, &c))
        });
    }

    fuzz_tests!(256, 4);
}

// ---------------------------------------------------------------------------------------------
// JSON bodies of the API: session and series specs, model uploads (JSON and safetensors),
// the encrypted inference requests.
// ---------------------------------------------------------------------------------------------

mod api_json {
    use super::update_bodies::{safetensors_of, Raw};
    use super::*;
    use fhenode::api::inference::{
        parse_model_upload, DecryptRequest, EncryptRequest, InferRequest, ModelFormat, ModelQuery,
    };
    use fhenode::crypto::inference::{
        Activation, LinearConfig, LinearModel, MlpConfig, MlpParams, QuantizedModel,
    };
    use fhenode::crypto::Profile;
    use fhenode::inference::messages::unhex;
    use fhenode::session::series::{SeriesRecord, SeriesSpec};
    use fhenode::session::spec::MAX_LENGTH;
    use fhenode::session::SessionSpec;
    use fhenode::tensors::Layout;
    use safetensors::tensor::Dtype as StDtype;
    use std::collections::HashMap;

    fn coordinator() -> libp2p::PeerId {
        static C: OnceLock<libp2p::PeerId> = OnceLock::new();
        *C.get_or_init(|| {
            libp2p::identity::Keypair::generate_ed25519()
                .public()
                .to_peer_id()
        })
    }

    fn spec_seeds() -> &'static [Vec<u8>] {
        static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
        SEEDS.get_or_init(|| {
            let p = peers(4);
            let session = serde_json::json!({
                "id": "round-1", "length": 10, "committee": [p[0], p[1], p[2]], "threshold": 2,
                "participants": [p[3], p[0]], "min_participants": 1, "profile": "fast",
                "clip": 4.0, "frac_bits": 16, "deadline_secs": 60,
            });
            let shaped = serde_json::json!({
                "shapes": {"layer.weight": [2, 3], "layer.bias": [3], "step": []},
                "integers": "include", "committee": [p[0]], "participants": [p[1], p[2]],
                "result": "weighted_mean", "max_weight": 1000,
            });
            let series = serde_json::json!({
                "id": "fl", "rounds": 3, "length": 4, "committee": [p[0], p[1]],
                "participants": [p[2]], "result": "sum",
            });
            [session, shaped, series]
                .iter()
                .map(|v| serde_json::to_vec_pretty(v).unwrap())
                .collect()
        })
    }

    fn model_seeds() -> &'static [Vec<u8>] {
        static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
        SEEDS.get_or_init(|| {
            let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
            let mut metadata = HashMap::new();
            metadata.insert("activations".to_string(), "relu,none".to_string());
            vec![
                br#"{"name": "m", "weights": [[0.1, 0.2], [0.3, 0.4]], "biases": [0.5, 0.6]}"#
                    .to_vec(),
                br#"{"layers": [{"weights": [[1, -1], [0.5, 0.25]], "biases": [0, 1], "activation": "relu"},
                    {"weights": [[1, 1]], "biases": [0]}], "scheme": "mlp", "input_range": [-2, 2],
                    "calibration": [[0.5, 0.5], [-1, 1]]}"#
                    .to_vec(),
                br#"{"weights": [[1e3, -1e3, 2]], "activation": "none", "scheme": "linear", "input_bound": 10}"#
                    .to_vec(),
                safetensors_of(
                    &[
                        ("0.weight", Raw(StDtype::F32, vec![2, 2], f32s(&[1.0, -1.0, 0.5, 0.25]))),
                        ("0.bias", Raw(StDtype::F32, vec![2], f32s(&[0.0, 1.0]))),
                        ("layers.1.weight", Raw(StDtype::F64, vec![1, 2], [1.0f64, 1.0].iter().flat_map(|x| x.to_le_bytes()).collect())),
                    ],
                    Some(metadata),
                ),
                safetensors_of(
                    &[
                        ("0.weight", Raw(StDtype::BF16, vec![1, 2], vec![0x80, 0x3f, 0x00, 0x40])),
                        ("0.bias", Raw(StDtype::F16, vec![1], vec![0x00, 0x3c])),
                    ],
                    None,
                ),
            ]
        })
    }

    fn request_seeds() -> &'static [Vec<u8>] {
        static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
        SEEDS.get_or_init(|| {
            let l = super::inference_messages::linear();
            let ct = {
                use fhenode::crypto::inference::InferenceWire;
                l.key.encrypt(&l.model.input_spec(), &[1.0, 2.0, 3.0, 4.0]).unwrap().to_bytes()
            };
            let batch = fhenode::inference::messages::Batch::new(
                fhenode::inference::Scheme::Linear,
                hex::encode(l.key.key_id().0),
                vec![ct],
            );
            let hexed = hex::encode(batch.to_bytes());
            [
                serde_json::json!({"fhe_context_id": "ctx-1", "model": "m", "input_data": [[1, 2], [3, 4]]}),
                serde_json::json!({"fhe_context_id": "ctx-1", "model": "m", "peer": coordinator().to_string(), "input": [0.5]}),
                serde_json::json!({"fhe_context_id": "ctx-1", "model": "m", "ciphertext": hexed}),
                serde_json::json!({"fhe_context_id": "ctx-1", "encrypted_result": hexed}),
            ]
            .iter()
            .map(|v| serde_json::to_vec(v).unwrap())
            .collect()
        })
    }

    /// A session spec as `POST /v1/sessions` takes it, a series spec as `POST /v1/series`.
    fn check_spec(stats: &Stats, input: &[u8]) -> Result<(), TestCaseError> {
        let session = guarded(stats, "SessionSpec", input, || {
            serde_json::from_slice::<SessionSpec>(input)
                .map(|s| s.validate(coordinator(), Profile::Fast))
        })?;
        stats.decoded(matches!(session, Ok(Ok(_))));
        if let Ok(Ok(plan)) = session {
            let layout = Layout::new(plan.shapes.as_ref(), plan.length);
            if plan.length > MAX_LENGTH || layout.length() as u64 != plan.length {
                return Err(finding(
                    "session spec",
                    input,
                    "an inconsistent plan was made",
                ));
            }
            guarded(stats, "plan context", input, || plan.context().map(|_| ()))?
                .map_err(|e| finding("session spec", input, e))?;
        }
        guarded(stats, "SeriesSpec", input, || {
            if let Ok(spec) = serde_json::from_slice::<SeriesSpec>(input) {
                if let Ok(record) = SeriesRecord::new(spec, "series-1".into(), 0) {
                    let _ = record.round_spec(1).validate(coordinator(), Profile::Fast);
                }
            }
        })
    }

    /// A model upload, then what the inference actor does with it: validate and compile.
    fn check_model(stats: &Stats, input: &[u8]) -> Result<(), TestCaseError> {
        let query = ModelQuery {
            name: Some("m".into()),
            ..ModelQuery::default()
        };
        for format in [ModelFormat::Json, ModelFormat::Safetensors] {
            let upload = guarded(stats, "parse_model_upload", input, || {
                parse_model_upload(format, &query, input)
            })?;
            let Ok(up) = upload else { continue };
            stats.decoded(true);
            guarded(stats, "model compile", input, || {
                if up.model.validate().is_err() {
                    return;
                }
                let has_activation = up
                    .model
                    .layers
                    .iter()
                    .any(|l| l.activation != Activation::None);
                let linear = match up.options.scheme {
                    Some(s) => s == fhenode::inference::Scheme::Linear,
                    None => !has_activation,
                };
                if linear {
                    let config = up
                        .options
                        .input_bound
                        .map(LinearConfig::with_input_bound)
                        .unwrap_or_default();
                    let _ = LinearModel::compile(&up.model, &config);
                } else {
                    let mut config = match up.options.input_range {
                        Some((lo, hi)) => MlpConfig::with_range(MlpParams::Message2Carry2, lo, hi),
                        None => MlpConfig::with_range(MlpParams::Message2Carry2, -1.0, 1.0),
                    };
                    config.calibration = up.options.calibration.clone();
                    let _ = QuantizedModel::compile(&up.model, &config);
                }
            })?;
        }
        Ok(())
    }

    /// The encrypted inference requests; a ciphertext's hex is read as a batch.
    fn check_request(stats: &Stats, input: &[u8]) -> Result<(), TestCaseError> {
        let accepted = guarded(stats, "inference requests", input, || {
            let encrypt = serde_json::from_slice::<EncryptRequest>(input).is_ok();
            let decrypt = serde_json::from_slice::<DecryptRequest>(input).map(|r| {
                unhex(&r.encrypted_result).map(|b| super::inference_messages::use_batch(&b))
            });
            let context =
                serde_json::from_slice::<fhenode::api::inference::CreateContextRequest>(input);
            let infer = serde_json::from_slice::<InferRequest>(input)
                .map(|r| unhex(&r.ciphertext).map(|b| super::inference_messages::use_batch(&b)));
            encrypt || decrypt.is_ok() || context.is_ok() || infer.is_ok()
        })?;
        stats.decoded(accepted);
        Ok(())
    }

    fn fuzz(cases: u32) {
        run(
            "api_json/spec_arbitrary",
            cases,
            text_or_bytes(256),
            |s, b| check_spec(s, &b),
        );
        run("api_json/spec_mutated", cases, case(), |s, c| {
            check_spec(s, &mutate(spec_seeds(), JSON_TOKENS, &c))
        });
        run(
            "api_json/model_arbitrary",
            cases,
            text_or_bytes(256),
            |s, b| check_model(s, &b),
        );
        run("api_json/model_mutated", cases, case(), |s, c| {
            check_model(s, &mutate(model_seeds(), JSON_TOKENS, &c))
        });
        run("api_json/request_mutated", cases, case(), |s, c| {
            check_request(s, &mutate(request_seeds(), JSON_TOKENS, &c))
        });
    }

    fuzz_tests!(256, 4);
}

// ---------------------------------------------------------------------------------------------
// Configuration: the TOML file and the `FHENODE__*` environment (`config::load`).
// ---------------------------------------------------------------------------------------------

mod config {
    use super::*;
    use fhenode::config::{load, CliOverrides, Config};
    use std::collections::HashMap;
    use std::path::Path;

    fn seeds() -> &'static [Vec<u8>] {
        static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
        SEEDS.get_or_init(|| {
            let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/fhenode.toml");
            vec![
                std::fs::read(shipped).unwrap(),
                Config::default().to_redacted_toml().into_bytes(),
                br#"data_dir = "/var/lib/fhenode"
profile = "fast"
[p2p]
listen = ["/ip6/::/tcp/0", "/ip4/127.0.0.1/udp/4001/quic-v1"]
bootstrap = ["/ip4/192.0.2.10/tcp/4001/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"]
max_request_bytes = 1048576
[api]
listen = "0.0.0.0:8470"
token = "s3cret-token-0123456789abcdef"
[log]
format = "json"
level = "info,fhenode=debug"
"#
                .to_vec(),
            ]
        })
    }

    const TOML_TOKENS: &[&[u8]] = &[
        b"[",
        b"]",
        b"[[",
        b"]]",
        b"=",
        b"\"",
        b"'",
        b"\"\"\"",
        b"\n",
        b"#",
        b"{",
        b"}",
        b",",
        b".",
        b"[p2p]",
        b"[api]",
        b"[log]",
        b"[aggregation]",
        b"[inference]",
        b"true",
        b"0",
        b"-1",
        b"18446744073709551615",
        b"9223372036854775808",
        b"1e999",
        b"inf",
        b"nan",
        b"1979-05-27T07:32:00Z",
        b"\"/ip4/0.0.0.0/tcp/0\"",
        b"\"/dns/example.com/tcp/1\"",
        b"\"[::1]:0\"",
        b"\"\\u0000\"",
        b"\xff",
        b"data_dir",
        b"token",
    ];

    /// Loads `input` as the file, with `env` as the environment: refused or accepted, and an
    /// accepted configuration is valid and written back (redacted) loads the same.
    fn check(
        stats: &Stats,
        dir: &Path,
        input: &[u8],
        env: HashMap<String, String>,
    ) -> Result<(), TestCaseError> {
        let path =
            dir.join(format!("{:?}.toml", std::thread::current().id()).replace(['(', ')'], ""));
        std::fs::write(&path, input).unwrap();
        let loaded = guarded(stats, "config::load", input, || {
            load(Some(&path), Some(env), &CliOverrides::default())
        })?;
        stats.decoded(loaded.is_ok());
        let Ok(config) = loaded else { return Ok(()) };
        config.validate().map_err(|e| finding("config", input, e))?;
        if config.api.token.is_none() {
            let text = config.to_redacted_toml();
            std::fs::write(&path, &text).unwrap();
            let again = load(Some(&path), Some(HashMap::new()), &CliOverrides::default())
                .map_err(|e| finding("config", input, format!("its own output is refused: {e}")))?;
            if again != config {
                return Err(finding("config", input, "does not round-trip"));
            }
        }
        Ok(())
    }

    const KEYS: [&str; 8] = [
        "FHENODE__DATA_DIR",
        "FHENODE__PROFILE",
        "FHENODE__P2P__LISTEN",
        "FHENODE__P2P__BOOTSTRAP",
        "FHENODE__P2P__MAX_REQUEST_BYTES",
        "FHENODE__API__LISTEN",
        "FHENODE__API__TOKEN",
        "FHENODE__LOG__LEVEL",
    ];

    fn fuzz(cases: u32) {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        run("config/arbitrary", cases, text_or_bytes(256), |s, b| {
            check(s, dir, &b, HashMap::new())
        });
        run("config/mutated", cases, case(), |s, c| {
            check(s, dir, &mutate(seeds(), TOML_TOKENS, &c), HashMap::new())
        });
        // Environment values, mutated from valid ones, over the shipped file.
        let values: Vec<Vec<u8>> = [
            "./data",
            "secure",
            "/ip4/0.0.0.0/tcp/4001,/ip4/0.0.0.0/udp/4001/quic-v1",
            "/ip4/192.0.2.10/tcp/4001/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA",
            "67108864",
            "127.0.0.1:8470",
            "s3cret-token-0123456789abcdef",
            "info,fhenode=debug",
        ]
        .iter()
        .map(|v| v.as_bytes().to_vec())
        .collect();
        run(
            "config/environment",
            cases,
            (0..KEYS.len(), case()),
            |s, (k, c)| {
                let value = mutate(&values, TOML_TOKENS, &c);
                let env = HashMap::from([(
                    KEYS[k].to_string(),
                    String::from_utf8_lossy(&value).into_owned(),
                )]);
                check(s, dir, &seeds()[0], env)
            },
        );
    }

    fuzz_tests!(128, 8);
}
