//! Every bad input gets a typed error with a message a user can act on, never a panic.

use gptq_core::testing::seeded_matrix;
use gptq_core::{ActivationBatch, Backend, GptqError, GroupSize, HessianAccumulator, QuantConfig};
use gptq_quant::MinMaxGrid;
use gptq_solver::{CpuBackend, Gptq, round_to_nearest};
use ndarray::Array2;

fn grouped(group: usize) -> QuantConfig {
    QuantConfig::builder()
        .group_size(GroupSize::Columns(group))
        .build()
        .unwrap()
}

fn layer() -> (Array2<f32>, Array2<f64>) {
    gptq_solver::testing::random_layer(16, 64, 3)
}

fn solve(
    config: QuantConfig,
    weight: &Array2<f32>,
    hessian: &Array2<f64>,
) -> Result<(), GptqError> {
    let backend = CpuBackend::new();
    let h = backend.hessian_from_host(hessian.view())?;
    Gptq::new(backend, config)
        .quantize(weight.view(), &h)
        .map(|_| ())
}

#[test]
fn non_finite_weights() {
    let (mut weight, hessian) = layer();
    weight[[3, 5]] = f32::NAN;
    let err = solve(grouped(32), &weight, &hessian).unwrap_err();
    assert!(
        matches!(err, GptqError::NonFinite { what: "weight", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("[3, 5]"), "{err}");
    weight[[3, 5]] = f32::INFINITY;
    assert!(
        round_to_nearest(
            weight.view(),
            &QuantConfig::default(),
            &MinMaxGrid::new(4, true).unwrap()
        )
        .is_err()
    );
}

#[test]
fn non_finite_activations_and_hessians() {
    let backend = CpuBackend::new();
    let mut x = seeded_matrix(10, 8, 1, 1.0);
    x[[2, 2]] = f32::NEG_INFINITY;
    let mut acc = backend.accumulator(8, Default::default()).unwrap();
    let err = acc.add_batch(&ActivationBatch::new(x.view())).unwrap_err();
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
    let mut h = Array2::<f64>::eye(8);
    h[[1, 1]] = f64::NAN;
    assert!(matches!(
        backend.hessian_from_host(h.view()),
        Err(GptqError::NonFinite { .. })
    ));
}

#[test]
fn mismatched_shapes() {
    let (weight, hessian) = layer();
    let small = Array2::<f64>::eye(32);
    let err = solve(grouped(32), &weight, &small).unwrap_err();
    assert!(
        matches!(err, GptqError::ShapeMismatch { what: "weight", .. }),
        "{err}"
    );
    let rect = Array2::<f64>::zeros((64, 32));
    assert!(matches!(
        CpuBackend::new().hessian_from_host(rect.view()),
        Err(GptqError::ShapeMismatch { .. })
    ));
    let backend = CpuBackend::new();
    let mut acc = backend.accumulator(64, Default::default()).unwrap();
    let narrow = seeded_matrix(5, 63, 1, 1.0);
    let err = acc
        .add_batch(&ActivationBatch::new(narrow.view()))
        .unwrap_err();
    assert!(err.to_string().contains("[tokens, 64]"), "{err}");
    let bad_mask = [true; 4];
    let x = seeded_matrix(5, 64, 1, 1.0);
    assert!(
        acc.add_batch(&ActivationBatch::new(x.view()).mask(&bad_mask))
            .is_err()
    );
    assert!(solve(grouped(32), &weight.t().to_owned(), &hessian).is_err());
}

#[test]
fn bits_outside_the_range() {
    for bits in [0, 1, 9, 16] {
        let err = QuantConfig::builder().bits(bits).build().unwrap_err();
        assert!(err.to_string().contains("between 2 and 8"), "{err}");
        assert!(MinMaxGrid::new(bits, true).is_err());
    }
    let (weight, hessian) = layer();
    let backend = CpuBackend::new();
    let h = backend.hessian_from_host(hessian.view()).unwrap();
    let gptq = Gptq::new(backend, grouped(32));
    let err = gptq
        .quantize_with_grid(weight.view(), &h, &MinMaxGrid::new(3, true).unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("3 bits"), "{err}");
}

#[test]
fn zero_sized_matrices() {
    let weight = Array2::<f32>::zeros((0, 64));
    let (_, hessian) = layer();
    let err = solve(grouped(32), &weight, &hessian).unwrap_err();
    assert!(
        matches!(err, GptqError::Empty { what: "weight", .. }),
        "{err}"
    );
    assert!(
        CpuBackend::new()
            .hessian_from_host(Array2::<f64>::zeros((0, 0)).view())
            .is_err()
    );
    assert!(
        CpuBackend::new()
            .accumulator(0, Default::default())
            .is_err()
    );
    assert!(
        round_to_nearest(
            Array2::<f32>::zeros((4, 0)).view(),
            &QuantConfig::default(),
            &MinMaxGrid::new(4, true).unwrap()
        )
        .is_err()
    );
}

#[test]
fn group_sizes_that_do_not_fit() {
    let (weight, hessian) = layer();
    let config = QuantConfig::builder()
        .group_size(GroupSize::Columns(128))
        .build()
        .unwrap();
    let err = solve(config, &weight, &hessian).unwrap_err();
    assert!(
        matches!(
            err,
            GptqError::GroupSize {
                group_size: 128,
                columns: 64
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("per-channel"), "{err}");
    assert!(
        QuantConfig::builder()
            .group_size(GroupSize::Columns(0))
            .build()
            .is_err()
    );
    // A group size that does not divide the columns is allowed: the last group is shorter.
    let config = QuantConfig::builder()
        .group_size(GroupSize::Columns(48))
        .build()
        .unwrap();
    solve(config, &weight, &hessian).unwrap();
}

#[test]
fn no_calibration_data() {
    let acc = CpuBackend::new()
        .accumulator(8, Default::default())
        .unwrap();
    let err = acc.finish().unwrap_err();
    assert!(err.to_string().contains("add_batch"), "{err}");
}

#[test]
fn indefinite_hessian_past_every_retry() {
    let (weight, _) = layer();
    let mut hessian = -Array2::<f64>::eye(64);
    hessian[[0, 0]] = 1.0;
    let err = solve(grouped(32), &weight, &hessian).unwrap_err();
    match &err {
        GptqError::NotPositiveDefinite { columns, tried } => {
            assert_eq!(*columns, 64);
            assert_eq!(tried.len(), 5);
        }
        other => panic!("{other}"),
    }
}
