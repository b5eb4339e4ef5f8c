//! `config.json` of a Llama-family Hugging Face checkpoint.

use std::path::Path;

use serde_json::Value;

use crate::config_json::{RawConfig, field_error, positive, read, required};
use crate::error::{ModelError, Result};
use crate::rope::RopeScaling;

/// The Llama-family architectures this crate runs. They share one decoder layout and differ
/// only in defaults (Qwen2 always has q/k/v biases), in Qwen3's RMSNorm of each query and key
/// head, and in SmolLM3's layers without rotary embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Architecture {
    /// `model_type: "llama"` (Llama 1/2, SmolLM, TinyLlama, ...).
    Llama,
    /// `model_type: "mistral"`.
    Mistral,
    /// `model_type: "qwen2"` (also Qwen2.5).
    Qwen2,
    /// `model_type: "qwen3"` (dense Qwen3; not the mixture-of-experts `qwen3_moe`).
    Qwen3,
    /// `model_type: "smollm3"`: Llama with no rotary embedding in some layers
    /// (`no_rope_layers`).
    SmolLm3,
}

impl Architecture {
    /// The `model_type` string of `config.json`.
    pub fn model_type(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Mistral => "mistral",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
            Self::SmolLm3 => "smollm3",
        }
    }

    /// The rotary base transformers uses when config.json gives none.
    fn default_rope_theta(self) -> f64 {
        match self {
            Self::SmolLm3 => 2e6,
            _ => 1e4,
        }
    }

    /// The model class transformers and vLLM load for this architecture (`architectures`).
    pub fn model_class(self) -> &'static str {
        match self {
            Self::Llama => "LlamaForCausalLM",
            Self::Mistral => "MistralForCausalLM",
            Self::Qwen2 => "Qwen2ForCausalLM",
            Self::Qwen3 => "Qwen3ForCausalLM",
            Self::SmolLm3 => "SmolLM3ForCausalLM",
        }
    }

    /// Whether each query and key head goes through its own RMSNorm (`self_attn.q_norm`,
    /// `self_attn.k_norm`, `[head_dim]`) before the rotary embedding: Qwen3's attention.
    pub fn normalizes_heads(self) -> bool {
        self == Self::Qwen3
    }
}

/// The parsed `config.json`, with Hugging Face defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Which architecture `model_type` names.
    pub architecture: Architecture,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP's inner layer.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (grouped-query attention when fewer than query heads).
    pub num_key_value_heads: usize,
    /// Width of one head (`hidden_size / num_attention_heads` unless given).
    pub head_dim: usize,
    /// Epsilon of every RMSNorm.
    pub rms_norm_eps: f32,
    /// Base of the rotary position embedding frequencies.
    pub rope_theta: f64,
    /// How the rotary frequencies are rescaled (`rope_scaling`, or transformers 5's
    /// `rope_parameters`).
    pub rope_scaling: RopeScaling,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Whether `lm_head` reuses `embed_tokens`.
    pub tie_word_embeddings: bool,
    /// Whether q/k/v/o projections have biases (q/k/v only for Qwen2, which always has them).
    pub attention_bias: bool,
    /// Whether the MLP projections have biases.
    pub mlp_bias: bool,
    /// Mistral's sliding attention window, if any: a query attends to at most this many
    /// keys ending at itself.
    pub sliding_window: Option<usize>,
    /// Which layers apply the rotary embedding (SmolLM3's `no_rope_layers`); `None` when
    /// every layer does.
    pub rotary_layers: Option<Vec<bool>>,
    /// `bos_token_id`, if given.
    pub bos_token_id: Option<u32>,
    /// The longest sequence the model was trained for, if the config gives it: windows past it
    /// run, but their predictions mean little.
    pub max_position_embeddings: Option<usize>,
    /// The GPTQ `quantization_config`, for checkpoints that are already quantized (from
    /// `quantize_config.json` where config.json has none, as older AutoGPTQ checkpoints).
    pub quantization: Option<crate::GptqQuantization>,
    /// What a user should hear about the configuration files (e.g. a quantize_config.json
    /// that disagrees with config.json).
    pub warnings: Vec<String>,
    /// The whole `config.json`, kept so that writers can add fields such as
    /// `quantization_config` without losing the ones this struct does not model.
    pub raw: Value,
}

