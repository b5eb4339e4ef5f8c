//! The device: context, stream, library handles and the compiled kernels.
//!
//! All work of one backend goes to one stream, in the order it is issued, under one lock: the
//! cuBLAS and cuSOLVER handles are not meant for concurrent use, and a single in-order stream
//! needs no events between operations.

use std::ffi::c_void;
use std::sync::{Arc, Mutex, MutexGuard};

use cudarc::cublas::CudaBlas;
use cudarc::cusolver::DnHandle;
use cudarc::driver::{
    CudaContext, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig,
    ValidAsZeroBits, sys as driver_sys,
};
use gptq_core::Result;

use crate::error::{Context, backend_error, size_string, unsupported};
use crate::kernels::{self, Kernels};

/// The oldest driver API the bindings are generated for (`cuda-13000`): CUDA 13.0.
const MIN_DRIVER_VERSION: i32 = 13000;

/// Whether an NVIDIA driver (libcuda) can be loaded on this machine.
pub(crate) fn driver_present() -> bool {
    // SAFETY: only tries to open the library.
    unsafe { driver_sys::is_culib_present() }
}

/// The CUDA version the driver supports, as 1000·major + 10·minor.
fn driver_version() -> Result<i32> {
    let mut version = 0;
    // SAFETY: the driver library is present (checked by the caller); cuDriverGetVersion needs no
    // initialization and writes one int.
    unsafe { driver_sys::cuDriverGetVersion(&mut version) }
        .result()
        .context(|| "cannot query the CUDA driver version".into())?;
    Ok(version)
}

/// Handles that are used under the device lock.
struct State {
    blas: CudaBlas,
    solver: DnHandle,
    kernels: Option<Arc<Kernels>>,
}

/// One GPU as the backend uses it.
pub(crate) struct Device {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    state: Mutex<State>,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub multiprocessors: usize,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("ordinal", &self.ctx.ordinal())
            .field("name", &self.name)
            .field("compute_capability", &self.compute_capability)
            .finish()
    }
}

