//! bf16 attention of one head (the kernels where the CPU has them, rounded f32 products
//! elsewhere) against plain loops over the same rounded operands.

use gptq_core::testing::seeded_matrix;
use gptq_core::{GptqError, HeadAttention};
use gptq_linalg::bf16;
use ndarray::{Array2, ArrayView2, ArrayViewMut2, ShapeBuilder, s};

type Attention = fn(HeadAttention<'_>, ArrayViewMut2<'_, f32>) -> gptq_core::Result<()>;

const WAYS: [(&str, Attention); 2] = [
    ("head_attention", bf16::head_attention),
    ("head_attention_portable", bf16::head_attention_portable),
];

/// The softmax both sides run on the same f32 scores: the one the attention calls.
fn softmax(x: &mut [f32]) {
    gptq_linalg::elementwise::softmax_in_place(x)
}

/// The attention of rounded operands in f64, with the probabilities from `softmax` on the f32
/// scores rounded to bf16, and the magnitude `Σ |p| |v|` of every output.
fn reference(head: &HeadAttention<'_>) -> (Array2<f64>, Array2<f64>) {
    let round = |m: ArrayView2<'_, f32>| m.mapv(|v| f64::from(bf16::round_bf16(v)));
    let (q, k, v) = (round(head.q), round(head.k), round(head.v));
    let (len, d) = head.q.dim();
    let mut out = Array2::zeros((len, d));
    let mut magnitude = Array2::zeros((len, d));
    for i in 0..len {
        let keys = head.visible_keys(i);
        let mut p: Vec<f32> = keys
            .clone()
            .map(|j| q.row(i).dot(&k.row(j)) as f32)
            .collect();
        softmax(&mut p);
        for (j, &pj) in keys.zip(&p) {
            let pj = f64::from(bf16::round_bf16(pj));
            for c in 0..d {
                out[[i, c]] += pj * v[[j, c]];
                magnitude[[i, c]] += pj * v[[j, c]].abs();
            }
        }
    }
    (out, magnitude)
}

/// `got` within `tolerance · Σ|p||v|` of the reference, plus the f32 roundings of the sums.
fn assert_close(got: ArrayView2<'_, f32>, head: &HeadAttention<'_>, tolerance: f64, what: &str) {
    let (want, magnitude) = reference(head);
    let unit = f64::from(f32::EPSILON) / 2.0;
    let rounding = (head.len() as f64 + 2.0) * unit;
    for ((index, &g), (&w, &m)) in got.indexed_iter().zip(want.iter().zip(&magnitude)) {
        let bound = (tolerance + rounding) * m + 1e-30;
        assert!(
            (f64::from(g) - w).abs() <= bound,
            "{what}: entry {index:?}: {g} against {w} (bound {bound:e})"
        );
    }
}

/// Multiples of 1/8 in [-1/4, 1/4]: every score is exact in f32, so both sides see the same
/// probabilities and only the order of the final f32 sums differs.
fn exact_matrix(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
    seeded_matrix(rows, cols, seed, 1.0).mapv(|v| (v * 2.49).round() / 8.0)
}

#[test]
fn every_edge_of_blocks_panels_and_windows() {
    // Lengths around the 64-query block and 64-key panel, head widths around the 64-column
    // panel and the 32-value conversion, windows shorter than, around and longer than a block.
    for len in [1, 2, 63, 65, 130, 300] {
        for d in [1, 3, 64, 65, 128] {
            for window in [None, Some(1), Some(2), Some(63), Some(100)] {
                let (q, k, v) = (
                    exact_matrix(len, d, 1),
                    exact_matrix(len, d, 2),
                    exact_matrix(len, d, 3),
                );
                let head = HeadAttention {
                    q: q.view(),
                    k: k.view(),
                    v: v.view(),
                    window,
                };
                for (name, way) in WAYS {
                    let mut out = Array2::from_elem((len, d), f32::NAN);
                    way(head, out.view_mut()).unwrap();
                    let what = format!("{name}, len {len}, head_dim {d}, window {window:?}");
                    assert_close(out.view(), &head, 0.0, &what);
                }
            }
        }
    }
}

#[test]
fn strided_operands_and_outputs() {
    // q, k and v as one head's columns of wider matrices, as attention reads them; the output
    // into a column-major array and into a block of a wider one.
    let (len, d) = (150, 64);
    let q_all = seeded_matrix(len, 3 * d, 4, 1.0);
    let kv_all = seeded_matrix(len, 2 * d, 5, 1.0);
    let head = HeadAttention {
        q: q_all.slice(s![.., d..2 * d]),
        k: kv_all.slice(s![.., ..d]),
        v: kv_all.slice(s![.., d..]),
        window: None,
    };
    for (name, way) in WAYS {
        let mut column_major = Array2::from_elem((len, d).f(), f32::NAN);
        way(head, column_major.view_mut()).unwrap();
        // Real-valued scores: a probability may round to the neighbouring bf16 on one side.
        assert_close(column_major.view(), &head, 2f64.powi(-7), name);
        let mut wide = Array2::from_elem((len, 3 * d), 7.0f32);
        way(head, wide.slice_mut(s![.., d..2 * d])).unwrap();
        assert_eq!(wide.slice(s![.., d..2 * d]), column_major);
        assert!(wide.slice(s![.., ..d]).iter().all(|&v| v == 7.0));
        assert!(wide.slice(s![.., 2 * d..]).iter().all(|&v| v == 7.0));
    }
}

#[test]
fn bad_shapes_and_windows_are_errors() {
    let x = Array2::<f32>::zeros((4, 8));
    let short = Array2::<f32>::zeros((3, 8));
    let mut out = Array2::<f32>::zeros((4, 8));
    let heads = [
        HeadAttention {
            q: x.view(),
            k: short.view(),
            v: x.view(),
            window: None,
        },
        HeadAttention {
            q: x.view(),
            k: x.view(),
            v: x.view(),
            window: Some(0),
        },
    ];
    for (name, way) in WAYS {
        let errors: Vec<_> = heads
            .iter()
            .map(|&head| way(head, out.view_mut()).unwrap_err())
            .collect();
        assert!(
            matches!(errors[0], GptqError::ShapeMismatch { .. }),
            "{name}"
        );
        assert!(matches!(errors[1], GptqError::InvalidConfig(_)), "{name}");
        let head = HeadAttention {
            q: x.view(),
            k: x.view(),
            v: x.view(),
            window: None,
        };
        let mut wrong = Array2::<f32>::zeros((4, 7));
        assert!(way(head, wrong.view_mut()).is_err(), "{name}");
        // Empty sequences and zero-width heads have nothing to compute.
        let empty = Array2::<f32>::zeros((0, 8));
        let head = HeadAttention {
            q: empty.view(),
            k: empty.view(),
            v: empty.view(),
            window: None,
        };
        way(head, Array2::zeros((0, 8)).view_mut()).unwrap();
    }
}
