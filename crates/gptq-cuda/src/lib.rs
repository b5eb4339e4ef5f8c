//! # gptq-cuda
//!
//! The CUDA backend of gptq-rs: [`CudaBackend`] implements [`gptq_core::Backend`], so
//! `Gptq::new(CudaBackend::new(0)?, config)` runs GPTQ on an NVIDIA GPU with nothing else
//! changed. The Hessian, the inverse factor and the working weights stay in GPU memory; only
//! activations, weights, codes, grid parameters and timings cross the bus.
//!
//! - Hessian ([`CudaHessianAccumulator`]): batches validated on the host exactly as the CPU
//!   accumulator does, staged as f32 across batches, multiplied into the lower triangle with
//!   cuBLAS SYRK, in f32 or f64 ([`gptq_core::HessianPrecision`]).
//! - Inverse factor ([`CudaFactor`]): a gather kernel builds the reversed, permuted, damped
//!   matrix (f64), cuSOLVER factors it (`potrf`) and inverts the factor (`trtri`); `U` is the
//!   inverse read backwards, as on the CPU, with the same damping retries and errors.
//! - Blocked solve: an NVRTC-compiled kernel runs the in-block column loop, one thread per row,
//!   replicating the CPU row kernel operation for operation in f32 (fixed and dynamic groups,
//!   the range search, the min–max grid with its clipping search, round-half-to-even, no fused
//!   multiply-add); a cuBLAS SGEMM applies each block's lazy update.
//! - Loss: DGEMM and a fixed-order reduction in f64 on the GPU.
//! - Forward products ([`gptq_core::ForwardCompute`], implemented by [`CudaBackend`] beside
//!   [`Backend`]): the linears' `x · wᵀ` of a pipeline's calibration forward passes, one f32
//!   SGEMM each, so `gptq quantize --device cuda` runs those on the GPU too (attention stays the
//!   model's f32 CPU attention).
//!
//! Everything CUDA is loaded at run time (cudarc's dynamic loading), so this crate builds
//! anywhere; [`CudaBackend::new`] returns [`GptqError::Unsupported`] on a machine without an
//! NVIDIA driver or GPU, and [`GptqError::Backend`] for every other CUDA failure (missing
//! libraries, out of memory, a kernel that does not compile, with the NVRTC log).
//!
//! ```no_run
//! use gptq_core::{GroupSize, QuantConfig};
//! use gptq_cuda::CudaBackend;
//! use gptq_solver::Gptq;
//!
//! let backend = CudaBackend::new(0)?;
//! let gptq = Gptq::new(backend, QuantConfig::builder().bits(4).group_size(GroupSize::Columns(128)).build()?);
//! # Ok::<(), gptq_core::GptqError>(())
//! ```

#![warn(missing_docs)]

#[macro_use]
mod error;
mod device;
mod factor;
mod hessian;
mod kernels;
mod loss;
mod products;
mod solve;

use std::sync::Arc;

use gptq_core::{
    Backend, BlockSolution, Damping, FactorRequest, GptqError, HessianOptions, QuantGrid, Result,
    SolvePlan,
};
use ndarray::{Array2, ArrayView2};

use device::Device;
pub use factor::CudaFactor;
pub use hessian::{CudaHessian, CudaHessianAccumulator};
pub use kernels::{KERNEL_NAMES, KERNEL_SOURCE, compile_kernels, nvrtc_present};

/// GPTQ on one NVIDIA GPU. Cheap to clone (the device is shared); all work of one backend runs
/// in order on one stream.
#[derive(Clone)]
pub struct CudaBackend {
    device: Arc<Device>,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("ordinal", &self.ordinal())
            .field("device", &self.device.name)
            .finish()
    }
}

