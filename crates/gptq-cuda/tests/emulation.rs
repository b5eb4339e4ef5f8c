//! The column-loop kernel without a GPU: src/kernels.cu is plain C99 when not compiled by NVRTC,
//! so tests/emulation/harness.c runs its `gptq_row` on the host, one row after the other, block
//! after block, and these tests compare codes and grid parameters bit for bit with the CPU
//! backend's blocked solve on the same weights, factor and plan. Skipped (one line) when no C
//! compiler is found.
//!
//! A plan of one block compares the whole column loop; plans of several blocks use a
//! block-diagonal Hessian, whose factor is zero off the blocks, so the lazy updates between
//! blocks change nothing and the comparison stays exact (it then covers groups and grids
//! carried from one block to the next, blocks that start mid-group, and block-start fits that
//! reach past the block).

#![allow(clippy::single_range_in_vec_init)] // plans of a single block

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use gptq_core::testing::seeded_matrix;
use gptq_core::{
    Backend, BlockSolution, ClipSearch, DampingPolicy, FactorRequest, FitSource, GroupPlan,
    QuantGrid, RangeSearch, SolvePlan,
};
use gptq_quant::{MinMaxGrid, fit_table};
use gptq_solver::CpuBackend;
use gptq_solver::testing::random_layer;
use ndarray::{Array2, ArrayView2, s};

/// Builds the harness once per test run; `None` (after printing why) without a C compiler.
fn harness() -> Option<&'static Path> {
    static HARNESS: OnceLock<Option<PathBuf>> = OnceLock::new();
    HARNESS
        .get_or_init(|| {
            let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/emulation/harness.c");
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gptq-cuda-emulation");
            std::fs::create_dir_all(&dir).unwrap();
            let exe = dir.join(format!("harness-{}", std::process::id()));
            let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
            // IEEE arithmetic as the kernel is compiled by NVRTC: no contraction into fused
            // multiply-adds, no fast math.
            let output = Command::new(&cc)
                .args([
                    "-std=c99",
                    "-O2",
                    "-ffp-contract=off",
                    "-fno-fast-math",
                    "-x",
                    "c",
                ])
                .arg(&source)
                .arg("-o")
                .arg(&exe)
                .arg("-lm")
                .output();
            match output {
                Err(e) => {
                    gptq_core::testing::announce_skip(&format!(
                        "no C compiler ({cc}: {e}) to run the kernel on the host"
                    ));
                    None
                }
                Ok(out) if !out.status.success() => panic!(
                    "{cc} could not compile the kernel for the host:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                ),
                Ok(_) => Some(exe),
            }
        })
        .as_deref()
}

/// The grid as the kernel takes it: (max_code, symmetric, clip_steps, clip_grid, clip_norm).
/// The minimum zero point is [`MinMaxGrid::min_zero`].
fn grid_words(grid: &MinMaxGrid) -> (i32, i32, i32, i32, f32) {
    match grid.spec() {
        Some(gptq_core::GridSpec::MinMax {
            symmetric,
            clip_search,
            ..
        }) => {
            let (steps, g, norm) =
                clip_search.map_or((0, 1, 1.0), |c| (c.steps() as i32, c.grid as i32, c.norm));
            (
                i32::from(grid.max_code()),
                i32::from(symmetric),
                steps,
                g,
                norm,
            )
        }
        _ => unreachable!(),
    }
}

