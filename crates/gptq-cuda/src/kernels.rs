//! The NVRTC-compiled kernels.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::{CompileError, CompileOptions, Ptx};
use gptq_core::Result;

use crate::error::{Context, backend_error};

/// The CUDA C source of every kernel of the backend.
pub const KERNEL_SOURCE: &str = include_str!("kernels.cu");

/// Names of the kernels in [`KERNEL_SOURCE`].
pub const KERNEL_NAMES: [&str; 9] = [
    "gptq_column_loop",
    "gptq_transpose_f32",
    "gptq_f32_to_f64",
    "gptq_finish_hessian_f32",
    "gptq_finish_hessian_f64",
    "gptq_gather_damped",
    "gptq_reverse_upper",
    "gptq_find_nonfinite_f64",
    "gptq_dot_partials",
];

/// Whether libnvrtc (the run-time CUDA compiler) can be loaded on this machine; it needs no GPU.
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to open the library.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Checks that libnvrtc can be loaded, with the functions cudarc calls to compile.
pub(crate) fn check_nvrtc() -> Result<()> {
    use std::ffi::c_void;

    use crate::error::backend_error;
    check_library!(
        "nvrtc",
        cudarc::nvrtc::sys,
        [
            "nvrtcCreateProgram",
            "nvrtcCompileProgram",
            "nvrtcGetPTXSize",
            "nvrtcGetPTX",
            "nvrtcGetProgramLogSize",
            "nvrtcGetProgramLog",
            "nvrtcDestroyProgram",
        ]
    )
}

/// The NVRTC options: exact IEEE f32 arithmetic as on the CPU. No contraction of a product and
/// a sum into a fused multiply-add (`--fmad=false`; the column loop also uses `__fmul_rn` & co.,
/// which are never contracted), correctly rounded division and square root, subnormals kept.
fn options(arch: &str) -> CompileOptions {
    CompileOptions {
        ftz: Some(false),
        prec_sqrt: Some(true),
        prec_div: Some(true),
        fmad: Some(false),
        options: vec![format!("--gpu-architecture={arch}")],
        name: Some("gptq_kernels.cu".into()),
        ..CompileOptions::default()
    }
}

/// Compiles [`KERNEL_SOURCE`] to PTX for a virtual architecture such as `compute_90`, with the
/// backend's options. Needs only libnvrtc (no GPU, no driver). A compile error carries the
/// NVRTC log.
pub fn compile_kernels(arch: &str) -> Result<String> {
    check_nvrtc()?;
    Ok(compile(arch)?.to_src())
}

fn compile(arch: &str) -> Result<Ptx> {
    compile_source(KERNEL_SOURCE, arch)
}

fn compile_source(source: &str, arch: &str) -> Result<Ptx> {
    cudarc::nvrtc::compile_ptx_with_opts(source, options(arch)).map_err(|e| match e {
        CompileError::CompileError { nvrtc, log, .. } => backend_error(format!(
            "NVRTC could not compile the kernels for {arch} ({nvrtc:?}):\n{}",
            log.to_string_lossy()
        )),
        other => backend_error(format!("NVRTC failed for {arch}: {other:?}")),
    })
}

/// The loaded kernels of one device.
pub(crate) struct Kernels {
    _module: Arc<CudaModule>,
    pub column_loop: CudaFunction,
    pub transpose_f32: CudaFunction,
    pub f32_to_f64: CudaFunction,
    pub finish_hessian_f32: CudaFunction,
    pub finish_hessian_f64: CudaFunction,
    pub gather_damped: CudaFunction,
    pub reverse_upper: CudaFunction,
    pub find_nonfinite_f64: CudaFunction,
    pub dot_partials: CudaFunction,
}

impl Kernels {
    /// Compiles for the device's compute capability (PTX, which the driver JIT-compiles) and
    /// loads the module.
    pub fn load(ctx: &Arc<CudaContext>, (major, minor): (i32, i32)) -> Result<Kernels> {
        let arch = format!("compute_{major}{minor}");
        let ptx = compile(&arch)?;
        let module = ctx.load_module(ptx).context(|| {
            format!(
                "the driver cannot load the kernels compiled for {arch} (a libnvrtc newer than \
                 the driver emits PTX the driver does not know)"
            )
        })?;
        let function = |name: &str| {
            module
                .load_function(name)
                .context(|| format!("kernel {name} is missing from the compiled module"))
        };
        Ok(Kernels {
            column_loop: function("gptq_column_loop")?,
            transpose_f32: function("gptq_transpose_f32")?,
            f32_to_f64: function("gptq_f32_to_f64")?,
            finish_hessian_f32: function("gptq_finish_hessian_f32")?,
            finish_hessian_f64: function("gptq_finish_hessian_f64")?,
            gather_damped: function("gptq_gather_damped")?,
            reverse_upper: function("gptq_reverse_upper")?,
            find_nonfinite_f64: function("gptq_find_nonfinite_f64")?,
            dot_partials: function("gptq_dot_partials")?,
            _module: module,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_compile_error_carries_the_nvrtc_log() {
        if !nvrtc_present() || check_nvrtc().is_err() {
            gptq_core::testing::announce_skip(
                "libnvrtc cannot be loaded (add its folder to LD_LIBRARY_PATH)",
            );
            return;
        }
        let source = "extern \"C\" __global__ void broken(float* x) { x[0] = undeclared; }";
        let err = compile_source(source, "compute_90").unwrap_err();
        let message = err.to_string();
        assert!(matches!(
            err,
            gptq_core::GptqError::Backend {
                backend: "cuda",
                ..
            }
        ));
        assert!(message.contains("undeclared"), "{message}");
    }
}
