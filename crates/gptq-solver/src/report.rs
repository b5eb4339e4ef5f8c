//! What a solve reports besides the quantized tensor.

use std::time::Duration;

use gptq_core::{Damping, QuantizedTensor};

/// Where the time of one layer went.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LayerTimings {
    /// Validation, dead columns, permutation, static grid fits.
    pub prepare: Duration,
    /// The damped inverse Cholesky factor.
    pub inverse_factor: Duration,
    /// Copying the weights to the backend.
    pub upload: Duration,
    /// The in-block column loop.
    pub column_loop: Duration,
    /// The lazy-batch block updates.
    pub block_updates: Duration,
    /// Copying results back.
    pub download: Duration,
    /// The loss for the report.
    pub loss: Duration,
    /// Everything, start to end.
    pub total: Duration,
}

/// The per-layer report.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerReport {
    /// `tr((W - Q) H (W - Q)ᵀ)` against the undamped Hessian, if computed.
    pub loss: Option<f64>,
    /// The damping the factorization used.
    pub damping: Damping,
    /// Input columns whose Hessian diagonal was zero (their weights were zeroed).
    pub dead_columns: usize,
    /// Where the time went.
    pub timings: LayerTimings,
}

/// A quantized layer and its report.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedLayer {
    /// The quantized weights.
    pub tensor: QuantizedTensor,
    /// How the solve went.
    pub report: LayerReport,
}
