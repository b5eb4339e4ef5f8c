//! The int8 products of quantized weights (AVX512-VNNI kernels where the CPU has them, faer's
//! f32 product of the rounded operands elsewhere) against f64 loops over the same rounded
//! activations and dequantized weights.

use gptq_core::testing::{announce_skip, cpu_has, seeded_matrix};
use gptq_core::{ForwardCompute, GptqError, QuantizedTensor};
use gptq_linalg::int8::{self, Path, rounded_activations};
use gptq_linalg::{CpuCompute, ProductPrecision};
use gptq_linalg::{Par, bf16};
use ndarray::{Array2, ArrayView2, s};

/// A small deterministic generator (the tests need integers as well as matrices).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// How the columns of a test weight are grouped.
#[derive(Clone, Copy, Debug)]
enum Groups {
    /// Consecutive columns, `size` per group (the last one shorter).
    Natural(usize),
    /// Quantized in a shuffled order (act-order), `size` consecutive columns of that order per
    /// group, so that `g_idx` is not sorted.
    Shuffled(usize),
}

/// A random `[n, k]` quantized weight: codes, zero points up to `2^bits` (what the v1 format
/// can store) and positive scales.
fn quantized(n: usize, k: usize, bits: u8, groups: Groups, seed: u64) -> QuantizedTensor {
    let mut rng = Lcg(seed);
    let levels = 1u64 << bits;
    let codes = Array2::from_shape_fn((n, k), |_| rng.below(levels) as u8);
    let (size, order): (usize, Vec<usize>) = match groups {
        Groups::Natural(size) => (size, (0..k).collect()),
        Groups::Shuffled(size) => {
            let mut order: Vec<usize> = (0..k).collect();
            for i in (1..k).rev() {
                order.swap(i, rng.below(i as u64 + 1) as usize);
            }
            (size, order)
        }
    };
    let mut g_idx = vec![0u32; k];
    for (i, &c) in order.iter().enumerate() {
        g_idx[c] = (i / size) as u32;
    }
    let count = k.div_ceil(size).max(1);
    let scales = Array2::from_shape_fn((count, n), |_| 0.01 + rng.below(1000) as f32 / 1e4);
    let zeros = Array2::from_shape_fn((count, n), |_| rng.below(levels + 1) as u16);
    QuantizedTensor::new(bits, codes, scales, zeros, g_idx, None).unwrap()
}

/// `actual` against the f64 product of the rounded activations and the dequantized weights
/// (plus `start`): within a few f32 roundings per block of the sum of magnitudes, a bound that
/// the order of the sums cannot break but a lost quad, block or scale does.
fn assert_close(
    actual: ArrayView2<'_, f32>,
    start: Option<ArrayView2<'_, f32>>,
    x: ArrayView2<'_, f32>,
    w: &QuantizedTensor,
) {
    let rounded = rounded_activations(x, w.g_idx()).mapv(f64::from);
    let weight = w.dequantize().mapv(f64::from);
    let mut expected = rounded.dot(&weight.t());
    let mut magnitude = rounded.mapv(f64::abs).dot(&weight.mapv(f64::abs).t());
    if let Some(start) = start {
        expected += &start.mapv(f64::from);
        magnitude += &start.mapv(|v| f64::from(v.abs()));
    }
    let roundings = (x.ncols() as f64 / 4.0).ceil() + 4.0;
    for ((index, &got), (&want, &size)) in
        actual.indexed_iter().zip(expected.iter().zip(&magnitude))
    {
        let bound = roundings * f64::from(f32::EPSILON) * size + 1e-30;
        assert!(
            (f64::from(got) - want).abs() <= bound,
            "entry {index:?}: {got} against {want} (bound {bound:e})"
        );
    }
}

