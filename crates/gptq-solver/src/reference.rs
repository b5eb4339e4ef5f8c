//! The reference implementation's algorithm (AutoGPTQ's `GPTQ.fasterquant`), transcribed into
//! plain f64 loops: an independent oracle for every backend. Quadratic in memory traffic and
//! single-threaded; use it on small layers only.

use gptq_core::{
    GptqError, GroupParams, GroupSize, QuantConfig, QuantGrid, QuantizedTensor, RangeSearch,
    Result, dequantize_code, fit_searched, quantize_value,
};
use gptq_quant::MinMaxGrid;
use ndarray::{Array2, ArrayView2};

use crate::plan::{act_order_permutation, group_index, group_ranges};

/// GPTQ in f64. With `parity`, exactly the reference's schedule (blocks of `block_size`, groups
/// that start inside a block fitted to the block-start weights, per-channel grids fitted before
/// dead columns are zeroed); without, the solver's default semantics computed without blocks
/// (every column's error applied to all later columns at once, groups fitted to the updated
/// weights), which blocking must not change.
///
/// `search` is the default mode's Hessian-weighted range search (ignored with `parity`).
pub fn gptq(
    weight: ArrayView2<'_, f32>,
    hessian: ArrayView2<'_, f64>,
    config: &QuantConfig,
    parity: bool,
    search: Option<RangeSearch>,
) -> Result<QuantizedTensor> {
    let search = if parity { None } else { search };
    let (rows, n) = weight.dim();
    let grid = MinMaxGrid::from_config(config);
    let max_code = grid.max_code();
    let diagonal: Vec<f64> = hessian.diag().to_vec();
    let dead: Vec<usize> = (0..n).filter(|&c| diagonal[c] == 0.0).collect();
    let mut zeroed = weight.to_owned();
    for &c in &dead {
        zeroed.column_mut(c).fill(0.0);
    }
    let permutation = config
        .act_order()
        .then(|| act_order_permutation(&diagonal, &dead));
    let order: Vec<usize> = permutation.clone().unwrap_or_else(|| (0..n).collect());

    let u = gptq_linalg::reference::inverse_factor(
        hessian,
        &dead,
        permutation.as_deref(),
        config.damp_percent(),
    )
    .ok_or_else(|| GptqError::NotPositiveDefinite {
        columns: n,
        tried: vec![config.damp_percent()],
    })?;
    // The search weighs each column by 1 / U_kk², k its position in the quantization order.
    let mut importance = vec![0.0f32; n];
    for (k, &c) in order.iter().enumerate() {
        importance[c] = (1.0 / (u[[k, k]] * u[[k, k]])) as f32;
    }
    let fit_one = |values: &[f32], importance: &[f32]| -> GroupParams {
        match &search {
            None => grid.fit(values),
            Some(search) => fit_searched(&grid, values, importance, search, &mut Vec::new()),
        }
    };

    // Grids fixed before the loop: slot tables [slot][row].
    let fit =
        |source: ArrayView2<'_, f32>, ranges: &[std::ops::Range<usize>]| -> Vec<Vec<GroupParams>> {
            ranges
                .iter()
                .map(|r| {
                    (0..rows)
                        .map(|row| {
                            fit_one(
                                &source.row(row).as_slice().unwrap()[r.clone()],
                                &importance[r.clone()],
                            )
                        })
                        .collect()
                })
                .collect()
        };
    let zeroed_std = zeroed.as_standard_layout().into_owned();
    let original_std = weight.as_standard_layout().into_owned();
    let (mut table, fixed_slot): (Vec<Vec<GroupParams>>, Option<Vec<usize>>) =
        match config.group_size() {
            GroupSize::PerChannel => {
                let source = if parity {
                    original_std.view()
                } else {
                    zeroed_std.view()
                };
                (fit(source, &group_ranges(n, n)), Some(vec![0; n]))
            }
            GroupSize::Columns(g) if config.static_groups() => (
                fit(zeroed_std.view(), &group_ranges(n, g)),
                Some(order.iter().map(|&c| c / g).collect()),
            ),
            GroupSize::Columns(g) => (vec![Vec::new(); n.div_ceil(g)], None),
        };

    let mut w = Array2::from_shape_fn((rows, n), |(r, k)| f64::from(zeroed[[r, order[k]]]));
    let mut codes = Array2::<u8>::zeros((rows, n));

    let block = if parity { config.block_size() } else { n };
    for start in (0..n).step_by(block) {
        let end = (start + block).min(n);
        let block_start = w.clone();
        let mut errors = Array2::<f64>::zeros((rows, end - start));
        for i in start..end {
            if let (None, GroupSize::Columns(g)) = (&fixed_slot, config.group_size())
                && i % g == 0
            {
                let source = if parity { &block_start } else { &w };
                let g_end = (i + g).min(n);
                let position_importance: Vec<f32> = (i..g_end)
                    .map(|k| (1.0 / (u[[k, k]] * u[[k, k]])) as f32)
                    .collect();
                table[i / g] = (0..rows)
                    .map(|r| {
                        fit_one(
                            &(i..g_end)
                                .map(|c| source[[r, c]] as f32)
                                .collect::<Vec<_>>(),
                            &position_importance,
                        )
                    })
                    .collect();
            }
            let slot = match (&fixed_slot, config.group_size()) {
                (Some(slots), _) => slots[i],
                (None, size) => i / size.columns_per_group(n),
            };
            for r in 0..rows {
                let params = table[slot][r];
                let x = w[[r, i]];
                let code = quantize_value(x as f32, params, max_code);
                codes[[r, i]] = code;
                let e = (x - f64::from(dequantize_code(code, params))) / u[[i, i]];
                errors[[r, i - start]] = e;
                for j in i + 1..end {
                    w[[r, j]] -= e * u[[i, j]];
                }
            }
        }
        for r in 0..rows {
            for j in end..n {
                w[[r, j]] -= (start..end)
                    .map(|k| errors[[r, k - start]] * u[[k, j]])
                    .sum::<f64>();
            }
        }
    }

    let mut original_codes = Array2::<u8>::zeros((rows, n));
    for (k, &c) in order.iter().enumerate() {
        original_codes.column_mut(c).assign(&codes.column(k));
    }
    let slots = table.len();
    let scales = Array2::from_shape_fn((slots, rows), |(s, r)| table[s][r].scale);
    let zeros = Array2::from_shape_fn((slots, rows), |(s, r)| table[s][r].zero);
    QuantizedTensor::new(
        config.bits(),
        original_codes,
        scales,
        zeros,
        group_index(config, n, permutation.as_deref()),
        permutation.map(|p| p.into_iter().map(|c| c as u32).collect()),
    )
}
