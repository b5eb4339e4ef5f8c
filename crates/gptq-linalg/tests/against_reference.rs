//! Every fast routine of gptq-linalg against the plain reference implementation.

use gptq_core::testing::seeded_matrix;
use gptq_core::{
    ActivationBatch, DampingPolicy, FactorRequest, GptqError, HessianAccumulator, HessianOptions,
    HessianPrecision,
};
use gptq_linalg::{
    CpuHessianAccumulator, Hessian, Par, damped_inverse_factor, quadratic_loss, reference,
};
use half::{bf16, f16};
use ndarray::{Array2, ArrayView2, Axis, concatenate};

fn relative_error(a: ArrayView2<'_, f64>, b: ArrayView2<'_, f64>) -> f64 {
    let diff: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    let norm: f64 = b.iter().map(|y| y * y).sum();
    (diff / norm).sqrt()
}

fn accumulate(
    columns: usize,
    precision: HessianPrecision,
    par: Par,
    batches: &[(Array2<f32>, usize)],
) -> Hessian {
    let mut acc = CpuHessianAccumulator::new(columns, HessianOptions { precision }, par).unwrap();
    for (x, sequences) in batches {
        acc.add_batch(&ActivationBatch::new(x.view()).sequences(*sequences))
            .unwrap();
    }
    acc.finish().unwrap()
}

fn batches(columns: usize, sizes: &[(usize, usize)]) -> Vec<(Array2<f32>, usize)> {
    sizes
        .iter()
        .enumerate()
        .map(|(k, &(tokens, sequences))| {
            (seeded_matrix(tokens, columns, k as u64 + 1, 1.0), sequences)
        })
        .collect()
}

#[test]
fn hessian_matches_the_reference_running_mean() {
    // At 70 columns a chunk holds 8192 tokens: the 9000 tokens of the middle batch cross it.
    let data = batches(70, &[(30, 2), (9000, 3), (7, 1)]);
    let views: Vec<_> = data.iter().map(|(x, s)| (x.view(), *s)).collect();
    let expected = reference::hessian(&views);
    let h64 = accumulate(70, HessianPrecision::F64, Par::Seq, &data);
    assert!(relative_error(h64.matrix(), expected.view()) < 1e-13);
    assert_eq!(h64.sequences(), 6);
    let h32 = accumulate(70, HessianPrecision::F32, Par::Seq, &data);
    assert!(relative_error(h32.matrix(), expected.view()) < 1e-5);
}

#[test]
fn half_precision_inputs_and_masks() {
    let x = seeded_matrix(40, 16, 3, 1.0);
    let x16 = x.mapv(f16::from_f32);
    let xb = x.mapv(bf16::from_f32);
    let mask: Vec<bool> = (0..40).map(|t| t % 3 != 0).collect();
    let kept: Vec<usize> = (0..40).filter(|t| mask[*t]).collect();
    let rounded = x16.mapv(f16::to_f32).select(Axis(0), &kept);
    let expected = reference::hessian(&[(rounded.view(), 2)]);

    let mut acc = CpuHessianAccumulator::new(16, HessianOptions::default(), Par::Seq).unwrap();
    acc.add_batch(&ActivationBatch::new(x16.view()).sequences(2).mask(&mask))
        .unwrap();
    assert_eq!(acc.tokens(), kept.len());
    assert!(relative_error(acc.finish().unwrap().matrix(), expected.view()) < 1e-13);

    let mut acc = CpuHessianAccumulator::new(16, HessianOptions::default(), Par::Seq).unwrap();
    acc.add_batch(&ActivationBatch::new(xb.view())).unwrap();
    let expected = reference::hessian(&[(xb.mapv(bf16::to_f32).view(), 1)]);
    assert!(relative_error(acc.finish().unwrap().matrix(), expected.view()) < 1e-13);
}

