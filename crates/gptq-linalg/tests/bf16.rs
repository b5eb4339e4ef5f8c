//! The bf16 products (AVX512-BF16 kernels where the CPU has them, rounded f32 products
//! elsewhere) against plain loops over the same rounded operands.

use gptq_core::testing::{announce_skip, cpu_has, seeded_matrix};
use gptq_core::{ActivationBatch, HessianAccumulator, HessianOptions, HessianPrecision};
use gptq_linalg::{CpuHessianAccumulator, Par, bf16, reference};
use ndarray::{Array2, ArrayView2, s};
use proptest::prelude::*;

/// The f32 sums of `k` exact products may be off by `k` roundings of the running sum: a bound
/// that the order of the sums cannot break but that a wrong pairing or a lost panel does.
/// With `start`, `actual` should be `start + x · wᵀ`, and the bound has one more rounding.
fn assert_close(
    actual: ArrayView2<'_, f32>,
    start: Option<ArrayView2<'_, f32>>,
    x: ArrayView2<'_, f32>,
    w: ArrayView2<'_, f32>,
) {
    let mut expected = reference::x_wt_bf16(x, w);
    let mut magnitude = reference::x_wt_bf16(x.mapv(f32::abs).view(), w.mapv(f32::abs).view());
    if let Some(start) = start {
        expected += &start.mapv(f64::from);
        magnitude += &start.mapv(|v| f64::from(v.abs()));
    }
    let unit = f64::from(f32::EPSILON) / 2.0;
    for ((index, &got), (&want, &size)) in
        actual.indexed_iter().zip(expected.iter().zip(&magnitude))
    {
        let bound = (x.ncols() as f64 + 2.0) * unit * size + 1e-30;
        assert!(
            (f64::from(got) - want).abs() <= bound,
            "entry {index:?}: {got} against {want} (bound {bound:e})"
        );
    }
}

fn product(m: usize, k: usize, n: usize, par: Par) {
    let x = seeded_matrix(m, k, 11, 2.0);
    let w = seeded_matrix(n, k, 12, 0.5);
    for way in [bf16::x_wt, bf16::x_wt_portable] {
        let mut out = Array2::from_elem((m, n), f32::NAN);
        way(x.view(), w.view(), out.view_mut(), false, par).unwrap();
        assert_close(out.view(), None, x.view(), w.view());
    }
}

/// The kernels run exactly where the CPU has their instructions (the detection the products
/// dispatch on agrees with the flags Linux reports), so that on a CPU with AVX512-BF16 the tests
/// below check the kernels, not the fallback.
#[test]
fn kernels_run_where_the_cpu_has_them() {
    let Some(expected) = cpu_has(&["avx512f", "avx512bw", "avx512_bf16"]) else {
        announce_skip("no /proc/cpuinfo flags on this x86-64 machine to check the detection by");
        return;
    };
    assert_eq!(bf16::kernels_available(), expected);
    if !expected {
        announce_skip(
            "the AVX512-BF16 kernels (this CPU lacks them): the bf16 tests check the rounded f32 \
             fallback instead",
        );
    }
}

#[test]
fn products_of_every_edge_shape() {
    // Rows around the 6-row micro-tile and the 192-row chunk, columns around the 64-column
    // panel, odd and even shared dimensions around the 32-value conversion and 64-pair block.
    for (m, k, n) in [
        (1, 1, 1),
        (6, 2, 64),
        (7, 3, 65),
        (5, 31, 17),
        (193, 129, 130),
        (200, 576, 192),
        (13, 1537, 3),
    ] {
        product(m, k, n, Par::Seq);
        product(m, k, n, Par::rayon(2));
    }
}

#[test]
fn accumulation_and_strided_views() {
    let x = seeded_matrix(20, 70, 1, 1.0);
    let w = seeded_matrix(90, 35, 2, 1.0);
    // Every other column of x; the transposed storage of w; an output with a column stride.
    let (xs, wt) = (x.slice(s![.., ..;2]), w.t().to_owned());
    let ws = wt.t();
    let start = seeded_matrix(90, 20, 3, 1.0);
    let mut out_t = start.clone();
    bf16::x_wt(
        xs,
        ws,
        out_t.view_mut().reversed_axes(),
        true,
        Par::rayon(2),
    )
    .unwrap();
    assert_close(out_t.t(), Some(start.t()), xs, ws);
}

