//! # gptq-pipeline
//!
//! A Hugging Face model directory in, a GPTQ checkpoint out:
//!
//! 1. [`CalibrationSource`]: token-id windows, random windows of a text, or a JSONL of texts.
//! 2. [`quantize_model`]: sequential layer-by-layer GPTQ on any
//!    [`Backend`](gptq_core::Backend), its forward passes on a `gptq_model::Compute` (any
//!    `gptq_core::ForwardCompute`), true-sequential by default, each linear computed once
//!    with the weights it will have; with [`PipelineOptions::resume_dir`] saved after each
//!    layer, so that a killed run goes on where it stopped.
//! 3. [`write_checkpoint`]: `model.safetensors` (sharded when large) with
//!    `qweight`/`qzeros`/`scales`/`g_idx` per linear and every other tensor copied unchanged,
//!    `config.json` with `quantization_config`, `quantize_config.json`, the tokenizer files —
//!    written beside the target and renamed into place.
//! 4. [`RunReport`]: per-module loss, damping and time, stage times, peak memory.
//!
//! Progress is reported through [`Progress`] events, drawn by the caller.
//!
//! # Example
//!
//! What `gptq quantize` and `gptq eval` do, as a library. A tiny random Llama written to a
//! temporary directory (`gptq_model::testing`) stands in for a Hugging Face model directory.
//!
//! ```
//! use gptq_core::{GroupSize, QuantConfig};
//! use gptq_model::testing::{TempDir, Tiny};
//! use gptq_model::{Checkpoint, Compute, PerplexityOptions, perplexity};
//! use gptq_pipeline::{PipelineOptions, Silent, WriteOptions, quantize_model, write_checkpoint};
//! use gptq_solver::CpuBackend;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let model_dir = Tiny::default().write(7);
//! let source = Checkpoint::open(model_dir.path())?;
//!
//! // Calibration token windows; `CalibrationSource::load` makes them from a text, a JSONL of
//! // texts or a token-id file.
//! let windows: Vec<Vec<u32>> = (0..16)
//!     .map(|s| (0..48).map(|t| (s * 13 + t * t) % 64).collect())
//!     .collect();
//! let config = QuantConfig::builder()
//!     .bits(4)
//!     .group_size(GroupSize::Columns(16))
//!     .symmetric(false)
//!     .build()?;
//! let options = PipelineOptions::new(config);
//! // The solver's backend, and where the calibration forward passes compute (f32 on the CPU;
//! // `Compute::cpu(ProductPrecision::Int8, par)` for the int8 kernels, a GPU's products...).
//! let backend = CpuBackend::with_threads(options.threads);
//! let compute = Compute::new(options.par());
//! let quantized = quantize_model(&source, &windows, &backend, compute, &options, &mut Silent)?;
//! assert_eq!(quantized.linears.len(), 2 * 7); // two layers of seven linears
//!
//! // A GPTQ checkpoint directory, renamed into place only once complete.
//! let out_root = TempDir::new("example");
//! let out = out_root.path().join("tiny-w4g16");
//! write_checkpoint(&source, &quantized, &options, &out, &WriteOptions::default())?;
//!
//! // Read back like any GPTQ checkpoint, and compare perplexities on held-out tokens.
//! let text: Vec<u32> = (0..256).map(|t| (t * 7 + t * t / 3) % 64).collect();
//! let eval = PerplexityOptions::new(64);
//! let before = perplexity(&source.load_model()?, &text, &eval, |_, _| {})?;
//! let after = perplexity(&Checkpoint::open(&out)?.load_model()?, &text, &eval, |_, _| {})?;
//! assert!(after.perplexity.is_finite() && after.windows == 4);
//! println!("perplexity {:.2} -> {:.2}", before.perplexity, after.perplexity);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod calibration;
mod error;
mod memory;
mod options;
mod progress;
mod quantize;
mod quantized;
mod report;
mod resume;
mod writer;

pub use calibration::CalibrationSource;
pub use error::{PipelineError, Result};
pub use memory::{MemoryEstimate, SystemMemory};
pub use options::PipelineOptions;
pub use progress::{Event, Progress, Silent};
pub use quantize::{check_model, quantize_model, run_name};
pub use quantized::{QuantizedLinear, QuantizedModel, Resumed};
pub use report::{ModuleReport, RunReport, StageTimes, Totals, peak_memory_bytes};
pub use resume::{
    ResumeLock, default_resume_dir, holds_saved_run, remove_saved_run, saved_run_bytes,
    saved_run_size,
};
pub use writer::{
    OutputReservation, TOOL, WriteOptions, check_free_space, check_output, checkpoint_bytes,
    clean_interrupted_runs, quantization_config, write_checkpoint,
};