impl ModelConfig {
    /// Reads `DIR/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        if !path.is_file() {
            return Err(ModelError::ConfigNotFound {
                dir: dir.to_path_buf(),
            });
        }
        let mut config = Self::from_json(read_json(&path)?)?;
        // Older AutoGPTQ checkpoints keep the GPTQ settings only in quantize_config.json, as
        // the peers' loaders still read them.
        let legacy = dir.join("quantize_config.json");
        if legacy.is_file() {
            let settings = read_json(&legacy)?;
            let wrapped = serde_json::json!({ "quantization_config": settings });
            let from_legacy = crate::GptqQuantization::from_config(&wrapped)?;
            match (&config.quantization, from_legacy) {
                (None, legacy) => config.quantization = legacy,
                (Some(main), Some(legacy)) if *main != legacy => config.warnings.push(format!(
                    "quantize_config.json disagrees with config.json's quantization_config \
                     ({} there, {} here): config.json's is used, as loaders do",
                    legacy.summary(),
                    main.summary()
                )),
                _ => {}
            }
        }
        Ok(config)
    }

    /// Parses a `config.json` value.
    pub fn from_json(raw: Value) -> Result<Self> {
        // serde would also read a struct from a JSON array, field by field.
        if !raw.is_object() {
            return Err(field_error("(top level)", "must be a JSON object"));
        }
        let fields: RawConfig = read(&raw, "")?;
        let model_type = fields.model_type.as_deref().ok_or_else(|| {
            field_error(
                "model_type",
                "is missing: it must name the architecture (llama, mistral, qwen2, qwen3, \
                 smollm3)",
            )
        })?;
        let architecture = match model_type {
            "llama" => Architecture::Llama,
            "mistral" => Architecture::Mistral,
            "qwen2" => Architecture::Qwen2,
            "qwen3" => Architecture::Qwen3,
            "smollm3" => Architecture::SmolLm3,
            other => {
                return Err(ModelError::UnsupportedArchitecture {
                    model_type: other.to_string(),
                });
            }
        };

        let hidden_size = positive(fields.hidden_size, "hidden_size")?;
        let intermediate_size = positive(fields.intermediate_size, "intermediate_size")?;
        let num_hidden_layers = required(fields.num_hidden_layers, "num_hidden_layers")?;
        let num_attention_heads = positive(fields.num_attention_heads, "num_attention_heads")?;
        let num_key_value_heads = fields
            .num_key_value_heads
            .map_or(num_attention_heads, |s| s.0);
        let head_dim = match fields.head_dim {
            Some(d) => d.0,
            // transformers' Qwen3Config defaults to 128, whatever the other sizes.
            None if architecture == Architecture::Qwen3 => 128,
            None => {
                if hidden_size % num_attention_heads != 0 {
                    return Err(field_error(
                        "head_dim",
                        format!(
                            "is missing and hidden_size {hidden_size} is not a multiple of \
                             num_attention_heads {num_attention_heads}: add head_dim"
                        ),
                    ));
                }
                hidden_size / num_attention_heads
            }
        };
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(field_error(
                "num_key_value_heads",
                format!(
                    "is {num_key_value_heads}, which does not divide num_attention_heads \
                     {num_attention_heads}"
                ),
            ));
        }
        if head_dim == 0 {
            return Err(field_error("head_dim", "is 0"));
        }
        if head_dim % 2 != 0 {
            return Err(field_error(
                "head_dim",
                format!("is {head_dim}: rotary embeddings need an even head width"),
            ));
        }
        let rms_norm_eps = fields.rms_norm_eps.unwrap_or(1e-6) as f32;
        let (rope_theta, rope_scaling) =
            crate::rope::rotary_settings(&raw, &fields, architecture.default_rope_theta())?;
        let vocab_size = positive(fields.vocab_size, "vocab_size")?;
        let tie_word_embeddings = fields
            .tie_word_embeddings
            .unwrap_or(architecture == Architecture::SmolLm3);
        // Qwen2's attention has q/k/v biases unconditionally; its config has no field for it.
        let attention_bias = fields
            .attention_bias
            .unwrap_or(architecture == Architecture::Qwen2);
        let mlp_bias = fields.mlp_bias.unwrap_or(false);

        // Refuse what would silently compute something else than transformers does.
        if let Some(act) = fields.hidden_act.as_deref()
            && act != "silu"
        {
            return Err(ModelError::UnsupportedFeature(format!(
                "hidden_act `{act}`: only silu is implemented"
            )));
        }
        let sliding_window = match architecture {
            Architecture::Mistral => fields.sliding_window.map(|w| w as usize),
            Architecture::Qwen2 | Architecture::Qwen3 | Architecture::SmolLm3 => {
                if fields.use_sliding_window.unwrap_or(false) {
                    return Err(ModelError::UnsupportedFeature(format!(
                        "{model_type} with use_sliding_window true: only full attention is \
                         implemented"
                    )));
                }
                None
            }
            Architecture::Llama => None,
        };
        let rotary_layers = match architecture {
            Architecture::SmolLm3 => Some(smollm3_rotary_layers(&fields, num_hidden_layers)?),
            _ => None,
        };
        // transformers 5 lists each layer's attention kind; one kind for all layers is what
        // is implemented.
        if let Some(kinds) = &fields.layer_types {
            let expected = match sliding_window {
                Some(_) => "sliding_attention",
                None => "full_attention",
            };
            if let Some(other) = kinds.iter().find(|k| *k != expected) {
                return Err(ModelError::UnsupportedFeature(format!(
                    "layer_types holds \"{other}\", but every layer of this {model_type} model \
                     computes {expected}: attention that differs by layer is not implemented"
                )));
            }
        }
        // It would make every activation NaN: RMSNorm takes the root of mean + eps. (A bad
        // rotary base, for the same reason, is refused with the rest of the rotary settings.)
        if !(rms_norm_eps.is_finite() && rms_norm_eps >= 0.0) {
            return Err(field_error(
                "rms_norm_eps",
                format!("is {rms_norm_eps}: it must be finite and not negative"),
            ));
        }
        let max_position_embeddings = fields
            .max_position_embeddings
            .as_ref()
            .and_then(Value::as_u64)
            .map(|n| n as usize);

        Ok(Self {
            architecture,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps,
            rope_theta,
            rope_scaling,
            vocab_size,
            tie_word_embeddings,
            attention_bias,
            mlp_bias,
            sliding_window,
            rotary_layers,
            bos_token_id: fields.bos_token_id,
            max_position_embeddings,
            quantization: crate::GptqQuantization::from_config(&raw)?,
            warnings: Vec::new(),
            raw,
        })
    }

    /// A warning when `architectures` names another model class than `model_type` implies:
    /// servers choose the class by `architectures`, and a checkpoint copies it.
    pub fn architectures_warning(&self) -> Option<String> {
        let classes = self.raw.get("architectures")?;
        let expected = self.architecture.model_class();
        let matches = classes
            .as_array()
            .is_some_and(|a| a.iter().all(|c| c.as_str() == Some(expected)));
        (!matches).then(|| {
            format!(
                "config.json's architectures {classes} does not match model_type {}: servers \
                 load the class architectures names, so the checkpoint may be loaded as another \
                 model (expected [\"{expected}\"])",
                self.architecture.model_type()
            )
        })
    }

    /// A warning when sequences of `tokens` tokens are longer than the model was trained for.
    pub fn context_warning(&self, tokens: usize) -> Option<String> {
        let limit = self.max_position_embeddings?;
        (tokens > limit).then(|| {
            format!(
                "sequences of {tokens} tokens are longer than this model's \
                 max_position_embeddings {limit}: positions past it were never trained, so \
                 results there mean little; use a shorter --seqlen"
            )
        })
    }

    /// The dimensions and constants of decoder layer `layer` (all layers have the same
    /// dimensions; SmolLM3's differ in [`LayerShape::rotary`]).
    pub fn layer_shape(&self, layer: usize) -> LayerShape {
        LayerShape {
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_heads: self.num_attention_heads,
            num_kv_heads: self.num_key_value_heads,
            head_dim: self.head_dim,
            rms_norm_eps: self.rms_norm_eps,
            rope_theta: self.rope_theta,
            rope_scaling: self.rope_scaling,
            sliding_window: self.sliding_window,
            rotary: self.is_rotary(layer),
        }
    }

    /// Whether decoder layer `layer` applies the rotary embedding to queries and keys.
    pub fn is_rotary(&self, layer: usize) -> bool {
        self.rotary_layers
            .as_ref()
            .is_none_or(|layers| layers.get(layer).copied().unwrap_or(true))
    }
}

