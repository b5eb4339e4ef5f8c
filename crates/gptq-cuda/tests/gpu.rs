//! The CUDA backend against the CPU backend (the specification), the f64 reference oracle and
//! the reference implementation's fixtures. Every test needs a GPU: on a machine without one it
//! prints one line saying why it is skipped and returns.

#![allow(clippy::single_range_in_vec_init)] // plans of a single block

use gptq_core::testing::seeded_matrix;
use gptq_core::{
    ActivationBatch, Backend, ClipSearch, DampingPolicy, FactorRequest, FitSource, GptqError,
    GroupParams, GroupPlan, GroupSize, HessianAccumulator, HessianOptions, HessianPrecision,
    QuantConfig, QuantGrid, RangeSearch, SolvePlan,
};
use gptq_cuda::CudaBackend;
use gptq_quant::MinMaxGrid;
use gptq_solver::parity::{ReferenceCase, Thresholds, check_case, list_cases};
use gptq_solver::testing::{
    check_against_oracle, check_diagonal_hessian_matches_rtn, check_repeatable, compare,
    random_layer,
};
use gptq_solver::{CpuBackend, Gptq, SolveOptions};
use half::{bf16, f16};
use ndarray::{Array2, ArrayView2, s};

/// The backend on GPU 0, or `None` after one line saying why the test is skipped.
fn gpu() -> Option<CudaBackend> {
    match CudaBackend::new(0) {
        Ok(backend) => Some(backend),
        Err(e @ GptqError::Unsupported { .. }) => {
            gptq_core::testing::announce_skip(&e.to_string());
            None
        }
        Err(e) => panic!("a GPU driver is present but the CUDA backend cannot start: {e}"),
    }
}

fn config(bits: u8, group: GroupSize, symmetric: bool, act_order: bool, stat: bool) -> QuantConfig {
    QuantConfig::builder()
        .bits(bits)
        .group_size(group)
        .symmetric(symmetric)
        .act_order(act_order)
        .static_groups(stat && group != GroupSize::PerChannel)
        .build()
        .unwrap()
}

/// A spread of configurations: bits 2/3/4/8, per-channel and groups, act-order, static groups.
fn configs(columns: usize) -> Vec<QuantConfig> {
    let mut out = Vec::new();
    for (k, bits) in [2u8, 3, 4, 8].into_iter().enumerate() {
        for group in [
            GroupSize::PerChannel,
            GroupSize::Columns(32),
            GroupSize::Columns(128),
        ] {
            if let GroupSize::Columns(g) = group
                && g > columns
            {
                continue;
            }
            for act_order in [false, true] {
                let stat = act_order && k % 2 == 0;
                out.push(config(bits, group, k % 2 == 1, act_order, stat));
            }
        }
    }
    out
}

fn solve<B: Backend>(
    backend: &B,
    config: &QuantConfig,
    options: SolveOptions,
    weight: ArrayView2<'_, f32>,
    hessian: ArrayView2<'_, f64>,
) -> gptq_solver::QuantizedLayer {
    let h = backend.hessian_from_host(hessian).unwrap();
    Gptq::new(backend, config.clone())
        .with_options(options)
        .quantize(weight, &h)
        .unwrap_or_else(|e| panic!("{} backend: {e}", backend.name()))
}

