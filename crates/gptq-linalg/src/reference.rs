//! Plain implementations of what this crate computes fast, following the reference step by step
//! in f64. They are the oracle of the tests (as rav1e tests every kernel against a plain one),
//! and small enough to read next to the reference; use them only for small matrices.

use ndarray::{Array2, ArrayView2, s};

/// The reference's running-mean Hessian: for each batch of `b` sequences,
/// `H *= n/(n+b); n += b; x = sqrt(2/n) x; H += xᵀx`.
pub fn hessian(batches: &[(ArrayView2<'_, f32>, usize)]) -> Array2<f64> {
    let n = batches.first().map_or(0, |(x, _)| x.ncols());
    let mut h = Array2::<f64>::zeros((n, n));
    let mut count = 0usize;
    for (x, b) in batches {
        h *= count as f64 / (count + b) as f64;
        count += b;
        let x = x.mapv(|v| f64::from(v) * (2.0 / count as f64).sqrt());
        for i in 0..n {
            for j in 0..n {
                h[[i, j]] += (0..x.nrows()).map(|t| x[[t, i]] * x[[t, j]]).sum::<f64>();
            }
        }
    }
    h
}

/// `x · wᵀ` of the operands rounded to bf16 (nearest even), summed in f64: what
/// [`crate::bf16::x_wt`] computes up to its f32 sums. `x` is `[m, k]`, `w` is `[n, k]`.
pub fn x_wt_bf16(x: ArrayView2<'_, f32>, w: ArrayView2<'_, f32>) -> Array2<f64> {
    let round = |v: f32| f64::from(half::bf16::from_f32(v).to_f32());
    let (x, w) = (x.mapv(round), w.mapv(round));
    Array2::from_shape_fn((x.nrows(), w.nrows()), |(i, j)| {
        x.row(i).iter().zip(w.row(j)).map(|(a, b)| a * b).sum()
    })
}

/// The reference's inverse factor: fix dead columns, permute, damp, then
/// `U = chol_upper(inv(chol(H) chol(H)ᵀ))` with textbook Cholesky and triangular solves.
/// Returns `None` when a pivot is not positive.
pub fn inverse_factor(
    h: ArrayView2<'_, f64>,
    dead: &[usize],
    permutation: Option<&[usize]>,
    damp_percent: f64,
) -> Option<Array2<f64>> {
    let n = h.nrows();
    let mut h = h.to_owned();
    for &d in dead {
        h[[d, d]] = 1.0;
    }
    if let Some(p) = permutation {
        h = Array2::from_shape_fn((n, n), |(i, j)| h[[p[i], p[j]]]);
    }
    let damp = damp_percent * h.diag().sum() / n as f64;
    for i in 0..n {
        h[[i, i]] += damp;
    }
    let l = cholesky(h.view())?;
    // inv(L Lᵀ): solve L Lᵀ X = I column by column.
    let mut inverse = Array2::<f64>::zeros((n, n));
    for c in 0..n {
        let mut y = vec![0.0; n];
        for i in 0..n {
            let known: f64 = (0..i).map(|k| l[[i, k]] * y[k]).sum();
            y[i] = (f64::from(u8::from(i == c)) - known) / l[[i, i]];
        }
        for i in (0..n).rev() {
            let known: f64 = (i + 1..n).map(|k| l[[k, i]] * inverse[[k, c]]).sum();
            inverse[[i, c]] = (y[i] - known) / l[[i, i]];
        }
    }
    let upper = cholesky(inverse.view())?.reversed_axes();
    Some(upper)
}

/// Textbook lower Cholesky factor, or `None` at a non-positive pivot.
pub fn cholesky(a: ArrayView2<'_, f64>) -> Option<Array2<f64>> {
    let n = a.nrows();
    let mut l = Array2::<f64>::zeros((n, n));
    for j in 0..n {
        let pivot = a[[j, j]] - l.slice(s![j, ..j]).iter().map(|x| x * x).sum::<f64>();
        if pivot <= 0.0 || pivot.is_nan() {
            return None;
        }
        l[[j, j]] = pivot.sqrt();
        for i in j + 1..n {
            let dot: f64 = (0..j).map(|k| l[[i, k]] * l[[j, k]]).sum();
            l[[i, j]] = (a[[i, j]] - dot) / l[[j, j]];
        }
    }
    Some(l)
}

/// `tr(D H Dᵀ)` by the definition.
pub fn quadratic_loss(h: ArrayView2<'_, f64>, delta: ArrayView2<'_, f32>) -> f64 {
    let n = h.nrows();
    let mut total = 0.0;
    for d in delta.rows() {
        for i in 0..n {
            for j in 0..n {
                total += f64::from(d[i]) * h[[i, j]] * f64::from(d[j]);
            }
        }
    }
    total
}
