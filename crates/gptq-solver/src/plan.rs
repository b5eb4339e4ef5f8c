//! Planning one solve: the column order, the blocks and where each column's grid comes from.

use std::ops::Range;

use gptq_core::{FitSource, GroupPlan, GroupSize, QuantConfig, QuantGrid, RangeSearch, SolvePlan};
use gptq_quant::fit_table;
use ndarray::{ArrayView2, Axis};

/// The quantization order: columns by decreasing Hessian diagonal (stable on ties), as the
/// reference's act-order, where dead columns count with their fixed diagonal of 1.
pub fn act_order_permutation(diagonal: &[f64], dead: &[usize]) -> Vec<usize> {
    let mut key = diagonal.to_vec();
    for &d in dead {
        key[d] = 1.0;
    }
    let mut order: Vec<usize> = (0..key.len()).collect();
    order.sort_by(|&a, &b| key[b].total_cmp(&key[a]));
    order
}

/// Consecutive blocks of at most `block_size` columns. With `align_groups = Some(g)`, a block
/// is cut short before any group of `g` columns that would start inside it and end past it, so
/// that a group fitted inside a block sees only fully updated weights.
pub fn blocks(columns: usize, block_size: usize, align_groups: Option<usize>) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < columns {
        let mut end = (start + block_size).min(columns);
        if let Some(g) = align_groups {
            let first_inside = (start / g + 1) * g;
            if let Some(crossing) = (first_inside..end)
                .step_by(g)
                .find(|&s| (s + g).min(columns) > end)
            {
                end = crossing;
            }
        }
        out.push(start..end);
        start = end;
    }
    out
}

/// The column ranges of the groups of `group_size` (static groups, in original order).
pub fn group_ranges(columns: usize, group_size: usize) -> Vec<Range<usize>> {
    (0..columns)
        .step_by(group_size)
        .map(|s| s..(s + group_size).min(columns))
        .collect()
}

/// What a plan is built from.
pub struct PlanInputs<'a> {
    /// The weights, zeroed at dead columns, original column order.
    pub weights: ArrayView2<'a, f32>,
    /// What per-channel grids are fitted to (the reference fits them before dead columns are
    /// zeroed).
    pub per_channel_source: ArrayView2<'a, f32>,
    /// The quantization order, if not natural.
    pub permutation: Option<&'a [usize]>,
    /// Reproduce the reference's schedule.
    pub parity: bool,
    /// The range search, with the importance `1 / U_kk²` of each column in original order.
    pub search: Option<(RangeSearch, &'a [f32])>,
}

/// Builds the plan of one solve.
pub fn solve_plan<G: QuantGrid + ?Sized>(
    config: &QuantConfig,
    grid: &G,
    inputs: &PlanInputs<'_>,
) -> SolvePlan {
    let columns = inputs.weights.ncols();
    let uniform = || blocks(columns, config.block_size(), None);
    let search = inputs
        .search
        .as_ref()
        .map(|(s, importance)| (s, *importance));
    match config.group_size() {
        GroupSize::PerChannel => SolvePlan {
            blocks: uniform(),
            groups: GroupPlan::Fixed {
                table: fit_table(
                    grid,
                    inputs.per_channel_source,
                    &group_ranges(columns, columns),
                    search,
                ),
                slot_of_column: vec![0; columns],
            },
        },
        GroupSize::Columns(g) if config.static_groups() => {
            let original_column = |k: usize| inputs.permutation.map_or(k, |p| p[k]);
            SolvePlan {
                blocks: uniform(),
                groups: GroupPlan::Fixed {
                    table: fit_table(grid, inputs.weights, &group_ranges(columns, g), search),
                    slot_of_column: (0..columns)
                        .map(|k| (original_column(k) / g) as u32)
                        .collect(),
                },
            }
        }
        GroupSize::Columns(g) => SolvePlan {
            blocks: if inputs.parity {
                uniform()
            } else {
                blocks(columns, config.block_size(), Some(g))
            },
            groups: GroupPlan::Dynamic {
                group_size: g,
                fit_from: if inputs.parity {
                    FitSource::BlockStart
                } else {
                    FitSource::Current
                },
                search: inputs.search.as_ref().map(|(s, _)| *s),
            },
        },
    }
}

/// `g_idx` (group of each original column) for a finished plan.
pub fn group_index(
    config: &QuantConfig,
    columns: usize,
    permutation: Option<&[usize]>,
) -> Vec<u32> {
    match config.group_size() {
        GroupSize::PerChannel => vec![0; columns],
        GroupSize::Columns(g) if config.static_groups() || permutation.is_none() => {
            (0..columns).map(|c| (c / g) as u32).collect()
        }
        GroupSize::Columns(g) => {
            let mut g_idx = vec![0; columns];
            for (k, &c) in permutation.expect("checked above").iter().enumerate() {
                g_idx[c] = (k / g) as u32;
            }
            g_idx
        }
    }
}

/// Columns of `m` in the given order.
pub fn permute_columns<T: Clone>(m: ArrayView2<'_, T>, order: &[usize]) -> ndarray::Array2<T> {
    m.select(Axis(1), order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_cut_before_groups_that_would_straddle_them() {
        assert_eq!(blocks(300, 128, None), vec![0..128, 128..256, 256..300]);
        assert_eq!(blocks(300, 128, Some(32)), vec![0..128, 128..256, 256..300]);
        assert_eq!(
            blocks(600, 128, Some(192)),
            vec![0..128, 128..192, 192..320, 320..384, 384..512, 512..600]
        );
        assert_eq!(blocks(100, 128, Some(48)), vec![0..100]);
        for (n, b, g) in [(1000, 128, 96), (777, 64, 50), (10, 3, 7)] {
            let got = blocks(n, b, Some(g));
            assert_eq!(got.first().unwrap().start, 0);
            assert_eq!(got.last().unwrap().end, n);
            for block in &got {
                assert!(block.len() <= b && !block.is_empty());
                for s in (0..n)
                    .step_by(g)
                    .filter(|s| block.start < *s && *s < block.end)
                {
                    assert!(
                        (s + g).min(n) <= block.end,
                        "{n} {b} {g}: group {s} crosses {block:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn act_order_is_a_stable_descending_sort_with_dead_columns_at_one() {
        let diag = [0.5, 2.0, 0.0, 2.0, 1.5];
        assert_eq!(act_order_permutation(&diag, &[2]), vec![1, 3, 4, 2, 0]);
    }
}
