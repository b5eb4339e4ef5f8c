//! The damped inverse Cholesky factor with cuSOLVER.
//!
//! As on the CPU (gptq-linalg's `damped_inverse_factor`), `U` comes from one Cholesky
//! factorization and one triangular inverse: with `J` the index reversal, `J A J = L Lᵀ` gives
//! `A⁻¹ = UᵀU` with `U = J L⁻¹ J`, which in row-major storage is `L⁻¹` read backwards.
//! A gather kernel builds `J P (H + dead fix) Pᵀ J + λI` (f64), `potrf` factors it, `trtri`
//! inverts `L` in place, and a last kernel reads `L⁻¹` backwards into the row-major f32 `U`.

use std::sync::Arc;

use cudarc::cublas::sys as blas;
use cudarc::cusolver::sys as solver;
use cudarc::driver::{CudaSlice, PushKernelArg};
use gptq_core::validate::check_finite;
use gptq_core::{Damping, FactorRequest, GptqError, Result};

use crate::device::{Device, Session, address, address_mut, launch};
use crate::error::{Context, backend_error, int};
use crate::hessian::CudaHessian;

/// The upper-triangular `U` with `(P H Pᵀ + λI)⁻¹ = UᵀU`, row-major f32 in GPU memory, in
/// quantization order; its diagonal is kept on the host too.
pub struct CudaFactor {
    pub(crate) upper: CudaSlice<f32>,
    pub(crate) columns: usize,
    pub(crate) diagonal: Vec<f32>,
    pub(crate) device: Arc<Device>,
}

impl std::fmt::Debug for CudaFactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaFactor")
            .field("columns", &self.columns)
            .finish_non_exhaustive()
    }
}

impl CudaFactor {
    /// Size of the factor.
    pub fn columns(&self) -> usize {
        self.columns
    }
    /// `U_kk`, quantization order.
    pub fn diagonal(&self) -> &[f32] {
        &self.diagonal
    }
}

/// Checks and uploads a host factor.
pub(crate) fn from_host(
    device: &Arc<Device>,
    upper: ndarray::ArrayView2<'_, f32>,
) -> Result<CudaFactor> {
    let n = upper.nrows();
    gptq_core::validate::check_square("inverse factor", upper, n)?;
    gptq_core::validate::check_non_empty("inverse factor", upper)?;
    check_finite("inverse factor", upper)?;
    if let Some(k) = (0..n).find(|&k| upper[[k, k]] <= 0.0) {
        return Err(GptqError::InvalidConfig(format!(
            "the inverse factor's diagonal must be positive, found U[{k}, {k}] = {}",
            upper[[k, k]]
        )));
    }
    if let Some(((i, j), _)) = upper.indexed_iter().find(|&((i, j), &u)| j < i && u != 0.0) {
        return Err(GptqError::InvalidConfig(format!(
            "the inverse factor must be upper-triangular, found U[{i}, {j}] = {}",
            upper[[i, j]]
        )));
    }
    let data = upper.as_standard_layout();
    let data = data.as_slice().unwrap_or(&[]);
    let session = device.session()?;
    let buffer = session.upload(data, "the inverse factor")?;
    Ok(CudaFactor {
        upper: buffer,
        columns: n,
        diagonal: upper.diag().to_vec(),
        device: device.clone(),
    })
}

/// cuSOLVER's parameter object of the 64-bit API, destroyed on drop.
struct Params(solver::cusolverDnParams_t);

impl Params {
    fn new() -> Result<Self> {
        cudarc::cusolver::result::dn_create_params()
            .map(Params)
            .context(|| "cannot create cuSOLVER parameters".into())
    }
}

impl Drop for Params {
    fn drop(&mut self) {
        // SAFETY: created by cusolverDnCreateParams and destroyed once. An error here can only
        // be reported by the next call, so it is ignored.
        let _ = unsafe { cudarc::cusolver::result::dn_destroy_params(self.0) };
    }
}

