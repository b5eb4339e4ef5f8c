//! The in-block column loop on the CPU.
//!
//! Inside a block, each column is quantized and its error `e = (w - q) / U[i, i]` is pushed onto
//! the block's later columns: `w[j] -= e · U[i, j]`. Rows never interact here, so the kernel
//! walks one row at a time through the whole block (the row's slice of the block and the block of
//! `U` stay in cache) and splits rows across threads. The arithmetic is the reference's, operation
//! for operation in f32 (no fused multiply-add), so the result does not depend on the thread count.

use std::ops::Range;

use gptq_core::{
    FitSource, GroupParams, GroupPlan, ParamTable, QuantGrid, dequantize_code, fit_searched,
    quantize_value,
};
use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;

/// Everything the loop reads for one block.
pub(crate) struct BlockContext<'a, G: ?Sized> {
    /// The inverse factor `U`, row-major.
    pub upper: ArrayView2<'a, f32>,
    /// `1 / U_jj²` of every column, the weights of the range search.
    pub importance: &'a [f32],
    /// The block's columns (quantization order).
    pub block: Range<usize>,
    /// Where grids come from.
    pub groups: &'a GroupPlan,
    /// The grid.
    pub grid: &'a G,
    /// `2^bits - 1`.
    pub max_code: u16,
}

/// What the loop writes: working weights, codes, and the grids fitted so far (`[rows, slots]`).
pub(crate) struct RowState {
    pub weights: Array2<f32>,
    pub codes: Array2<u8>,
    scales: Array2<f32>,
    zeros: Array2<u16>,
}

impl RowState {
    pub fn new(weights: ArrayView2<'_, f32>, slots: usize) -> Self {
        let rows = weights.nrows();
        RowState {
            weights: weights.as_standard_layout().into_owned(),
            codes: Array2::zeros(weights.dim()),
            // At least one slot, so that the parallel split below always has equal-length chunks.
            scales: Array2::zeros((rows, slots.max(1))),
            zeros: Array2::zeros((rows, slots.max(1))),
        }
    }

    /// The grids fitted during the solve, as a `[slots, rows]` table.
    pub fn fitted_table(&self) -> ParamTable {
        ParamTable {
            scales: self.scales.t().as_standard_layout().into_owned(),
            zeros: self.zeros.t().as_standard_layout().into_owned(),
        }
    }
}

/// Mutable slices of one contiguous run of rows.
struct Rows<'a> {
    first: usize,
    weights: &'a mut [f32],
    codes: &'a mut [u8],
    errors: &'a mut [f32],
    scales: &'a mut [f32],
    zeros: &'a mut [u16],
}

/// Runs the block over all rows; `errors` receives `[rows, block.len()]` row-major.
pub(crate) fn quantize_rows<G: QuantGrid + ?Sized>(
    context: &BlockContext<'_, G>,
    state: &mut RowState,
    errors: &mut [f32],
    threads: usize,
) {
    let (rows, columns) = state.weights.dim();
    let width = context.block.len();
    let slots = state.scales.ncols();
    let chunk = rows.div_ceil(threads.max(1)).max(1);
    let weights = state.weights.as_slice_mut().expect("standard layout");
    let codes = state.codes.as_slice_mut().expect("standard layout");
    let scales = state.scales.as_slice_mut().expect("standard layout");
    let zeros = state.zeros.as_slice_mut().expect("standard layout");
    let run = |(k, ((((weights, codes), errors), scales), zeros))| {
        quantize_row_run_dispatch(
            context,
            Rows {
                first: k * chunk,
                weights,
                codes,
                errors,
                scales,
                zeros,
            },
        )
    };
    if threads <= 1 {
        run((0, ((((weights, codes), errors), scales), zeros)));
        return;
    }
    weights
        .par_chunks_mut(chunk * columns)
        .zip(codes.par_chunks_mut(chunk * columns))
        .zip(errors.par_chunks_mut(chunk * width))
        .zip(scales.par_chunks_mut(chunk * slots))
        .zip(zeros.par_chunks_mut(chunk * slots))
        .enumerate()
        .for_each(run);
}

/// Runs [`quantize_row_run`] compiled for AVX2 when the CPU has it. Without it, rounding to
/// nearest even is a library call per value on baseline x86-64. The results are identical
/// either way: the same IEEE operations in the same order, and no fused multiply-add.
fn quantize_row_run_dispatch<G: QuantGrid + ?Sized>(context: &BlockContext<'_, G>, rows: Rows<'_>) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, as just checked.
        return unsafe { quantize_row_run_avx2(context, rows) };
    }
    quantize_row_run(context, rows)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_row_run_avx2<G: QuantGrid + ?Sized>(
    context: &BlockContext<'_, G>,
    rows: Rows<'_>,
) {
    quantize_row_run(context, rows)
}

