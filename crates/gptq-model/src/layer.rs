//! One Llama decoder layer's weights and the names of its linear layers.

use ndarray::Array1;

use crate::config::LayerShape;
use crate::error::{ModelError, Result};
use crate::linear::Linear;

/// The seven linear layers of a decoder layer, in the order the GPTQ pipeline quantizes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LinearId {
    /// `self_attn.q_proj`.
    Q,
    /// `self_attn.k_proj`.
    K,
    /// `self_attn.v_proj`.
    V,
    /// `self_attn.o_proj`.
    O,
    /// `mlp.gate_proj`.
    Gate,
    /// `mlp.up_proj`.
    Up,
    /// `mlp.down_proj`.
    Down,
}

impl LinearId {
    /// All seven, in forward order.
    pub const ALL: [LinearId; 7] = [
        Self::Q,
        Self::K,
        Self::V,
        Self::O,
        Self::Gate,
        Self::Up,
        Self::Down,
    ];

    /// The Hugging Face module path inside a decoder layer, e.g. `self_attn.q_proj`.
    pub fn hf_name(self) -> &'static str {
        match self {
            Self::Q => "self_attn.q_proj",
            Self::K => "self_attn.k_proj",
            Self::V => "self_attn.v_proj",
            Self::O => "self_attn.o_proj",
            Self::Gate => "mlp.gate_proj",
            Self::Up => "mlp.up_proj",
            Self::Down => "mlp.down_proj",
        }
    }

    /// The inverse of [`hf_name`](Self::hf_name).
    pub fn from_hf_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|id| id.hf_name() == name)
    }

    /// The full tensor-name prefix in layer `layer`, e.g. `model.layers.3.mlp.up_proj`;
    /// append `.weight` or `.bias`.
    pub fn tensor_prefix(self, layer: usize) -> String {
        format!("model.layers.{layer}.{}", self.hf_name())
    }

    /// `(out_features, in_features)` of this linear in a layer of the given shape.
    pub fn dims(self, s: &LayerShape) -> (usize, usize) {
        match self {
            Self::Q => (s.q_width(), s.hidden_size),
            Self::K | Self::V => (s.kv_width(), s.hidden_size),
            Self::O => (s.hidden_size, s.q_width()),
            Self::Gate | Self::Up => (s.intermediate_size, s.hidden_size),
            Self::Down => (s.hidden_size, s.intermediate_size),
        }
    }

    /// The linears that read the same input as this one (q/k/v share one, gate/up another):
    /// their Hessians are equal, so the pipeline can compute one.
    pub fn input_group(self) -> &'static [LinearId] {
        match self {
            Self::Q | Self::K | Self::V => &[Self::Q, Self::K, Self::V],
            Self::O => &[Self::O],
            Self::Gate | Self::Up => &[Self::Gate, Self::Up],
            Self::Down => &[Self::Down],
        }
    }
}

impl std::fmt::Display for LinearId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.hf_name())
    }
}

/// Qwen3's RMSNorm weights for each query and key head, applied to every head (all with the
/// same weight) after the projection and before the rotary embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadNorms {
    /// `self_attn.q_norm`, `[head_dim]`.
    pub q: Array1<f32>,
    /// `self_attn.k_norm`, `[head_dim]`.
    pub k: Array1<f32>,
}

