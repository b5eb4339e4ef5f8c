//! `config.json` as it is written, field by field, through `serde`'s derive: every field this
//! crate reads, with its JSON type. A missing or null field is `None`; a field of the wrong
//! type is a [`ModelError::ConfigField`] that names it (its path, e.g. `rope_scaling.factor`).
//! What the values mean, their defaults and the checks across fields are
//! [`ModelConfig`](crate::ModelConfig)'s. A leaf module, shared by the configuration, the
//! rotary settings and the GPTQ `quantization_config`.

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::error::{ModelError, Result};

/// The fields of `config.json` that this crate reads.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RawConfig {
    pub model_type: Option<String>,
    pub hidden_size: Option<Size>,
    pub intermediate_size: Option<Size>,
    pub num_hidden_layers: Option<Size>,
    pub num_attention_heads: Option<Size>,
    pub num_key_value_heads: Option<Size>,
    pub head_dim: Option<Size>,
    pub vocab_size: Option<Size>,
    pub rms_norm_eps: Option<f64>,
    pub rope_theta: Option<f64>,
    pub rope_scaling: Option<RawRope>,
    pub rope_parameters: Option<RawRope>,
    pub tie_word_embeddings: Option<bool>,
    pub attention_bias: Option<bool>,
    pub mlp_bias: Option<bool>,
    pub hidden_act: Option<String>,
    pub sliding_window: Option<u64>,
    pub use_sliding_window: Option<bool>,
    pub layer_types: Option<Vec<String>>,
    pub no_rope_layers: Option<Vec<Flag>>,
    pub no_rope_layer_interval: Option<Size>,
    pub bos_token_id: Option<u32>,
    /// Only informs warnings, so a value of another type is ignored rather than refused.
    pub max_position_embeddings: Option<Value>,
}

/// A rotary setting (`rope_scaling`, or transformers 5's `rope_parameters`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RawRope {
    pub rope_type: Option<String>,
    /// The older spelling of `rope_type`.
    #[serde(rename = "type")]
    pub legacy_type: Option<String>,
    pub rope_theta: Option<f64>,
    pub factor: Option<f64>,
    pub low_freq_factor: Option<f64>,
    pub high_freq_factor: Option<f64>,
    pub original_max_position_embeddings: Option<f64>,
    /// Every other key (e.g. one setting per layer type).
    #[serde(flatten)]
    pub other: serde_json::Map<String, Value>,
}

/// The fields of a GPTQ `quantization_config` that this crate reads.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RawQuantization {
    pub quant_method: Option<String>,
    pub bits: Option<u8>,
    pub group_size: Option<i64>,
    pub desc_act: Option<bool>,
    pub sym: Option<bool>,
    pub checkpoint_format: Option<String>,
}

/// The largest layer dimension, head count or vocabulary accepted: far above any real model's
/// (vocabularies reach 2^18), and low enough that products of two sizes cannot overflow.
pub(crate) const MAX_SIZE: usize = 1 << 24;

/// A model dimension: a non-negative integer no larger than [`MAX_SIZE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Size(pub usize);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let value = u64::deserialize(deserializer)?;
        match usize::try_from(value) {
            Ok(size) if size <= MAX_SIZE => Ok(Size(size)),
            _ => Err(D::Error::custom(format_args!(
                "value {value}, larger than any model's ({MAX_SIZE} at most)"
            ))),
        }
    }
}

/// A flag written as `0`/`1` or `false`/`true` (SmolLM3's `no_rope_layers`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Flag(pub bool);

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        match Value::deserialize(deserializer)? {
            Value::Bool(b) => Ok(Flag(b)),
            Value::Number(n) if n.as_u64() == Some(0) => Ok(Flag(false)),
            Value::Number(n) if n.as_u64() == Some(1) => Ok(Flag(true)),
            other => Err(D::Error::custom(format_args!(
                "a flag that holds {other}, expected 0 (no rotary) or 1 (rotary)"
            ))),
        }
    }
}

/// `value` read as `T`; a field of the wrong type is named by its path under `prefix` (empty
/// at the top level of config.json).
pub(crate) fn read<T: DeserializeOwned>(value: &Value, prefix: &str) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = match (prefix, path.as_str()) {
            ("", ".") => "(top level)".to_string(),
            ("", path) => path.to_string(),
            (prefix, ".") => prefix.to_string(),
            (prefix, path) => format!("{prefix}.{path}"),
        };
        field_error(field, format!("has {}", e.into_inner()))
    })
}

/// A [`ModelError::ConfigField`].
pub(crate) fn field_error(field: impl Into<String>, reason: impl Into<String>) -> ModelError {
    ModelError::ConfigField {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A required size.
pub(crate) fn required(value: Option<Size>, field: &str) -> Result<usize> {
    value
        .map(|s| s.0)
        .ok_or_else(|| field_error(field, "is missing"))
}

/// A required size that must not be 0 (it divides or multiplies other sizes).
pub(crate) fn positive(value: Option<Size>, field: &str) -> Result<usize> {
    match required(value, field)? {
        0 => Err(field_error(field, "is 0")),
        v => Ok(v),
    }
}
