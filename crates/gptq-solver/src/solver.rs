//! The GPTQ algorithm, written once against the [`Backend`] trait.

use std::time::Instant;

use gptq_core::validate::{check_finite, check_non_empty};
use gptq_core::{
    Backend, DampingPolicy, FactorRequest, GptqError, GroupSize, QuantConfig, QuantGrid,
    QuantizedTensor, Result,
};
use gptq_quant::MinMaxGrid;
use ndarray::{Array2, ArrayView2, Axis};

use crate::options::SolveOptions;
use crate::plan::{PlanInputs, act_order_permutation, group_index, permute_columns, solve_plan};
use crate::report::{LayerReport, LayerTimings, QuantizedLayer};

/// A GPTQ quantizer: a backend, a configuration and solver options.
///
/// ```
/// use gptq_core::{ActivationBatch, HessianAccumulator, QuantConfig};
/// use gptq_core::testing::seeded_matrix;
/// use gptq_solver::{CpuBackend, Gptq};
///
/// let gptq = Gptq::new(CpuBackend::new(), QuantConfig::builder().bits(4).build()?);
/// let weight = seeded_matrix(64, 256, 1, 0.02); // [out, in]
/// let inputs = seeded_matrix(512, 256, 2, 1.0); // [tokens, in]
/// let mut acc = gptq.accumulator(256)?;
/// acc.add_batch(&ActivationBatch::new(inputs.view()))?;
/// let layer = gptq.quantize(weight.view(), &acc.finish()?)?;
/// assert_eq!(layer.tensor.codes().dim(), (64, 256));
/// println!("loss {:?}", layer.report.loss);
/// # Ok::<(), gptq_core::GptqError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Gptq<B: Backend> {
    backend: B,
    config: QuantConfig,
    options: SolveOptions,
}

impl<B: Backend> Gptq<B> {
    /// A quantizer with default [`SolveOptions`].
    pub fn new(backend: B, config: QuantConfig) -> Self {
        Gptq {
            backend,
            config,
            options: SolveOptions::default(),
        }
    }

    /// Replaces the solver options.
    pub fn with_options(mut self, options: SolveOptions) -> Self {
        self.options = options;
        self
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }
    /// The configuration.
    pub fn config(&self) -> &QuantConfig {
        &self.config
    }
    /// The solver options.
    pub fn options(&self) -> &SolveOptions {
        &self.options
    }

    /// A Hessian accumulator of the backend for a layer with `columns` inputs.
    pub fn accumulator(&self, columns: usize) -> Result<B::Accumulator> {
        self.backend.accumulator(columns, self.options.hessian)
    }

    /// Quantizes `weight` (`[out, in]`) with the min–max grid of the configuration.
    pub fn quantize(
        &self,
        weight: ArrayView2<'_, f32>,
        hessian: &B::Hessian,
    ) -> Result<QuantizedLayer> {
        self.quantize_with_grid(weight, hessian, &MinMaxGrid::from_config(&self.config))
    }

    /// Quantizes `weight` (`[out, in]`) with any grid of the configured bit width.
    pub fn quantize_with_grid<G: QuantGrid + ?Sized>(
        &self,
        weight: ArrayView2<'_, f32>,
        hessian: &B::Hessian,
        grid: &G,
    ) -> Result<QuantizedLayer> {
        let start = Instant::now();
        let mut timings = LayerTimings::default();
        let config = &self.config;
        let diagonal = self.backend.hessian_diagonal(hessian)?;
        self.validate(weight, diagonal.len(), grid)?;
        let columns = weight.ncols();

        let dead: Vec<usize> = (0..columns).filter(|&c| diagonal[c] == 0.0).collect();
        let mut zeroed = weight.to_owned();
        for &c in &dead {
            zeroed.column_mut(c).fill(0.0);
        }
        let permutation = config
            .act_order()
            .then(|| act_order_permutation(&diagonal, &dead));
        timings.prepare = start.elapsed();

        let t = Instant::now();
        let request = FactorRequest {
            dead_columns: &dead,
            permutation: permutation.as_deref(),
            damping: DampingPolicy {
                damp_percent: config.damp_percent(),
                retries: self.options.damping_retries,
            },
        };
        let (factor, damping) = self.backend.inverse_factor(hessian, &request)?;
        timings.inverse_factor = t.elapsed();

        let t = Instant::now();
        let search = self.options.effective_search();
        let importance = match search {
            Some(_) => Some(column_importance(
                &self.backend.factor_diagonal(&factor)?,
                permutation.as_deref(),
            )),
            None => None,
        };
        let plan = solve_plan(
            config,
            grid,
            &PlanInputs {
                weights: zeroed.view(),
                per_channel_source: if self.options.parity {
                    weight
                } else {
                    zeroed.view()
                },
                permutation: permutation.as_deref(),
                parity: self.options.parity,
                search: search.zip(importance.as_deref()),
            },
        );
        let ordered = match &permutation {
            Some(p) => permute_columns(zeroed.view(), p),
            None => zeroed,
        };
        timings.prepare += t.elapsed();

        let solution = self
            .backend
            .blocked_solve(ordered.view(), &factor, &plan, grid)?;
        drop(factor);
        timings.upload = solution.timings.upload;
        timings.column_loop = solution.timings.column_loop;
        timings.block_updates = solution.timings.block_updates;
        timings.download = solution.timings.download;

        let codes = match &permutation {
            Some(p) => unpermute_columns(solution.codes.view(), p),
            None => solution.codes,
        };
        let tensor = QuantizedTensor::new(
            config.bits(),
            codes,
            solution.params.scales,
            solution.params.zeros,
            group_index(config, columns, permutation.as_deref()),
            permutation.map(|p| p.into_iter().map(|c| c as u32).collect()),
        )?;

        let t = Instant::now();
        let loss = if self.options.compute_loss {
            Some(self.loss(weight, &tensor, hessian)?)
        } else {
            None
        };
        timings.loss = t.elapsed();
        timings.total = start.elapsed();
        Ok(QuantizedLayer {
            tensor,
            report: LayerReport {
                loss,
                damping,
                dead_columns: dead.len(),
                timings,
            },
        })
    }