/// A JSON file's value.
fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| ModelError::InvalidJson {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// SmolLM3's `no_rope_layers` (despite the name, 1 marks a layer *with* rotary embeddings), or
/// when absent, as transformers derives it: every `no_rope_layer_interval`-th layer (4 by
/// default) has none.
fn smollm3_rotary_layers(fields: &RawConfig, layers: usize) -> Result<Vec<bool>> {
    match &fields.no_rope_layers {
        Some(flags) if flags.len() == layers => Ok(flags.iter().map(|f| f.0).collect()),
        Some(flags) => Err(field_error(
            "no_rope_layers",
            format!(
                "has {} entries, expected a list of {layers} zeros and ones",
                flags.len()
            ),
        )),
        None => match fields.no_rope_layer_interval.map_or(4, |s| s.0) {
            0 => Err(field_error("no_rope_layer_interval", "is 0")),
            interval => Ok((0..layers).map(|i| (i + 1) % interval != 0).collect()),
        },
    }
}

/// The dimensions and constants of one decoder layer, copied from [`ModelConfig`] so that a
/// [`DecoderLayer`](crate::DecoderLayer) can run on its own.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerShape {
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP's inner layer.
    pub intermediate_size: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// RoPE base.
    pub rope_theta: f64,
    /// RoPE frequency scaling.
    pub rope_scaling: RopeScaling,
    /// Sliding attention window (Mistral), if any.
    pub sliding_window: Option<usize>,
    /// Whether queries and keys get the rotary embedding (false in SmolLM3's NoPE layers).
    pub rotary: bool,
}

impl LayerShape {
    /// Width of all query heads together (`q_proj` output, `o_proj` input).
    pub fn q_width(&self) -> usize {
        self.num_heads * self.head_dim
    }

    /// Width of all key (or value) heads together.
    pub fn kv_width(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
}