/// The f32 accumulation (whose gather into the buffer is vectorized) with masks, ragged widths
/// past several 64-column tiles, and two threads, against the reference on the kept rows.
#[test]
fn f32_masked_batches_on_two_threads() {
    let columns = 203;
    let x = seeded_matrix(301, columns, 9, 1.0);
    let mask: Vec<bool> = (0..301).map(|t| t % 5 != 2).collect();
    let kept: Vec<usize> = (0..301).filter(|t| mask[*t]).collect();
    let expected = reference::hessian(&[(x.select(Axis(0), &kept).view(), 4)]);
    let options = HessianOptions {
        precision: HessianPrecision::F32,
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let h = pool.install(|| {
        let mut acc = CpuHessianAccumulator::new(columns, options, Par::rayon(2)).unwrap();
        acc.add_batch(&ActivationBatch::new(x.view()).sequences(4).mask(&mask))
            .unwrap();
        acc.finish().unwrap()
    });
    assert!(relative_error(h.matrix(), expected.view()) < 1e-5);
}

/// The values are checked in row chunks on several threads; the error still names the first
/// non-finite value of the batch, for every precision.
#[test]
fn the_first_non_finite_value_is_reported_from_parallel_checks() {
    let mut x = seeded_matrix(1000, 6, 3, 1.0);
    x[[700, 1]] = f32::NAN;
    x[[300, 4]] = f32::INFINITY;
    x[[301, 0]] = f32::NAN;
    for precision in [
        HessianPrecision::F64,
        HessianPrecision::F32,
        HessianPrecision::Bf16,
    ] {
        let mut acc =
            CpuHessianAccumulator::new(6, HessianOptions { precision }, Par::rayon(2)).unwrap();
        match acc.add_batch(&ActivationBatch::new(x.view())) {
            Err(GptqError::NonFinite {
                value, position, ..
            }) => {
                assert_eq!((position.row, position.column), (300, 4), "{precision:?}");
                assert_eq!(value, f64::INFINITY);
            }
            other => panic!("{precision:?}: {other:?}"),
        }
        assert_eq!(acc.sequences(), 0);
    }
    let batch = ActivationBatch::new(x.view());
    assert!(batch.check_finite_rows(0..300).is_ok());
    assert!(matches!(
        batch.check_finite_rows(900..1001),
        Err(GptqError::InvalidConfig(_))
    ));
}

#[test]
fn bad_batches_are_rejected_and_leave_the_sum_untouched() {
    let good = seeded_matrix(10, 8, 1, 1.0);
    let mut acc = CpuHessianAccumulator::new(8, HessianOptions::default(), Par::Seq).unwrap();
    acc.add_batch(&ActivationBatch::new(good.view())).unwrap();
    let mut nan = good.clone();
    nan[[9, 7]] = f32::NAN;
    let wide = seeded_matrix(10, 9, 1, 1.0);
    let short_mask = [true; 3];
    let errors = [
        acc.add_batch(&ActivationBatch::new(nan.view()))
            .unwrap_err(),
        acc.add_batch(&ActivationBatch::new(wide.view()))
            .unwrap_err(),
        acc.add_batch(&ActivationBatch::new(good.view()).mask(&short_mask))
            .unwrap_err(),
        acc.add_batch(&ActivationBatch::new(good.view()).sequences(0))
            .unwrap_err(),
    ];
    assert!(
        matches!(errors[0], GptqError::NonFinite { .. }),
        "{}",
        errors[0]
    );
    assert!(matches!(errors[1], GptqError::ShapeMismatch { .. }));
    assert!(matches!(errors[2], GptqError::ShapeMismatch { .. }));
    assert!(matches!(errors[3], GptqError::InvalidConfig(_)));
    assert_eq!(acc.sequences(), 1);
    let expected = reference::hessian(&[(good.view(), 1)]);
    assert!(relative_error(acc.finish().unwrap().matrix(), expected.view()) < 1e-13);

    let empty = CpuHessianAccumulator::new(8, HessianOptions::default(), Par::Seq).unwrap();
    assert!(matches!(
        empty.finish(),
        Err(GptqError::NoSamples { columns: 8 })
    ));
    assert!(CpuHessianAccumulator::new(0, HessianOptions::default(), Par::Seq).is_err());
}

fn spd(n: usize, tokens: usize, seed: u64) -> Array2<f64> {
    let x = seeded_matrix(tokens, n, seed, 1.0);
    reference::hessian(&[(x.view(), 1)])
}

#[test]
fn inverse_factor_matches_the_reference_three_step_computation() {
    let mut h = spd(50, 200, 9);
    for dead in [3, 17] {
        h.column_mut(dead).fill(0.0);
        h.row_mut(dead).fill(0.0);
    }
    let permutation: Vec<usize> = (0..50).map(|i| (i * 7) % 50).collect();
    for perm in [None, Some(&permutation[..])] {
        let request = FactorRequest {
            dead_columns: &[3, 17],
            permutation: perm,
            damping: DampingPolicy::default(),
        };
        let (factor, damping) = damped_inverse_factor(h.view(), &request, Par::Seq).unwrap();
        assert_eq!(damping.tried, vec![0.01]);
        let expected = reference::inverse_factor(h.view(), &[3, 17], perm, 0.01).unwrap();
        let got = factor.upper().mapv(f64::from);
        assert!(relative_error(got.view(), expected.view()) < 1e-6);
    }
}

#[test]
fn indefinite_hessians_are_retried_then_reported() {
    // A rank-deficient Hessian with a negative perturbation: 1% damping is not enough.
    let mut h = spd(20, 5, 4);
    let mean = h.diag().sum() / 20.0;
    for i in 0..20 {
        h[[i, i]] -= 0.05 * mean;
    }
    let request = FactorRequest {
        dead_columns: &[],
        permutation: None,
        damping: DampingPolicy::default(),
    };
    let (_, damping) = damped_inverse_factor(h.view(), &request, Par::Seq).unwrap();
    assert!(
        damping.damp_percent > 0.05 && damping.tried.len() > 1,
        "{damping:?}"
    );

    let no_retry = FactorRequest {
        damping: DampingPolicy {
            damp_percent: 0.01,
            retries: 0,
        },
        ..request
    };
    let err = damped_inverse_factor(h.view(), &no_retry, Par::Seq).unwrap_err();
    assert!(matches!(
        err,
        GptqError::NotPositiveDefinite { columns: 20, .. }
    ));
    assert!(err.to_string().contains("20 input columns"), "{err}");
}

#[test]
fn factor_requests_are_validated() {
    let h = spd(6, 20, 1);
    let bad_perm = [0, 1, 2, 3, 4, 4];
    let requests = [
        FactorRequest {
            dead_columns: &[6],
            permutation: None,
            damping: DampingPolicy::default(),
        },
        FactorRequest {
            dead_columns: &[],
            permutation: Some(&bad_perm),
            damping: DampingPolicy::default(),
        },
        FactorRequest {
            dead_columns: &[],
            permutation: Some(&bad_perm[..5]),
            damping: DampingPolicy::default(),
        },
    ];
    for request in &requests {
        assert!(damped_inverse_factor(h.view(), request, Par::Seq).is_err());
    }
    let mut nan = h.clone();
    nan[[2, 3]] = f64::NAN;
    assert!(damped_inverse_factor(nan.view(), &requests[0], Par::Seq).is_err());
    let rect = Array2::<f64>::zeros((3, 4));
    assert!(damped_inverse_factor(rect.view(), &requests[0], Par::Seq).is_err());
}

#[test]
fn loss_matches_the_definition() {
    let h = spd(33, 80, 2);
    let d = seeded_matrix(700, 33, 5, 0.1); // more rows than one chunk
    let fast = quadratic_loss(h.view(), d.view(), Par::Seq).unwrap();
    let slow = reference::quadratic_loss(h.view(), d.view());
    assert!((fast - slow).abs() <= 1e-12 * slow.abs());
    assert!(quadratic_loss(h.view(), d.t(), Par::Seq).is_err());
}

#[test]
fn results_are_bit_identical_across_thread_counts() {
    let data = batches(300, &[(1100, 2), (200, 1)]);
    let one = accumulate(300, HessianPrecision::F64, Par::Seq, &data);
    let two = accumulate(300, HessianPrecision::F64, Par::rayon(2), &data);
    assert_eq!(one, two);
    let request = FactorRequest {
        dead_columns: &[],
        permutation: None,
        damping: DampingPolicy::default(),
    };
    let (f1, _) = damped_inverse_factor(one.matrix(), &request, Par::Seq).unwrap();
    let (f2, _) = damped_inverse_factor(one.matrix(), &request, Par::rayon(2)).unwrap();
    assert_eq!(f1, f2);
    let d = concatenate(
        Axis(0),
        &[
            seeded_matrix(600, 300, 1, 0.1).view(),
            seeded_matrix(10, 300, 2, 0.1).view(),
        ],
    )
    .unwrap();
    let l1 = quadratic_loss(one.matrix(), d.view(), Par::Seq).unwrap();
    let l2 = quadratic_loss(one.matrix(), d.view(), Par::rayon(2)).unwrap();
    assert_eq!(l1.to_bits(), l2.to_bits());
}

#[test]
fn host_hessians_must_be_symmetric() {
    let mut h = spd(5, 10, 1);
    assert!(Hessian::from_matrix(h.clone(), 1).is_ok());
    h[[0, 4]] += 1.0;
    let err = Hessian::from_matrix(h, 1).unwrap_err();
    assert!(err.to_string().contains("not symmetric"), "{err}");
}