/// Runs the harness on a plan; returns (codes [rows, columns], scales, zeros) like a solution.
fn emulate(
    exe: &Path,
    weights: ArrayView2<'_, f32>,
    upper: ArrayView2<'_, f32>,
    plan: &SolvePlan,
    grid: &MinMaxGrid,
    tag: &str,
) -> (Array2<u8>, Array2<f32>, Array2<u16>) {
    let (rows, columns) = weights.dim();
    let slots = plan.slots(columns);
    let (mode, group_size, candidates, step) = match &plan.groups {
        GroupPlan::Fixed { .. } => (0, 1, 0u32, 0.0f32),
        GroupPlan::Dynamic {
            group_size,
            fit_from,
            search,
        } => (
            if *fit_from == FitSource::Current {
                1
            } else {
                2
            },
            *group_size as i32,
            search.map_or(0, |s| s.candidates),
            search.map_or(0.0, |s| s.shrink_step),
        ),
    };
    let (max_code, symmetric, clip_steps, clip_grid, clip_norm) = grid_words(grid);
    let mut bytes = Vec::new();
    let int = |v: i32, b: &mut Vec<u8>| b.extend_from_slice(&v.to_le_bytes());
    for v in [
        rows as i32,
        columns as i32,
        mode,
        group_size,
        candidates as i32,
        max_code,
        symmetric,
        clip_steps,
        clip_grid,
        plan.blocks.len() as i32,
        slots as i32,
        i32::from(grid.min_zero()),
    ] {
        int(v, &mut bytes);
    }
    bytes.extend_from_slice(&step.to_le_bytes());
    bytes.extend_from_slice(&clip_norm.to_le_bytes());
    for block in &plan.blocks {
        int(block.start as i32, &mut bytes);
        int(block.end as i32, &mut bytes);
    }
    let floats = |m: &mut Vec<u8>, values: &mut dyn Iterator<Item = f32>| {
        for v in values {
            m.extend_from_slice(&v.to_le_bytes());
        }
    };
    floats(&mut bytes, &mut weights.iter().copied());
    floats(&mut bytes, &mut upper.iter().copied());
    floats(&mut bytes, &mut upper.diag().iter().map(|u| 1.0 / (u * u)));
    let (slot_of_column, scales, zeros) = match &plan.groups {
        GroupPlan::Fixed {
            table,
            slot_of_column,
        } => (
            slot_of_column.clone(),
            table.scales.clone(),
            table.zeros.clone(),
        ),
        GroupPlan::Dynamic { .. } => (
            vec![0; columns],
            Array2::zeros((slots, rows)),
            Array2::zeros((slots, rows)),
        ),
    };
    for v in &slot_of_column {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    floats(&mut bytes, &mut scales.iter().copied());
    for v in zeros.iter() {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    let dir = exe.parent().unwrap();
    let input = dir.join(format!("{tag}-{}.in", std::process::id()));
    let output = dir.join(format!("{tag}-{}.out", std::process::id()));
    std::fs::write(&input, bytes).unwrap();
    let status = Command::new(exe).arg(&input).arg(&output).status().unwrap();
    assert!(status.success(), "the harness failed on {tag}");
    let out = std::fs::read(&output).unwrap();
    let _ = std::fs::remove_file(&input);
    let _ = std::fs::remove_file(&output);
    let (codes, rest) = out.split_at(rows * columns);
    let (scales, zeros) = rest.split_at(slots * rows * 4);
    let codes = Array2::from_shape_vec((rows, columns), codes.to_vec()).unwrap();
    let scales = scales
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let zeros = zeros
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect();
    (
        codes,
        Array2::from_shape_vec((slots, rows), scales).unwrap(),
        Array2::from_shape_vec((slots, rows), zeros).unwrap(),
    )
}

/// Runs one plan on the CPU backend and through the emulated kernel; asserts bit equality.
fn check(
    exe: &Path,
    weights: ArrayView2<'_, f32>,
    hessian: ArrayView2<'_, f64>,
    plan: &SolvePlan,
    grid: &MinMaxGrid,
    tag: &str,
) {
    let cpu = CpuBackend::with_threads(1);
    let h = cpu.hessian_from_host(hessian).unwrap();
    let request = FactorRequest {
        dead_columns: &[],
        permutation: None,
        damping: DampingPolicy::default(),
    };
    let (factor, _) = cpu.inverse_factor(&h, &request).unwrap();
    let expected: BlockSolution = cpu.blocked_solve(weights, &factor, plan, grid).unwrap();
    let (codes, scales, zeros) = emulate(exe, weights, factor.upper(), plan, grid, tag);
    let differing = codes
        .iter()
        .zip(expected.codes.iter())
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(differing, 0, "{tag}: {differing} codes differ");
    assert_eq!(
        scales.mapv(f32::to_bits),
        expected.params.scales.mapv(f32::to_bits),
        "{tag}: scales differ"
    );
    assert_eq!(zeros, expected.params.zeros, "{tag}: zero points differ");
}

fn grids() -> Vec<(String, MinMaxGrid)> {
    let mut out = Vec::new();
    for bits in [2u8, 3, 4, 8] {
        for symmetric in [false, true] {
            out.push((
                format!("{bits}bit-{}", if symmetric { "sym" } else { "asym" }),
                MinMaxGrid::new(bits, symmetric).unwrap(),
            ));
        }
        // Checkpoint format v1 raises asymmetric zero points to at least 1.
        out.push((
            format!("{bits}bit-asym-v1"),
            MinMaxGrid::new(bits, false).unwrap().with_min_zero(1),
        ));
    }
    out
}

fn dynamic(group_size: usize, fit_from: FitSource, search: Option<RangeSearch>) -> GroupPlan {
    GroupPlan::Dynamic {
        group_size,
        fit_from,
        search,
    }
}

#[test]
fn one_block_matches_the_cpu_row_kernel_bit_for_bit() {
    let Some(exe) = harness() else { return };
    let (rows, columns) = (37, 96);
    let (weights, hessian) = random_layer(rows, columns, 5);
    for (name, grid) in grids() {
        let group_ranges: Vec<Range<usize>> = (0..columns).step_by(32).map(|s| s..s + 32).collect();
        let plans = [
            (
                "per-channel",
                GroupPlan::Fixed {
                    table: fit_table(&grid, weights.view(), &[0..columns], None),
                    slot_of_column: vec![0; columns],
                },
            ),
            (
                "static-permuted",
                GroupPlan::Fixed {
                    table: fit_table(&grid, weights.view(), &group_ranges, None),
                    slot_of_column: (0..columns)
                        .map(|c| ((c * 37) % columns / 32) as u32)
                        .collect(),
                },
            ),
            ("dynamic-current", dynamic(32, FitSource::Current, None)),
            (
                "dynamic-block-start",
                dynamic(24, FitSource::BlockStart, None),
            ),
            (
                "dynamic-search",
                dynamic(32, FitSource::Current, Some(RangeSearch::default())),
            ),
            (
                "dynamic-ragged-search",
                dynamic(
                    40,
                    FitSource::Current,
                    Some(RangeSearch {
                        candidates: 30,
                        shrink_step: 0.04,
                    }),
                ),
            ),
        ];
        for (plan_name, groups) in plans {
            let plan = SolvePlan {
                blocks: vec![0..columns],
                groups,
            };
            check(
                exe,
                weights.view(),
                hessian.view(),
                &plan,
                &grid,
                &format!("{name}-{plan_name}"),
            );
        }
    }
}

#[test]
fn the_clipping_search_matches_the_cpu_bit_for_bit() {
    let Some(exe) = harness() else { return };
    let (rows, columns) = (16, 64);
    let (weights, hessian) = random_layer(rows, columns, 9);
    for (name, grid) in grids().into_iter().filter(|(n, _)| !n.starts_with('8')) {
        let grid = grid.with_clip_search(ClipSearch::default());
        for (plan_name, groups) in [
            ("dynamic", dynamic(32, FitSource::Current, None)),
            (
                "dynamic-search",
                dynamic(
                    32,
                    FitSource::Current,
                    Some(RangeSearch {
                        candidates: 4,
                        shrink_step: 0.05,
                    }),
                ),
            ),
        ] {
            let plan = SolvePlan {
                blocks: vec![0..columns],
                groups,
            };
            check(
                exe,
                weights.view(),
                hessian.view(),
                &plan,
                &grid,
                &format!("clip-{name}-{plan_name}"),
            );
        }
    }
}

/// A Hessian whose blocks on the diagonal are `blocks`, zero elsewhere.
fn block_diagonal(columns: usize, blocks: &[Range<usize>], seed: u64) -> Array2<f64> {
    let mut h = Array2::zeros((columns, columns));
    for (k, block) in blocks.iter().enumerate() {
        let (_, part) = random_layer(1, block.len(), seed + k as u64);
        h.slice_mut(s![block.clone(), block.clone()]).assign(&part);
    }
    h
}

#[test]
fn several_blocks_carry_groups_across_block_ends() {
    let Some(exe) = harness() else { return };
    let (rows, columns) = (29, 100);
    let weights = seeded_matrix(rows, columns, 21, 0.02);
    let blocks = vec![0..40, 40..56, 56..90, 90..100];
    let hessian = block_diagonal(columns, &blocks, 3);
    for (name, grid) in grids() {
        let plans = [
            ("dynamic-current", dynamic(16, FitSource::Current, None)),
            (
                "dynamic-block-start",
                dynamic(16, FitSource::BlockStart, None),
            ),
            (
                "dynamic-block-start-wide",
                dynamic(48, FitSource::BlockStart, None),
            ),
            (
                "dynamic-search",
                dynamic(24, FitSource::Current, Some(RangeSearch::default())),
            ),
            (
                "static",
                GroupPlan::Fixed {
                    table: fit_table(
                        &grid,
                        weights.view(),
                        &[0..30, 30..60, 60..90, 90..100],
                        None,
                    ),
                    slot_of_column: (0..columns)
                        .map(|c| ((c * 7) % columns / 30) as u32)
                        .collect(),
                },
            ),
        ];
        for (plan_name, groups) in plans {
            let plan = SolvePlan {
                blocks: blocks.clone(),
                groups,
            };
            check(
                exe,
                weights.view(),
                hessian.view(),
                &plan,
                &grid,
                &format!("blocks-{name}-{plan_name}"),
            );
        }
    }
}

#[test]
fn degenerate_rows_match_the_cpu() {
    // Zero rows, tiny values and huge values exercise the degenerate-range and overflow rules.
    let Some(exe) = harness() else { return };
    let (rows, columns) = (6, 48);
    let (mut weights, hessian) = random_layer(rows, columns, 13);
    weights.row_mut(0).fill(0.0);
    weights.row_mut(1).mapv_inplace(|w| w * 1e-40);
    weights
        .row_mut(2)
        .mapv_inplace(|w| w.signum() * 3.0e38 * (1.0 - w.abs()));
    weights.row_mut(3).mapv_inplace(f32::abs);
    weights.row_mut(4).mapv_inplace(|w| -w.abs());
    for (name, grid) in grids() {
        for (plan_name, groups) in [
            ("dynamic", dynamic(16, FitSource::Current, None)),
            (
                "dynamic-search",
                dynamic(16, FitSource::Current, Some(RangeSearch::default())),
            ),
        ] {
            let plan = SolvePlan {
                blocks: vec![0..columns],
                groups,
            };
            check(
                exe,
                weights.view(),
                hessian.view(),
                &plan,
                &grid,
                &format!("degenerate-{name}-{plan_name}"),
            );
        }
    }
}

/// One group for the function-level comparison.
struct GroupCase {
    values: Vec<f32>,
    importance: Vec<f32>,
    grid: MinMaxGrid,
    search: RangeSearch,
    params: gptq_core::GroupParams,
}

#[test]
fn weighted_error_and_searched_fits_match_bit_for_bit() {
    // Function by function on many random groups: the error sum's order and every fit rule show
    // up here even where a whole solve would hide them behind an unchanged argmin.
    let Some(exe) = harness() else { return };
    let mut cases = Vec::new();
    for seed in 0..400u64 {
        let n = 1 + (seed as usize * 7) % 150;
        let magnitude = [1e-3f32, 0.05, 1.0, 30.0][seed as usize % 4];
        let values: Vec<f32> = seeded_matrix(1, n, seed, magnitude)
            .iter()
            .copied()
            .collect();
        let importance: Vec<f32> = seeded_matrix(1, n, seed + 1000, 1.0)
            .iter()
            .map(|x| 0.1 + x.abs() * 40.0)
            .collect();
        let bits = [2u8, 3, 4, 8][(seed as usize / 4) % 4];
        let mut grid = MinMaxGrid::new(bits, seed % 3 == 0).unwrap();
        if seed % 10 == 7 {
            grid = grid.with_clip_search(ClipSearch::default());
        }
        let search = RangeSearch {
            candidates: [0u32, 1, 8, 20, 45][seed as usize % 5],
            shrink_step: [0.025f32, 0.01, 0.07][seed as usize % 3],
        };
        let mut params = grid.fit(&values);
        if seed % 2 == 1 {
            params.scale *= 0.77; // a grid that clips, so the error has large terms
        }
        cases.push(GroupCase {
            values,
            importance,
            grid,
            search,
            params,
        });
    }
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&(cases.len() as i32).to_le_bytes());
    for case in &cases {
        let (max_code, symmetric, clip_steps, clip_grid, clip_norm) = grid_words(&case.grid);
        for v in [
            case.values.len() as i32,
            max_code,
            symmetric,
            clip_steps,
            clip_grid,
            case.search.candidates as i32,
            i32::from(case.params.zero),
            i32::from(case.grid.min_zero()),
        ] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        for v in [clip_norm, case.search.shrink_step, case.params.scale] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        for v in case.values.iter().chain(&case.importance) {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
    }
    let dir = exe.parent().unwrap();
    let input = dir.join(format!("functions-{}.in", std::process::id()));
    let output = dir.join(format!("functions-{}.out", std::process::id()));
    std::fs::write(&input, bytes).unwrap();
    let status = Command::new(exe)
        .arg("--functions")
        .arg(&input)
        .arg(&output)
        .status()
        .unwrap();
    assert!(status.success());
    let out = std::fs::read(&output).unwrap();
    let _ = std::fs::remove_file(&input);
    let _ = std::fs::remove_file(&output);
    let words: Vec<u32> = out
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(words.len(), 3 * cases.len());
    for (k, (case, got)) in cases.iter().zip(words.chunks_exact(3)).enumerate() {
        let error = gptq_core::weighted_error(
            &case.values,
            &case.importance,
            case.params,
            case.grid.max_code(),
        );
        assert_eq!(got[0], error.to_bits(), "case {k}: weighted error");
        let fitted = gptq_core::fit_searched(
            &case.grid,
            &case.values,
            &case.importance,
            &case.search,
            &mut Vec::new(),
        );
        assert_eq!(got[1], fitted.scale.to_bits(), "case {k}: fitted scale");
        assert_eq!(got[2], u32::from(fitted.zero), "case {k}: fitted zero");
    }
}