fn product(m: usize, k: usize, n: usize, bits: u8, groups: Groups) {
    let x = seeded_matrix(m, k, 21, 2.0);
    let w = quantized(n, k, bits, groups, 22);
    for par in [Par::Seq, Par::rayon(2)] {
        for way in [int8::x_qwt, int8::x_qwt_portable] {
            let mut out = Array2::from_elem((m, n), f32::NAN);
            way(x.view(), &w, out.view_mut(), false, par).unwrap();
            assert_close(out.view(), None, x.view(), &w);
        }
    }
}

/// The kernels run exactly where the CPU has their instructions (the detection the products
/// dispatch on agrees with the flags Linux reports), so that on a CPU with AVX512-VNNI the tests
/// below check the kernels, not the fallback.
#[test]
fn kernels_run_where_the_cpu_has_them() {
    let Some(expected) = cpu_has(&["avx512f", "avx512bw", "avx512_vnni"]) else {
        announce_skip("no /proc/cpuinfo flags on this x86-64 machine to check the detection by");
        return;
    };
    assert_eq!(int8::kernels_available(), expected);
    let w4 = quantized(8, 16, 4, Groups::Natural(16), 1);
    let want = if expected {
        Path::Kernels
    } else {
        Path::Portable
    };
    assert_eq!(int8::path(&w4), want);
    if !expected {
        announce_skip(
            "the AVX512-VNNI kernels (this CPU lacks them): the int8 tests check the rounded f32 \
             fallback instead",
        );
    }
}

#[test]
fn products_of_every_edge_shape() {
    use Groups::{Natural, Shuffled};
    // Rows around the 6-row micro-tile and the 192-row chunk, columns around the 64-column
    // panel, blocks around the 4-column quad and the 128-column block, groups smaller and larger
    // than a block, one group for all columns, shuffled groups, and every width of signed byte.
    for (m, k, n, bits, groups) in [
        (1, 1, 1, 4, Natural(1)),
        (6, 4, 64, 3, Natural(4)),
        (7, 3, 65, 2, Natural(3)),
        (5, 130, 17, 4, Natural(128)),
        (193, 576, 130, 3, Natural(128)),
        (13, 300, 3, 4, Natural(300)),
        (200, 576, 192, 4, Shuffled(64)),
        (20, 257, 70, 2, Shuffled(32)),
        (9, 100, 33, 7, Natural(256)),
        (12, 99, 40, 5, Shuffled(99)),
    ] {
        product(m, k, n, bits, groups);
    }
}

#[test]
fn eight_bit_weights_take_the_portable_path() {
    // q − z spans [-256, 255]: wider than a signed byte.
    let w8 = quantized(70, 140, 8, Groups::Natural(128), 7);
    assert_eq!(int8::path(&w8), Path::Portable);
    product(10, 140, 70, 8, Groups::Natural(128));
}

#[test]
fn accumulation_and_strided_views() {
    let x = seeded_matrix(20, 140, 1, 1.0);
    let w = quantized(90, 70, 4, Groups::Shuffled(32), 3);
    let xs = x.slice(s![.., ..;2]);
    let start = seeded_matrix(90, 20, 4, 1.0);
    for par in [Par::Seq, Par::rayon(2)] {
        // A column-major output: the transposed view of a row-major array.
        let mut storage = start.clone();
        int8::x_qwt(xs, &w, storage.view_mut().reversed_axes(), true, par).unwrap();
        assert_close(storage.t(), Some(start.t()), xs, &w);
    }
}

#[test]
fn each_block_rounds_within_its_own_group() {
    // Shuffled groups of 8 columns whose values differ by 10⁶: a block that mixed groups would
    // round the small ones to zero.
    let k = 64;
    let w = quantized(1, k, 4, Groups::Shuffled(8), 5);
    let x = Array2::from_shape_fn((3, k), |(r, c)| {
        let g = w.g_idx()[c];
        let size = if g.is_multiple_of(2) { 1e3 } else { 1e-3 };
        size * (1.0 + ((r * 31 + c * 7) % 13) as f32 / 13.0)
    });
    let rounded = rounded_activations(x.view(), w.g_idx());
    for r in 0..x.nrows() {
        for g in 0..w.groups() as u32 {
            let columns: Vec<usize> = (0..k).filter(|&c| w.g_idx()[c] == g).collect();
            let max = columns.iter().map(|&c| x[[r, c]].abs()).fold(0.0, f32::max);
            for &c in &columns {
                let error = (rounded[[r, c]] - x[[r, c]]).abs();
                assert!(
                    error <= max / 254.0 * 1.0001,
                    "row {r}, column {c}: {} rounded to {} (group max {max})",
                    x[[r, c]],
                    rounded[[r, c]]
                );
            }
        }
    }
}

