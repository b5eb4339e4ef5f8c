//! Streaming Hessian accumulation.

use std::ops::Range;

use faer::linalg::matmul::triangular::{BlockStructure, matmul};
use faer::{Accum, MatMut, MatRef, Par};
use gptq_core::validate::{check_finite, check_square};
use gptq_core::{
    ActivationBatch, ActivationData, GptqError, HessianAccumulator, HessianOptions,
    HessianPrecision, Result, shape_string,
};
use half::{bf16, f16};
use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;

use crate::bf16::PanelSum;
use crate::transpose::{self, ColumnTile, Selection};

/// Elements of the token buffer: tokens are multiplied in chunks of `BUFFER_ELEMENTS / columns`
/// (1024 tokens at 4096 columns, more for narrower layers so that each product stays large
/// enough to run near the GEMM rate), a 32 MiB buffer in f64.
const BUFFER_ELEMENTS: usize = 1 << 22;

/// Tokens per chunk for a layer of `columns` inputs.
fn chunk_tokens(columns: usize) -> usize {
    (BUFFER_ELEMENTS / columns).clamp(64, 8192)
}

/// A finished Hessian `H = (2/N) Σ x xᵀ` (symmetric, f64) and the `N` it was averaged over.
#[derive(Debug, Clone, PartialEq)]
pub struct Hessian {
    matrix: Array2<f64>,
    sequences: usize,
}

impl Hessian {
    /// Wraps a host matrix, checking that it is square, finite and symmetric (to a relative
    /// 1e-5 of its diagonal); the result is exactly symmetrized. `sequences` is informative.
    pub fn from_matrix(matrix: Array2<f64>, sequences: usize) -> Result<Self> {
        let n = matrix.nrows();
        check_square("Hessian", matrix.view(), n)?;
        gptq_core::validate::check_non_empty("Hessian", matrix.view())?;
        check_finite("Hessian", matrix.view())?;
        let mut matrix = matrix;
        for i in 0..n {
            for j in 0..i {
                let (a, b) = (matrix[[i, j]], matrix[[j, i]]);
                let tolerance = 1e-5 * (matrix[[i, i]].abs() * matrix[[j, j]].abs()).sqrt();
                if (a - b).abs() > tolerance {
                    return Err(GptqError::InvalidConfig(format!(
                        "the Hessian is not symmetric: H[{i}, {j}] = {a} but H[{j}, {i}] = {b}"
                    )));
                }
                let mean = 0.5 * (a + b);
                matrix[[i, j]] = mean;
                matrix[[j, i]] = mean;
            }
        }
        Ok(Hessian { matrix, sequences })
    }

    /// The symmetric matrix.
    pub fn matrix(&self) -> ArrayView2<'_, f64> {
        self.matrix.view()
    }
    /// Input columns.
    pub fn columns(&self) -> usize {
        self.matrix.nrows()
    }
    /// Number of sequences averaged over.
    pub fn sequences(&self) -> usize {
        self.sequences
    }
    /// The diagonal.
    pub fn diagonal(&self) -> Vec<f64> {
        self.matrix.diag().to_vec()
    }
    /// Takes the matrix out.
    pub fn into_matrix(self) -> Array2<f64> {
        self.matrix
    }
}

/// Running lower-triangle sum `Σ x xᵀ` in the chosen precision.
enum LowerSum {
    F64(Accumulation<f64>),
    F32(Accumulation<f32>),
    /// bf16-rounded tokens on the AVX512-BF16 kernels.
    Bf16(PanelSum),
}

/// Streams activation batches into a Hessian on the CPU.
///
/// Each batch is validated whole before anything is added, so a rejected batch leaves the sum
/// untouched. Kept tokens are transposed into a column-major buffer (1024 tokens at 4096
/// columns, more for narrower layers), filled across batches, and each full buffer is multiplied
/// into the lower triangle only (a SYRK), in f64 by default. Small batches therefore cost the
/// same as large ones.
pub struct CpuHessianAccumulator {
    columns: usize,
    sum: LowerSum,
    sequences: usize,
    tokens: usize,
    par: Par,
}

