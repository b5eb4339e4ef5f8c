//! Streaming Hessian accumulation.

use faer::linalg::matmul::triangular::{BlockStructure, matmul};
use faer::{Accum, MatMut, MatRef, Par};
use gptq_core::validate::{check_finite, check_square};
use gptq_core::{
    ActivationBatch, ActivationData, GptqError, HessianAccumulator, HessianOptions,
    HessianPrecision, Result, shape_string,
};
use half::{bf16, f16};
use ndarray::{Array2, ArrayView2};

/// Tokens converted and multiplied at a time: large enough for an efficient product, small
/// enough that the transposed copy stays a modest buffer.
const CHUNK_TOKENS: usize = 1024;

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
    F64(Vec<f64>),
    F32(Vec<f32>),
}

/// Streams activation batches into a Hessian on the CPU.
///
/// Each batch is validated whole before anything is added, so a rejected batch leaves the sum
/// untouched. Tokens are transposed into column-major chunks of at most 1024 and multiplied into
/// the lower triangle only (a SYRK), in f64 by default.
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
            HessianPrecision::F64 => LowerSum::F64(vec![0.0; columns * columns]),
            HessianPrecision::F32 => LowerSum::F32(vec![0.0; columns * columns]),
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

    fn validate(&self, batch: &ActivationBatch<'_>) -> Result<Vec<usize>> {
        let (tokens, columns) = batch.data().dim();
        if columns != self.columns {
            return Err(GptqError::ShapeMismatch {
                what: "activation batch",
                expected: format!("[tokens, {}]", self.columns),
                actual: shape_string(&[tokens, columns]),
            });
        }
        if batch.sequence_count() == 0 {
            return Err(GptqError::InvalidConfig(
                "an activation batch must come from at least one sequence".into(),
            ));
        }
        match batch.data() {
            ActivationData::F32(x) => check_finite("activations", x)?,
            ActivationData::F16(x) => check_finite("activations", x)?,
            ActivationData::BF16(x) => check_finite("activations", x)?,
        }
        match batch.token_mask() {
            None => Ok((0..tokens).collect()),
            Some(mask) if mask.len() == tokens => Ok((0..tokens).filter(|&t| mask[t]).collect()),
            Some(mask) => Err(GptqError::ShapeMismatch {
                what: "token mask",
                expected: format!("[{tokens}]"),
                actual: format!("[{}]", mask.len()),
            }),
        }
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
        let kept = self.validate(batch)?;
        let n = self.columns;
        let par = self.par;
        match &mut self.sum {
            LowerSum::F64(sum) => accumulate(sum, n, batch.data(), &kept, par),
            LowerSum::F32(sum) => accumulate(sum, n, batch.data(), &kept, par),
        }
        self.sequences += batch.sequence_count();
        self.tokens += kept.len();
        Ok(())
    }

    fn finish(self) -> Result<Hessian> {
        if self.sequences == 0 {
            return Err(GptqError::NoSamples {
                columns: self.columns,
            });
        }
        let n = self.columns;
        let scale = 2.0 / self.sequences as f64;
        let lower = |i: usize, j: usize| -> f64 {
            // The sum is column-major: entry (i, j) with i >= j sits at j * n + i.
            let (i, j) = if i >= j { (i, j) } else { (j, i) };
            match &self.sum {
                LowerSum::F64(s) => s[j * n + i],
                LowerSum::F32(s) => f64::from(s[j * n + i]),
            }
        };
        let matrix = Array2::from_shape_fn((n, n), |(i, j)| scale * lower(i, j));
        Ok(Hessian {
            matrix,
            sequences: self.sequences,
        })
    }
}

/// A float type the Hessian can be accumulated in.
trait SumFloat: Copy + Default {
    fn from_f32(x: f32) -> Self;
    /// `sum += xᵀ x` on the lower triangle, `x` being `rows × n` column-major.
    fn add_gram(sum: &mut [Self], x: &[Self], rows: usize, n: usize, par: Par);
}

macro_rules! impl_sum_float {
    ($t:ty) => {
        impl SumFloat for $t {
            #[inline]
            fn from_f32(x: f32) -> Self {
                x as $t
            }
            fn add_gram(sum: &mut [Self], x: &[Self], rows: usize, n: usize, par: Par) {
                let x = MatRef::from_column_major_slice(x, rows, n);
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
impl_sum_float!(f64);
impl_sum_float!(f32);

/// Adds the kept tokens of `data` into the column-major lower triangle `sum`.
fn accumulate<T: SumFloat>(
    sum: &mut [T],
    n: usize,
    data: ActivationData<'_>,
    kept: &[usize],
    par: Par,
) {
    let mut chunk = vec![T::default(); CHUNK_TOKENS.min(kept.len().max(1)) * n];
    for tokens in kept.chunks(CHUNK_TOKENS) {
        let rows = tokens.len();
        let buffer = &mut chunk[..rows * n];
        match data {
            ActivationData::F32(x) => transpose_into(buffer, x, tokens, |v| v),
            ActivationData::F16(x) => transpose_into(buffer, x, tokens, f16::to_f32),
            ActivationData::BF16(x) => transpose_into(buffer, x, tokens, bf16::to_f32),
        }
        T::add_gram(sum, buffer, rows, n, par);
    }
}

/// Copies the selected token rows of `x` into `buffer` as a column-major `tokens × n` matrix, in
/// tiles so that both the reads and the writes stay in cache.
fn transpose_into<S: Copy, T: SumFloat>(
    buffer: &mut [T],
    x: ArrayView2<'_, S>,
    tokens: &[usize],
    to_f32: impl Fn(S) -> f32,
) {
    const TILE: usize = 64;
    let rows = tokens.len();
    let n = x.ncols();
    for t0 in (0..rows).step_by(TILE) {
        for j0 in (0..n).step_by(TILE) {
            for (t, &token) in tokens.iter().enumerate().skip(t0).take(TILE) {
                let row = x.row(token);
                for j in j0..(j0 + TILE).min(n) {
                    buffer[j * rows + t] = T::from_f32(to_f32(row[j]));
                }
            }
        }
    }
}
