//! The Hessian on the GPU: streaming accumulation with cuBLAS SYRK, and host transfers.

use std::sync::Arc;

use cudarc::cublas::sys as blas;
use cudarc::driver::{CudaSlice, PushKernelArg};
use gptq_core::validate::{check_finite, check_non_empty, check_square};
use gptq_core::{
    ActivationBatch, ActivationData, GptqError, HessianAccumulator, HessianOptions,
    HessianPrecision, Result, shape_string,
};
use half::{bf16, f16};
use ndarray::{Array2, ArrayView1, ArrayView2};

use crate::device::{Device, Session, address, address_mut, launch};
use crate::error::{Context, int};

/// Values (tokens × columns) staged per SYRK: 16 Mi floats, 64 MiB of f32 (plus 128 MiB of f64
/// on the device for an f64 Hessian), and between 64 and 4096 tokens.
const CHUNK_VALUES: usize = 16 << 20;

fn chunk_tokens(columns: usize) -> usize {
    (CHUNK_VALUES / columns.max(1)).clamp(64, 4096)
}

/// A finished Hessian `H = (2/N) Σ x xᵀ` in GPU memory: `columns × columns` f64, both triangles.
pub struct CudaHessian {
    pub(crate) device: Arc<Device>,
    pub(crate) matrix: CudaSlice<f64>,
    pub(crate) columns: usize,
    sequences: usize,
}

impl std::fmt::Debug for CudaHessian {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaHessian")
            .field("columns", &self.columns)
            .field("sequences", &self.sequences)
            .finish_non_exhaustive()
    }
}

impl CudaHessian {
    /// Input columns (the matrix is `columns × columns`).
    pub fn columns(&self) -> usize {
        self.columns
    }
    /// Sequences averaged over (0 for a Hessian copied from the host).
    pub fn sequences(&self) -> usize {
        self.sequences
    }

    /// Checks and uploads a host matrix, as `gptq_linalg::Hessian::from_matrix` does on the
    /// CPU: square, non-empty, finite, symmetric to a relative 1e-5 of its diagonal, and made
    /// exactly symmetric.
    pub(crate) fn from_host(device: &Arc<Device>, hessian: ArrayView2<'_, f64>) -> Result<Self> {
        let n = hessian.nrows();
        check_square("Hessian", hessian, n)?;
        check_non_empty("Hessian", hessian)?;
        check_finite("Hessian", hessian)?;
        let mut matrix = hessian.to_owned();
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
        let data = matrix.into_raw_vec_and_offset().0;
        let session = device.session()?;
        let matrix = session.upload(&data, "the Hessian")?;
        Ok(CudaHessian {
            device: device.clone(),
            matrix,
            columns: n,
            sequences: 0,
        })
    }

    /// Copies the matrix to the host.
    pub(crate) fn to_host(&self) -> Result<Array2<f64>> {
        let session = self.device.session()?;
        let n = self.columns;
        let data = session.download(&self.matrix, n * n, "the Hessian")?;
        Array2::from_shape_vec((n, n), data)
            .map_err(|e| crate::error::backend_error(format!("internal error: {e}")))
    }

    /// The diagonal, on the host.
    pub(crate) fn diagonal(&self, session: &Session<'_>) -> Result<Vec<f64>> {
        let n = self.columns;
        let mut diagonal = session.zeros::<f64>(n, "the Hessian diagonal")?;
        let stream = session.stream();
        // SAFETY: a copy of n doubles, stride n + 1 (the diagonal) within the n × n matrix.
        unsafe {
            blas::cublasDcopy_v2(
                session.blas(),
                int(n, "Hessian size")?,
                address(&self.matrix, stream) as *const f64,
                int(n + 1, "Hessian size")?,
                address_mut(&mut diagonal, stream) as *mut f64,
                1,
            )
        }
        .result()
        .context(|| "cannot copy the Hessian diagonal".into())?;
        session.download(&diagonal, n, "the Hessian diagonal")
    }
}

/// The running lower-triangle sum `Σ x xᵀ` (column-major, lower triangle valid).
enum Sum {
    F32(CudaSlice<f32>),
    F64 {
        sum: CudaSlice<f64>,
        /// The staged chunk widened to f64 on the device.
        widened: CudaSlice<f64>,
    },
}

