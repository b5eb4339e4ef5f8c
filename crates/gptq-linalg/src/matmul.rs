//! Matrix products on ndarray views.

use faer::{Accum, MatMut, MatRef, Par};
use gptq_core::{GptqError, Result, check_x_wt, shape_string};
use ndarray::{Array2, ArrayView2, ArrayViewMut2};

/// `c -= a · b` in f32, on views of any strides (the lazy-batch update of GPTQ).
pub fn sub_product(
    c: ArrayViewMut2<'_, f32>,
    a: ArrayView2<'_, f32>,
    b: ArrayView2<'_, f32>,
    par: Par,
) -> Result<()> {
    if a.nrows() != c.nrows() || b.ncols() != c.ncols() || a.ncols() != b.nrows() {
        return Err(GptqError::ShapeMismatch {
            what: "matrix product",
            expected: format!(
                "{} = {} · {}",
                shape_string(&[c.nrows(), c.ncols()]),
                shape_string(&[c.nrows(), a.ncols()]),
                shape_string(&[a.ncols(), c.ncols()])
            ),
            actual: format!(
                "{} = {} · {}",
                shape_string(&[c.nrows(), c.ncols()]),
                shape_string(&[a.nrows(), a.ncols()]),
                shape_string(&[b.nrows(), b.ncols()])
            ),
        });
    }
    faer::linalg::matmul::matmul(faer_mut(c), Accum::Add, faer_ref(a), faer_ref(b), -1.0, par);
    Ok(())
}

/// A faer view of an ndarray view (same memory, same strides).
pub(crate) fn faer_ref<'a>(m: ArrayView2<'a, f32>) -> MatRef<'a, f32> {
    let (rows, cols) = m.dim();
    let strides = m.strides();
    // SAFETY: ndarray guarantees that every index (r < rows, c < cols) at these strides lies in
    // the view's allocation for its lifetime 'a, which the faer view inherits.
    unsafe { MatRef::from_raw_parts(m.as_ptr(), rows, cols, strides[0], strides[1]) }
}

/// A mutable faer view of an ndarray view (same memory, same strides).
pub(crate) fn faer_mut<'a>(mut m: ArrayViewMut2<'a, f32>) -> MatMut<'a, f32> {
    let (rows, cols) = m.dim();
    let strides = [m.strides()[0], m.strides()[1]];
    // SAFETY: as in `faer_ref`; a mutable ndarray view never aliases itself (no zero or
    // overlapping strides), and we consume it, so the faer view is the only access.
    unsafe { MatMut::from_raw_parts_mut(m.as_mut_ptr(), rows, cols, strides[0], strides[1]) }
}

/// `out = x · wᵀ` (or `out += x · wᵀ` when `accumulate`) in f32 on faer: `x` is `[m, k]`, `w`
/// is `[n, k]` (`nn.Linear`'s layout), `out` is `[m, n]`, any strides.
///
/// ```
/// use gptq_linalg::{Par, x_wt};
/// use ndarray::{Array2, array};
///
/// let mut out = array![[1.0f32]];
/// x_wt(array![[1.0f32, 2.0]].view(), array![[3.0f32, 4.0]].view(), out.view_mut(), true, Par::Seq)?;
/// assert_eq!(out, array![[12.0]]);
/// # Ok::<(), gptq_core::GptqError>(())
/// ```
pub fn x_wt(
    x: ArrayView2<'_, f32>,
    w: ArrayView2<'_, f32>,
    out: ArrayViewMut2<'_, f32>,
    accumulate: bool,
    par: Par,
) -> Result<()> {
    check_x_wt(&x, &w, &out)?;
    f32_x_wt(x, w, out, accumulate, par);
    Ok(())
}

/// [`x_wt`] without the shape check: also the fallback of the bf16 and int8 products, on
/// operands they already rounded.
pub(crate) fn f32_x_wt(
    x: ArrayView2<'_, f32>,
    w: ArrayView2<'_, f32>,
    out: ArrayViewMut2<'_, f32>,
    accumulate: bool,
    par: Par,
) {
    let accum = if accumulate {
        Accum::Add
    } else {
        Accum::Replace
    };
    faer::linalg::matmul::matmul(
        faer_mut(out),
        accum,
        faer_ref(x),
        faer_ref(w).transpose(),
        1.0f32,
        par,
    );
}

/// Finishes a product with no work for a kernel: an empty output, or an empty shared dimension
/// `k` (the output is then zero, or left as it is when accumulating). Returns whether it did.
pub(crate) fn trivial_product(
    out: &mut ArrayViewMut2<'_, f32>,
    k: usize,
    accumulate: bool,
) -> bool {
    if out.is_empty() {
        return true;
    }
    if k == 0 {
        if !accumulate {
            out.fill(0.0);
        }
        return true;
    }
    false
}

/// Runs `kernel` on `out` if its rows have unit column stride, as the kernels write them, or on
/// a row-major copy that is then written back.
pub(crate) fn on_row_major(
    mut out: ArrayViewMut2<'_, f32>,
    accumulate: bool,
    kernel: impl FnOnce(ArrayViewMut2<'_, f32>),
) {
    if out.strides()[1] == 1 && out.strides()[0] >= 0 {
        return kernel(out);
    }
    // Row-major whatever `out`'s layout (`to_owned` would keep a column-major one).
    let mut dense = Array2::zeros(out.dim());
    if accumulate {
        dense.assign(&out);
    }
    kernel(dense.view_mut());
    out.assign(&dense);
}
