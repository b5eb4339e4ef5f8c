//! # gptq-core
//!
//! The shared vocabulary of gptq-rs, with no heavy dependencies: depend on this crate alone to be
//! generic over backends or grids, the way libraries depend on `rand_core`.
//!
//! - [`QuantConfig`]: a validated GPTQ configuration (bits, groups, symmetry, act-order, ...).
//! - [`QuantizedTensor`]: codes, scales, zeros, `g_idx` and permutation, with
//!   [`dequantize`](QuantizedTensor::dequantize).
//! - [`QuantGrid`]: how a group of weights gets its scale and zero point.
//! - [`Backend`] and [`HessianAccumulator`]: what a compute backend (CPU, CUDA) implements.
//! - [`GptqError`]: every failure, typed, with a message that says what to change.
//!
//! The `testing` feature adds proptest strategies and property checks for grids.

#![warn(missing_docs)]

mod activations;
pub mod backend;
mod config;
mod error;
pub mod forward;
mod grid;
mod tensor;
#[cfg(feature = "testing")]
pub mod testing;
pub mod validate;

pub use activations::{ActivationBatch, ActivationData, HessianOptions, HessianPrecision};
pub use backend::{
    Backend, BlockSolution, Damping, DampingPolicy, FactorRequest, FitSource, GroupPlan,
    HessianAccumulator, ParamTable, SolvePlan, SolveTimings,
};
pub use config::{ClipSearch, GroupSize, QuantConfig, QuantConfigBuilder};
pub use error::{GptqError, Position, Result, shape_string};
pub use forward::{
    AttentionProducts, ForwardCompute, HeadAttention, QuantizedProducts, check_x_qwt, check_x_wt,
};
pub use grid::{
    GridSpec, GroupParams, QuantGrid, RangeSearch, dequantize_code, fit_searched, quantize_value,
    weighted_error,
};
pub use tensor::QuantizedTensor;

/// Re-exported so downstream crates name the same versions.
pub use half;
pub use ndarray;