impl CudaBackend {
    /// Opens GPU `ordinal` (0 for the first).
    ///
    /// Fails with [`GptqError::Unsupported`] when this machine has no NVIDIA driver
    /// (libcuda cannot be loaded), the driver is older than CUDA 13.0, there is no GPU, or
    /// `ordinal` is out of range; with [`GptqError::Backend`] when cuBLAS, cuSOLVER or NVRTC
    /// cannot be loaded or the device cannot be opened. Never panics.
    pub fn new(ordinal: usize) -> Result<Self> {
        Ok(CudaBackend {
            device: Device::open(ordinal)?,
        })
    }

    /// Whether an NVIDIA driver can be loaded on this machine (there may still be no GPU).
    pub fn driver_present() -> bool {
        device::driver_present()
    }

    /// The device ordinal.
    pub fn ordinal(&self) -> usize {
        self.device.ctx.ordinal()
    }

    /// The GPU's name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn device_name(&self) -> &str {
        &self.device.name
    }

    /// The GPU's compute capability `(major, minor)`.
    pub fn compute_capability(&self) -> (i32, i32) {
        self.device.compute_capability
    }

    /// Compiles and loads the kernels now (otherwise they are compiled on first use, which
    /// takes a moment).
    pub fn warm_up(&self) -> Result<()> {
        self.device.session()?.kernels().map(|_| ())
    }

    /// Uploads an inverse factor computed elsewhere (`U`, upper-triangular with a positive
    /// diagonal, `columns × columns`, quantization order), e.g. the CPU's, to run the blocked
    /// solve on exactly the same `U`.
    pub fn factor_from_host(&self, upper: ArrayView2<'_, f32>) -> Result<CudaFactor> {
        factor::from_host(&self.device, upper)
    }

    fn same_device(&self, other: &Arc<Device>, what: &str) -> Result<()> {
        if Arc::ptr_eq(&self.device, other) {
            Ok(())
        } else {
            Err(GptqError::InvalidConfig(format!(
                "{what} was made by another CudaBackend; use the backend (or a clone of it) \
                 that made it"
            )))
        }
    }
}

impl Backend for CudaBackend {
    type Hessian = CudaHessian;
    type Accumulator = CudaHessianAccumulator;
    type Factor = CudaFactor;

    fn name(&self) -> &'static str {
        error::NAME
    }

    fn accumulator(
        &self,
        columns: usize,
        options: HessianOptions,
    ) -> Result<CudaHessianAccumulator> {
        CudaHessianAccumulator::new(&self.device, columns, options)
    }

    fn hessian_from_host(&self, hessian: ArrayView2<'_, f64>) -> Result<CudaHessian> {
        CudaHessian::from_host(&self.device, hessian)
    }

    fn factor_diagonal(&self, factor: &CudaFactor) -> Result<Vec<f32>> {
        Ok(factor.diagonal.clone())
    }

    fn hessian_to_host(&self, hessian: &CudaHessian) -> Result<Array2<f64>> {
        hessian.to_host()
    }

    fn hessian_diagonal(&self, hessian: &CudaHessian) -> Result<Vec<f64>> {
        let session = hessian.device.session()?;
        hessian.diagonal(&session)
    }

    fn inverse_factor(
        &self,
        hessian: &CudaHessian,
        request: &FactorRequest<'_>,
    ) -> Result<(CudaFactor, Damping)> {
        self.same_device(&hessian.device, "the Hessian")?;
        factor::damped_inverse_factor(hessian, request)
    }

    fn blocked_solve<G: QuantGrid + ?Sized>(
        &self,
        weights: ArrayView2<'_, f32>,
        factor: &CudaFactor,
        plan: &SolvePlan,
        grid: &G,
    ) -> Result<BlockSolution> {
        self.same_device(&factor.device, "the inverse factor")?;
        let mut session = self.device.session()?;
        solve::blocked_solve(&mut session, weights, factor, plan, grid)
    }

    fn quadratic_loss(&self, hessian: &CudaHessian, delta: ArrayView2<'_, f32>) -> Result<f64> {
        self.same_device(&hessian.device, "the Hessian")?;
        loss::quadratic_loss(hessian, delta)
    }
}
