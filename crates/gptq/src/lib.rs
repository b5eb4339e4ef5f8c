#![doc = include_str!("../../../README.md")]
#![warn(missing_docs)]

pub use gptq_core::*;
#[cfg(feature = "cuda")]
pub use gptq_cuda::{CudaBackend, CudaFactor, CudaHessian, CudaHessianAccumulator};
#[cfg(feature = "cpu")]
pub use gptq_solver::CpuBackend;
pub use gptq_solver::{
    Gptq, LayerReport, LayerTimings, QuantizedLayer, SolveOptions, parity, plan, round_to_nearest,
};

/// Grids and the packed checkpoint format (`gptq-quant`).
pub mod quant {
    pub use gptq_quant::*;
}

/// The CUDA backend (`gptq-cuda`, feature `cuda`).
#[cfg(feature = "cuda")]
pub mod cuda {
    pub use gptq_cuda::*;
}

/// CPU linear algebra (`gptq-linalg`).
#[cfg(feature = "cpu")]
pub mod linalg {
    pub use gptq_linalg::*;
}

/// The f64 transcription of the reference algorithm, the oracle of the tests.
#[cfg(feature = "cpu")]
pub mod reference {
    pub use gptq_solver::reference::*;
}

/// Property-testing support of every crate (feature `testing`).
#[cfg(feature = "testing")]
pub mod testing {
    /// Strategies and grid checks.
    pub use gptq_core::testing as core;
    /// Packing checks and the fuzz decoder.
    pub use gptq_quant::testing as quant;
    /// Backend conformance checks.
    pub use gptq_solver::testing as solver;
}
