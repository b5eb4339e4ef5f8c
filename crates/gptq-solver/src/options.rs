//! Options of the solver that are not part of the quantization format.

use gptq_core::{HessianOptions, RangeSearch};

/// How the solver runs (the [`QuantConfig`](gptq_core::QuantConfig) says what it produces).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SolveOptions {
    /// Reproduce the reference implementation exactly, including its quirks: per-channel grids
    /// fitted before dead columns are zeroed, and dynamic groups that start inside a block
    /// fitted to the weights as of the block's start. Off by default: groups are then fitted to
    /// the fully updated weights (blocks are cut so that no group straddles a block end).
    pub parity: bool,
    /// Outside parity mode, fit every grid with this Hessian-weighted search over shrunk ranges
    /// (see [`RangeSearch`]): each column's error is weighted by its GPTQ cost `1 / U_jj²`.
    /// Ignored in parity mode.
    pub range_search: Option<RangeSearch>,
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
            range_search: Some(RangeSearch::default()),
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
            range_search: None,
            ..SolveOptions::default()
        }
    }

    /// The range search in effect (none in parity mode).
    pub fn effective_search(&self) -> Option<RangeSearch> {
        if self.parity { None } else { self.range_search }
    }
}
