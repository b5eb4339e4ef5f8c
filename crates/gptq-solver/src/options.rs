//! Options of the solver that are not part of the quantization format.

use gptq_core::HessianOptions;

/// How the solver runs (the [`QuantConfig`](gptq_core::QuantConfig) says what it produces).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SolveOptions {
    /// Reproduce the reference implementation exactly, including its quirks: per-channel grids
    /// fitted before dead columns are zeroed, and dynamic groups that start inside a block
    /// fitted to the weights as of the block's start. Off by default: groups are then fitted to
    /// the fully updated weights (blocks are cut so that no group straddles a block end).
    pub parity: bool,
    /// Compute the loss `tr((W - Q) H (W - Q)ᵀ)` for the report (one half-size product).
    pub compute_loss: bool,
    /// Retries with ten times more damping when the damped Hessian is not positive definite.
    pub damping_retries: u32,
    /// Options of accumulators made by [`Gptq::accumulator`](crate::Gptq::accumulator).
    pub hessian: HessianOptions,
}

impl Default for SolveOptions {
    fn default() -> Self {
        SolveOptions {
            parity: false,
            compute_loss: true,
            damping_retries: 4,
            hessian: HessianOptions::default(),
        }
    }
}

impl SolveOptions {
    /// The options that reproduce the reference implementation.
    pub fn parity() -> Self {
        SolveOptions {
            parity: true,
            ..SolveOptions::default()
        }
    }
}
