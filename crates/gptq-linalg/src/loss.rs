//! The quadratic loss `tr(D H Dᵀ)`.

use faer::linalg::matmul::triangular::{BlockStructure, matmul};
use faer::{Accum, Mat, MatRef, Par};
use gptq_core::validate::check_square;
use gptq_core::{GptqError, Result, shape_string};
use ndarray::{ArrayView2, Axis};

/// Rows of `D` multiplied at a time, to bound the temporary `D · H` product.
const ROW_CHUNK: usize = 512;

/// `tr(D H Dᵀ) = Σ_r d_rᵀ H d_r` in f64, for symmetric `H` (`[columns, columns]`) and
/// `D = delta` (`[rows, columns]`).
///
/// Uses `H = S + diag(H) + Sᵀ` with `S` strictly lower: `d H dᵀ = 2 d S dᵀ + Σ H_ii d_i²`, so only
/// half of `H` is multiplied.
pub fn quadratic_loss(
    hessian: ArrayView2<'_, f64>,
    delta: ArrayView2<'_, f32>,
    par: Par,
) -> Result<f64> {
    let n = hessian.nrows();
    check_square("Hessian", hessian, n)?;
    if delta.ncols() != n {
        return Err(GptqError::ShapeMismatch {
            what: "loss delta",
            expected: format!("[rows, {n}]"),
            actual: shape_string(&[delta.nrows(), delta.ncols()]),
        });
    }
    let h = hessian.as_standard_layout();
    // H is symmetric, so its row-major storage read column-major is H itself; faer's triangular
    // product runs twice as fast on the column-major view.
    let h = MatRef::from_column_major_slice(h.as_slice().expect("standard layout"), n, n);
    let mut total = 0.0;
    for chunk in delta.axis_chunks_iter(Axis(0), ROW_CHUNK) {
        let rows = chunk.nrows();
        let d = Mat::<f64>::from_fn(rows, n, |r, c| f64::from(chunk[[r, c]]));
        let mut product = Mat::<f64>::zeros(rows, n);
        matmul(
            &mut product,
            BlockStructure::Rectangular,
            Accum::Replace,
            &d,
            BlockStructure::Rectangular,
            h,
            BlockStructure::StrictTriangularLower,
            1.0,
            par,
        );
        for c in 0..n {
            let (dc, pc) = (d.col(c), product.col(c));
            let cross: f64 = dc.iter().zip(pc.iter()).map(|(a, b)| a * b).sum();
            let square: f64 = dc.iter().map(|a| a * a).sum();
            total += 2.0 * cross + h[(c, c)] * square;
        }
    }
    Ok(total)
}
