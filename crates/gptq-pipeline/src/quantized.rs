//! The plain data a run produces and saves: packed linears, the quantized model, calibration
//! batches. A leaf of the crate: the quantizer, the resume state and the writer all use it, and
//! it uses none of them.

use gptq_model::LinearId;
use gptq_quant::{CheckpointFormat, PackedTensor};
use ndarray::Array2;

use crate::report::{ModuleReport, StageTimes};

/// One packed linear of the quantized model.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedLinear {
    /// Decoder layer.
    pub layer: usize,
    /// Which linear.
    pub id: LinearId,
    /// The checkpoint tensors.
    pub packed: PackedTensor,
}

impl QuantizedLinear {
    /// The tensor-name prefix, e.g. `model.layers.3.mlp.up_proj`.
    pub fn prefix(&self) -> String {
        self.id.tensor_prefix(self.layer)
    }
}

/// The result of [`quantize_model`](crate::quantize_model).
#[derive(Debug, Clone)]
pub struct QuantizedModel {
    /// Every quantized linear, in layer and forward order.
    pub linears: Vec<QuantizedLinear>,
    /// Per-module reports, in the same order.
    pub modules: Vec<ModuleReport>,
    /// Where the time went (writing not included), in this run and, when it resumed one,
    /// in the interrupted runs before it ([`QuantizedModel::resumed`]).
    pub times: StageTimes,
    /// What an interrupted run had done when this one resumed it, if it did.
    pub resumed: Option<Resumed>,
    /// Wall time of each decoder layer this run quantized (a resumed run's first layers are
    /// the interrupted runs'), loading its weights and saving the run state included.
    pub layer_seconds: Vec<f64>,
    /// The format the tensors are packed in.
    pub format: CheckpointFormat,
    /// Warnings raised.
    pub warnings: Vec<String>,
    /// Calibration tokens.
    pub tokens: usize,
}

/// The part of a resumed run that interrupted runs did before.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resumed {
    /// Layers they finished.
    pub layers: usize,
    /// Their times, included in [`QuantizedModel::times`].
    pub times: StageTimes,
}

/// A batch of calibration sequences laid end to end: `[tokens, hidden]`.
#[derive(Debug, Clone)]
pub(crate) struct Batch {
    pub(crate) hidden: Array2<f32>,
    pub(crate) lens: Vec<usize>,
}
