//! What a pipeline run produces and how it runs.

use faer::Par;
use gptq_core::QuantConfig;
use gptq_model::{LayerShape, LinearId};
use gptq_quant::{CheckpointFormat, MinMaxGrid, packed_bytes};

use crate::error::{PipelineError, Result};
use gptq_solver::SolveOptions;

/// Options of a quantization run.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Bits, groups, symmetry, act-order, damping...
    pub config: QuantConfig,
    /// Parity with the reference, range search, damping retries.
    pub solve: SolveOptions,
    /// Quantize q/k/v, then o, then gate/up, then down, each group seeing the already quantized
    /// ones before it (the default); otherwise every linear of a layer sees the full-precision
    /// layer's inputs.
    pub true_sequential: bool,
    /// The checkpoint format; `None` picks "gptq" (v1) for symmetric grids and "gptq_v2" for
    /// asymmetric ones, whose zero points v1 cannot always store.
    pub format: Option<CheckpointFormat>,
    /// Calibration sequences run through the model together (one GEMM per linear).
    pub batch_sequences: usize,
    /// Threads for the forward passes (the backend has its own setting).
    pub threads: usize,
    /// Where to save the run after each decoder layer, and to resume it from: a run that
    /// finds there the state of an interrupted run with the same model, calibration tokens,
    /// settings and backend continues after its last saved layer, with the same result as an
    /// uninterrupted run. The caller removes the state once the checkpoint is written
    /// ([`remove_saved_run`](crate::remove_saved_run)). A state of another run found there is
    /// removed (its files only, never anything else in the directory). `None` (the default)
    /// saves nothing.
    pub resume_dir: Option<std::path::PathBuf>,
}

impl PipelineOptions {
    /// True-sequential, default solver options, format by symmetry, 8 sequences per batch, all
    /// cores, nothing saved for resuming.
    pub fn new(config: QuantConfig) -> Self {
        PipelineOptions {
            config,
            solve: SolveOptions::default(),
            true_sequential: true,
            format: None,
            batch_sequences: 8,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            resume_dir: None,
        }
    }

    /// The checkpoint bytes of linear `id` of decoder layer `layer` (of shape `shape`) once
    /// quantized with these options: its four packed tensors, headers not included.
    pub(crate) fn packed_linear_bytes(
        &self,
        id: LinearId,
        shape: &LayerShape,
        layer: usize,
    ) -> Result<u64> {
        let (rows, columns) = id.dims(shape);
        let groups = self.config.group_size().groups(columns);
        packed_bytes(self.config.bits(), rows, columns, groups)
            .map_err(PipelineError::quantization(id.tensor_prefix(layer)))
    }

    /// The checkpoint format in effect.
    pub fn checkpoint_format(&self) -> CheckpointFormat {
        self.format.unwrap_or(if self.config.symmetric() {
            CheckpointFormat::Gptq
        } else {
            CheckpointFormat::GptqV2
        })
    }

    /// Whether asymmetric zero points must be raised to at least 1 (v1 stores `zero - 1`).
    pub fn raises_zero_points(&self) -> bool {
        !self.config.symmetric() && self.checkpoint_format() == CheckpointFormat::Gptq
    }

    /// The grid: the configuration's min–max grid, with zero points of at least 1 where the
    /// format needs them.
    pub fn grid(&self) -> MinMaxGrid {
        MinMaxGrid::from_config(&self.config).with_min_zero(u16::from(self.raises_zero_points()))
    }

    /// Parallelism of the forward passes.
    pub fn par(&self) -> Par {
        if self.threads <= 1 {
            Par::Seq
        } else {
            Par::rayon(self.threads)
        }
    }
}
