//! Workloads shared by the benchmarks: layer shapes and their inputs.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par};
use gptq::testing::core::seeded_matrix;
use gptq::{ActivationBatch, Backend, CpuBackend, HessianAccumulator, HessianOptions};
use ndarray::Array2;

/// A benchmarked layer shape.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Name in reports.
    pub name: &'static str,
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub columns: usize,
    /// Calibration tokens.
    pub tokens: usize,
}

/// A 4096×4096 layer (Llama-7B attention) with a Hessian from 8192 tokens.
pub const LLAMA_ATTENTION: Shape = Shape {
    name: "4096x4096",
    rows: 4096,
    columns: 4096,
    tokens: 8192,
};
/// SmolLM2-135M's MLP down projection (576×1536), Hessian from 8192 tokens.
pub const SMOLLM_DOWN: Shape = Shape {
    name: "576x1536",
    rows: 576,
    columns: 1536,
    tokens: 8192,
};

/// Calibration activations `[tokens, columns]`.
pub fn activations(shape: Shape) -> Array2<f32> {
    seeded_matrix(shape.tokens, shape.columns, 7, 1.0)
}

/// The layer's weight `[rows, columns]`.
pub fn weight(shape: Shape) -> Array2<f32> {
    seeded_matrix(shape.rows, shape.columns, 8, 0.02)
}

/// The Hessian of `activations(shape)` on `backend`, in batches of 512 tokens (one sequence each).
pub fn hessian(
    backend: &CpuBackend,
    shape: Shape,
    options: HessianOptions,
) -> <CpuBackend as Backend>::Hessian {
    let x = activations(shape);
    let mut acc = backend
        .accumulator(shape.columns, options)
        .expect("valid shape");
    for batch in x.axis_chunks_iter(ndarray::Axis(0), 512) {
        acc.add_batch(&ActivationBatch::new(batch))
            .expect("finite data");
    }
    acc.finish().expect("non-empty")
}

/// Square f32 matrices for the GEMM baseline.
pub fn gemm_operands(n: usize) -> (Mat<f32>, Mat<f32>, Mat<f32>) {
    let a = Mat::from_fn(n, n, |i, j| ((i * 7 + j * 13) % 17) as f32 / 17.0 - 0.5);
    let b = Mat::from_fn(n, n, |i, j| ((i * 5 + j * 11) % 19) as f32 / 19.0 - 0.5);
    (a, b, Mat::zeros(n, n))
}

/// One `n³` f32 GEMM with faer: the baseline of every rate.
pub fn gemm(a: &Mat<f32>, b: &Mat<f32>, c: &mut Mat<f32>, par: Par) {
    matmul(c, Accum::Replace, a, b, 1.0, par);
}