#[test]
fn without_a_driver_the_backend_says_so() {
    if CudaBackend::driver_present() {
        gptq_core::testing::announce_skip("this machine has an NVIDIA driver");
        return;
    }
    let err = CudaBackend::new(0).unwrap_err();
    assert!(
        matches!(
            err,
            GptqError::Unsupported {
                backend: "cuda",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("no CUDA driver"), "{err}");
}

#[test]
fn cuda_matches_cpu_on_random_layers() {
    let Some(cuda) = gpu() else { return };
    let cpu = CpuBackend::new();
    for (rows, columns, seed) in [(24, 96, 1), (64, 256, 2), (130, 520, 3), (257, 384, 4)] {
        let (weight, hessian) = random_layer(rows, columns, seed);
        for config in configs(columns) {
            for options in [SolveOptions::parity(), SolveOptions::default()] {
                let ours = solve(&cuda, &config, options, weight.view(), hessian.view());
                let spec = solve(&cpu, &config, options, weight.view(), hessian.view());
                let (agreement, ratio) = compare(
                    &ours.tensor,
                    ours.report.loss.unwrap(),
                    &spec.tensor,
                    spec.report.loss.unwrap(),
                );
                let what = format!("{rows}x{columns} {config:?} parity {}", options.parity);
                assert!(agreement >= 0.995, "{what}: codes agree {agreement}");
                assert!((ratio - 1.0).abs() <= 1e-3, "{what}: loss ratio {ratio}");
                assert_eq!(ours.tensor.g_idx(), spec.tensor.g_idx(), "{what}");
                assert_eq!(
                    ours.tensor.permutation(),
                    spec.tensor.permutation(),
                    "{what}"
                );
                assert_eq!(ours.report.damping, spec.report.damping, "{what}");
                assert!(ours.report.timings.column_loop.as_nanos() > 0, "{what}");
            }
        }
    }
}

#[test]
fn cuda_matches_the_f64_oracle() {
    let Some(cuda) = gpu() else { return };
    for (rows, columns, seed) in [(24, 160, 11), (48, 96, 12)] {
        let (weight, hessian) = random_layer(rows, columns, seed);
        let mut configs = configs(columns);
        configs.push(
            QuantConfig::builder()
                .bits(3)
                .group_size(GroupSize::Columns(32))
                .clip_search(Some(ClipSearch::default()))
                .block_size(32)
                .build()
                .unwrap(),
        );
        for config in configs {
            for options in [SolveOptions::parity(), SolveOptions::default()] {
                check_against_oracle(
                    &cuda,
                    &config,
                    options,
                    weight.view(),
                    hessian.view(),
                    0.99,
                    2e-3,
                )
                .unwrap_or_else(|e| panic!("{config:?} parity {}: {e}", options.parity));
            }
        }
    }
}

#[test]
fn diagonal_hessians_give_round_to_nearest_and_runs_repeat() {
    let Some(cuda) = gpu() else { return };
    let (weight, hessian) = random_layer(40, 128, 21);
    let diagonal: Vec<f64> = (0..128).map(|c| 0.1 + (c * 37 % 97) as f64).collect();
    for config in configs(128) {
        check_diagonal_hessian_matches_rtn(&cuda, &config, weight.view(), &diagonal)
            .unwrap_or_else(|e| panic!("{config:?}: {e}"));
        check_repeatable(&cuda, &config, weight.view(), hessian.view())
            .unwrap_or_else(|e| panic!("{config:?}: {e}"));
    }
}

#[test]
fn the_column_loop_is_bit_identical_to_the_cpu_on_the_same_factor() {
    // The CPU's own U, uploaded: within a block the kernel performs the CPU's f32 operations in
    // the CPU's order, so one-block plans agree bit for bit (the block updates are cuBLAS and
    // faer products, which may round differently, so later blocks are compared loosely).
    let Some(cuda) = gpu() else { return };
    let cpu = CpuBackend::new();
    let (rows, columns) = (300, 192);
    let (weight, hessian) = random_layer(rows, columns, 31);
    let h = cpu.hessian_from_host(hessian.view()).unwrap();
    let request = FactorRequest {
        dead_columns: &[],
        permutation: None,
        damping: DampingPolicy::default(),
    };
    let (factor, _) = cpu.inverse_factor(&h, &request).unwrap();
    let cuda_factor = cuda.factor_from_host(factor.upper()).unwrap();
    assert_eq!(
        cuda.factor_diagonal(&cuda_factor).unwrap(),
        cpu.factor_diagonal(&factor).unwrap()
    );
    for (bits, symmetric) in [(2u8, false), (3, true), (4, false), (8, true)] {
        let grid = MinMaxGrid::new(bits, symmetric).unwrap();
        for (name, groups) in [
            (
                "per-channel",
                GroupPlan::Fixed {
                    table: gptq_quant::fit_table(&grid, weight.view(), &[0..columns], None),
                    slot_of_column: vec![0; columns],
                },
            ),
            (
                "block-start",
                GroupPlan::Dynamic {
                    group_size: 48,
                    fit_from: FitSource::BlockStart,
                    search: None,
                },
            ),
            (
                "search",
                GroupPlan::Dynamic {
                    group_size: 64,
                    fit_from: FitSource::Current,
                    search: Some(RangeSearch::default()),
                },
            ),
        ] {
            let plan = SolvePlan {
                blocks: vec![0..columns],
                groups,
            };
            let ours = cuda
                .blocked_solve(weight.view(), &cuda_factor, &plan, &grid)
                .unwrap();
            let spec = cpu
                .blocked_solve(weight.view(), &factor, &plan, &grid)
                .unwrap();
            assert_eq!(ours.codes, spec.codes, "{bits} bits {name}");
            assert_eq!(
                ours.params.scales.mapv(f32::to_bits),
                spec.params.scales.mapv(f32::to_bits),
                "{bits} bits {name}"
            );
            assert_eq!(ours.params.zeros, spec.params.zeros, "{bits} bits {name}");
            // Several blocks: the first block is still exact.
            let blocked = SolvePlan {
                blocks: vec![0..64, 64..128, 128..columns],
                groups: plan.groups.clone(),
            };
            let ours = cuda
                .blocked_solve(weight.view(), &cuda_factor, &blocked, &grid)
                .unwrap();
            let spec = cpu
                .blocked_solve(weight.view(), &factor, &blocked, &grid)
                .unwrap();
            assert_eq!(
                ours.codes.slice(s![.., 0..64]),
                spec.codes.slice(s![.., 0..64]),
                "{bits} bits {name}, first of several blocks"
            );
            let same = ours
                .codes
                .iter()
                .zip(&spec.codes)
                .filter(|(a, b)| a == b)
                .count();
            assert!(
                same as f64 >= 0.995 * spec.codes.len() as f64,
                "{bits} bits {name}: {same} of {} codes agree",
                spec.codes.len()
            );
            let t = ours.timings;
            assert!(t.upload.as_nanos() > 0 && t.column_loop.as_nanos() > 0);
            assert!(t.block_updates.as_nanos() > 0 && t.download.as_nanos() > 0);
        }
    }
}

/// Batches of every dtype, masked and not, across the staging buffer's boundaries.
fn accumulate<B: Backend>(backend: &B, precision: HessianPrecision) -> Array2<f64> {
    let columns = 72;
    let mut acc = backend
        .accumulator(columns, HessianOptions { precision })
        .unwrap();
    for k in 0..40u64 {
        let tokens = [1usize, 7, 300, 1500][k as usize % 4];
        let x = seeded_matrix(tokens, columns, k, 1.0);
        let mask: Vec<bool> = (0..tokens)
            .map(|t| !(t + k as usize).is_multiple_of(5))
            .collect();
        let sequences = 1 + k as usize % 3;
        match k % 3 {
            0 => acc
                .add_batch(&ActivationBatch::new(x.view()).sequences(sequences))
                .unwrap(),
            1 => {
                let h = x.mapv(f16::from_f32);
                acc.add_batch(
                    &ActivationBatch::new(h.view())
                        .sequences(sequences)
                        .mask(&mask),
                )
                .unwrap()
            }
            _ => {
                let b = x.t().mapv(bf16::from_f32);
                let b = b.t(); // a column-major view
                acc.add_batch(&ActivationBatch::new(b).sequences(sequences))
                    .unwrap()
            }
        }
    }
    let h = acc.finish().unwrap();
    backend.hessian_to_host(&h).unwrap()
}

fn relative_error(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
    ((a - b).mapv(|x| x * x).sum() / b.mapv(|x| x * x).sum()).sqrt()
}

#[test]
fn hessians_accumulate_like_the_cpu() {
    let Some(cuda) = gpu() else { return };
    let cpu = CpuBackend::new();
    for (precision, tolerance) in [
        (HessianPrecision::F64, 1e-12),
        (HessianPrecision::F32, 1e-5),
    ] {
        let ours = accumulate(&cuda, precision);
        let spec = accumulate(&cpu, precision);
        let error = relative_error(&ours, &spec);
        assert!(error <= tolerance, "{precision:?}: relative error {error}");
        assert_eq!(ours, ours.t(), "{precision:?}: not symmetric");
        let diagonal = cuda
            .hessian_diagonal(&cuda.hessian_from_host(ours.view()).unwrap())
            .unwrap();
        assert_eq!(diagonal, ours.diag().to_vec());
    }
}

#[test]
fn rejected_batches_leave_the_accumulator_untouched() {
    let Some(cuda) = gpu() else { return };
    let mut acc = cuda.accumulator(8, HessianOptions::default()).unwrap();
    let good = seeded_matrix(20, 8, 1, 1.0);
    acc.add_batch(&ActivationBatch::new(good.view())).unwrap();
    let wide = seeded_matrix(20, 9, 2, 1.0);
    assert!(matches!(
        acc.add_batch(&ActivationBatch::new(wide.view())),
        Err(GptqError::ShapeMismatch { .. })
    ));
    let mut bad = good.clone();
    bad[[4, 3]] = f32::NAN;
    let err = acc
        .add_batch(&ActivationBatch::new(bad.view()))
        .unwrap_err();
    assert!(
        matches!(
            err,
            GptqError::NonFinite {
                what: "activations",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("[4, 3]"), "{err}");
    let short_mask = [true; 3];
    assert!(matches!(
        acc.add_batch(&ActivationBatch::new(good.view()).mask(&short_mask)),
        Err(GptqError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        acc.add_batch(&ActivationBatch::new(good.view()).sequences(0)),
        Err(GptqError::InvalidConfig(_))
    ));
    assert_eq!(acc.sequences(), 1);
    assert_eq!(acc.tokens(), 20);
    let ours = cuda.hessian_to_host(&acc.finish().unwrap()).unwrap();
    let cpu = CpuBackend::new();
    let mut reference = cpu.accumulator(8, HessianOptions::default()).unwrap();
    reference
        .add_batch(&ActivationBatch::new(good.view()))
        .unwrap();
    let spec = cpu.hessian_to_host(&reference.finish().unwrap()).unwrap();
    assert!(relative_error(&ours, &spec) < 1e-12);
    assert!(matches!(
        cuda.accumulator(8, HessianOptions::default())
            .unwrap()
            .finish(),
        Err(GptqError::NoSamples { columns: 8 })
    ));
    assert!(matches!(
        cuda.accumulator(0, HessianOptions::default()),
        Err(GptqError::Empty { .. })
    ));
}

#[test]
fn factors_match_the_cpu_and_fail_the_same_way() {
    let Some(cuda) = gpu() else { return };
    let cpu = CpuBackend::new();
    let (_, mut hessian) = random_layer(1, 200, 41);
    // Two dead columns (zero row and column).
    for dead in [17, 150] {
        hessian.row_mut(dead).fill(0.0);
        hessian.column_mut(dead).fill(0.0);
    }
    let permutation: Vec<usize> = (0..200).map(|c| (c * 77) % 200).collect();
    for permutation in [None, Some(&permutation[..])] {
        let request = FactorRequest {
            dead_columns: &[17, 150],
            permutation,
            damping: DampingPolicy::default(),
        };
        let (ours, damping) = cuda
            .inverse_factor(&cuda.hessian_from_host(hessian.view()).unwrap(), &request)
            .unwrap();
        let (spec, spec_damping) = cpu
            .inverse_factor(&cpu.hessian_from_host(hessian.view()).unwrap(), &request)
            .unwrap();
        assert_eq!(damping, spec_damping);
        let (a, b) = (
            cuda.factor_diagonal(&ours).unwrap(),
            cpu.factor_diagonal(&spec).unwrap(),
        );
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-4 * y.abs(), "{x} vs {y}");
        }
    }
    // Indefinite: the same retries, then the same error.
    let mut indefinite = Array2::<f64>::eye(16);
    indefinite[[3, 3]] = -50.0;
    let request = FactorRequest {
        dead_columns: &[],
        permutation: None,
        damping: DampingPolicy {
            damp_percent: 0.01,
            retries: 2,
        },
    };
    let err = cuda
        .inverse_factor(
            &cuda.hessian_from_host(indefinite.view()).unwrap(),
            &request,
        )
        .unwrap_err();
    let spec = cpu
        .inverse_factor(&cpu.hessian_from_host(indefinite.view()).unwrap(), &request)
        .unwrap_err();
    assert!(
        matches!(err, GptqError::NotPositiveDefinite { columns: 16, .. }),
        "{err}"
    );
    assert_eq!(err.to_string(), spec.to_string());
    // Bad requests: the CPU's errors.
    let h = cuda
        .hessian_from_host(Array2::<f64>::eye(4).view())
        .unwrap();
    for request in [
        FactorRequest {
            dead_columns: &[4],
            permutation: None,
            damping: DampingPolicy::default(),
        },
        FactorRequest {
            dead_columns: &[],
            permutation: Some(&[0usize, 1, 1, 3][..]),
            damping: DampingPolicy::default(),
        },
    ] {
        assert!(matches!(
            cuda.inverse_factor(&h, &request),
            Err(GptqError::InvalidConfig(_))
        ));
    }
}

#[test]
fn host_transfers_and_losses_match_the_cpu() {
    let Some(cuda) = gpu() else { return };
    let cpu = CpuBackend::new();
    let (weight, hessian) = random_layer(70, 130, 51);
    let h = cuda.hessian_from_host(hessian.view()).unwrap();
    let back = cuda.hessian_to_host(&h).unwrap();
    let spec = cpu
        .hessian_to_host(&cpu.hessian_from_host(hessian.view()).unwrap())
        .unwrap();
    assert_eq!(back, spec);
    let loss = cuda.quadratic_loss(&h, weight.view()).unwrap();
    let spec_loss = cpu
        .quadratic_loss(
            &cpu.hessian_from_host(hessian.view()).unwrap(),
            weight.view(),
        )
        .unwrap();
    assert!(
        (loss / spec_loss - 1.0).abs() < 1e-10,
        "{loss} vs {spec_loss}"
    );
    let mut asymmetric = hessian.clone();
    asymmetric[[0, 5]] += 1.0;
    assert!(matches!(
        cuda.hessian_from_host(asymmetric.view()),
        Err(GptqError::InvalidConfig(_))
    ));
    assert!(matches!(
        cuda.quadratic_loss(&h, weight.slice(s![.., ..100])),
        Err(GptqError::ShapeMismatch { .. })
    ));
}

/// A grid the GPU cannot run: no GridSpec.
struct OpaqueGrid;

impl QuantGrid for OpaqueGrid {
    fn bits(&self) -> u8 {
        4
    }
    fn fit(&self, weights: &[f32]) -> GroupParams {
        let max = weights.iter().fold(1e-8f32, |m, x| m.max(x.abs()));
        GroupParams {
            scale: max / 7.0,
            zero: 8,
        }
    }
}

#[test]
fn grids_without_a_spec_are_unsupported() {
    let Some(cuda) = gpu() else { return };
    let (weight, hessian) = random_layer(8, 64, 61);
    let h = cuda.hessian_from_host(hessian.view()).unwrap();
    let err = Gptq::new(&cuda, QuantConfig::default())
        .quantize_with_grid(weight.view(), &h, &OpaqueGrid)
        .unwrap_err();
    assert!(
        matches!(
            err,
            GptqError::Unsupported {
                backend: "cuda",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn every_reference_case_passes_on_the_gpu() {
    let Some(cuda) = gpu() else { return };
    let Some(dir) = gptq_solver::testing::workspace_fixture_dir() else {
        return;
    };
    let cases = list_cases(&dir).unwrap();
    assert!(!cases.is_empty(), "no fixtures in {}", dir.display());
    let mut failures = Vec::new();
    for path in &cases {
        let case = ReferenceCase::load(path).unwrap();
        let outcome = check_case(&cuda, &case, &Thresholds::default()).unwrap();
        println!("{}", outcome.summary());
        if !outcome.passed() {
            failures.push(outcome.summary());
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// `out = x · wᵀ (+ start)` in f64 from the definition.
fn x_wt_f64(
    x: ArrayView2<'_, f32>,
    w: ArrayView2<'_, f32>,
    start: Option<&Array2<f32>>,
) -> Array2<f64> {
    let product = x.mapv(f64::from).dot(&w.mapv(f64::from).t());
    match start {
        Some(s) => product + s.mapv(f64::from),
        None => product,
    }
}

#[test]
fn forward_products_match_the_definition() {
    let Some(cuda) = gpu() else { return };
    let products: &dyn gptq_core::ForwardCompute = &cuda;
    // SmolLM2's and Llama-7B's linear shapes among small odd ones.
    for (rows, outputs, inner) in [
        (1, 1, 1),
        (7, 5, 3),
        (512, 576, 576),
        (4096, 1536, 576),
        (4096, 576, 1536),
        (2048, 11008, 4096),
    ] {
        let x = seeded_matrix(rows, inner, 1, 1.0);
        let w = seeded_matrix(outputs, inner, 2, 1.0);
        let start = seeded_matrix(rows, outputs, 3, 1.0);
        // f32 rounding of sums of `inner` unit-size products.
        let tolerance = 1e-6 * inner as f64 + 1e-6;
        for accumulate in [false, true] {
            let mut out = if accumulate {
                start.clone()
            } else {
                Array2::from_elem((rows, outputs), f32::NAN)
            };
            products
                .x_wt(x.view(), w.view(), out.view_mut(), accumulate)
                .unwrap();
            let want = x_wt_f64(x.view(), w.view(), accumulate.then_some(&start));
            let err = (out.mapv(f64::from) - &want)
                .iter()
                .fold(0f64, |m, d| m.max(d.abs()));
            assert!(
                err <= tolerance,
                "{rows}×{inner} · ({outputs}×{inner})ᵀ, accumulate {accumulate}: error {err}"
            );
        }
    }

    // Strided views in and out, an empty inner dimension, and a wrong shape.
    let xt = seeded_matrix(40, 30, 4, 1.0);
    let w = seeded_matrix(20, 40, 5, 1.0);
    let mut wide = Array2::from_elem((30, 50), 2.0f32);
    products
        .x_wt(xt.t(), w.view(), wide.slice_mut(s![.., 10..30]), false)
        .unwrap();
    let want = x_wt_f64(xt.t(), w.view(), None);
    let err = (wide.slice(s![.., 10..30]).mapv(f64::from) - &want)
        .iter()
        .fold(0f64, |m, d| m.max(d.abs()));
    assert!(err <= 1e-4, "strided: {err}");
    assert!(wide.slice(s![.., ..10]).iter().all(|&v| v == 2.0));
    assert!(wide.slice(s![.., 30..]).iter().all(|&v| v == 2.0));
    let mut out = Array2::from_elem((3, 4), 7.0f32);
    let empty = Array2::<f32>::zeros((3, 0));
    let none = Array2::<f32>::zeros((4, 0));
    products
        .x_wt(empty.view(), none.view(), out.view_mut(), true)
        .unwrap();
    assert!(out.iter().all(|&v| v == 7.0));
    products
        .x_wt(empty.view(), none.view(), out.view_mut(), false)
        .unwrap();
    assert!(out.iter().all(|&v| v == 0.0));
    let err = products
        .x_wt(xt.view(), w.view(), out.view_mut(), false)
        .unwrap_err();
    assert!(matches!(err, GptqError::ShapeMismatch { .. }), "{err}");
}

#[test]
fn a_decoder_layer_runs_its_products_on_the_gpu() {
    let Some(cuda) = gpu() else { return };
    for model_type in ["llama", "qwen2"] {
        let tiny = gptq_model::testing::Tiny {
            model_type,
            ..Default::default()
        };
        let dir = tiny.write(3);
        let layer = gptq_model::Checkpoint::open(dir.path())
            .unwrap()
            .load_layer(1)
            .unwrap();
        let lens = [100, 50];
        let x = seeded_matrix(150, tiny.hidden, 6, 1.0);
        let cpu = gptq_model::forward_layer(&layer, x.view(), &lens, gptq_model::Par::Seq).unwrap();
        let compute = gptq_model::Compute::new(gptq_model::Par::Seq).with_products(&cuda);
        let gpu = gptq_model::forward_layer(&layer, x.view(), &lens, compute).unwrap();
        let err = (&gpu - &cpu).iter().fold(0f32, |m, d| m.max(d.abs()));
        assert!(err < 1e-4, "{model_type}: {err}");
    }
}
