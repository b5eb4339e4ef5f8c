//! # gptq-pipeline
//!
//! A Hugging Face model directory in, a GPTQ checkpoint out:
//!
//! 1. [`CalibrationSource`]: token-id windows, random windows of a text, or a JSONL of texts.
//! 2. [`quantize_model`]: sequential layer-by-layer GPTQ on any
//!    [`Backend`](gptq_core::Backend), true-sequential by default, each linear computed once
//!    with the weights it will have.
//! 3. [`write_checkpoint`]: `model.safetensors` (sharded when large) with
//!    `qweight`/`qzeros`/`scales`/`g_idx` per linear and every other tensor copied unchanged,
//!    `config.json` with `quantization_config`, `quantize_config.json`, the tokenizer files —
//!    written beside the target and renamed into place.
//! 4. [`RunReport`]: per-module loss, damping and time, stage times, peak memory.
//!
//! Progress is reported through [`Progress`] events, drawn by the caller.

#![warn(missing_docs)]

mod calibration;
mod error;
mod options;
mod progress;
mod quantize;
mod report;
mod writer;

pub use calibration::CalibrationSource;
pub use error::{PipelineError, Result};
pub use options::PipelineOptions;
pub use progress::{Event, Progress, Silent};
pub use quantize::{QuantizedLinear, QuantizedModel, check_model, quantize_model};
pub use report::{ModuleReport, RunReport, StageTimes, Totals, peak_memory_bytes};
pub use writer::{TOOL, WriteOptions, check_output, quantization_config, write_checkpoint};