impl Device {
    /// Opens GPU `ordinal`: driver checks, context, stream, cuBLAS and cuSOLVER handles.
    pub fn open(ordinal: usize) -> Result<Arc<Device>> {
        if !driver_present() {
            return Err(unsupported(
                "this machine: no CUDA driver was found (libcuda.so could not be loaded); \
                 install the NVIDIA driver, or use the CPU backend",
            ));
        }
        let version = driver_version()?;
        if version < MIN_DRIVER_VERSION {
            return Err(unsupported(format!(
                "the installed NVIDIA driver, which supports CUDA {}.{}: this build binds the \
                 CUDA 13.0 API and needs a driver for CUDA 13.0 or newer (R580+)",
                version / 1000,
                (version % 1000) / 10
            )));
        }
        check_library!(
            "cublas",
            cudarc::cublas::sys,
            [
                "cublasCreate_v2",
                "cublasDestroy_v2",
                "cublasSetStream_v2",
                "cublasSetMathMode",
                "cublasSsyrk_v2",
                "cublasDsyrk_v2",
                "cublasSgemm_v2",
                "cublasDgemm_v2",
                "cublasScopy_v2",
                "cublasDcopy_v2",
            ]
        )?;
        check_library!(
            "cusolver",
            cudarc::cusolver::sys,
            [
                "cusolverDnCreate",
                "cusolverDnDestroy",
                "cusolverDnSetStream",
                "cusolverDnSetDeterministicMode",
                "cusolverDnCreateParams",
                "cusolverDnDestroyParams",
                "cusolverDnXpotrf_bufferSize",
                "cusolverDnXpotrf",
                "cusolverDnXtrtri_bufferSize",
                "cusolverDnXtrtri",
            ]
        )?;
        kernels::check_nvrtc()?;

        let ctx = match CudaContext::new(ordinal) {
            Ok(ctx) => ctx,
            Err(e) => {
                use driver_sys::cudaError_enum as E;
                return Err(match e.0 {
                    E::CUDA_ERROR_NO_DEVICE => {
                        unsupported(format!("this machine: the CUDA driver found no GPU ({e})"))
                    }
                    E::CUDA_ERROR_INVALID_DEVICE => unsupported(format!(
                        "GPU ordinal {ordinal}: there are only {} GPUs",
                        CudaContext::device_count().unwrap_or(0)
                    )),
                    _ => backend_error(format!("cannot open GPU {ordinal}: {e}")),
                });
            }
        };
        // One in-order stream carries all the work, so cudarc's per-buffer events (which order
        // work across streams) are not needed.
        // SAFETY: no buffer of this context exists yet, and only one stream is ever used.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let name = ctx.name().context(|| "cannot read the GPU's name".into())?;
        let compute_capability = ctx
            .compute_capability()
            .context(|| "cannot read the GPU's compute capability".into())?;
        let multiprocessors = ctx
            .attribute(driver_sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .context(|| "cannot read the GPU's multiprocessor count".into())?
            .max(1) as usize;

        let blas =
            CudaBlas::new(stream.clone()).context(|| "cannot create a cuBLAS handle".into())?;
        // Pedantic math: true f32/f64 arithmetic in every product (no TF32, no BF16x9 or
        // fixed-point emulation), as the CPU computes them.
        // SAFETY: a valid handle, set once before any use.
        unsafe {
            cudarc::cublas::sys::cublasSetMathMode(
                *blas.handle(),
                cudarc::cublas::sys::cublasMath_t::CUBLAS_PEDANTIC_MATH,
            )
        }
        .result()
        .context(|| "cannot set cuBLAS to pedantic math".into())?;
        let solver =
            DnHandle::new(stream.clone()).context(|| "cannot create a cuSOLVER handle".into())?;
        solver
            .set_deterministic_mode(
                cudarc::cusolver::sys::cusolverDeterministicMode_t::CUSOLVER_DETERMINISTIC_RESULTS,
            )
            .context(|| "cannot make cuSOLVER deterministic".into())?;
        Ok(Arc::new(Device {
            ctx,
            stream,
            state: Mutex::new(State {
                blas,
                solver,
                kernels: None,
            }),
            name,
            compute_capability,
            multiprocessors,
        }))
    }

    /// Locks the device for a sequence of operations and makes its context current.
    pub fn session(&self) -> Result<Session<'_>> {
        let state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.ctx
            .bind_to_thread()
            .context(|| "cannot make the CUDA context current".into())?;
        Ok(Session {
            device: self,
            state,
        })
    }
}

/// Exclusive use of the device for a sequence of operations.
pub(crate) struct Session<'a> {
    pub device: &'a Device,
    state: MutexGuard<'a, State>,
}

