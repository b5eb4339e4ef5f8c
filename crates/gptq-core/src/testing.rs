//! Property-testing support for grids and anything built on gptq-core (feature `testing`).
//!
//! Strategies generate configurations and weight matrices; the `check_*` functions state the
//! properties every [`QuantGrid`] must have, so a downstream grid is tested with one line:
//!
//! ```
//! use gptq_core::testing::{check_grid_round_trip, weight_rows};
//! use gptq_core::{GroupParams, QuantGrid};
//! use proptest::prelude::*;
//!
//! /// A toy grid: 4 bits, zero at 8, scale from the largest magnitude.
//! struct AbsMax;
//! impl QuantGrid for AbsMax {
//!     fn bits(&self) -> u8 { 4 }
//!     fn fit(&self, w: &[f32]) -> GroupParams {
//!         let m = w.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-8);
//!         GroupParams { scale: m / 7.0, zero: 8 }
//!     }
//! }
//!
//! proptest!(|(row in weight_rows(1..64))| {
//!     check_grid_round_trip(&AbsMax, &row)?;
//! });
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};

use ndarray::{Array2, ArrayView2, ArrayViewMut2};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use crate::config::{ClipSearch, GroupSize, QuantConfig};
use crate::error::{GptqError, Result};
use crate::forward::{
    AttentionProducts, ForwardCompute, HeadAttention, QuantizedProducts, check_x_qwt, check_x_wt,
};
use crate::grid::{QuantGrid, dequantize_code, quantize_value};
use crate::tensor::QuantizedTensor;

/// Finite weights of one row, of a length in `len`, with magnitudes from 1e-3 to 10.
pub fn weight_rows(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<f32>> {
    let scale = prop_oneof![Just(1e-3f32), Just(0.05f32), Just(1.0f32), Just(10.0f32)];
    (scale, proptest::collection::vec(-1.0f32..1.0, len))
        .prop_map(|(s, v)| v.into_iter().map(|x| x * s).collect())
}

/// A `rows × columns` matrix of finite weights (standard-normal-like values, scaled).
pub fn weight_matrix(rows: usize, columns: usize) -> impl Strategy<Value = Array2<f32>> {
    (any::<u64>(), prop_oneof![Just(0.02f32), Just(1.0f32)])
        .prop_map(move |(seed, s)| seeded_matrix(rows, columns, seed, s))
}

/// A deterministic pseudo-random `rows × columns` matrix with entries of magnitude about `scale`
/// (sum of uniforms, roughly Gaussian); the same seed always gives the same matrix.
pub fn seeded_matrix(rows: usize, columns: usize, seed: u64, scale: f32) -> Array2<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = move || {
        // xorshift64*: small, fast, good enough for test data.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32
    };
    Array2::from_shape_fn((rows, columns), |_| {
        let s: f32 = (0..4).map(|_| uniform()).sum();
        (s - 2.0) * 1.7 * scale
    })
}

/// Any valid configuration (bits 2..=8, per-channel or groups of 8..=64, sym or asym, act-order,
/// static groups, damping, blocks of 8..=128, with or without clipping search).
pub fn quant_configs() -> impl Strategy<Value = QuantConfig> {
    (
        2u8..=8,
        prop_oneof![
            Just(GroupSize::PerChannel),
            (8usize..=64).prop_map(GroupSize::Columns)
        ],
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop_oneof![Just(0.01f64), Just(0.1f64)],
        prop_oneof![Just(8usize), Just(32usize), Just(128usize)],
        any::<bool>(),
    )
        .prop_map(|(bits, group, sym, act, stat, damp, block, clip)| {
            QuantConfig::builder()
                .bits(bits)
                .group_size(group)
                .symmetric(sym)
                .act_order(act)
                .static_groups(stat && group != GroupSize::PerChannel)
                .damp_percent(damp)
                .block_size(block)
                .clip_search(clip.then(ClipSearch::default))
                .build()
                .expect("the strategy only builds valid configurations")
        })
}

