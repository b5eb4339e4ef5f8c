//! The traits a compute backend implements, and the plain data that crosses them.
//!
//! A GPTQ solve of one layer has three heavy steps, each a method here: accumulating the Hessian
//! `H = (2/N) Σ x xᵀ` ([`HessianAccumulator`]), the upper Cholesky factor of the damped inverse
//! ([`Backend::inverse_factor`]), and the blocked column loop ([`Backend::blocked_solve`]). The
//! Hessian and the factor are associated types, so a device backend keeps them in device memory
//! between the steps; only plans, codes, grid parameters and reports cross to the host.
//!
//! The algorithm around these steps (dead columns, act-order, group planning, the report) is
//! written once, against these traits, in `gptq-solver`.

use std::ops::Range;
use std::time::Duration;

use ndarray::{Array2, ArrayView2};

use crate::activations::{ActivationBatch, HessianOptions};
use crate::error::{GptqError, Result, shape2};
use crate::grid::{GroupParams, QuantGrid, RangeSearch};

/// Streams calibration batches into a Hessian.
pub trait HessianAccumulator: Send {
    /// The finished Hessian, resident wherever the backend computes.
    type Hessian;

    /// Input columns (the Hessian is `columns × columns`).
    fn columns(&self) -> usize;

    /// Sequences accumulated so far (the `N` of `H = (2/N) Σ x xᵀ`).
    fn sequences(&self) -> usize;

    /// Adds one batch. On error (wrong width, non-finite values, bad mask) the accumulator is
    /// left exactly as before the call.
    fn add_batch(&mut self, batch: &ActivationBatch<'_>) -> Result<()>;

    /// Returns `H = (2/N) Σ x xᵀ`; fails with [`GptqError::NoSamples`] if nothing was added.
    fn finish(self) -> Result<Self::Hessian>;
}

/// How much damping to add before the Cholesky factorization, and how to retry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DampingPolicy {
    /// First damping, as a fraction of the mean Hessian diagonal.
    pub damp_percent: f64,
    /// How many times to retry with ten times more damping after a non-positive pivot.
    pub retries: u32,
}

impl DampingPolicy {
    /// The damp percents tried in order: `damp_percent`, then ten times more each retry (a zero
    /// `damp_percent` retries with 0.01, 0.1, ...).
    pub fn attempts(&self) -> impl Iterator<Item = f64> + '_ {
        let base = if self.damp_percent > 0.0 {
            self.damp_percent
        } else {
            0.001
        };
        std::iter::once(self.damp_percent)
            .chain((1..=self.retries).map(move |k| base * 10f64.powi(k as i32)))
    }
}

impl Default for DampingPolicy {
    fn default() -> Self {
        DampingPolicy {
            damp_percent: 0.01,
            retries: 4,
        }
    }
}

/// What [`Backend::inverse_factor`] should factor: `P (H + dead fix) Pᵀ + λ I`.
#[derive(Debug, Clone, Copy)]
pub struct FactorRequest<'a> {
    /// Columns (original indices) whose Hessian diagonal is zero: their diagonal becomes 1.
    pub dead_columns: &'a [usize],
    /// Quantization order: position `k` holds original column `permutation[k]`.
    pub permutation: Option<&'a [usize]>,
    /// Damping and retries.
    pub damping: DampingPolicy,
}

impl FactorRequest<'_> {
    /// The quantization order read backwards, checked against an `n`-column Hessian:
    /// `order[i]` is the original column at position `n - 1 - i`. Backends factor the reversed
    /// permuted matrix, whose lower Cholesky factor read backwards is the upper factor needed.
    pub fn reversed_order(&self, n: usize) -> Result<Vec<usize>> {
        if let Some(&bad) = self.dead_columns.iter().find(|&&d| d >= n) {
            return Err(GptqError::InvalidConfig(format!(
                "dead column {bad} is outside the {n}-column Hessian"
            )));
        }
        let permutation: Vec<usize> = match self.permutation {
            None => (0..n).collect(),
            Some(p) => {
                let mut seen = vec![false; n];
                if p.len() != n
                    || !p
                        .iter()
                        .all(|&c| c < n && !std::mem::replace(&mut seen[c], true))
                {
                    return Err(GptqError::InvalidConfig(format!(
                        "the column permutation must hold each of 0..{n} exactly once"
                    )));
                }
                p.to_vec()
            }
        };
        Ok(permutation.into_iter().rev().collect())
    }
}

