//! The damped inverse Cholesky factor.
//!
//! The reference computes `U = chol_upper(chol_inverse(chol(H)))`: three O(n³) steps. Here the
//! same `U` (the unique upper-triangular factor with positive diagonal and `H⁻¹ = UᵀU`) comes
//! from two: with `J` the exchange matrix (index reversal), factor `J H J = L Lᵀ`; then
//! `H = R Rᵀ` with `R = J L J` upper triangular, so `H⁻¹ = R⁻ᵀ R⁻¹` and `U = R⁻¹ = J L⁻¹ J`.
//! Stored row-major, `J M J` is just the element order reversed, so `U` is `L⁻¹` read backwards.

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch};
use faer::linalg::triangular_inverse::invert_lower_triangular;
use faer::{MatMut, MatRef, Par};
use gptq_core::validate::{check_finite, check_non_empty, check_square};
use gptq_core::{Damping, FactorRequest, GptqError, Result};
use ndarray::{Array2, ArrayView2};

/// The upper-triangular `U` with `(P H Pᵀ + λI)⁻¹ = UᵀU`, row-major f32, in quantization order.
#[derive(Debug, Clone, PartialEq)]
pub struct InverseFactor {
    upper: Array2<f32>,
}

impl InverseFactor {
    /// `U`, `[columns, columns]`, zero below the diagonal.
    pub fn upper(&self) -> ArrayView2<'_, f32> {
        self.upper.view()
    }
    /// Size of the factor.
    pub fn columns(&self) -> usize {
        self.upper.nrows()
    }
}

/// Factors the damped, dead-column-fixed, permuted Hessian: see [`FactorRequest`].
///
/// Dead columns get a diagonal of 1; the damping `λ = damp_percent · mean(diag)` is taken after
/// that fix. On a non-positive pivot (or a factor that overflows) the next damping of the policy
/// is tried; past the last one the error names the size and every damping tried.
pub fn damped_inverse_factor(
    hessian: ArrayView2<'_, f64>,
    request: &FactorRequest<'_>,
    par: Par,
) -> Result<(InverseFactor, Damping)> {
    let n = hessian.nrows();
    check_square("Hessian", hessian, n)?;
    check_non_empty("Hessian", hessian)?;
    check_finite("Hessian", hessian)?;
    let order = request.reversed_order(n)?;
    let mut diagonal: Vec<f64> = hessian.diag().to_vec();
    for &dead in request.dead_columns {
        diagonal[dead] = 1.0;
    }
    let mean_diagonal = diagonal.iter().sum::<f64>() / n as f64;

    let mut lower = vec![0.0f64; n * n];
    let mut inverse = vec![0.0f64; n * n];
    let mut scratch = MemBuffer::new(cholesky_in_place_scratch::<f64>(n, par, Default::default()));
    let mut tried = Vec::new();
    for damp_percent in request.damping.attempts() {
        tried.push(damp_percent);
        let damp = damp_percent * mean_diagonal;
        for (i, &oi) in order.iter().enumerate() {
            for (j, &oj) in order[..i].iter().enumerate() {
                lower[i * n + j] = hessian[[oi, oj]];
            }
            lower[i * n + i] = diagonal[oi] + damp;
        }
        let factor = MatMut::from_row_major_slice_mut(&mut lower, n, n);
        let stack = MemStack::new(&mut scratch);
        if cholesky_in_place(factor, Default::default(), par, stack, Default::default()).is_err() {
            continue;
        }
        invert_lower_triangular(
            MatMut::from_row_major_slice_mut(&mut inverse, n, n),
            MatRef::from_row_major_slice(&lower, n, n),
            par,
        );
        if inverse.iter().any(|x| !x.is_finite()) {
            inverse.fill(0.0);
            continue;
        }
        let upper: Vec<f32> = inverse.iter().rev().map(|&x| x as f32).collect();
        let upper = Array2::from_shape_vec((n, n), upper).expect("n × n elements");
        let damping = Damping {
            damp_percent,
            absolute: damp,
            tried,
        };
        return Ok((InverseFactor { upper }, damping));
    }
    Err(GptqError::NotPositiveDefinite { columns: n, tried })
}
