//! # gptq-linalg
//!
//! The CPU linear algebra of GPTQ, on faer, with explicit parallelism (every entry point takes a
//! [`Par`]):
//!
//! - [`CpuHessianAccumulator`]: streams `[tokens, columns]` activation batches (f32, f16, bf16,
//!   optionally masked) into `H = (2/N) Σ x xᵀ`, the reference's running mean over `N` sequences,
//!   as lower-triangle products (half the flops of a full product) summed in f64 or f32.
//! - [`damped_inverse_factor`]: the upper Cholesky factor `U` of `(P H Pᵀ + λI)⁻¹` with dead
//!   columns fixed and damping retried, from one Cholesky factorization and one triangular
//!   inverse.
//! - [`quadratic_loss`]: `tr(D H Dᵀ)` from half of `H`.
//! - [`sub_product`]: `C -= A · B` on row-major matrices, the lazy-batch update.
//! - [`CpuCompute`]: a model's forward products on the CPU (`gptq_core::ForwardCompute`) at a
//!   [`ProductPrecision`]: f32 ([`x_wt`], [`attention::head_attention_f32`]), bf16 or int8;
//!   and the element-wise kernels of a forward pass ([`elementwise`]).
//! - [`bf16`](mod@bf16): products of bf16-rounded operands summed in f32, on AVX512-BF16 kernels
//!   where the CPU has them (the forward products and Hessians of a calibration run, optionally).
//! - [`int8`](mod@int8): products of already quantized weights with activations rounded to 8 bits
//!   per block, summed exactly in integers on AVX512-VNNI kernels (a calibration run's quantized
//!   linears, optionally).
//! - [`reference`](mod@reference): plain loops that compute the same things, the oracle of the tests.
//!
//! ```
//! use gptq_core::{ActivationBatch, HessianAccumulator, HessianOptions};
//! use gptq_linalg::{CpuHessianAccumulator, Par};
//! use ndarray::array;
//!
//! let mut acc = CpuHessianAccumulator::new(2, HessianOptions::default(), Par::Seq)?;
//! acc.add_batch(&ActivationBatch::new(array![[1.0f32, 2.0], [3.0, 4.0]].view()))?;
//! let h = acc.finish()?; // one sequence: H = 2 · XᵀX
//! assert_eq!(h.matrix()[[0, 1]], 2.0 * (1.0 * 2.0 + 3.0 * 4.0));
//! # Ok::<(), gptq_core::GptqError>(())
//! ```

#![warn(missing_docs)]

pub mod attention;
pub mod bf16;
mod compute;
pub mod elementwise;
mod factor;
mod hessian;
pub mod int8;
mod loss;
mod matmul;
pub mod reference;
mod transpose;

pub use compute::{CpuCompute, ProductPrecision, fastest_hessian};
pub use factor::{InverseFactor, damped_inverse_factor};
pub use faer::Par;
pub use hessian::{CpuHessianAccumulator, Hessian};
pub use loss::quadratic_loss;
pub use matmul::{sub_product, x_wt};
