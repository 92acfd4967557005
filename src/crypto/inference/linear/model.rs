//! The model side of scheme `linear`: compiling a float model to fixed point (choosing the
//! scales within the noise budget) and evaluating it on a ciphertext with NTT products.

use rayon::prelude::*;
use tfhe_ntt::native64::Plan32;

use super::*;
use crate::crypto::inference::model::Model;

/// Weight polynomials in NTT form are kept when rows × chunks is at most this (40 KiB each).
const PRECOMPUTE_MAX: usize = 256;
/// Chunks with at most this many inputs are multiplied directly instead of through the NTT.
const DIRECT_MAX: usize = 48;

/// One output row, quantised.
#[derive(Clone, Debug)]
struct Row {
    weights: Vec<i64>,
    bias: i64,
    weight_frac_bits: u32,
}

/// The float affine map a linear model computes (for error bounds).
#[derive(Clone, Debug)]
struct Affine {
    w: Vec<Vec<f64>>,
    b: Vec<f64>,
}

/// A model compiled for the linear scheme: quantised rows, the input spec to publish, and the
/// weight polynomials in NTT form. Deterministic in (model, config).
#[derive(Clone)]
pub struct LinearModel {
    spec: LinearInputSpec,
    result_bits: u32,
    rows: Vec<Row>,
    affine: Affine,
    error_bound: f64,
    digest: [u8; 32],
    /// Per row, per chunk: the weight polynomial's NTT residues (5 primes), pre-normalised.
    ntt: Option<Vec<Vec<[Vec<u32>; 5]>>>,
}

impl fmt::Debug for LinearModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinearModel")
            .field("spec", &self.spec)
            .field("outputs", &self.rows.len())
            .field("result_bits", &self.result_bits)
            .field("error_bound", &self.error_bound)
            .finish()
    }
}

/// Per-row tables over the candidate weight precisions.
struct RowTables {
    /// For fw = 0..=FW_MAX: (‖w_q‖₁, ‖w_q‖₂, Σ|ŵ−w|, Σ|ŵ|), or None if w_q would overflow.
    by_fw: Vec<Option<(f64, f64, f64, f64)>>,
}

fn row_tables(w: &[f64]) -> RowTables {
    let by_fw = (0..=FW_MAX)
        .map(|fw| {
            let s = 2f64.powi(fw as i32);
            let mut l1 = 0f64;
            let mut l2 = 0f64;
            let mut err = 0f64;
            for &v in w {
                let q = (v * s).round();
                if q.abs() >= 2f64.powi(52) {
                    return None;
                }
                l1 += q.abs();
                l2 += q * q;
                err += (q / s - v).abs();
            }
            Some((l1, l2.sqrt(), err, l1 / s))
        })
        .collect();
    RowTables { by_fw }
}

/// The (bound on the) noise of a result before decoding, for a row with ‖w_q‖₁, ‖w_q‖₂.
fn noise_bound(l1: f64, l2: f64, result_bits: u32) -> f64 {
    let fresh_width = 2f64.powi(LINEAR_NOISE_LOG2 as i32 + 1);
    let fresh = rlwe::hoeffding(fresh_width, l2, FAILURE_LOG2)
        .min(l1 * 2f64.powi(LINEAR_NOISE_LOG2 as i32));
    let round = if result_bits == 64 {
        0.0
    } else {
        rlwe::hoeffding(
            2f64.powi(64 - result_bits as i32),
            (LINEAR_N as f64).sqrt(),
            FAILURE_LOG2,
        ) + LINEAR_N as f64
    };
    fresh + round
}

