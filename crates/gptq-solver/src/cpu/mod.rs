//! The CPU backend: gptq-linalg for the Hessian, factor, loss and block updates; a row-parallel
//! kernel for the in-block column loop.

mod column_loop;

use std::ops::Range;
use std::time::Instant;

use gptq_core::ForwardProducts;
use gptq_core::{
    Backend, BlockSolution, Damping, FactorRequest, GptqError, GroupPlan, HessianOptions,
    QuantGrid, Result, SolvePlan, SolveTimings, shape_string,
};
use gptq_linalg::bf16::Bf16Products;
use gptq_linalg::int8::Int8Products;
use gptq_linalg::{CpuHessianAccumulator, Hessian, InverseFactor, Par, sub_product};
use ndarray::{Array2, ArrayView2, s};

use column_loop::{BlockContext, RowState, quantize_rows};

/// GPTQ on the CPU, with an explicit thread count.
///
/// Results are bit-identical for any thread count: the column loop is split by rows (which are
/// independent), and faer's products split the output, never a sum.
///
/// Its forward products (a model's linears during calibration) are left to the caller, in f32,
/// unless [`CpuBackend::with_bf16_products`] asks for bf16 ones or
/// [`CpuBackend::with_int8_products`] for 8-bit activations against quantized weights.
#[derive(Debug, Clone, Copy)]
pub struct CpuBackend {
    threads: usize,
    products: Option<CpuProducts>,
}

/// The forward products a [`CpuBackend`] hands out.
#[derive(Debug, Clone, Copy)]
enum CpuProducts {
    Bf16(Bf16Products),
    Int8(Int8Products),
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
            products: None,
        }
    }

    /// Hands out [`gptq_linalg::bf16`] products of bf16-rounded operands (f32 sums) from
    /// [`Backend::forward_products`] when `enabled`: twice as fast as f32 on CPUs with
    /// AVX512-BF16 ([`gptq_linalg::bf16::kernels_available`]), the same numbers slowly elsewhere.
    ///
    /// ```
    /// use gptq_core::Backend;
    /// use gptq_solver::CpuBackend;
    ///
    /// assert!(CpuBackend::with_threads(2).forward_products().is_none());
    /// assert!(CpuBackend::with_threads(2).with_bf16_products(true).forward_products().is_some());
    /// ```
    pub fn with_bf16_products(self, enabled: bool) -> Self {
        let products = match (enabled, self.products) {
            (true, _) => Some(CpuProducts::Bf16(Bf16Products::new(self.par()))),
            (false, Some(CpuProducts::Bf16(_))) => None,
            (false, other) => other,
        };
        CpuBackend { products, ..self }
    }

    /// Hands out [`gptq_linalg::int8`] products from [`Backend::forward_products`] when
    /// `enabled`: linears already quantized multiply their codes by activations rounded to 8
    /// bits per block of inputs, exactly summed, on AVX512-VNNI kernels (twice the bf16 kernels'
    /// rate); the rest (attention, linears not yet quantized) as with
    /// [`with_bf16_products`](Self::with_bf16_products). The backend hands out one kind of
    /// products: asking for one replaces the other, and `enabled = false` only drops its own.
    ///
    /// ```
    /// use gptq_core::Backend;
    /// use gptq_solver::CpuBackend;
    ///
    /// let backend = CpuBackend::with_threads(2).with_int8_products(true);
    /// assert!(backend.forward_products().unwrap().computes_quantized());
    /// assert_eq!(backend.name(), "cpu-int8");
    /// assert_eq!(backend.with_bf16_products(false).name(), "cpu-int8");
    /// assert_eq!(backend.with_int8_products(false).name(), "cpu");
    /// ```
    pub fn with_int8_products(self, enabled: bool) -> Self {
        let products = match (enabled, self.products) {
            (true, _) => Some(CpuProducts::Int8(Int8Products::new(self.par()))),
            (false, Some(CpuProducts::Int8(_))) => None,
            (false, other) => other,
        };
        CpuBackend { products, ..self }
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

    /// "cpu", or "cpu-bf16" / "cpu-int8" with bf16 / int8 forward products (different
    /// results, which the pipeline's report and its resume fingerprint record through this
    /// name).
    fn name(&self) -> &'static str {
        match self.products {
            None => "cpu",
            Some(CpuProducts::Bf16(_)) => "cpu-bf16",
            Some(CpuProducts::Int8(_)) => "cpu-int8",
        }
    }

    fn forward_products(&self) -> Option<&dyn ForwardProducts> {
        match &self.products {
            None => None,
            Some(CpuProducts::Bf16(p)) => Some(p),
            Some(CpuProducts::Int8(p)) => Some(p),
        }
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