#[test]
fn empty_shared_dimension_zeroes_or_keeps() {
    let (x, w) = (Array2::<f32>::zeros((3, 0)), Array2::<f32>::zeros((2, 0)));
    let mut out = Array2::from_elem((3, 2), 5.0f32);
    bf16::x_wt(x.view(), w.view(), out.view_mut(), true, Par::Seq).unwrap();
    assert!(out.iter().all(|&v| v == 5.0));
    bf16::x_wt(x.view(), w.view(), out.view_mut(), false, Par::Seq).unwrap();
    assert!(out.iter().all(|&v| v == 0.0));
}

#[test]
fn shape_mismatch_is_an_error() {
    let (x, w) = (Array2::<f32>::zeros((3, 4)), Array2::<f32>::zeros((2, 5)));
    let mut out = Array2::zeros((3, 2));
    let err = bf16::x_wt(x.view(), w.view(), out.view_mut(), false, Par::Seq).unwrap_err();
    assert!(err.to_string().contains("shape mismatch"), "{err}");
}

#[test]
fn rounding_is_to_nearest_even() {
    assert_eq!(bf16::round_bf16(1.0 + 1.0 / 512.0), 1.0); // a tie, to the even 1.0
    assert_eq!(bf16::round_bf16(1.0 + 3.0 / 512.0), 1.0 + 4.0 / 512.0); // a tie, up to even
    let x = Array2::from_elem((1, 1), 1.0 + 3.0 / 512.0);
    let w = Array2::from_elem((1, 1), 1.0f32);
    let mut out = Array2::zeros((1, 1));
    bf16::x_wt(x.view(), w.view(), out.view_mut(), false, Par::Seq).unwrap();
    assert_eq!(out[[0, 0]], 1.0 + 4.0 / 512.0);
}

#[test]
fn hessian_of_rounded_tokens() {
    // 70 columns: chunks of 8192 tokens, crossed by the middle batch; odd token counts pad.
    for columns in [70, 129] {
        let sizes = [(31usize, 2usize), (9001, 3), (7, 1)];
        let data: Vec<_> = sizes
            .iter()
            .enumerate()
            .map(|(i, &(t, b))| (seeded_matrix(t, columns, i as u64 + 5, 1.0), b))
            .collect();
        let options = HessianOptions {
            precision: HessianPrecision::Bf16,
        };
        let mut acc = CpuHessianAccumulator::new(columns, options, Par::rayon(2)).unwrap();
        for (x, b) in &data {
            acc.add_batch(&ActivationBatch::new(x.view()).sequences(*b))
                .unwrap();
        }
        let h = acc.finish().unwrap();
        let rounded: Vec<_> = data
            .iter()
            .map(|(x, b)| (x.mapv(bf16::round_bf16), *b))
            .collect();
        let views: Vec<_> = rounded.iter().map(|(x, b)| (x.view(), *b)).collect();
        let expected = reference::hessian(&views);
        let diff = (&h.matrix() - &expected).mapv(f64::abs);
        let worst = diff.iter().cloned().fold(0.0, f64::max);
        let scale = expected.diag().iter().cloned().fold(0.0, f64::max);
        assert!(
            worst <= 1e-5 * scale,
            "{columns} columns: off by {worst} at scale {scale}"
        );
        // Rounding the tokens is not nothing: the f32 Hessian of the same data differs more.
        let unrounded: Vec<_> = data.iter().map(|(x, b)| (x.view(), *b)).collect();
        let exact = reference::hessian(&unrounded);
        let moved = (&exact - &expected)
            .mapv(f64::abs)
            .iter()
            .cloned()
            .fold(0.0, f64::max);
        assert!(
            moved > 10.0 * worst,
            "rounding moved the Hessian by only {moved}"
        );
    }
}

proptest! {
    #[test]
    fn products_match_the_plain_loops(
        m in 1usize..20, k in 1usize..80, n in 1usize..140, seed in 0u64..1000, accumulate: bool,
    ) {
        let x = seeded_matrix(m, k, seed, 3.0);
        let w = seeded_matrix(n, k, seed + 1, 3.0);
        let start = seeded_matrix(m, n, seed + 2, 1.0);
        let mut out = start.clone();
        bf16::x_wt(x.view(), w.view(), out.view_mut(), accumulate, Par::Seq).unwrap();
        let start = accumulate.then(|| start.view());
        assert_close(out.view(), start, x.view(), w.view());
    }
}
