//! The run report (`--report FILE.json`).

use serde::{Deserialize, Serialize};

/// One quantized linear.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModuleReport {
    /// Decoder layer.
    pub layer: usize,
    /// Module path inside the layer, e.g. `self_attn.q_proj`.
    pub module: String,
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub columns: usize,
    /// `tr((W - Q) H (W - Q)ᵀ)`.
    pub loss: Option<f64>,
    /// Damping used, as a fraction of the mean Hessian diagonal.
    pub damp_percent: f64,
    /// Input columns that no calibration token reached.
    pub dead_columns: usize,
    /// Solve time (inverse factor, column loop, block updates, loss).
    pub seconds: f64,
}

/// Where the time of a run went, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct StageTimes {
    /// Loading the calibration data.
    pub calibration_load: f64,
    /// Forward passes of the calibration data through the layers (embedding included).
    pub calibration_forward: f64,
    /// Hessian accumulation.
    pub hessian: f64,
    /// The GPTQ solves.
    pub solve: f64,
    /// Packing into the checkpoint layout.
    pub pack: f64,
    /// Writing the output directory, and the run's state after each layer when it is saved
    /// for resuming ([`PipelineOptions::resume_dir`](crate::PipelineOptions::resume_dir)).
    pub write: f64,
}

impl StageTimes {
    /// The sum of every stage.
    pub fn total(&self) -> f64 {
        self.calibration_load
            + self.calibration_forward
            + self.hessian
            + self.solve
            + self.pack
            + self.write
    }
}

/// Totals of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Totals {
    /// Linears quantized.
    pub modules: usize,
    /// Sum of the module losses.
    pub loss: f64,
    /// Wall time of the whole run.
    pub seconds: f64,
    /// Where the time went.
    pub stages: StageTimes,
    /// Wall time of each decoder layer quantized by this run, in order.
    pub layer_seconds: Vec<f64>,
    /// Peak resident memory of the process (Linux `VmHWM`, which also counts the pages of the
    /// memory-mapped model that were read), if known.
    pub peak_memory_bytes: Option<u64>,
    /// What the run was predicted to need before it started (the mapped model not counted).
    pub predicted_memory: Option<crate::MemoryEstimate>,
}

/// The report of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunReport {
    /// Name and version of the tool.
    pub tool: String,
    /// Source model directory.
    pub model: String,
    /// Output directory.
    pub output: String,
    /// The `quantization_config` written.
    pub quantization: serde_json::Value,
    /// Calibration sequences.
    pub samples: usize,
    /// Calibration tokens.
    pub tokens: usize,
    /// Backend that solved.
    pub backend: String,
    /// Precision of the calibration forward passes' products (`f32`, `bf16` or `int8`).
    pub products: String,
    /// Precision of the Hessian sums (`f32`, `f64` or `bf16`).
    pub hessian: String,
    /// Per module.
    pub modules: Vec<ModuleReport>,
    /// Totals.
    pub totals: Totals,
    /// Warnings raised during the run.
    pub warnings: Vec<String>,
}

/// Peak resident memory of this process, from `/proc/self/status` (`None` off Linux).
pub fn peak_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
