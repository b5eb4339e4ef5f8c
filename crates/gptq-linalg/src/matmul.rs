//! Matrix products on ndarray views.

use faer::{Accum, MatMut, MatRef, Par};
use gptq_core::{GptqError, Result, shape_string};
use ndarray::{ArrayView2, ArrayViewMut2};

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
