//! Products of already quantized weights with activations rounded to 8 bits, summed exactly in
//! integers: a calibration forward pass's linears once GPTQ has quantized them, on CPUs with
//! AVX512-VNNI, whose `VPDPBUSD` does four 8-bit products per 32-bit lane, twice the
//! multiply-adds per cycle of the bf16 kernels of [`crate::bf16`].
//!
//! A quantized weight is `W[n, c] = s[g, n] · (q[n, c] − z[g, n])` with `g = g_idx[c]`
//! ([`QuantizedTensor`]); below 8 bits its integers `q − z` fit a signed byte. The input columns
//! are split into *blocks*: at most [`BLOCK`] columns of one group (consecutive columns when
//! `g_idx` is sorted, the columns of each group in turn otherwise, as act-order leaves them).
//! Each row of `x` is rounded per block to `a · p`, `a = max |x| / 127` over the block and `p` an
//! integer in `[−127, 127]` (nearest, ties to even), so that
//!
//! `out[m, n] = Σ_blocks a[m, b] · s[g(b), n] · Σ_{c in b} p[m, c] · (q[n, c] − z[g(b), n])`
//!
//! where the inner sums are exact in i32 and only the outer one is f32. A block whose values are
//! not all finite gets a NaN scale, so that the non-finite value reaches the output as NaN.
//!
//! Rounding the activations changes the numbers more than bf16 does (up to `max/254` per element
//! of a block, against a relative 2⁻⁹), but for calibration only: the checkpoint's weights are
//! what GPTQ computes from the Hessians, and the next layers' Hessians barely move. On
//! SmolLM2-135M every configuration of docs/pipeline.md §8 evaluates within the spread of the
//! f32 and bf16 runs (3-bit g128: perplexity 61.03, against 61.19 in f32 and 57.95 in bf16).
//!
//! Where the CPU lacks the kernels, or for 8-bit weights, [`x_qwt`] computes the same numbers
//! (up to the order of f32 sums) as faer's f32 product of [`rounded_activations`] and the
//! dequantized weights.

#[cfg(target_arch = "x86_64")]
mod x86;

use std::ops::Range;

use faer::Par;
use gptq_core::{QuantizedTensor, Result, check_x_qwt};
use ndarray::{Array2, ArrayView2, ArrayViewMut2};

use crate::matmul::{f32_x_wt, on_row_major, trivial_product};

/// Most input columns that share one activation scale per row.
pub const BLOCK: usize = 128;