/// The damping a factorization ended up using.
#[derive(Debug, Clone, PartialEq)]
pub struct Damping {
    /// The damp percent that succeeded.
    pub damp_percent: f64,
    /// The value added to the diagonal: `damp_percent · mean(diag H)`.
    pub absolute: f64,
    /// Every damp percent tried, the successful one last.
    pub tried: Vec<f64>,
}

/// Where a dynamic group's grid is fitted from when the group starts inside a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FitSource {
    /// The reference's behaviour: the weights as they were when the block started (updated by
    /// earlier blocks only, not by the earlier columns of the same block).
    BlockStart,
    /// The weights as updated by every column quantized so far. Columns past the end of the block
    /// still hold their block-start values, so planners keep groups inside blocks.
    Current,
}

/// Grid parameters of every slot and row: `[slots, rows]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamTable {
    /// Scales, `[slots, rows]`.
    pub scales: Array2<f32>,
    /// Zero points, `[slots, rows]`.
    pub zeros: Array2<u16>,
}

impl ParamTable {
    /// A table of `slots × rows` default entries, to be filled.
    pub fn zeroed(slots: usize, rows: usize) -> Self {
        ParamTable {
            scales: Array2::zeros((slots, rows)),
            zeros: Array2::zeros((slots, rows)),
        }
    }
    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.scales.nrows()
    }
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.scales.ncols()
    }
    /// The parameters of one slot and row.
    pub fn get(&self, slot: usize, row: usize) -> GroupParams {
        GroupParams {
            scale: self.scales[[slot, row]],
            zero: self.zeros[[slot, row]],
        }
    }
    /// Stores the parameters of one slot and row.
    pub fn set(&mut self, slot: usize, row: usize, params: GroupParams) {
        self.scales[[slot, row]] = params.scale;
        self.zeros[[slot, row]] = params.zero;
    }
}

/// How the columns get their grids during the blocked solve.
#[derive(Debug, Clone, PartialEq)]
pub enum GroupPlan {
    /// Grids fitted before the solve (per-channel, static groups): column `k` of the quantization
    /// order uses slot `slot_of_column[k]` of `table`.
    Fixed {
        /// The fitted grids.
        table: ParamTable,
        /// Slot of each column, in quantization order.
        slot_of_column: Vec<u32>,
    },
    /// Grids fitted during the solve: when column `k` (quantization order) is a multiple of
    /// `group_size`, slot `k / group_size` is fitted to columns `k .. k + group_size`.
    Dynamic {
        /// Columns per group.
        group_size: usize,
        /// Which weights the fit sees.
        fit_from: FitSource,
        /// Fit with this search, weighting column `j` by `1 / U_jj²`; plain fit when `None`.
        search: Option<RangeSearch>,
    },
}

/// The schedule of one blocked solve, in quantization order.
#[derive(Debug, Clone, PartialEq)]
pub struct SolvePlan {
    /// Consecutive blocks covering `0..columns`; the lazy update runs after each.
    pub blocks: Vec<Range<usize>>,
    /// Where grids come from.
    pub groups: GroupPlan,
}

