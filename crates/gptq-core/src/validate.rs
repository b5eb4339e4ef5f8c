//! Input checks shared by every crate, so that bad data gets the same typed error everywhere.

use ndarray::ArrayView2;

use crate::error::{GptqError, Position, Result, shape2};

/// A float type whose values can be checked for finiteness.
pub trait CheckFinite: Copy {
    /// Whether the value is neither NaN nor infinite.
    fn finite(self) -> bool;
    /// The value as f64, for error messages.
    fn as_f64(self) -> f64;
}

macro_rules! impl_check_finite {
    ($($t:ty => $to:expr),*) => {$(
        impl CheckFinite for $t {
            #[inline]
            fn finite(self) -> bool {
                self.is_finite()
            }
            #[inline]
            fn as_f64(self) -> f64 {
                ($to)(self)
            }
        }
    )*};
}

impl_check_finite!(
    f32 => f64::from,
    f64 => |x| x,
    half::f16 => |x: half::f16| x.to_f64(),
    half::bf16 => |x: half::bf16| x.to_f64()
);

/// Fails with [`GptqError::NonFinite`] at the first NaN or infinity.
pub fn check_finite<T: CheckFinite>(what: &'static str, m: ArrayView2<'_, T>) -> Result<()> {
    // Fast path over contiguous memory; the position is only searched for on failure. The
    // branch-free fold over fixed-size chunks vectorizes (an early-exit `all` does not), which
    // matters for the activations checked on every Hessian batch.
    if let Some(values) = m.as_slice_memory_order()
        && values
            .chunks(256)
            .all(|chunk| chunk.iter().fold(true, |ok, v| ok & v.finite()))
    {
        return Ok(());
    }
    match m.indexed_iter().find(|(_, v)| !v.finite()) {
        None => Ok(()),
        Some(((row, column), v)) => Err(GptqError::NonFinite {
            what,
            value: v.as_f64(),
            position: Position { row, column },
        }),
    }
}

/// Fails with [`GptqError::Empty`] when the matrix has no elements.
pub fn check_non_empty<T>(what: &'static str, m: ArrayView2<'_, T>) -> Result<()> {
    if m.is_empty() {
        Err(GptqError::Empty {
            what,
            shape: shape2(m.nrows(), m.ncols()),
        })
    } else {
        Ok(())
    }
}

/// Fails with [`GptqError::ShapeMismatch`] unless `m` is square with `n` rows.
pub fn check_square<T>(what: &'static str, m: ArrayView2<'_, T>, n: usize) -> Result<()> {
    if m.dim() == (n, n) {
        Ok(())
    } else {
        Err(GptqError::ShapeMismatch {
            what,
            expected: shape2(n, n),
            actual: shape2(m.nrows(), m.ncols()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn finds_the_first_non_finite_value() {
        let m = array![[1.0f32, 2.0], [f32::INFINITY, f32::NAN]];
        let err = check_finite("weights", m.view()).unwrap_err();
        assert!(err.to_string().contains("[1, 0]"), "{err}");
        let h = array![[half::bf16::NAN]];
        assert!(check_finite("activations", h.view()).is_err());
    }
}