/// Whether this CPU runs the int8 kernels (x86-64 with AVX-512F/BW and AVX512-VNNI, e.g. AMD
/// Zen 4 or Intel Ice Lake and later).
pub fn kernels_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Which code computes [`x_qwt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// The AVX512-VNNI kernels.
    Kernels,
    /// [`x_qwt_portable`]: faer's f32 product of the rounded operands.
    Portable,
}

/// The code that computes [`x_qwt`] of `w` on this CPU: the kernels where the CPU has them and
/// `w`'s integers `q − z` fit a signed byte (below 8 bits), the portable product otherwise.
///
/// ```
/// use gptq_core::QuantizedTensor;
/// use gptq_linalg::int8::{self, Path};
/// use ndarray::array;
///
/// let (codes, scales, zeros) = (array![[0u8, 255]], array![[1.0f32]], array![[128u16]]);
/// let w8 = QuantizedTensor::new(8, codes, scales, zeros, vec![0, 0], None)?;
/// assert_eq!(int8::path(&w8), Path::Portable);
/// # Ok::<(), gptq_core::GptqError>(())
/// ```
pub fn path(w: &QuantizedTensor) -> Path {
    if kernels_available() && w.bits() < 8 {
        Path::Kernels
    } else {
        Path::Portable
    }
}

/// Below this block maximum, `127 / max` would overflow f32, so the block divides by its scale
/// instead of multiplying by the inverse.
const TINY: f32 = 1e-30;

/// One block's scale and the factor that turns its values into integers: `(a, 1/a)`, `(0, 0)`
/// for an all-zero block, `(NaN, 0)` for one with a non-finite value.
fn block_scale(max_abs: f32) -> (f32, f32) {
    if !max_abs.is_finite() {
        (f32::NAN, 0.0)
    } else if max_abs == 0.0 {
        (0.0, 0.0)
    } else {
        (max_abs / 127.0, 127.0 / max_abs)
    }
}

/// The integer of `value` in a block of scale `scale` and inverse `inverse` (see
/// [`block_scale`]); the kernels compute the same one.
fn to_integer(value: f32, scale: f32, inverse: f32) -> i8 {
    let scaled = if scale < TINY && scale > 0.0 {
        value / scale
    } else {
        value * inverse
    };
    scaled.round_ties_even().clamp(-127.0, 127.0) as i8
}

/// How the input columns split into blocks: which columns, in which order, and where each block
/// starts in the kernels' packed shared dimension (quads of four columns, the last one of a block
/// padded).
#[derive(Debug, Clone)]
struct BlockPlan {
    /// Columns in block order; `None` when that is the natural order (`g_idx` sorted).
    order: Option<Vec<u32>>,
    blocks: Vec<Block>,
    quads: usize,
}

#[derive(Debug, Clone)]
struct Block {
    /// Positions in block order.
    positions: Range<usize>,
    group: usize,
    first_quad: usize,
}

impl Block {
    fn quads(&self) -> usize {
        self.positions.len().div_ceil(4)
    }
}

impl BlockPlan {
    fn new(g_idx: &[u32]) -> Self {
        let sorted = g_idx.windows(2).all(|w| w[0] <= w[1]);
        let order = (!sorted).then(|| {
            let mut order: Vec<u32> = (0..g_idx.len() as u32).collect();
            order.sort_by_key(|&c| g_idx[c as usize]);
            order
        });
        let group_at = |position: usize| match &order {
            Some(order) => g_idx[order[position] as usize],
            None => g_idx[position],
        };
        let (mut blocks, mut quads, mut start) = (Vec::new(), 0, 0);
        while start < g_idx.len() {
            let group = group_at(start);
            let mut end = start + 1;
            while end < g_idx.len() && end - start < BLOCK && group_at(end) == group {
                end += 1;
            }
            let block = Block {
                positions: start..end,
                group: group as usize,
                first_quad: quads,
            };
            quads += block.quads();
            blocks.push(block);
            start = end;
        }
        BlockPlan {
            order,
            blocks,
            quads,
        }
    }

    /// The input column at `position` in block order.
    fn column(&self, position: usize) -> usize {
        self.order
            .as_ref()
            .map_or(position, |order| order[position] as usize)
    }
}

/// `x` as the kernels see it: each row rounded per block to `a · p` (see the module's
/// documentation), for the blocks of the weight whose group of each input column is `g_idx`.
///
/// ```
/// use gptq_linalg::int8::rounded_activations;
/// use ndarray::array;
///
/// // One block: its largest value is 127 steps of 2/127; 0.5 rounds to 32 of them.
/// let x = array![[2.0f32, 0.5, -1.0]];
/// let rounded = rounded_activations(x.view(), &[0, 0, 0]);
/// assert_eq!(rounded[[0, 0]], 2.0);
/// assert!((rounded[[0, 1]] - 32.0 * 2.0 / 127.0).abs() < 1e-6);
/// ```
pub fn rounded_activations(x: ArrayView2<'_, f32>, g_idx: &[u32]) -> Array2<f32> {
    assert_eq!(x.ncols(), g_idx.len(), "one group per input column");
    let plan = BlockPlan::new(g_idx);
    let mut out = Array2::zeros(x.dim());
    for (row, mut out_row) in x.rows().into_iter().zip(out.rows_mut()) {
        for block in &plan.blocks {
            let columns = || block.positions.clone().map(|p| plan.column(p));
            let max_abs = columns().fold(0.0f32, |m, c| max_abs(m, row[c]));
            let (scale, inverse) = block_scale(max_abs);
            for c in columns() {
                out_row[c] = scale * f32::from(to_integer(row[c], scale, inverse));
            }
        }
    }
    out
}

/// `max(m, |v|)` that keeps a NaN once met (f32::max would drop it).
fn max_abs(m: f32, v: f32) -> f32 {
    if m.is_nan() || v.is_nan() {
        f32::NAN
    } else {
        m.max(v.abs())
    }
}

/// `out = x · Wᵀ` (or `out += x · Wᵀ` when `accumulate`) for the quantized `w` (`[n, k]`), with
/// `x` (`[m, k]`) rounded to 8 bits per block (see the module's documentation); `out` is
/// `[m, n]`, any strides.
///
/// ```
/// use gptq_core::QuantizedTensor;
/// use gptq_linalg::{Par, int8};
/// use ndarray::{Array2, array};
///
/// // W = 0.5 · (codes − 2) = [[-1, 0.5]], one group.
/// let (codes, scales, zeros) = (array![[0u8, 3]], array![[0.5f32]], array![[2u16]]);
/// let w = QuantizedTensor::new(2, codes, scales, zeros, vec![0, 0], None)?;
/// // The block's largest value is 127, so its scale is 1 and both values are exact.
/// let x = array![[127.0f32, 2.0]];
/// let mut out = Array2::zeros((1, 1));
/// int8::x_qwt(x.view(), &w, out.view_mut(), false, Par::Seq)?;
/// assert_eq!(out[[0, 0]], -126.0); // -1 · 127 + 0.5 · 2
/// # Ok::<(), gptq_core::GptqError>(())
/// ```
pub fn x_qwt(
    x: ArrayView2<'_, f32>,
    w: &QuantizedTensor,
    out: ArrayViewMut2<'_, f32>,
    accumulate: bool,
    par: Par,
) -> Result<()> {
    let mut out = out;
    check_x_qwt(&x, w, &out)?;
    if trivial_product(&mut out, x.ncols(), accumulate) {
        return Ok(());
    }
    #[cfg(target_arch = "x86_64")]
    if path(w) == Path::Kernels {
        on_row_major(out, accumulate, |out| {
            kernel_x_qwt(x, w, out, accumulate, par)
        });
        return Ok(());
    }
    x_qwt_portable(x, w, out, accumulate, par)
}

/// [`x_qwt`] without the kernels, what it runs on CPUs that lack them and for 8-bit weights:
/// faer's f32 product of [`rounded_activations`] and the dequantized weights.
pub fn x_qwt_portable(
    x: ArrayView2<'_, f32>,
    w: &QuantizedTensor,
    out: ArrayViewMut2<'_, f32>,
    accumulate: bool,
    par: Par,
) -> Result<()> {
    check_x_qwt(&x, w, &out)?;
    let x = rounded_activations(x, w.g_idx());
    f32_x_wt(x.view(), w.dequantize().view(), out, accumulate, par);
    Ok(())
}

#[cfg(target_arch = "x86_64")]
use packing::kernel_x_qwt;

#[cfg(target_arch = "x86_64")]
mod packing;
