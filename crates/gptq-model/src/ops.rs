//! RMSNorm on the model's activation matrices (the element-wise kernels themselves are
//! gptq-linalg's, [`gptq_linalg::elementwise`]).

use faer::Par;
use gptq_linalg::elementwise::rms_norm_rows;
use ndarray::{Array2, ArrayView1, ArrayView2};

use crate::error::{ModelError, Result};

/// RMSNorm as in Hugging Face Llama: `w ⊙ x / sqrt(mean(x²) + eps)` row by row, in f32.
pub fn rms_norm(
    x: ArrayView2<'_, f32>,
    weight: ArrayView1<'_, f32>,
    eps: f32,
) -> Result<Array2<f32>> {
    rms_norm_par(x, weight, eps, Par::Seq)
}

/// [`rms_norm`] spread over the threads of `par`.
pub fn rms_norm_par(
    x: ArrayView2<'_, f32>,
    weight: ArrayView1<'_, f32>,
    eps: f32,
    par: Par,
) -> Result<Array2<f32>> {
    let h = x.ncols();
    if weight.len() != h {
        return Err(ModelError::shape(
            "rms_norm input",
            format!("[tokens, {}]", weight.len()),
            format!("{:?}", x.shape()),
        ));
    }
    let x = x.as_standard_layout();
    let w = weight.to_vec();
    // Every row is written by the kernel (an empty array has nothing to write).
    let mut out = crate::pool::scratch(x.nrows(), x.ncols());
    rms_norm_rows(
        x.as_slice().expect("standard layout"),
        &w,
        eps,
        out.as_slice_mut().expect("fresh array"),
        par,
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_unit_rows() {
        let x = ndarray::array![[3.0f32, 4.0], [0.0, 0.0]];
        let w = ndarray::array![1.0f32, 2.0];
        let y = rms_norm(x.view(), w.view(), 0.0).unwrap();
        let r = (12.5f32).sqrt();
        assert!((y[[0, 0]] - 3.0 / r).abs() < 1e-6);
        assert!((y[[0, 1]] - 8.0 / r).abs() < 1e-6);
        let y = rms_norm(x.view(), w.view(), 1e-5).unwrap();
        assert_eq!(y[[1, 0]], 0.0);
    }
}