impl CpuHessianAccumulator {
    /// An empty accumulator for `columns` inputs.
    pub fn new(columns: usize, options: HessianOptions, par: Par) -> Result<Self> {
        if columns == 0 {
            return Err(GptqError::Empty {
                what: "Hessian",
                shape: shape_string(&[0, 0]),
            });
        }
        let sum = match options.precision {
            HessianPrecision::F64 => LowerSum::F64(Accumulation::new(columns)),
            HessianPrecision::F32 => LowerSum::F32(Accumulation::new(columns)),
            HessianPrecision::Bf16 => match PanelSum::new(columns, chunk_tokens(columns)) {
                Some(sum) => LowerSum::Bf16(sum),
                None => LowerSum::F32(Accumulation::new(columns).rounding_to_bf16()),
            },
        };
        Ok(CpuHessianAccumulator {
            columns,
            sum,
            sequences: 0,
            tokens: 0,
            par,
        })
    }

    /// Tokens accumulated so far (after masking).
    pub fn tokens(&self) -> usize {
        self.tokens
    }
}

impl HessianAccumulator for CpuHessianAccumulator {
    type Hessian = Hessian;

    fn columns(&self) -> usize {
        self.columns
    }

    fn sequences(&self) -> usize {
        self.sequences
    }

    fn add_batch(&mut self, batch: &ActivationBatch<'_>) -> Result<()> {
        let kept = batch.kept_tokens_trusting_values(self.columns)?;
        let par = self.par;
        check_finite_par(batch, par)?;
        match &mut self.sum {
            LowerSum::F64(sum) => sum.push(batch.data(), &kept, par),
            LowerSum::F32(sum) => sum.push(batch.data(), &kept, par),
            LowerSum::Bf16(sum) => push_f32_rows(sum, batch.data(), &kept, par),
        }
        self.sequences += batch.sequence_count();
        self.tokens += kept.len();
        Ok(())
    }

    fn finish(mut self) -> Result<Hessian> {
        if self.sequences == 0 {
            return Err(GptqError::NoSamples {
                columns: self.columns,
            });
        }
        let n = self.columns;
        let par = self.par;
        match &mut self.sum {
            LowerSum::F64(sum) => sum.flush(par),
            LowerSum::F32(sum) => sum.flush(par),
            LowerSum::Bf16(sum) => sum.finish(par),
        }
        let scale = 2.0 / self.sequences as f64;
        let sum: Vec<f64> = match &self.sum {
            LowerSum::F64(s) => s.sum.clone(),
            LowerSum::F32(s) => s.sum.iter().map(|&v| f64::from(v)).collect(),
            LowerSum::Bf16(s) => s.sum().iter().map(|&v| f64::from(v)).collect(),
        };
        // The sum is column-major: entry (i, j) with i >= j sits at j * n + i.
        let mut matrix = Array2::zeros((n, n));
        for j in 0..n {
            for i in j..n {
                let value = scale * sum[j * n + i];
                matrix[[i, j]] = value;
                matrix[[j, i]] = value;
            }
        }
        Ok(Hessian {
            matrix,
            sequences: self.sequences,
        })
    }
}

/// [`ActivationBatch::check_finite_rows`] over the whole batch, on `par`'s threads: alone on one
/// thread it would cost a few percent of a bf16 Hessian's time, the other thread idle.
fn check_finite_par(batch: &ActivationBatch<'_>, par: Par) -> Result<()> {
    const ROWS: usize = 256;
    let tokens = batch.tokens();
    let chunks: Vec<Range<usize>> = (0..tokens)
        .step_by(ROWS)
        .map(|r| r..(r + ROWS).min(tokens))
        .collect();
    let check = |rows: &Range<usize>| batch.check_finite_rows(rows.clone());
    let results: Vec<Result<()>> = match par {
        Par::Seq => chunks.iter().map(check).collect(),
        _ => chunks.par_iter().map(check).collect(),
    };
    // The first failing chunk holds the first non-finite value.
    results.into_iter().collect()
}