#[inline(always)]
fn quantize_row_run<G: QuantGrid + ?Sized>(context: &BlockContext<'_, G>, rows: Rows<'_>) {
    let columns = context.upper.ncols();
    let width = context.block.len();
    let slots = rows.scales.len() / (rows.weights.len() / columns).max(1);
    let mut snapshot = vec![0.0f32; width];
    let mut buffers = (Vec::new(), Vec::new());
    let row_slices = rows
        .weights
        .chunks_mut(columns)
        .zip(rows.codes.chunks_mut(columns))
        .zip(rows.errors.chunks_mut(width))
        .zip(rows.scales.chunks_mut(slots))
        .zip(rows.zeros.chunks_mut(slots));
    for (r, ((((w, codes), errors), scales), zeros)) in row_slices.enumerate() {
        let row = rows.first + r;
        quantize_row(
            context,
            row,
            w,
            codes,
            errors,
            scales,
            zeros,
            &mut snapshot,
            &mut buffers,
        );
    }
}

/// One row through one block.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn quantize_row<G: QuantGrid + ?Sized>(
    context: &BlockContext<'_, G>,
    row: usize,
    w: &mut [f32],
    codes: &mut [u8],
    errors: &mut [f32],
    scales: &mut [f32],
    zeros: &mut [u16],
    snapshot: &mut [f32],
    (fit_buffer, scratch): &mut (Vec<f32>, Vec<f32>),
) {
    let Range { start, end } = context.block;
    let columns = w.len();
    let upper = context.upper.as_slice().expect("the factor is row-major");
    if let GroupPlan::Dynamic {
        fit_from: FitSource::BlockStart,
        ..
    } = context.groups
    {
        snapshot.copy_from_slice(&w[start..end]);
    }
    for i in start..end {
        let params = match context.groups {
            GroupPlan::Fixed {
                table,
                slot_of_column,
            } => table.get(slot_of_column[i] as usize, row),
            GroupPlan::Dynamic {
                group_size,
                fit_from,
                search,
            } => {
                let slot = i / group_size;
                if i % group_size == 0 {
                    let group_end = (i + group_size).min(columns);
                    let values = match fit_from {
                        FitSource::Current => &w[i..group_end],
                        FitSource::BlockStart => {
                            fit_buffer.clear();
                            fit_buffer.extend_from_slice(
                                &snapshot[i - start..group_end.min(end) - start],
                            );
                            if group_end > end {
                                fit_buffer.extend_from_slice(&w[end..group_end]);
                            }
                            &fit_buffer[..]
                        }
                    };
                    let fitted = match search {
                        None => context.grid.fit(values),
                        Some(search) => fit_searched(
                            context.grid,
                            values,
                            &context.importance[i..group_end],
                            search,
                            scratch,
                        ),
                    };
                    scales[slot] = fitted.scale;
                    zeros[slot] = fitted.zero;
                }
                GroupParams {
                    scale: scales[slot],
                    zero: zeros[slot],
                }
            }
        };
        let x = w[i];
        let code = quantize_value(x, params, context.max_code);
        codes[i] = code;
        let u_row = &upper[i * columns..(i + 1) * columns];
        let error = (x - dequantize_code(code, params)) / u_row[i];
        errors[i - start] = error;
        for (wj, uj) in w[i + 1..end].iter_mut().zip(&u_row[i + 1..end]) {
            *wj -= error * uj;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gptq_core::testing::seeded_matrix;
    use gptq_quant::MinMaxGrid;

    /// The reference's loop literally: column by column over all rows.
    fn reference_block(
        context: &BlockContext<'_, MinMaxGrid>,
        weights: &mut Array2<f32>,
        codes: &mut Array2<u8>,
        fitted: &mut ParamTable,
    ) -> Array2<f32> {
        let Range { start, end } = context.block.clone();
        let (rows, columns) = weights.dim();
        let block_start = weights.clone();
        let mut errors = Array2::zeros((rows, end - start));
        for i in start..end {
            for r in 0..rows {
                let params = match context.groups {
                    GroupPlan::Fixed {
                        table,
                        slot_of_column,
                    } => table.get(slot_of_column[i] as usize, r),
                    GroupPlan::Dynamic {
                        group_size,
                        fit_from,
                        search,
                    } => {
                        if i % group_size == 0 {
                            let source = match fit_from {
                                FitSource::Current => &*weights,
                                FitSource::BlockStart => &block_start,
                            };
                            let g_end = (i + group_size).min(columns);
                            let values: Vec<f32> = (i..g_end).map(|c| source[[r, c]]).collect();
                            let params = match search {
                                None => context.grid.fit(&values),
                                Some(search) => fit_searched(
                                    context.grid,
                                    &values,
                                    &context.importance[i..g_end],
                                    search,
                                    &mut Vec::new(),
                                ),
                            };
                            fitted.set(i / group_size, r, params);
                        }
                        fitted.get(i / group_size, r)
                    }
                };
                let x = weights[[r, i]];
                let q = quantize_value(x, params, context.max_code);
                codes[[r, i]] = q;
                let e = (x - dequantize_code(q, params)) / context.upper[[i, i]];
                errors[[r, i - start]] = e;
                for j in i + 1..end {
                    weights[[r, j]] -= e * context.upper[[i, j]];
                }
            }
        }
        errors
    }

    #[test]
    fn row_kernel_is_the_reference_loop_bit_for_bit_at_any_thread_count() {
        let (rows, columns) = (37, 100);
        let w = seeded_matrix(rows, columns, 3, 1.0);
        // Any upper-triangular matrix with a positive diagonal exercises the same arithmetic.
        let upper = Array2::from_shape_fn((columns, columns), |(i, j)| {
            if j < i {
                0.0
            } else if i == j {
                0.5 + (i % 7) as f32 * 0.1
            } else {
                ((i * 31 + j * 17) % 13) as f32 * 0.01 - 0.06
            }
        });
        let grid = MinMaxGrid::new(3, false).unwrap();
        let importance: Vec<f32> = (0..columns)
            .map(|j| 1.0 / (upper[[j, j]] * upper[[j, j]]))
            .collect();
        let plans = [
            GroupPlan::Dynamic {
                group_size: 16,
                fit_from: FitSource::BlockStart,
                search: None,
            },
            GroupPlan::Dynamic {
                group_size: 16,
                fit_from: FitSource::Current,
                search: None,
            },
            GroupPlan::Dynamic {
                group_size: 16,
                fit_from: FitSource::Current,
                search: Some(Default::default()),
            },
            GroupPlan::Fixed {
                table: gptq_quant::fit_table(&grid, w.view(), &[0..50, 50..100], None),
                slot_of_column: (0..columns)
                    .map(|c| ((c * 7) % columns / 50) as u32)
                    .collect(),
            },
        ];
        for groups in &plans {
            // Start inside the matrix, mid-group, so that earlier fits are reused.
            let block = 40..90;
            let context = BlockContext {
                upper: upper.view(),
                importance: &importance,
                block: block.clone(),
                groups,
                grid: &grid,
                max_code: 7,
            };
            let mut expected_w = w.clone();
            let mut expected_codes = Array2::zeros((rows, columns));
            let mut fitted = ParamTable::zeroed(columns.div_ceil(16), rows);
            for r in 0..rows {
                fitted.set(2, r, grid.fit(&[w[[r, 32]], -1.0, 1.0]));
            }
            let expected_errors =
                reference_block(&context, &mut expected_w, &mut expected_codes, &mut fitted);
            for threads in [1, 2, 3] {
                let mut state = RowState::new(w.view(), columns.div_ceil(16));
                for r in 0..rows {
                    state.scales[[r, 2]] = fitted.scales[[2, r]];
                    state.zeros[[r, 2]] = fitted.zeros[[2, r]];
                    if matches!(groups, GroupPlan::Dynamic { .. }) {
                        // The slot of the group in progress (32..48) was fitted by an earlier block.
                        let p = grid.fit(&[w[[r, 32]], -1.0, 1.0]);
                        state.scales[[r, 2]] = p.scale;
                        state.zeros[[r, 2]] = p.zero;
                    }
                }
                let mut errors = vec![0.0; rows * block.len()];
                quantize_rows(&context, &mut state, &mut errors, threads);
                assert_eq!(
                    state.codes.slice(ndarray::s![.., block.clone()]),
                    expected_codes.slice(ndarray::s![.., block.clone()])
                );
                assert_eq!(state.weights, expected_w, "threads {threads}");
                assert_eq!(errors, expected_errors.as_slice().unwrap());
                if matches!(groups, GroupPlan::Dynamic { .. }) {
                    let table = state.fitted_table();
                    assert_eq!(
                        table.scales.slice(ndarray::s![3..6, ..]),
                        fitted.scales.slice(ndarray::s![3..6, ..])
                    );
                }
            }
        }
    }
}