/// Sets `*flag` if the Hessian holds a non-finite value; on the host, finds where.
fn check_hessian_finite(session: &mut Session<'_>, hessian: &CudaHessian) -> Result<()> {
    let n = hessian.columns;
    let kernels = session.kernels()?;
    let flag = session.zeros::<i32>(1, "a flag")?;
    let count = (n * n) as i64;
    let mut args = session.stream().launch_builder(&kernels.find_nonfinite_f64);
    args.arg(&hessian.matrix).arg(&count).arg(&flag);
    launch(args, session.grid_stride(n * n), "non-finite search")?;
    if session.download(&flag, 1, "a flag")?[0] == 0 {
        return Ok(());
    }
    let matrix = session.download(&hessian.matrix, n * n, "the Hessian")?;
    let matrix = ndarray::ArrayView2::from_shape((n, n), &matrix)
        .map_err(|e| backend_error(format!("internal error: {e}")))?;
    check_finite("Hessian", matrix)?;
    Err(backend_error(
        "the GPU flagged a non-finite Hessian value that the host copy does not hold",
    ))
}

/// Factors the damped, dead-column-fixed, permuted Hessian, retrying with more damping after a
/// failed factorization exactly as the CPU does.
pub(crate) fn damped_inverse_factor(
    hessian: &CudaHessian,
    request: &FactorRequest<'_>,
) -> Result<(CudaFactor, Damping)> {
    let n = hessian.columns;
    let mut session = hessian.device.session()?;
    check_hessian_finite(&mut session, hessian)?;
    let order = request.reversed_order(n)?;
    let mut diagonal = hessian.diagonal(&session)?;
    for &dead in request.dead_columns {
        diagonal[dead] = 1.0;
    }
    let mean_diagonal = diagonal.iter().sum::<f64>() / n as f64;

    let kernels = session.kernels()?;
    let stream = session.stream().clone();
    let ni = int(n, "Hessian size")?;
    let n64 = n as i64;
    let order: Vec<i32> = order.iter().map(|&o| o as i32).collect();
    let order = session.upload(&order, "the column order")?;
    let diagonal = session.upload(&diagonal, "the Hessian diagonal")?;
    let mut matrix = session.zeros::<f64>(n * n, "the matrix to factor")?;
    let upper = session.zeros::<f32>(n * n, "the inverse factor")?;
    let mut info = session.zeros::<i32>(1, "cuSOLVER's status")?;
    let mut flag = session.zeros::<i32>(1, "a flag")?;

    let params = Params::new()?;
    let (lower, non_unit, f64_type) = (
        solver::cublasFillMode_t::CUBLAS_FILL_MODE_LOWER,
        solver::cublasDiagType_t::CUBLAS_DIAG_NON_UNIT,
        solver::cudaDataType::CUDA_R_64F,
    );
    let (mut potrf_device, mut potrf_host, mut trtri_device, mut trtri_host) = (0, 0, 0, 0);
    // SAFETY: size queries on the n × n matrix buffer (lda = n).
    unsafe {
        solver::cusolverDnXpotrf_bufferSize(
            session.solver(),
            params.0,
            lower,
            n64,
            f64_type,
            address(&matrix, &stream) as *const _,
            n64,
            f64_type,
            &mut potrf_device,
            &mut potrf_host,
        )
        .result()
        .context(|| "cuSOLVER cannot size the Cholesky workspace".into())?;
        solver::cusolverDnXtrtri_bufferSize(
            session.solver(),
            lower,
            non_unit,
            n64,
            f64_type,
            address_mut(&mut matrix, &stream) as *mut _,
            n64,
            &mut trtri_device,
            &mut trtri_host,
        )
        .result()
        .context(|| "cuSOLVER cannot size the triangular-inverse workspace".into())?;
    }
    let device_bytes = potrf_device.max(trtri_device);
    let mut workspace = session.zeros::<u8>(device_bytes, "the cuSOLVER workspace")?;
    let mut host_workspace = vec![0u8; potrf_host.max(trtri_host).max(1)];

    let mut tried = Vec::new();
    for damp_percent in request.damping.attempts() {
        tried.push(damp_percent);
        let damp = damp_percent * mean_diagonal;
        let mut args = stream.launch_builder(&kernels.gather_damped);
        args.arg(&hessian.matrix)
            .arg(&order)
            .arg(&diagonal)
            .arg(&damp)
            .arg(&matrix)
            .arg(&ni);
        launch(args, session.grid_stride(n * n), "damped gather")?;

        // SAFETY: the n × n column-major matrix (lda = n), with the workspaces sized above.
        unsafe {
            solver::cusolverDnXpotrf(
                session.solver(),
                params.0,
                lower,
                n64,
                f64_type,
                address_mut(&mut matrix, &stream) as *mut _,
                n64,
                f64_type,
                address_mut(&mut workspace, &stream) as *mut _,
                device_bytes,
                host_workspace.as_mut_ptr() as *mut _,
                potrf_host,
                address_mut(&mut info, &stream) as *mut i32,
            )
        }
        .result()
        .context(|| "cuSOLVER's Cholesky factorization failed".into())?;
        if !solver_succeeded(&session, &info, "Cholesky factorization")? {
            // A non-positive pivot: more damping.
            continue;
        }

        // SAFETY: L in the lower triangle of the same buffer, inverted in place.
        unsafe {
            solver::cusolverDnXtrtri(
                session.solver(),
                lower,
                non_unit,
                n64,
                f64_type,
                address_mut(&mut matrix, &stream) as *mut _,
                n64,
                address_mut(&mut workspace, &stream) as *mut _,
                device_bytes,
                host_workspace.as_mut_ptr() as *mut _,
                trtri_host,
                address_mut(&mut info, &stream) as *mut i32,
            )
        }
        .result()
        .context(|| "cuSOLVER's triangular inverse failed".into())?;
        if !solver_succeeded(&session, &info, "triangular inverse")? {
            // A zero on the diagonal: more damping.
            continue;
        }

        stream
            .memset_zeros(&mut flag)
            .context(|| "cannot clear a flag".into())?;
        let mut args = stream.launch_builder(&kernels.reverse_upper);
        args.arg(&matrix).arg(&upper).arg(&ni).arg(&flag);
        launch(args, session.grid_stride(n * n), "factor reversal")?;
        if session.download(&flag, 1, "a flag")?[0] != 0 {
            // The inverse overflowed: more damping, as on the CPU.
            continue;
        }

        let mut diagonal = session.zeros::<f32>(n, "the factor diagonal")?;
        // SAFETY: n floats at stride n + 1 (the diagonal) of the n × n factor.
        unsafe {
            blas::cublasScopy_v2(
                session.blas(),
                ni,
                address(&upper, &stream) as *const f32,
                int(n + 1, "Hessian size")?,
                address_mut(&mut diagonal, &stream) as *mut f32,
                1,
            )
        }
        .result()
        .context(|| "cannot copy the factor diagonal".into())?;
        let diagonal = session.download(&diagonal, n, "the factor diagonal")?;
        drop(session);
        let damping = Damping {
            damp_percent,
            absolute: damp,
            tried,
        };
        return Ok((
            CudaFactor {
                upper,
                columns: n,
                diagonal,
                device: hessian.device.clone(),
            },
            damping,
        ));
    }
    Err(GptqError::NotPositiveDefinite { columns: n, tried })
}

/// Reads a cuSOLVER routine's `info`: `Ok(true)` when it succeeded, `Ok(false)` when the matrix
/// stopped it (a non-positive pivot, a zero diagonal: the caller damps more), and an error when
/// it rejected one of its arguments (a bug here, not a property of the Hessian).
fn solver_succeeded(session: &Session, info: &CudaSlice<i32>, routine: &str) -> Result<bool> {
    let status = session.download(info, 1, "cuSOLVER's status")?[0];
    if status < 0 {
        return Err(backend_error(format!(
            "cuSOLVER's {routine} rejected argument {}",
            -status
        )));
    }
    Ok(status == 0)
}