/// Hands the kept tokens of `data` to the bf16 panel sum as row-major f32 (copied only when
/// they are f16/bf16 or strided).
fn push_f32_rows(sum: &mut PanelSum, data: ActivationData<'_>, kept: &[usize], par: Par) {
    let converted;
    let rows = match data {
        ActivationData::F32(x) if x.is_standard_layout() => x,
        ActivationData::F32(x) => {
            converted = x.as_standard_layout().into_owned();
            converted.view()
        }
        ActivationData::F16(x) => {
            converted = x.mapv(f16::to_f32);
            converted.view()
        }
        ActivationData::BF16(x) => {
            converted = x.mapv(bf16::to_f32);
            converted.view()
        }
    };
    sum.push(rows.to_slice().expect("standard layout"), kept, par);
}

/// A float type the Hessian can be accumulated in.
trait SumFloat: Copy + Default + Send {
    fn from_f32(x: f32) -> Self;
    /// The buffer as f32 when it is one (where the vectorized gather applies).
    fn as_f32_mut(values: &mut [Self]) -> Option<&mut [f32]>;
    /// `sum += xᵀ x` on the lower triangle, `x` being `rows × n` column-major with column
    /// stride `stride`.
    fn add_gram(sum: &mut [Self], x: &[Self], rows: usize, n: usize, stride: usize, par: Par);
}

macro_rules! impl_sum_float {
    ($t:ty, $as_f32_mut:expr) => {
        impl SumFloat for $t {
            #[inline]
            fn from_f32(x: f32) -> Self {
                x as $t
            }
            fn as_f32_mut(values: &mut [Self]) -> Option<&mut [f32]> {
                ($as_f32_mut)(values)
            }
            fn add_gram(
                sum: &mut [Self],
                x: &[Self],
                rows: usize,
                n: usize,
                stride: usize,
                par: Par,
            ) {
                let x = MatRef::from_column_major_slice_with_stride(x, rows, n, stride);
                matmul(
                    MatMut::from_column_major_slice_mut(sum, n, n),
                    BlockStructure::TriangularLower,
                    Accum::Add,
                    x.transpose(),
                    BlockStructure::Rectangular,
                    x,
                    BlockStructure::Rectangular,
                    1.0,
                    par,
                );
            }
        }
    };
}
impl_sum_float!(f64, |_| None);
impl_sum_float!(f32, Some);

/// A lower-triangle sum and the buffer of tokens not yet multiplied into it.
struct Accumulation<T> {
    columns: usize,
    /// `columns × columns`, column-major, lower triangle valid.
    sum: Vec<T>,
    /// `capacity × columns`, column-major: token `t`, column `j` at `j * capacity + t`.
    chunk: Vec<T>,
    capacity: usize,
    filled: usize,
    /// Round the tokens to bf16 before the f32 product (the bf16 Hessian where the CPU lacks
    /// the [`crate::bf16`] kernels); only ever set for f32 sums.
    round_to_bf16: bool,
}

impl Accumulation<f32> {
    /// The same accumulation on bf16-rounded tokens.
    fn rounding_to_bf16(self) -> Self {
        Accumulation {
            round_to_bf16: true,
            ..self
        }
    }
}

impl<T: SumFloat> Accumulation<T> {
    fn new(columns: usize) -> Self {
        Accumulation {
            columns,
            sum: vec![T::default(); columns * columns],
            chunk: vec![T::default(); chunk_tokens(columns) * columns],
            capacity: chunk_tokens(columns),
            filled: 0,
            round_to_bf16: false,
        }
    }

    /// Copies the kept tokens into the buffer, multiplying each time it fills.
    fn push(&mut self, data: ActivationData<'_>, kept: &[usize], par: Par) {
        let mut rest = kept;
        while !rest.is_empty() {
            let take = rest.len().min(self.capacity - self.filled);
            let (now, later) = rest.split_at(take);
            let (buffer, stride, offset) = (&mut self.chunk[..], self.capacity, self.filled);
            match data {
                ActivationData::F32(x) => transpose_into(buffer, stride, offset, x, now, par),
                ActivationData::F16(x) => transpose_into(buffer, stride, offset, x, now, par),
                ActivationData::BF16(x) => transpose_into(buffer, stride, offset, x, now, par),
            }
            self.filled += take;
            if self.filled == self.capacity {
                self.flush(par);
            }
            rest = later;
        }
    }

