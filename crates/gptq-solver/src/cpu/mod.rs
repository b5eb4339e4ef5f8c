//! The CPU backend: gptq-linalg for the Hessian, factor, loss and block updates; a row-parallel
//! kernel for the in-block column loop.

mod column_loop;

use std::ops::Range;
use std::time::Instant;

use gptq_core::{
    Backend, BlockSolution, Damping, FactorRequest, GptqError, GroupPlan, HessianOptions,
    QuantGrid, Result, SolvePlan, SolveTimings, shape_string,
};
use gptq_linalg::{CpuHessianAccumulator, Hessian, InverseFactor, Par, sub_product};
use ndarray::{Array2, ArrayView2, s};

use column_loop::{BlockContext, RowState, quantize_rows};

/// GPTQ on the CPU, with an explicit thread count.
///
/// Results are bit-identical for any thread count: the column loop is split by rows (which are
/// independent), and faer's products split the output, never a sum.
///
/// A model's forward passes (the calibration activations) are not the backend's: they run on a
/// `gptq_core::ForwardCompute` of their own (`gptq_linalg::CpuCompute` on the CPU).
#[derive(Debug, Clone, Copy)]
pub struct CpuBackend {
    threads: usize,
}

impl Default for CpuBackend {
    fn default() -> Self {
        CpuBackend::new()
    }
}

impl CpuBackend {
    /// Uses every available core.
    pub fn new() -> Self {
        CpuBackend::with_threads(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// Uses `threads` threads of the rayon pool (at least one).
    pub fn with_threads(threads: usize) -> Self {
        CpuBackend {
            threads: threads.max(1),
        }
    }

    /// The thread count.
    pub fn threads(&self) -> usize {
        self.threads
    }

    fn par(&self) -> Par {
        if self.threads == 1 {
            Par::Seq
        } else {
            Par::rayon(self.threads)
        }
    }
}

impl Backend for CpuBackend {
    type Hessian = Hessian;
    type Accumulator = CpuHessianAccumulator;
    type Factor = InverseFactor;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn accumulator(
        &self,
        columns: usize,
        options: HessianOptions,
    ) -> Result<CpuHessianAccumulator> {
        CpuHessianAccumulator::new(columns, options, self.par())
    }

    fn hessian_from_host(&self, hessian: ArrayView2<'_, f64>) -> Result<Hessian> {
        Hessian::from_matrix(hessian.to_owned(), 0)
    }

    fn hessian_to_host(&self, hessian: &Hessian) -> Result<Array2<f64>> {
        Ok(hessian.matrix().to_owned())
    }

    fn hessian_diagonal(&self, hessian: &Hessian) -> Result<Vec<f64>> {
        Ok(hessian.diagonal())
    }

    fn factor_diagonal(&self, factor: &InverseFactor) -> Result<Vec<f32>> {
        Ok(factor.upper().diag().to_vec())
    }

    fn inverse_factor(
        &self,
        hessian: &Hessian,
        request: &FactorRequest<'_>,
    ) -> Result<(InverseFactor, Damping)> {
        gptq_linalg::damped_inverse_factor(hessian.matrix(), request, self.par())
    }

    fn blocked_solve<G: QuantGrid + ?Sized>(
        &self,
        weights: ArrayView2<'_, f32>,
        factor: &InverseFactor,
        plan: &SolvePlan,
        grid: &G,
    ) -> Result<BlockSolution> {
        let (rows, columns) = weights.dim();
        plan.validate(rows, columns)?;
        if factor.columns() != columns {
            return Err(GptqError::ShapeMismatch {
                what: "inverse factor",
                expected: shape_string(&[columns, columns]),
                actual: shape_string(&[factor.columns(), factor.columns()]),
            });
        }
        let mut timings = SolveTimings::default();
        let t = Instant::now();
        let mut state = RowState::new(weights, plan.slots(columns));
        timings.upload = t.elapsed();

        let widest = plan.blocks.iter().map(Range::len).max().unwrap_or(0);
        let mut errors = vec![0.0f32; rows * widest];
        let upper = factor.upper();
        let importance: Vec<f32> = upper.diag().iter().map(|u| 1.0 / (u * u)).collect();
        for block in &plan.blocks {
            let t = Instant::now();
            let context = BlockContext {
                upper,
                importance: &importance,
                block: block.clone(),
                groups: &plan.groups,
                grid,
                max_code: grid.max_code(),
            };
            let errors = &mut errors[..rows * block.len()];
            quantize_rows(&context, &mut state, errors, self.threads);
            timings.column_loop += t.elapsed();

            let t = Instant::now();
            self.update_trailing(&mut state.weights, errors, upper, block.clone())?;
            timings.block_updates += t.elapsed();
        }

        let t = Instant::now();
        let params = match &plan.groups {
            GroupPlan::Fixed { table, .. } => table.clone(),
            GroupPlan::Dynamic { .. } => state.fitted_table(),
        };
        timings.download = t.elapsed();
        Ok(BlockSolution {
            codes: state.codes,
            params,
            timings,
        })
    }

    fn quadratic_loss(&self, hessian: &Hessian, delta: ArrayView2<'_, f32>) -> Result<f64> {
        gptq_linalg::quadratic_loss(hessian.matrix(), delta, self.par())
    }
}

impl CpuBackend {
    /// The lazy-batch update: `W[:, end..] -= E · U[block, end..]`.
    fn update_trailing(
        &self,
        weights: &mut Array2<f32>,
        errors: &[f32],
        upper: ArrayView2<'_, f32>,
        block: Range<usize>,
    ) -> Result<()> {
        let columns = weights.ncols();
        if block.end == columns {
            return Ok(());
        }
        let errors = ArrayView2::from_shape((weights.nrows(), block.len()), errors)
            .expect("one error per row and block column");
        sub_product(
            weights.slice_mut(s![.., block.end..]),
            errors,
            upper.slice(s![block.clone(), block.end..]),
            self.par(),
        )
    }
}