    /// `tr((W - Q) H (W - Q)ᵀ)` of any quantized version `tensor` of `weight`.
    pub fn loss(
        &self,
        weight: ArrayView2<'_, f32>,
        tensor: &QuantizedTensor,
        hessian: &B::Hessian,
    ) -> Result<f64> {
        let delta = &weight - &tensor.dequantize();
        self.backend.quadratic_loss(hessian, delta.view())
    }

    fn validate<G: QuantGrid + ?Sized>(
        &self,
        weight: ArrayView2<'_, f32>,
        hessian_columns: usize,
        grid: &G,
    ) -> Result<()> {
        check_non_empty("weight", weight)?;
        if weight.ncols() != hessian_columns {
            return Err(GptqError::ShapeMismatch {
                what: "weight",
                expected: format!("[rows, {hessian_columns}] (the Hessian's size)"),
                actual: gptq_core::shape_string(&[weight.nrows(), weight.ncols()]),
            });
        }
        check_finite("weight", weight)?;
        self.config.check_columns(weight.ncols())?;
        if grid.bits() != self.config.bits() {
            return Err(GptqError::InvalidConfig(format!(
                "the grid has {} bits but the configuration {}",
                grid.bits(),
                self.config.bits()
            )));
        }
        Ok(())
    }
}

/// The GPTQ cost of an error on each original column, `1 / U_kk²` with `k` its position.
fn column_importance(factor_diagonal: &[f32], permutation: Option<&[usize]>) -> Vec<f32> {
    let mut importance = vec![0.0; factor_diagonal.len()];
    for (k, &u) in factor_diagonal.iter().enumerate() {
        importance[permutation.map_or(k, |p| p[k])] = 1.0 / (u * u);
    }
    importance
}

/// Puts columns quantized in `order` back in their original place.
fn unpermute_columns(codes: ArrayView2<'_, u8>, order: &[usize]) -> Array2<u8> {
    let mut out = Array2::zeros(codes.dim());
    for (k, column) in codes.axis_iter(Axis(1)).enumerate() {
        out.column_mut(order[k]).assign(&column);
    }
    out
}

/// Round-to-nearest on the same grid, the baseline GPTQ is measured against: groups in natural
/// order, grids fitted to the original weights, no error feedback.
pub fn round_to_nearest<G: QuantGrid + ?Sized>(
    weight: ArrayView2<'_, f32>,
    config: &QuantConfig,
    grid: &G,
) -> Result<QuantizedTensor> {
    check_non_empty("weight", weight)?;
    check_finite("weight", weight)?;
    config.check_columns(weight.ncols())?;
    let columns = weight.ncols();
    let group = config.group_size().columns_per_group(columns);
    let ranges = crate::plan::group_ranges(columns, group);
    let table = gptq_quant::fit_table(grid, weight, &ranges, None);
    let max_code = grid.max_code();
    let codes = Array2::from_shape_fn(weight.dim(), |(r, c)| {
        gptq_core::quantize_value(weight[[r, c]], table.get(c / group, r), max_code)
    });
    let g_idx = match config.group_size() {
        GroupSize::PerChannel => vec![0; columns],
        GroupSize::Columns(g) => (0..columns).map(|c| (c / g) as u32).collect(),
    };
    QuantizedTensor::new(grid.bits(), codes, table.scales, table.zeros, g_idx, None)
}
