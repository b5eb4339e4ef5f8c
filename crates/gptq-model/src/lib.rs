//! # gptq-model
//!
//! Llama-family Hugging Face checkpoints (llama, mistral, qwen2, qwen3, smollm3) for gptq-rs, and
//! their forward pass:
//!
//! - [`Checkpoint`]: `config.json` parsed into [`ModelConfig`], `model.safetensors` (or its
//!   shards) memory-mapped; [`Checkpoint::load_layer`] converts one [`DecoderLayer`] to f32 at a
//!   time, [`Checkpoint::load_model`] the whole [`Model`].
//! - [`Tokenizer`]: `tokenizer.json` through the `tokenizers` crate.
//! - The decoder forward pass in the stages GPTQ needs ([`LayerStage`], [`finish_layer`],
//!   [`rms_norm`], [`attention_core`], [`mlp_inner`], [`forward_layer`],
//!   [`forward_layer_observed`]), on batches of sequences laid end to end, every product on a
//!   [`Compute`]'s `gptq_core::ForwardCompute` (the CPU's f32, bf16 or int8 products of
//!   `gptq_linalg::CpuCompute`, a GPU's, a test's).
//! - [`perplexity`] by the GPTQ paper's protocol, and calibration loaders ([`calib`]).
//!
//! Examples: `examples/perplexity.rs` (WikiText-2 perplexity of a checkpoint) and
//! `examples/layer_bench.rs` (layer-forward GFLOP/s against faer's plain GEMM).
//!
//! Parallelism is the caller's choice: every compute function takes a [`faer::Par`] (the forward
//! stages take anything that converts into a [`Compute`]: a plain `Par` is f32 on the CPU).
//! `Par::Seq` runs on the calling thread. `Par::rayon(n)` splits each GEMM into `n` tasks and
//! spreads attention heads and element-wise work over the *current* rayon pool, so to use
//! exactly `n` threads, run inside a `rayon::ThreadPool` of `n` threads
//! (`pool.install(|| ...)`); `Par::rayon(0)` means "as many as the pool has".

#![warn(missing_docs)]

// Safetensors data is little-endian and is read by copying its bytes (`weights::le_values`).
#[cfg(target_endian = "big")]
compile_error!(
    "gptq-model reads little-endian safetensors data as it is: big-endian targets are not supported"
);

pub mod calib;
mod compute;
mod config;
mod config_json;
mod error;
mod eval;
mod forward;
pub mod gptq;
mod layer;
mod linear;
mod model;
mod ops;
mod pool;
mod rope;
pub mod synthetic;
#[cfg(feature = "testing")]
pub mod testing;
mod tokenizer;
pub mod weights;

pub use compute::Compute;
pub use config::{Architecture, LayerShape, ModelConfig};
pub use error::{ModelError, Result};
pub use eval::{PerplexityOptions, PerplexityReport, eval_windows, perplexity};
pub use forward::{
    LayerStage, LinearInput, attention_core, finish_layer, forward_layer, forward_layer_observed,
    mlp_inner,
};
pub use gptq::GptqQuantization;
pub use gptq_linalg::ProductPrecision;
pub use gptq_linalg::elementwise::exp_f32;
pub use layer::{DecoderLayer, HeadNorms, LinearId};
pub use linear::Linear;
pub use model::{Checkpoint, EMBED_TOKENS, FINAL_NORM, LM_HEAD, Model, NllSum, embed};
pub use ops::{rms_norm, rms_norm_par};
pub use pool::{DEFAULT_BUFFER_POOL_BYTES, recycle_buffer, set_buffer_pool_limit};
pub use rope::{RopeScaling, RopeTable};
pub use tokenizer::Tokenizer;
pub use weights::WeightStore;

/// Re-exported so that callers name the same versions.
pub use faer::Par;
pub use ndarray;
