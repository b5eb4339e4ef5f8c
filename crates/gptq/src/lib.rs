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

/// Hugging Face checkpoints and their forward pass (`gptq-model`, feature `pipeline`).
#[cfg(feature = "pipeline")]
pub use gptq_model::{
    Checkpoint, Compute, ModelError, PerplexityOptions, ProductPrecision, Tokenizer, perplexity,
};
/// Whole-model quantization: the calibration source, sequential layer-by-layer GPTQ, the
/// checkpoint writer and run reports (`gptq-pipeline`, feature `pipeline`).
#[cfg(feature = "pipeline")]
pub use gptq_pipeline::{
    CalibrationSource, PipelineError, PipelineOptions, Progress, QuantizedModel, RunReport, Silent,
    WriteOptions, quantize_model, write_checkpoint,
};

/// Hugging Face checkpoints, the staged forward pass, perplexity, calibration loaders
/// (`gptq-model`, feature `pipeline`).
#[cfg(feature = "pipeline")]
pub mod model {
    pub use gptq_model::*;
}

/// Whole-model quantization into a GPTQ checkpoint directory (`gptq-pipeline`, feature
/// `pipeline`).
#[cfg(feature = "pipeline")]
pub mod pipeline {
    pub use gptq_pipeline::*;
}

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
