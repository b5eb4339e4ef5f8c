//! The quadratic loss `tr(D H Dᵀ)` on the GPU, in f64.
//!
//! `D` is uploaded in chunks of rows and widened to f64 on the device; one DGEMM gives
//! `H Dᵀ` (H is stored whole and symmetric), and a reduction kernel sums `Σ D ∘ (D H)` into 256
//! partial sums in a fixed order, which the host adds in order: the result is the same on every
//! run (the conformance checks compare losses bit for bit), and within rounding of the CPU's.

use cudarc::cublas::sys as blas;
use cudarc::driver::{LaunchConfig, PushKernelArg};
use gptq_core::{GptqError, Result, shape_string};
use ndarray::ArrayView2;

use crate::device::{address, address_mut, launch};
use crate::error::{Context, int};
use crate::hessian::CudaHessian;

/// Values of `D` per chunk: 8 Mi (two f64 buffers of 64 MiB, one f32 of 32 MiB).
const CHUNK_VALUES: usize = 8 << 20;

/// Blocks of the reduction kernel (256 threads each, as the kernel requires).
const PARTIALS: usize = 256;

pub(crate) fn quadratic_loss(hessian: &CudaHessian, delta: ArrayView2<'_, f32>) -> Result<f64> {
    let n = hessian.columns;
    if delta.ncols() != n {
        return Err(GptqError::ShapeMismatch {
            what: "loss delta",
            expected: format!("[rows, {n}]"),
            actual: shape_string(&[delta.nrows(), delta.ncols()]),
        });
    }
    let rows = delta.nrows();
    if rows == 0 {
        return Ok(0.0);
    }
    let chunk_rows = (CHUNK_VALUES / n).clamp(1, rows);
    let mut session = hessian.device.session()?;
    let kernels = session.kernels()?;
    let stream = session.stream().clone();
    let delta = delta.as_standard_layout();
    let delta = delta.as_slice().unwrap_or(&[]);
    let values = chunk_rows * n;
    let mut chunk = session.zeros::<f32>(values, "the loss delta")?;
    let wide = session.zeros::<f64>(values, "the loss delta")?;
    let mut product = session.zeros::<f64>(values, "the loss product")?;
    let partials = session.zeros::<f64>(PARTIALS, "the loss partial sums")?;
    let ni = int(n, "Hessian size")?;
    let mut total = 0.0f64;
    for first in (0..rows).step_by(chunk_rows) {
        let count = chunk_rows.min(rows - first);
        let part = &delta[first * n..(first + count) * n];
        session.upload_into(part, &mut chunk, "the loss delta")?;
        let len = (count * n) as i64;
        let mut args = stream.launch_builder(&kernels.f32_to_f64);
        args.arg(&chunk).arg(&wide).arg(&len);
        launch(args, session.grid_stride(count * n), "f32-to-f64")?;
        let (one, zero) = (1.0f64, 0.0f64);
        // SAFETY: the row-major `count × n` chunk is the column-major n × count `Dᵀ` (ld n);
        // P = H · Dᵀ is n × count (ld n); H is n × n (ld n), symmetric.
        unsafe {
            blas::cublasDgemm_v2(
                session.blas(),
                blas::cublasOperation_t::CUBLAS_OP_N,
                blas::cublasOperation_t::CUBLAS_OP_N,
                ni,
                int(count, "loss rows")?,
                ni,
                &one,
                address(&hessian.matrix, &stream) as *const f64,
                ni,
                address(&wide, &stream) as *const f64,
                ni,
                &zero,
                address_mut(&mut product, &stream) as *mut f64,
                ni,
            )
        }
        .result()
        .context(|| "cuBLAS DGEMM failed on the loss".into())?;
        let config = LaunchConfig {
            grid_dim: (PARTIALS as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut args = stream.launch_builder(&kernels.dot_partials);
        args.arg(&wide).arg(&product).arg(&len).arg(&partials);
        launch(args, config, "loss reduction")?;
        for partial in session.download(&partials, PARTIALS, "the loss partial sums")? {
            total += partial;
        }
    }
    Ok(total)
}