/// The best fw for one row at (fx, d), with its error bound; None if nothing fits.
fn best_fw(
    t: &RowTables,
    bias: f64,
    fx: u32,
    d: u32,
    bound: f64,
    result_bits: u32,
) -> Option<(u32, f64)> {
    let xq = (bound * 2f64.powi(fx as i32)).round();
    let noise_limit = 2f64.powi(d as i32 - 1);
    let range_limit = 2f64.powi(63 - d as i32) * (1.0 - 2f64.powi(-40)) - 1.0;
    let mut best: Option<(u32, f64)> = None;
    for (fw, entry) in t.by_fw.iter().enumerate() {
        let Some((l1, l2, werr, wabs)) = *entry else {
            break;
        };
        let scale = 2f64.powi((fx + fw as u32) as i32);
        let bq = (bias * scale).round();
        if noise_bound(l1, l2, result_bits) >= noise_limit {
            break; // noise only grows with fw
        }
        if l1 * xq + bq.abs() > range_limit {
            continue;
        }
        let err = bound * werr + wabs * 2f64.powi(-(fx as i32) - 1) + (bq / scale - bias).abs();
        if best.is_none_or(|(_, e)| err < e) {
            best = Some((fw as u32, err));
        }
    }
    best
}

impl LinearModel {
    /// Compiles an affine model (every activation `None`; layers are composed) for inputs
    /// bounded by `config.input_bound`: chooses (fx, fw_j, d) with the smallest worst-case error
    /// that the noise and range budget allows.
    pub fn compile(model: &Model, config: &LinearConfig) -> Result<Self, InferenceError> {
        model.validate()?;
        config.validate()?;
        let (w, b) = model.compose_affine().ok_or_else(|| {
            let (i, l) = model
                .layers
                .iter()
                .enumerate()
                .find(|(_, l)| l.activation != crate::crypto::inference::Activation::None)
                .map(|(i, l)| (i, l.activation.name()))
                .unwrap_or((0, "?"));
            InferenceError::Unsupported(format!(
                "scheme linear evaluates affine models only, but layer {i} has activation {l}; \
                 use scheme mlp"
            ))
        })?;
        let n_in = model.inputs();
        let n_out = w.len();
        if n_in > MAX_LINEAR_INPUTS || n_out > MAX_LINEAR_OUTPUTS {
            return Err(InferenceError::Unsupported(format!(
                "scheme linear takes at most {MAX_LINEAR_INPUTS} inputs and \
                 {MAX_LINEAR_OUTPUTS} outputs, the model has {n_in} and {n_out}"
            )));
        }
        let tables: Vec<RowTables> = w.par_iter().map(|r| row_tables(r)).collect();
        let bound = config.input_bound;
        let k = config.result_bits;
        // For every fx, the best common d: minimise the worst row's error.
        let best = (0..=FX_MAX)
            .into_par_iter()
            .filter_map(|fx| {
                let xq = (bound * 2f64.powi(fx as i32)).round();
                let mut best: Option<(f64, u32, u32, Vec<u32>)> = None;
                for d in 1..=62u32 {
                    if xq.log2() + d as f64 >= 62.0 {
                        break;
                    }
                    let mut worst = 0f64;
                    let mut fws = Vec::with_capacity(n_out);
                    for (t, &bias) in tables.iter().zip(&b) {
                        match best_fw(t, bias, fx, d, bound, k) {
                            Some((fw, e)) => {
                                worst = worst.max(e);
                                fws.push(fw);
                            }
                            None => {
                                worst = f64::INFINITY;
                                break;
                            }
                        }
                    }
                    if worst.is_finite() && best.as_ref().is_none_or(|(e, ..)| worst < *e) {
                        best = Some((worst, fx, d, fws));
                    }
                }
                best
            })
            .min_by(|a, b| a.0.total_cmp(&b.0));
        let Some((error_bound, fx, d, fws)) = best else {
            return Err(InferenceError::Infeasible(format!(
                "no fixed-point encoding of this model fits 64-bit ciphertexts for inputs \
                 bounded by {bound}: lower input_bound or the weights' magnitude"
            )));
        };
        let rows: Vec<Row> = w
            .iter()
            .zip(&b)
            .zip(&fws)
            .map(|((r, &bias), &fw)| {
                let s = 2f64.powi(fw as i32);
                Row {
                    weights: r.iter().map(|&v| (v * s).round() as i64).collect(),
                    bias: (bias * 2f64.powi((fx + fw) as i32)).round() as i64,
                    weight_frac_bits: fw,
                }
            })
            .collect();
        let spec = LinearInputSpec {
            params: LinearParams::Rlwe2048,
            inputs: n_in as u32,
            frac_bits: fx,
            delta_log2: d,
            bound,
        };
        let mut compiled = LinearModel {
            spec,
            result_bits: k,
            rows,
            affine: Affine { w, b },
            error_bound,
            digest: model.digest(),
            ntt: None,
        };
        let chunks = spec.chunks();
        let needs_ntt = (0..chunks).any(|c| chunk_len(n_in, c) > DIRECT_MAX);
        if needs_ntt && n_out * chunks <= PRECOMPUTE_MAX {
            let plan = plan()?;
            compiled.ntt = Some(
                compiled
                    .rows
                    .par_iter()
                    .map(|row| {
                        (0..chunks)
                            .map(|c| weight_poly_ntt(plan, row, n_in, c))
                            .collect()
                    })
                    .collect(),
            );
        }
        Ok(compiled)
    }