/// Every value inside the fitted grid's range dequantizes to within half a step of itself.
pub fn check_grid_round_trip<G: QuantGrid + ?Sized>(
    grid: &G,
    weights: &[f32],
) -> Result<(), TestCaseError> {
    let params = grid.fit(weights);
    let max = grid.max_code();
    prop_assert!(
        params.scale.is_finite() && params.scale > 0.0,
        "scale {} must be positive and finite",
        params.scale
    );
    prop_assert!(
        params.zero <= max + 1,
        "zero {} beyond {}",
        params.zero,
        max + 1
    );
    let low = dequantize_code(0, params);
    let high = dequantize_code(max as u8, params);
    // Half a step, plus the rounding of x / scale and of the product scale · (q - zero).
    let tolerance =
        params.scale * 0.5 * (1.0 + 1e-5) + 4.0 * f32::EPSILON * low.abs().max(high.abs());
    for &x in weights.iter().filter(|x| (low..=high).contains(*x)) {
        let back = dequantize_code(quantize_value(x, params, max), params);
        prop_assert!(
            (back - x).abs() <= tolerance,
            "{x} came back as {back}, more than half a step ({}) away",
            params.scale / 2.0
        );
    }
    Ok(())
}

/// Quantizing a dequantized value gives the same code back: dequantize∘quantize is idempotent.
pub fn check_grid_idempotent<G: QuantGrid + ?Sized>(
    grid: &G,
    weights: &[f32],
) -> Result<(), TestCaseError> {
    let params = grid.fit(weights);
    let max = grid.max_code();
    for &x in weights {
        let code = quantize_value(x, params, max);
        let value = dequantize_code(code, params);
        prop_assert_eq!(quantize_value(value, params, max), code, "x = {}", x);
        let again = dequantize_code(quantize_value(value, params, max), params);
        prop_assert_eq!(again.to_bits(), value.to_bits());
    }
    Ok(())
}

/// [`ForwardCompute`] in plain loops (f64 sums, the oracle for a device's products) that counts
/// its calls and can be told to fail, to test that a forward pass sends its products where it
/// is told to and passes their errors on.
#[derive(Debug, Default)]
pub struct PlainProducts {
    calls: AtomicUsize,
    quantized_calls: AtomicUsize,
    fail_at: Option<usize>,
    attention: bool,
    quantized: bool,
}

impl PlainProducts {
    /// Products that always succeed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Products whose call number `call` (counting from 0) fails with a
    /// [`GptqError::Backend`], as a device out of memory would.
    pub fn failing_at(call: usize) -> Self {
        PlainProducts {
            fail_at: Some(call),
            ..Self::default()
        }
    }

    /// These products computing attention too ([`ForwardCompute::attention`]), in plain loops
    /// with an f64 softmax, one call per head and sequence, counted and failing like the
    /// products.
    pub fn with_attention(self) -> Self {
        PlainProducts {
            attention: true,
            ..self
        }
    }

    /// These products multiplying quantized weights too
    /// ([`ForwardCompute::quantized`]): by their dequantized values in the same loops,
    /// so that the numbers do not change, but counted apart
    /// ([`quantized_calls`](Self::quantized_calls)) as well as with the other calls.
    pub fn with_quantized(self) -> Self {
        PlainProducts {
            quantized: true,
            ..self
        }
    }

    /// Calls so far, failed ones included.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Calls of [`QuantizedProducts::x_qwt`] so far.
    pub fn quantized_calls(&self) -> usize {
        self.quantized_calls.load(Ordering::SeqCst)
    }
}

impl ForwardCompute for PlainProducts {
    /// "f32": plain f64 sums of the f32 operands, rounded once.
    fn precision(&self) -> &'static str {
        "f32"
    }

    fn x_wt(
        &self,
        x: ArrayView2<'_, f32>,
        w: ArrayView2<'_, f32>,
        out: ArrayViewMut2<'_, f32>,
        accumulate: bool,
    ) -> Result<()> {
        check_x_wt(&x, &w, &out)?;
        self.count_call()?;
        plain_x_wt(x, w, out, accumulate);
        Ok(())
    }

    fn attention(&self) -> Option<&dyn AttentionProducts> {
        self.attention.then_some(self as &dyn AttentionProducts)
    }

    fn quantized(&self) -> Option<&dyn QuantizedProducts> {
        self.quantized.then_some(self as &dyn QuantizedProducts)
    }
}