impl SolvePlan {
    /// Checks the plan against a `rows × columns` weight matrix; every backend calls this first.
    pub fn validate(&self, rows: usize, columns: usize) -> Result<()> {
        let mut next = 0;
        for block in &self.blocks {
            if block.start != next || block.end <= block.start {
                return Err(plan_error(format!(
                    "blocks must be non-empty and consecutive from 0, found {block:?} after {next}"
                )));
            }
            next = block.end;
        }
        if next != columns {
            return Err(plan_error(format!(
                "blocks end at column {next} but the weight has {columns} columns"
            )));
        }
        match &self.groups {
            GroupPlan::Fixed {
                table,
                slot_of_column,
            } => {
                if slot_of_column.len() != columns {
                    return Err(GptqError::ShapeMismatch {
                        what: "slot_of_column",
                        expected: format!("[{columns}]"),
                        actual: format!("[{}]", slot_of_column.len()),
                    });
                }
                if table.rows() != rows || table.zeros.dim() != table.scales.dim() {
                    return Err(GptqError::ShapeMismatch {
                        what: "parameter table",
                        expected: shape2(table.slots(), rows),
                        actual: shape2(table.zeros.nrows(), table.zeros.ncols()),
                    });
                }
                if slot_of_column.iter().any(|&s| s as usize >= table.slots()) {
                    return Err(plan_error(format!(
                        "a column uses a slot beyond the table's {} slots",
                        table.slots()
                    )));
                }
            }
            GroupPlan::Dynamic { group_size, .. } => {
                if *group_size == 0 {
                    return Err(plan_error("dynamic group size must be at least 1".into()));
                }
            }
        }
        Ok(())
    }

    /// Slots the solution's parameter table has.
    pub fn slots(&self, columns: usize) -> usize {
        match &self.groups {
            GroupPlan::Fixed { table, .. } => table.slots(),
            GroupPlan::Dynamic { group_size, .. } => columns.div_ceil(*group_size),
        }
    }
}

fn plan_error(message: String) -> GptqError {
    GptqError::InvalidConfig(format!("invalid solve plan: {message}"))
}

/// Time spent in the parts of a blocked solve.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SolveTimings {
    /// Moving the weights to where the backend computes.
    pub upload: Duration,
    /// The in-block column loop: grid fits, quantization, error propagation inside blocks.
    pub column_loop: Duration,
    /// The lazy-batch updates of the columns after each block (matrix products).
    pub block_updates: Duration,
    /// Moving codes and parameters back.
    pub download: Duration,
}

/// The output of a blocked solve, in quantization order.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockSolution {
    /// Codes, `[rows, columns]`, columns in quantization order.
    pub codes: Array2<u8>,
    /// Grid parameters of every slot.
    pub params: ParamTable,
    /// Where the time went.
    pub timings: SolveTimings,
}

/// A compute backend: where Hessians live and where the GPTQ arithmetic runs.
///
/// Implement this to run GPTQ on new hardware; the solver in `gptq-solver` does the rest.
/// `gptq-solver` ships a CPU backend and `gptq-solver`'s `testing` feature has conformance checks
/// to run against any implementation.
pub trait Backend: Send + Sync {
    /// A finished Hessian (`f64` semantics), resident on the backend.
    type Hessian: Send + Sync;
    /// The streaming accumulator that produces [`Backend::Hessian`].
    type Accumulator: HessianAccumulator<Hessian = Self::Hessian>;
    /// The upper Cholesky factor `U` of the damped inverse Hessian (`H⁻¹ = UᵀU`), in
    /// quantization order, resident on the backend.
    type Factor: Send + Sync;

    /// Short name for reports and errors.
    fn name(&self) -> &'static str;

    /// A new accumulator for a layer with `columns` inputs.
    fn accumulator(&self, columns: usize, options: HessianOptions) -> Result<Self::Accumulator>;