    /// Multiplies the buffered tokens into the sum.
    fn flush(&mut self, par: Par) {
        if self.filled == 0 {
            return;
        }
        if self.round_to_bf16 {
            let (tokens, stride) = (self.filled, self.capacity);
            let chunk = T::as_f32_mut(&mut self.chunk).expect("bf16 products sum in f32");
            for column in chunk.chunks_mut(stride) {
                let rounded = &mut column[..tokens];
                rounded
                    .iter_mut()
                    .for_each(|v| *v = crate::bf16::round_bf16(*v));
            }
        }
        T::add_gram(
            &mut self.sum,
            &self.chunk,
            self.filled,
            self.columns,
            self.capacity,
            par,
        );
        self.filled = 0;
    }
}

/// Copies the selected token rows of `x` into `buffer` (token `offset + t`, column `j` at
/// `j * stride + offset + t`), in tiles of 64 columns spread over threads; f32 activations into
/// an f32 buffer take the vectorized [`transpose::gather`], the rest the plain loop.
fn transpose_into<S: Element, T: SumFloat>(
    buffer: &mut [T],
    stride: usize,
    offset: usize,
    x: ArrayView2<'_, S>,
    tokens: &[usize],
    par: Par,
) {
    const TILE: usize = 64;
    let x = x.as_standard_layout();
    let n = x.ncols();
    let data = x.as_slice().expect("standard layout");
    let column_tile = |(tile, columns): (usize, &mut [T])| {
        let (j0, width) = (tile * TILE, columns.len() / stride);
        let sel = Selection {
            data,
            n,
            j0,
            width,
            tokens,
        };
        if let (Some(data), Some(dst)) = (S::as_f32(data), T::as_f32_mut(columns)) {
            transpose::gather(
                sel.with_data(data),
                ColumnTile {
                    dst,
                    stride,
                    offset,
                },
            );
        } else {
            let tile = ColumnTile {
                dst: columns,
                stride,
                offset,
            };
            transpose::gather_scalar(sel, tile, |v| T::from_f32(v.to_f32()));
        }
    };
    match par {
        Par::Seq => buffer
            .chunks_mut(TILE * stride)
            .enumerate()
            .for_each(column_tile),
        _ => buffer
            .par_chunks_mut(TILE * stride)
            .enumerate()
            .for_each(column_tile),
    }
}

/// An activation element type.
trait Element: Copy + Sync {
    fn to_f32(self) -> f32;
    /// The slice as f32 when it is one (the fast gather's case).
    fn as_f32(_values: &[Self]) -> Option<&[f32]> {
        None
    }
}

impl Element for f32 {
    fn to_f32(self) -> f32 {
        self
    }
    fn as_f32(values: &[f32]) -> Option<&[f32]> {
        Some(values)
    }
}

impl Element for f16 {
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

impl Element for bf16 {
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bf16 Hessian of CPUs without the kernels (rounded tokens, f32 product), which a
    /// machine with them never picks by itself, against the plain loops.
    #[test]
    fn rounded_f32_fallback_matches_the_plain_loops() {
        let (tokens, n) = (45, 70);
        let x = gptq_core::testing::seeded_matrix(tokens, n, 4, 1.0);
        let kept: Vec<usize> = (0..tokens).filter(|t| t % 4 != 1).collect();
        let mut acc = Accumulation::<f32>::new(n).rounding_to_bf16();
        acc.push(ActivationData::F32(x.view()), &kept, Par::Seq);
        acc.flush(Par::Seq);
        let value = |t: usize, j: usize| f64::from(crate::bf16::round_bf16(x[[t, j]]));
        for j in 0..n {
            for i in j..n {
                let want: f64 = kept.iter().map(|&t| value(t, i) * value(t, j)).sum();
                let got = f64::from(acc.sum[j * n + i]);
                assert!(
                    (got - want).abs() < 1e-4,
                    "({i}, {j}): {got} against {want}"
                );
            }
        }
    }
}