#[test]
fn non_finite_activations_reach_the_output() {
    let w = quantized(70, 200, 4, Groups::Natural(128), 6);
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut x = seeded_matrix(3, 200, 7, 1.0);
        x[[1, 150]] = bad;
        for way in [int8::x_qwt, int8::x_qwt_portable] {
            let mut out = Array2::zeros((3, 70));
            way(x.view(), &w, out.view_mut(), false, Par::Seq).unwrap();
            assert!(
                out.row(1).iter().all(|v| v.is_nan()),
                "{bad} in row 1: {:?}",
                out.row(1)
            );
            assert!(out.row(0).iter().chain(out.row(2)).all(|v| v.is_finite()));
        }
    }
}

#[test]
fn tiny_and_zero_blocks() {
    let w = quantized(16, 256, 3, Groups::Natural(128), 8);
    // A block of zeros, a block of subnormal-range values (whose inverse scale overflows f32).
    let mut x = Array2::zeros((2, 256));
    x.slice_mut(s![.., 128..]).fill(1e-38);
    x[[1, 200]] = -3e-38;
    let mut out = Array2::from_elem((2, 16), f32::NAN);
    int8::x_qwt(x.view(), &w, out.view_mut(), false, Par::Seq).unwrap();
    assert_close(out.view(), None, x.view(), &w);
    let rounded = rounded_activations(x.view(), w.g_idx());
    // The scale of that block (3e-38 / 127) is subnormal: a few of its last bits are lost.
    assert!((rounded[[1, 200]] + 3e-38).abs() <= 1e-43);
    assert!((rounded[[0, 130]] - 1e-38).abs() <= 1e-38 / 254.0 * 1.01);
}

#[test]
fn shapes_are_checked() {
    let w = quantized(5, 8, 4, Groups::Natural(4), 9);
    let x = Array2::zeros((3, 7));
    let mut out = Array2::zeros((3, 5));
    let err = int8::x_qwt(x.view(), &w, out.view_mut(), false, Par::Seq).unwrap_err();
    assert!(matches!(err, GptqError::ShapeMismatch { .. }), "{err}");
    let x = Array2::zeros((3, 8));
    let mut out = Array2::zeros((3, 4));
    let err = int8::x_qwt(x.view(), &w, out.view_mut(), false, Par::Seq).unwrap_err();
    assert!(matches!(err, GptqError::ShapeMismatch { .. }), "{err}");
}

#[test]
fn the_products_split_quantized_linears_from_the_rest() {
    let products = CpuCompute::new(ProductPrecision::Int8, Par::Seq);
    assert!(products.quantized().is_some() && products.attention().is_some());
    let x = seeded_matrix(9, 130, 10, 1.0);
    let w = quantized(70, 130, 4, Groups::Natural(128), 11);
    let (mut ours, mut direct) = (Array2::zeros((9, 70)), Array2::zeros((9, 70)));
    products
        .quantized()
        .unwrap()
        .x_qwt(x.view(), &w, ours.view_mut(), false)
        .unwrap();
    int8::x_qwt(x.view(), &w, direct.view_mut(), false, Par::Seq).unwrap();
    assert_eq!(ours, direct);
    // Unquantized weights go to the bf16 products.
    let dense = w.dequantize();
    products
        .x_wt(x.view(), dense.view(), ours.view_mut(), false)
        .unwrap();
    bf16::x_wt(x.view(), dense.view(), direct.view_mut(), false, Par::Seq).unwrap();
    assert_eq!(ours, direct);
}