impl QuantizedProducts for PlainProducts {
    fn x_qwt(
        &self,
        x: ArrayView2<'_, f32>,
        w: &QuantizedTensor,
        out: ArrayViewMut2<'_, f32>,
        accumulate: bool,
    ) -> Result<()> {
        check_x_qwt(&x, w, &out)?;
        self.quantized_calls.fetch_add(1, Ordering::SeqCst);
        self.count_call()?;
        plain_x_wt(x, w.dequantize().view(), out, accumulate);
        Ok(())
    }
}

impl AttentionProducts for PlainProducts {
    fn head_attention(
        &self,
        head: HeadAttention<'_>,
        mut out: ArrayViewMut2<'_, f32>,
    ) -> Result<()> {
        head.check(&out)?;
        self.count_call()?;
        let dot = |a: ndarray::ArrayView1<'_, f32>, b: ndarray::ArrayView1<'_, f32>| -> f64 {
            a.iter()
                .zip(b)
                .map(|(&x, &y)| f64::from(x) * f64::from(y))
                .sum()
        };
        for i in 0..head.len() {
            let keys = head.visible_keys(i);
            let scores: Vec<f64> = keys
                .clone()
                .map(|j| dot(head.q.row(i), head.k.row(j)))
                .collect();
            let p = plain_softmax(&scores);
            for (c, o) in out.row_mut(i).iter_mut().enumerate() {
                let weighted: f64 = keys
                    .clone()
                    .zip(&p)
                    .map(|(j, &pj)| pj * f64::from(head.v[[j, c]]))
                    .sum();
                *o = weighted as f32;
            }
        }
        Ok(())
    }
}

/// Max-subtracted softmax in f64.
fn plain_softmax(scores: &[f64]) -> Vec<f64> {
    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exp: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
    let total: f64 = exp.iter().sum();
    exp.iter().map(|e| e / total).collect()
}

/// `out (+)= x · wᵀ` in f64 sums.
fn plain_x_wt(
    x: ArrayView2<'_, f32>,
    w: ArrayView2<'_, f32>,
    mut out: ArrayViewMut2<'_, f32>,
    accumulate: bool,
) {
    for ((i, j), o) in out.indexed_iter_mut() {
        let dot: f64 = x
            .row(i)
            .iter()
            .zip(w.row(j))
            .map(|(&a, &b)| f64::from(a) * f64::from(b))
            .sum();
        let base = if accumulate { f64::from(*o) } else { 0.0 };
        *o = (base + dot) as f32;
    }
}

impl PlainProducts {
    /// Counts a call, failing it when it is the one the test asked for.
    fn count_call(&self) -> Result<()> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        if self.fail_at == Some(call) {
            return Err(GptqError::Backend {
                backend: "plain products",
                message: format!("product {call} failed as the test asked"),
            });
        }
        Ok(())
    }
}

/// Whether the CPU has every one of `flags` as Linux names them in `/proc/cpuinfo` (e.g.
/// `avx512_bf16`): a source independent of the `is_x86_feature_detected!` that kernels
/// dispatch on, to test that dispatch by. `None` where there is no such file (not Linux) or it
/// lists no flags (not x86-64).
pub fn cpu_has(flags: &[&str]) -> Option<bool> {
    if !cfg!(target_arch = "x86_64") {
        return None;
    }
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("flags"))?;
    let (_, listed) = line.split_once(':')?;
    let listed: Vec<&str> = listed.split_whitespace().collect();
    Some(flags.iter().all(|flag| listed.contains(flag)))
}

/// Says on standard error that the running test is skipped and why: `skipped NAME: REASON`,
/// NAME being the test's. It writes to the process's standard error directly, past the test
/// harness's output capture, so the line shows in every log: with `println!` it would show
/// only for failing tests or under `--nocapture`, and a CI log could not tell a test that ran
/// from one that skipped.
pub fn announce_skip(reason: &str) {
    use std::io::Write;
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    let _ = writeln!(std::io::stderr().lock(), "skipped {test}: {reason}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_matrices_repeat() {
        assert_eq!(seeded_matrix(3, 5, 7, 1.0), seeded_matrix(3, 5, 7, 1.0));
        assert_ne!(seeded_matrix(3, 5, 7, 1.0), seeded_matrix(3, 5, 8, 1.0));
    }
}