/// Streams activation batches into a Hessian on the GPU.
///
/// Each batch is validated whole on the host first (shape, sequences ≥ 1, mask length, NaN/Inf,
/// with the same typed errors as the CPU accumulator), so a rejected batch leaves the
/// accumulator untouched. Kept tokens are converted to f32 on the host (exact for f16/bf16; the
/// host reads every value for the NaN/Inf check anyway) into a staging buffer of whole rows,
/// filled across batches; each full buffer is uploaded and multiplied into the lower triangle by
/// one SYRK: `SSYRK` for [`HessianPrecision::F32`], or widened to f64 on the device and `DSYRK`
/// for [`HessianPrecision::F64`]. Small batches therefore cost the same as large ones.
pub struct CudaHessianAccumulator {
    device: Arc<Device>,
    columns: usize,
    sum: Sum,
    /// `[chunk_tokens, columns]` row-major f32: a column-major `columns × tokens` matrix.
    staging: Vec<f32>,
    chunk: CudaSlice<f32>,
    chunk_tokens: usize,
    filled: usize,
    sequences: usize,
    tokens: usize,
}

impl std::fmt::Debug for CudaHessianAccumulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaHessianAccumulator")
            .field("columns", &self.columns)
            .field("sequences", &self.sequences)
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}

impl CudaHessianAccumulator {
    pub(crate) fn new(
        device: &Arc<Device>,
        columns: usize,
        options: HessianOptions,
    ) -> Result<Self> {
        if columns == 0 {
            return Err(GptqError::Empty {
                what: "Hessian",
                shape: shape_string(&[0, 0]),
            });
        }
        int(columns, "Hessian size")?;
        let chunk_tokens = chunk_tokens(columns);
        let session = device.session()?;
        let sum = match options.precision {
            HessianPrecision::F32 => Sum::F32(session.zeros(columns * columns, "the Hessian sum")?),
            HessianPrecision::F64 => Sum::F64 {
                sum: session.zeros(columns * columns, "the Hessian sum")?,
                widened: session.zeros(chunk_tokens * columns, "the activation chunk")?,
            },
            HessianPrecision::Bf16 => {
                return Err(GptqError::Unsupported {
                    backend: "cuda",
                    what: "bf16 Hessian products (a CPU option; use f32 or f64)".into(),
                });
            }
        };
        let chunk = session.zeros(chunk_tokens * columns, "the activation chunk")?;
        drop(session);
        Ok(CudaHessianAccumulator {
            device: device.clone(),
            columns,
            sum,
            staging: vec![0.0; chunk_tokens * columns],
            chunk,
            chunk_tokens,
            filled: 0,
            sequences: 0,
            tokens: 0,
        })
    }

    /// Tokens accumulated so far (after masking).
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Copies the kept tokens into the staging buffer, multiplying each time it fills.
    fn push(&mut self, data: ActivationData<'_>, kept: &[usize]) -> Result<()> {
        let n = self.columns;
        for &token in kept {
            let target = &mut self.staging[self.filled * n..(self.filled + 1) * n];
            match data {
                ActivationData::F32(x) => copy_row(target, x.row(token), |v| v),
                ActivationData::F16(x) => copy_row(target, x.row(token), f16::to_f32),
                ActivationData::BF16(x) => copy_row(target, x.row(token), bf16::to_f32),
            }
            self.filled += 1;
            if self.filled == self.chunk_tokens {
                self.flush()?;
            }
        }
        Ok(())
    }