    /// Moves a host Hessian (symmetric, `columns × columns`) to the backend.
    fn hessian_from_host(&self, hessian: ArrayView2<'_, f64>) -> Result<Self::Hessian>;

    /// The diagonal of an inverse factor (`U_kk`, quantization order), on the host.
    fn factor_diagonal(&self, factor: &Self::Factor) -> Result<Vec<f32>>;

    /// Copies a Hessian back to the host.
    fn hessian_to_host(&self, hessian: &Self::Hessian) -> Result<Array2<f64>>;

    /// The diagonal of a Hessian, on the host.
    fn hessian_diagonal(&self, hessian: &Self::Hessian) -> Result<Vec<f64>>;

    /// Factors `P (H + dead fix) Pᵀ + λ I` with the damping policy's retries: the upper Cholesky
    /// factor of its inverse. Fails with [`GptqError::NotPositiveDefinite`] past the last retry.
    fn inverse_factor(
        &self,
        hessian: &Self::Hessian,
        request: &FactorRequest<'_>,
    ) -> Result<(Self::Factor, Damping)>;

    /// Runs the blocked GPTQ loop over `weights` (`[rows, columns]`, already in quantization
    /// order with dead columns zeroed) following `plan`.
    fn blocked_solve<G: QuantGrid + ?Sized>(
        &self,
        weights: ArrayView2<'_, f32>,
        factor: &Self::Factor,
        plan: &SolvePlan,
        grid: &G,
    ) -> Result<BlockSolution>;

    /// `tr(D H Dᵀ)` for `delta = D` (`[rows, columns]`, original column order), in f64.
    fn quadratic_loss(&self, hessian: &Self::Hessian, delta: ArrayView2<'_, f32>) -> Result<f64>;
}

/// A shared reference to a backend is a backend, so one backend value can serve many solvers.
impl<B: Backend> Backend for &B {
    type Hessian = B::Hessian;
    type Accumulator = B::Accumulator;
    type Factor = B::Factor;

    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn accumulator(&self, columns: usize, options: HessianOptions) -> Result<Self::Accumulator> {
        (**self).accumulator(columns, options)
    }
    fn hessian_from_host(&self, hessian: ArrayView2<'_, f64>) -> Result<Self::Hessian> {
        (**self).hessian_from_host(hessian)
    }
    fn hessian_to_host(&self, hessian: &Self::Hessian) -> Result<Array2<f64>> {
        (**self).hessian_to_host(hessian)
    }
    fn hessian_diagonal(&self, hessian: &Self::Hessian) -> Result<Vec<f64>> {
        (**self).hessian_diagonal(hessian)
    }
    fn factor_diagonal(&self, factor: &Self::Factor) -> Result<Vec<f32>> {
        (**self).factor_diagonal(factor)
    }
    fn inverse_factor(
        &self,
        hessian: &Self::Hessian,
        request: &FactorRequest<'_>,
    ) -> Result<(Self::Factor, Damping)> {
        (**self).inverse_factor(hessian, request)
    }
    fn blocked_solve<G: QuantGrid + ?Sized>(
        &self,
        weights: ArrayView2<'_, f32>,
        factor: &Self::Factor,
        plan: &SolvePlan,
        grid: &G,
    ) -> Result<BlockSolution> {
        (**self).blocked_solve(weights, factor, plan, grid)
    }
    fn quadratic_loss(&self, hessian: &Self::Hessian, delta: ArrayView2<'_, f32>) -> Result<f64> {
        (**self).quadratic_loss(hessian, delta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damping_attempts_grow_tenfold() {
        let policy = DampingPolicy {
            damp_percent: 0.01,
            retries: 2,
        };
        let tried: Vec<f64> = policy.attempts().collect();
        assert_eq!(tried.len(), 3);
        assert!((tried[2] - 1.0).abs() < 1e-12);
        let zero = DampingPolicy {
            damp_percent: 0.0,
            retries: 1,
        };
        assert_eq!(zero.attempts().collect::<Vec<_>>(), vec![0.0, 0.01]);
    }

    #[test]
    #[allow(clippy::single_range_in_vec_init)] // plans of a single block
    fn plans_are_validated() {
        let dynamic = GroupPlan::Dynamic {
            group_size: 4,
            fit_from: FitSource::Current,
            search: None,
        };
        let good = SolvePlan {
            blocks: vec![0..4, 4..6],
            groups: dynamic.clone(),
        };
        assert!(good.validate(3, 6).is_ok());
        assert_eq!(good.slots(6), 2);
        let gap = SolvePlan {
            blocks: vec![0..4, 5..6],
            groups: dynamic.clone(),
        };
        assert!(gap.validate(3, 6).is_err());
        let short = SolvePlan {
            blocks: vec![0..4],
            groups: dynamic,
        };
        assert!(short.validate(3, 6).is_err());
        let bad_slot = SolvePlan {
            blocks: vec![0..2],
            groups: GroupPlan::Fixed {
                table: ParamTable::zeroed(1, 3),
                slot_of_column: vec![0, 1],
            },
        };
        assert!(bad_slot.validate(3, 2).is_err());
    }
}