    /// What the client encrypts against (publish this with the model).
    pub fn input_spec(&self) -> LinearInputSpec {
        self.spec
    }

    pub fn inputs(&self) -> usize {
        self.spec.inputs as usize
    }

    pub fn outputs(&self) -> usize {
        self.rows.len()
    }

    /// Digest of the float model this was compiled from.
    pub fn model_digest(&self) -> [u8; 32] {
        self.digest
    }

    /// Worst-case |decrypted − float model| over every input with |x_i| ≤ bound (the
    /// encrypted result equals the fixed-point result except with probability ≤ 2^-64).
    pub fn error_bound(&self) -> f64 {
        self.error_bound
    }

    /// The fixed-point error bound for one particular input (tighter than [`Self::error_bound`]).
    pub fn error_bound_for(&self, input: &[f32]) -> Result<Vec<f64>, InferenceError> {
        check_input(input, self.inputs())?;
        let fx = self.spec.frac_bits;
        let sx = 2f64.powi(fx as i32);
        let x: Vec<f64> = input.iter().map(|&v| v as f64).collect();
        let xh: Vec<f64> = x.iter().map(|v| (v * sx).round() / sx).collect();
        Ok(self
            .rows
            .iter()
            .zip(&self.affine.w)
            .zip(&self.affine.b)
            .map(|((row, w), &b)| {
                let sw = 2f64.powi(row.weight_frac_bits as i32);
                let mut e = (row.bias as f64 / (sx * sw) - b).abs();
                for (((&q, &wf), &xi), &xhi) in row.weights.iter().zip(w).zip(&x).zip(&xh) {
                    let wh = q as f64 / sw;
                    e += (wh - wf).abs() * xi.abs() + wh.abs() * (xhi - xi).abs();
                }
                e
            })
            .collect())
    }

    /// The exact fixed-point result the encrypted evaluation decrypts to (the integer
    /// reference, decoded to floats).
    pub fn eval_quantized(&self, input: &[f32]) -> Result<Vec<f64>, InferenceError> {
        check_input(input, self.inputs())?;
        let sx = 2f64.powi(self.spec.frac_bits as i32);
        let xq: Vec<i128> = input
            .iter()
            .map(|&v| ((v as f64) * sx).round() as i128)
            .collect();
        Ok(self
            .rows
            .iter()
            .map(|row| {
                let acc = row
                    .weights
                    .iter()
                    .zip(&xq)
                    .fold(row.bias as i128, |a, (&w, &x)| a + w as i128 * x);
                acc as f64 / (sx * 2f64.powi(row.weight_frac_bits as i32))
            })
            .collect())
    }