    /// Uploads the staged tokens and multiplies them into the sum: `C += A Aᵀ` with `A` the
    /// column-major `columns × filled` view of the row-major staging buffer.
    fn flush(&mut self) -> Result<()> {
        if self.filled == 0 {
            return Ok(());
        }
        let (n, k) = (self.columns, self.filled);
        let values = n * k;
        let mut session = self.device.session()?;
        session.upload_into(&self.staging[..values], &mut self.chunk, "activations")?;
        let stream = session.stream().clone();
        let (ni, ki) = (int(n, "Hessian size")?, int(k, "chunk tokens")?);
        let (lower, transpose) = (
            blas::cublasFillMode_t::CUBLAS_FILL_MODE_LOWER,
            blas::cublasOperation_t::CUBLAS_OP_N,
        );
        match &mut self.sum {
            Sum::F32(sum) => {
                let (one, a, c) = (
                    1.0f32,
                    address(&self.chunk, &stream),
                    address_mut(sum, &stream),
                );
                // SAFETY: A is n × k with lda = n inside `chunk`; C is n × n inside `sum`.
                unsafe {
                    blas::cublasSsyrk_v2(
                        session.blas(),
                        lower,
                        transpose,
                        ni,
                        ki,
                        &one,
                        a as *const f32,
                        ni,
                        &one,
                        c as *mut f32,
                        ni,
                    )
                }
                .result()
                .context(|| "cuBLAS SSYRK failed on the Hessian".into())?;
            }
            Sum::F64 { sum, widened } => {
                let kernels = session.kernels()?;
                let config = session.grid_stride(values);
                let count = values as i64;
                let mut args = stream.launch_builder(&kernels.f32_to_f64);
                args.arg(&self.chunk).arg(&*widened).arg(&count);
                launch(args, config, "f32-to-f64")?;
                let (one, a, c) = (1.0f64, address(widened, &stream), address_mut(sum, &stream));
                // SAFETY: as above, in f64.
                unsafe {
                    blas::cublasDsyrk_v2(
                        session.blas(),
                        lower,
                        transpose,
                        ni,
                        ki,
                        &one,
                        a as *const f64,
                        ni,
                        &one,
                        c as *mut f64,
                        ni,
                    )
                }
                .result()
                .context(|| "cuBLAS DSYRK failed on the Hessian".into())?;
            }
        }
        // No wait: a copy from pageable host memory returns once the data is staged, so the
        // host fills the next chunk while the GPU multiplies this one.
        self.filled = 0;
        Ok(())
    }
}

/// Converts one token row to f32.
fn copy_row<S: Copy>(target: &mut [f32], row: ArrayView1<'_, S>, to_f32: impl Fn(S) -> f32) {
    match row.as_slice() {
        Some(values) => {
            for (t, &v) in target.iter_mut().zip(values) {
                *t = to_f32(v);
            }
        }
        None => {
            for (t, &v) in target.iter_mut().zip(row.iter()) {
                *t = to_f32(v);
            }
        }
    }
}

impl HessianAccumulator for CudaHessianAccumulator {
    type Hessian = CudaHessian;

    fn columns(&self) -> usize {
        self.columns
    }

    fn sequences(&self) -> usize {
        self.sequences
    }

    fn add_batch(&mut self, batch: &ActivationBatch<'_>) -> Result<()> {
        let kept = batch.kept_tokens(self.columns)?;
        self.push(batch.data(), &kept)?;
        self.sequences += batch.sequence_count();
        self.tokens += kept.len();
        Ok(())
    }

    fn finish(mut self) -> Result<CudaHessian> {
        if self.sequences == 0 {
            return Err(GptqError::NoSamples {
                columns: self.columns,
            });
        }
        self.flush()?;
        let n = self.columns;
        let scale = 2.0 / self.sequences as f64;
        let mut session = self.device.session()?;
        let kernels = session.kernels()?;
        let matrix = session.zeros::<f64>(n * n, "the Hessian")?;
        let config = session.grid_stride(n * n);
        let ni = int(n, "Hessian size")?;
        let stream = session.stream().clone();
        let mut args = match &self.sum {
            Sum::F32(sum) => {
                let mut args = stream.launch_builder(&kernels.finish_hessian_f32);
                args.arg(sum);
                args
            }
            Sum::F64 { sum, .. } => {
                let mut args = stream.launch_builder(&kernels.finish_hessian_f64);
                args.arg(sum);
                args
            }
        };
        args.arg(&matrix).arg(&ni).arg(&scale);
        launch(args, config, "Hessian finishing")?;
        session.synchronize()?;
        drop(session);
        Ok(CudaHessian {
            device: self.device.clone(),
            matrix,
            columns: n,
            sequences: self.sequences,
        })
    }
}