impl Session<'_> {
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.device.stream
    }

    /// The raw cuBLAS handle.
    pub fn blas(&self) -> cudarc::cublas::sys::cublasHandle_t {
        *self.state.blas.handle()
    }

    /// The raw cuSOLVER dense handle.
    pub fn solver(&self) -> cudarc::cusolver::sys::cusolverDnHandle_t {
        self.state.solver.cu()
    }

    /// The kernels, compiled by NVRTC and loaded on first use.
    pub fn kernels(&mut self) -> Result<Arc<Kernels>> {
        if let Some(kernels) = &self.state.kernels {
            return Ok(kernels.clone());
        }
        let kernels = Arc::new(Kernels::load(
            &self.device.ctx,
            self.device.compute_capability,
        )?);
        self.state.kernels = Some(kernels.clone());
        Ok(kernels)
    }

    /// Waits for all queued work.
    pub fn synchronize(&self) -> Result<()> {
        self.stream()
            .synchronize()
            .context(|| "the GPU reported an error while running queued work".into())
    }

    /// A zeroed device buffer; `what` names it in the out-of-memory message.
    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        len: usize,
        what: &str,
    ) -> Result<CudaSlice<T>> {
        self.stream().alloc_zeros(len.max(1)).context(|| {
            format!(
                "cannot allocate {} on the GPU for {what}",
                size_string(len * std::mem::size_of::<T>())
            )
        })
    }

    /// A device buffer of `len` values that the next operation overwrites whole before anything
    /// reads it (no zero fill); `what` names it in the out-of-memory message.
    pub fn uninitialized<T: DeviceRepr>(&self, len: usize, what: &str) -> Result<CudaSlice<T>> {
        // SAFETY: every caller writes all `len` values (an SGEMM with beta 0) before reading.
        unsafe { self.stream().alloc(len.max(1)) }.context(|| {
            format!(
                "cannot allocate {} on the GPU for {what}",
                size_string(len * std::mem::size_of::<T>())
            )
        })
    }

    /// Copies a host slice to a new device buffer.
    pub fn upload<T: DeviceRepr>(&self, data: &[T], what: &str) -> Result<CudaSlice<T>> {
        if data.is_empty() {
            // SAFETY: a one-element buffer that is never read.
            return unsafe { self.stream().alloc(1) }
                .context(|| format!("cannot allocate a placeholder for {what}"));
        }
        self.stream().clone_htod(data).context(|| {
            format!(
                "cannot copy {} of {what} to the GPU",
                size_string(std::mem::size_of_val(data))
            )
        })
    }

    /// Copies `data` into the start of `dst`.
    pub fn upload_into<T: DeviceRepr>(
        &self,
        data: &[T],
        dst: &mut CudaSlice<T>,
        what: &str,
    ) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if data.len() > dst.len() {
            return Err(backend_error(format!(
                "internal error: {} values of {what} do not fit a buffer of {}",
                data.len(),
                dst.len()
            )));
        }
        let mut view = dst.slice_mut(..data.len());
        self.stream()
            .memcpy_htod(data, &mut view)
            .context(|| format!("cannot copy {what} to the GPU"))
    }

    /// Copies the first `len` values of a device buffer to the host (waits for the stream).
    pub fn download<T: DeviceRepr + Default + Clone>(
        &self,
        src: &CudaSlice<T>,
        len: usize,
        what: &str,
    ) -> Result<Vec<T>> {
        let mut out = vec![T::default(); len];
        self.download_into(src, &mut out, what)?;
        Ok(out)
    }

    /// Copies the first `dst.len()` values of a device buffer into `dst` (waits for the stream).
    pub fn download_into<T: DeviceRepr>(
        &self,
        src: &CudaSlice<T>,
        dst: &mut [T],
        what: &str,
    ) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        if dst.len() > src.len() {
            return Err(backend_error(format!(
                "internal error: {} values of {what} asked from a buffer of {}",
                dst.len(),
                src.len()
            )));
        }
        self.stream()
            .memcpy_dtoh(&src.slice(..dst.len()), dst)
            .context(|| format!("cannot copy {what} from the GPU"))
    }

    /// A launch configuration for a grid-stride kernel over `n` elements.
    pub fn grid_stride(&self, n: usize) -> LaunchConfig {
        let threads = 256u32;
        let max_blocks = (self.device.multiprocessors * 8).max(1);
        let blocks = n.div_ceil(threads as usize).clamp(1, max_blocks) as u32;
        LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        }
    }
}

/// The device address of a buffer, for the raw cuBLAS and cuSOLVER calls.
pub(crate) fn address<T>(buffer: &CudaSlice<T>, stream: &CudaStream) -> u64 {
    // The guard records a read event only in multi-stream mode, which this crate never enters.
    let (pointer, _guard) = buffer.device_ptr(stream);
    pointer
}

/// The device address of a buffer that the next raw call writes.
pub(crate) fn address_mut<T>(buffer: &mut CudaSlice<T>, stream: &CudaStream) -> u64 {
    let (pointer, _guard) = buffer.device_ptr_mut(stream);
    pointer
}

/// Launches a kernel whose arguments have been pushed.
pub(crate) fn launch(
    mut builder: cudarc::driver::LaunchArgs<'_>,
    config: LaunchConfig,
    what: &str,
) -> Result<()> {
    // SAFETY: every caller pushes the arguments its kernel declares, in order and of the same
    // types, with buffers large enough for the indices the kernel computes from the sizes given.
    unsafe { builder.launch(config) }
        .map(|_| ())
        .context(|| format!("cannot launch the {what} kernel"))
}