    /// Evaluates the model on an encrypted input. Refuses a ciphertext made for another spec
    /// (input count, encoding, parameters); the result carries the ciphertext's key id.
    pub fn evaluate(&self, ct: &LinearCiphertext) -> Result<LinearResult, InferenceError> {
        ct.validate()?;
        if ct.spec != self.spec {
            return Err(InferenceError::ModelMismatch {
                what: "linear ciphertext",
                reason: format!(
                    "encrypted for {:?}, the model expects {:?}",
                    ct.spec, self.spec
                ),
            });
        }
        let n = LINEAR_N;
        let n_in = self.inputs();
        let chunks = self.spec.chunks();
        let d = self.spec.delta_log2;
        let width = (self.result_bits / 8) as usize;
        // Expand each chunk's mask once (and its NTT form if any chunk is long).
        let expand = |c: usize| {
            let mut a = vec![0u64; n];
            rlwe::expand_mask(&ct.seed, c as u32, &mut a);
            a
        };
        // (rayon's wake-up costs more than one 16 KiB expansion)
        let masks: Vec<Vec<u64>> = if chunks > 1 {
            (0..chunks).into_par_iter().map(expand).collect()
        } else {
            (0..chunks).map(expand).collect()
        };
        let long = (0..chunks).any(|c| chunk_len(n_in, c) > DIRECT_MAX);
        let (plan, mask_ntt) = if long {
            let plan = plan()?;
            let ntt: Vec<[Vec<u32>; 5]> = masks.par_iter().map(|a| forward(plan, a)).collect();
            (Some(plan), ntt)
        } else {
            (None, Vec::new())
        };
        let row_output = |(j, row): (usize, &Row)| -> (Vec<u8>, u64) {
            let mut a_out = vec![0u64; n];
            let mut acc: Option<[Vec<u32>; 5]> = None;
            for (c, a) in masks.iter().enumerate() {
                let lo = c * n;
                let len = chunk_len(n_in, c);
                let w = &row.weights[lo..lo + len];
                match plan {
                    Some(plan) if len > DIRECT_MAX => {
                        let owned;
                        let p = match &self.ntt {
                            Some(t) => &t[j][c],
                            None => {
                                owned = weight_poly_ntt(plan, row, n_in, c);
                                &owned
                            }
                        };
                        let acc = acc.get_or_insert_with(|| std::array::from_fn(|_| vec![0u32; n]));
                        mul_accumulate(plan, acc, p, &mask_ntt[c]);
                    }
                    _ => rlwe::weight_product(w, a, &mut a_out),
                }
            }
            if let (Some(plan), Some(mut acc)) = (plan, acc) {
                let mut prod = vec![0u64; n];
                let [p0, p1, p2, p3, p4] = &mut acc;
                plan.inv(&mut prod, p0, p1, p2, p3, p4);
                for (o, p) in a_out.iter_mut().zip(&prod) {
                    *o = o.wrapping_add(*p);
                }
            }
            // Extract coefficient N−1: LWE mask m_l = A_{N−1−l}.
            a_out.reverse();
            let mut packed = Vec::with_capacity(n * width);
            rlwe::pack(&a_out, self.result_bits, &mut packed);
            let body = rlwe::dot_signed(&row.weights, &ct.bodies)
                .wrapping_add((row.bias as u64).wrapping_shl(d));
            (packed, body)
        };
        let outs: Vec<(Vec<u8>, u64)> = if self.rows.len() > 1 && (n_in > 64 || long) {
            self.rows.par_iter().enumerate().map(row_output).collect()
        } else {
            self.rows.iter().enumerate().map(row_output).collect()
        };
        let mut masks_out = Vec::with_capacity(outs.len() * n * width);
        let mut bodies = Vec::with_capacity(outs.len());
        for (m, b) in outs {
            masks_out.extend_from_slice(&m);
            bodies.push(b);
        }
        Ok(LinearResult {
            params: self.spec.params,
            key_id: ct.key_id,
            delta_log2: d,
            result_bits: self.result_bits,
            frac_bits: self
                .rows
                .iter()
                .map(|r| self.spec.frac_bits + r.weight_frac_bits)
                .collect(),
            masks: masks_out,
            bodies,
        })
    }
}