impl HeadNorms {
    /// The module paths of the query and key norms inside a decoder layer; append `.weight`.
    pub const NAMES: [&'static str; 2] = ["self_attn.q_norm", "self_attn.k_norm"];

    /// `(name, weight)` of the query norm, then the key norm.
    pub fn named(&self) -> [(&'static str, &Array1<f32>); 2] {
        let [q, k] = Self::NAMES;
        [(q, &self.q), (k, &self.k)]
    }
}

/// The weights of one decoder layer, owned in f32.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderLayer {
    /// Position in the model (0-based), for naming tensors.
    pub index: usize,
    /// Dimensions and constants.
    pub shape: LayerShape,
    /// RMSNorm weight before attention, `[hidden]`.
    pub input_layernorm: Array1<f32>,
    /// Query projection `[heads·head_dim, hidden]`.
    pub q_proj: Linear,
    /// Key projection `[kv_heads·head_dim, hidden]`.
    pub k_proj: Linear,
    /// Value projection `[kv_heads·head_dim, hidden]`.
    pub v_proj: Linear,
    /// Per-head query and key RMSNorms (Qwen3); `None` for the other architectures.
    pub head_norms: Option<HeadNorms>,
    /// Attention output projection `[hidden, heads·head_dim]`.
    pub o_proj: Linear,
    /// RMSNorm weight before the MLP, `[hidden]`.
    pub post_attention_layernorm: Array1<f32>,
    /// MLP gate `[intermediate, hidden]`.
    pub gate_proj: Linear,
    /// MLP up `[intermediate, hidden]`.
    pub up_proj: Linear,
    /// MLP down `[hidden, intermediate]`.
    pub down_proj: Linear,
}

impl DecoderLayer {
    /// The linear named by `id`.
    pub fn linear(&self, id: LinearId) -> &Linear {
        match id {
            LinearId::Q => &self.q_proj,
            LinearId::K => &self.k_proj,
            LinearId::V => &self.v_proj,
            LinearId::O => &self.o_proj,
            LinearId::Gate => &self.gate_proj,
            LinearId::Up => &self.up_proj,
            LinearId::Down => &self.down_proj,
        }
    }

    /// The linear named by `id`, mutably (to swap in quantized weights).
    pub fn linear_mut(&mut self, id: LinearId) -> &mut Linear {
        match id {
            LinearId::Q => &mut self.q_proj,
            LinearId::K => &mut self.k_proj,
            LinearId::V => &mut self.v_proj,
            LinearId::O => &mut self.o_proj,
            LinearId::Gate => &mut self.gate_proj,
            LinearId::Up => &mut self.up_proj,
            LinearId::Down => &mut self.down_proj,
        }
    }

    /// Checks that every weight has the shape `shape` implies; a layer assembled by hand
    /// (or edited) fails here rather than deep inside a product.
    pub fn validate(&self) -> Result<()> {
        let h = self.shape.hidden_size;
        let d = self.shape.head_dim;
        let head_norms = self
            .head_norms
            .iter()
            .flat_map(|n| n.named().map(|(name, w)| (name, w, d)));
        for (what, v, len) in [
            ("input_layernorm", &self.input_layernorm, h),
            (
                "post_attention_layernorm",
                &self.post_attention_layernorm,
                h,
            ),
        ]
        .into_iter()
        .chain(head_norms)
        {
            if v.len() != len {
                return Err(ModelError::shape(
                    what,
                    format!("[{len}]"),
                    format!("[{}]", v.len()),
                ));
            }
        }
        for id in LinearId::ALL {
            let lin = self.linear(id);
            let (o, i) = id.dims(&self.shape);
            if lin.weight.dim() != (o, i) {
                return Err(ModelError::TensorShape {
                    name: format!("{}.weight", id.tensor_prefix(self.index)),
                    expected: vec![o, i],
                    actual: lin.weight.shape().to_vec(),
                });
            }
            if let Some(b) = &lin.bias
                && b.len() != o
            {
                return Err(ModelError::TensorShape {
                    name: format!("{}.bias", id.tensor_prefix(self.index)),
                    expected: vec![o],
                    actual: vec![b.len()],
                });
            }
        }
        let s = &self.shape;
        if s.num_kv_heads == 0
            || !s.num_heads.is_multiple_of(s.num_kv_heads)
            || !s.head_dim.is_multiple_of(2)
        {
            return Err(ModelError::InvalidArgument(format!(
                "layer shape with {} heads, {} kv heads, head_dim {}: kv heads must divide \
                 heads and head_dim must be even",
                s.num_heads, s.num_kv_heads, s.head_dim
            )));
        }
        Ok(())
    }
}