fn chunk_len(n_in: usize, c: usize) -> usize {
    (n_in - c * LINEAR_N).min(LINEAR_N)
}

fn plan() -> Result<&'static Plan32, InferenceError> {
    static PLAN: std::sync::OnceLock<Option<Plan32>> = std::sync::OnceLock::new();
    PLAN.get_or_init(|| Plan32::try_new(LINEAR_N))
        .as_ref()
        .ok_or_else(|| InferenceError::Unsupported("no NTT plan for N = 2048".into()))
}

fn forward(plan: &Plan32, poly: &[u64]) -> [Vec<u32>; 5] {
    let n = poly.len();
    let mut r: [Vec<u32>; 5] = std::array::from_fn(|_| vec![0u32; n]);
    let [p0, p1, p2, p3, p4] = &mut r;
    plan.fwd(poly, p0, p1, p2, p3, p4);
    r
}

/// NTT form (normalised by 1/N) of chunk `c`'s weight polynomial `Σ_i w_i X^(N−1−i)`.
fn weight_poly_ntt(plan: &Plan32, row: &Row, n_in: usize, c: usize) -> [Vec<u32>; 5] {
    let lo = c * LINEAR_N;
    let len = chunk_len(n_in, c);
    let mut p = vec![0u64; LINEAR_N];
    for (i, &w) in row.weights[lo..lo + len].iter().enumerate() {
        p[LINEAR_N - 1 - i] = w as u64;
    }
    let mut r = forward(plan, &p);
    plan.ntt_0().normalize(&mut r[0]);
    plan.ntt_1().normalize(&mut r[1]);
    plan.ntt_2().normalize(&mut r[2]);
    plan.ntt_3().normalize(&mut r[3]);
    plan.ntt_4().normalize(&mut r[4]);
    r
}

fn mul_accumulate(
    plan: &Plan32,
    acc: &mut [Vec<u32>; 5],
    lhs: &[Vec<u32>; 5],
    rhs: &[Vec<u32>; 5],
) {
    plan.ntt_0().mul_accumulate(&mut acc[0], &lhs[0], &rhs[0]);
    plan.ntt_1().mul_accumulate(&mut acc[1], &lhs[1], &rhs[1]);
    plan.ntt_2().mul_accumulate(&mut acc[2], &lhs[2], &rhs[2]);
    plan.ntt_3().mul_accumulate(&mut acc[3], &lhs[3], &rhs[3]);
    plan.ntt_4().mul_accumulate(&mut acc[4], &lhs[4], &rhs[4]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_product_matches_ntt() {
        let mut a = vec![0u64; LINEAR_N];
        rlwe::expand_mask(&[9; 16], 0, &mut a);
        let w: Vec<i64> = (0..100).map(|i| (i * 37 % 19) - 9).collect();
        let row = Row {
            weights: w.clone(),
            bias: 0,
            weight_frac_bits: 0,
        };
        let mut direct = vec![0u64; LINEAR_N];
        rlwe::weight_product(&w, &a, &mut direct);
        let plan = plan().unwrap();
        let p = weight_poly_ntt(plan, &row, 100, 0);
        let mut acc: [Vec<u32>; 5] = std::array::from_fn(|_| vec![0u32; LINEAR_N]);
        mul_accumulate(plan, &mut acc, &p, &forward(plan, &a));
        let mut prod = vec![0u64; LINEAR_N];
        let [p0, p1, p2, p3, p4] = &mut acc;
        plan.inv(&mut prod, p0, p1, p2, p3, p4);
        assert_eq!(direct, prod);
    }
}
