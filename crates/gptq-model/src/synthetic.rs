//! Random checkpoints with the exact shapes and config.json fields of published models, for
//! measuring the quantizer at real sizes without downloading them.
//!
//! The weights are random, but not white noise: the embedding table is low-rank plus noise, so
//! that the calibration activations of different channels are correlated and the Hessians are
//! far from diagonal; the norms have a few outlier channels, as trained models do; linears are
//! scaled like trained ones (standard deviation about `1/√in_features`). Perplexities of such
//! a model mean nothing; shapes, memory and time are what they are for.
//!
//! ```
//! use gptq_model::synthetic::{SyntheticOptions, shape, write_synthetic};
//!
//! let dir = tempfile::tempdir()?;
//! let tiny = shape("tiny-qwen2").unwrap();
//! let written = write_synthetic(&tiny, dir.path(), &SyntheticOptions::default())?;
//! assert_eq!(written.files, ["model.safetensors"]);
//! let checkpoint = gptq_model::Checkpoint::open(dir.path())?;
//! assert!(checkpoint.config().attention_bias);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use rayon::prelude::*;
use safetensors::{Dtype, View};
use serde_json::{Value, json};

use crate::calib::SplitMix64;
use crate::error::{ModelError, Result};

/// The dimensions and config.json fields of a published model.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    /// The name this module knows it by (`llama-3.2-1b`).
    pub name: &'static str,
    /// config.json as the published model has it (the fields transformers reads).
    pub config: Value,
}

impl Shape {
    fn size(&self, field: &str) -> usize {
        self.config[field].as_u64().unwrap_or(0) as usize
    }

    /// Decoder layers.
    pub fn layers(&self) -> usize {
        self.size("num_hidden_layers")
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.size("vocab_size")
    }
}

/// The names [`shape`] knows: published models, and tiny ones of each family for tests.
pub const SHAPES: [&str; 9] = [
    "llama-3.2-1b",
    "llama-3.2-3b",
    "llama-3.1-8b",
    "qwen2.5-1.5b",
    "qwen2.5-7b",
    "qwen3-8b",
    "tiny-llama",
    "tiny-qwen2",
    "tiny-qwen3",
];

/// Llama 3.1's rotary scaling, with its factor.
fn llama3_rope(factor: f64) -> Value {
    json!({"factor": factor, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
           "original_max_position_embeddings": 8192, "rope_type": "llama3"})
}

/// A Llama 3.x config.json.
fn llama(
    (hidden, intermediate, layers): (usize, usize, usize),
    (heads, kv_heads, head_dim): (usize, usize, usize),
    (vocab, tied, rope_factor): (usize, bool, f64),
) -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "attention_bias": false, "attention_dropout": 0.0, "bos_token_id": 128000,
        "eos_token_id": 128001, "head_dim": head_dim, "hidden_act": "silu",
        "hidden_size": hidden, "initializer_range": 0.02, "intermediate_size": intermediate,
        "max_position_embeddings": 131072, "mlp_bias": false, "num_attention_heads": heads,
        "num_hidden_layers": layers, "num_key_value_heads": kv_heads, "pretraining_tp": 1,
        "rms_norm_eps": 1e-5, "rope_scaling": llama3_rope(rope_factor), "rope_theta": 500000.0,
        "tie_word_embeddings": tied, "torch_dtype": "bfloat16", "use_cache": true,
        "vocab_size": vocab
    })
}

/// A Qwen2.5 config.json (q/k/v biases are implied by the architecture).
fn qwen2(
    (hidden, intermediate, layers): (usize, usize, usize),
    (heads, kv_heads): (usize, usize),
    (vocab, tied, context): (usize, bool, usize),
) -> Value {
    json!({
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
        "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151643,
        "hidden_act": "silu", "hidden_size": hidden, "initializer_range": 0.02,
        "intermediate_size": intermediate, "max_position_embeddings": context,
        "max_window_layers": layers, "num_attention_heads": heads,
        "num_hidden_layers": layers, "num_key_value_heads": kv_heads, "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0, "sliding_window": context, "tie_word_embeddings": tied,
        "torch_dtype": "bfloat16", "use_cache": true, "use_sliding_window": false,
        "vocab_size": vocab
    })
}

/// A Qwen3 (dense) config.json.
fn qwen3(
    (hidden, intermediate, layers): (usize, usize, usize),
    (heads, kv_heads, head_dim): (usize, usize, usize),
    (vocab, tied): (usize, bool),
) -> Value {
    json!({
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
        "attention_bias": false, "attention_dropout": 0.0, "bos_token_id": 151643,
        "eos_token_id": 151645, "head_dim": head_dim, "hidden_act": "silu",
        "hidden_size": hidden, "initializer_range": 0.02, "intermediate_size": intermediate,
        "max_position_embeddings": 40960, "max_window_layers": layers,
        "num_attention_heads": heads, "num_hidden_layers": layers,
        "num_key_value_heads": kv_heads, "rms_norm_eps": 1e-6, "rope_scaling": null,
        "rope_theta": 1000000.0, "sliding_window": null, "tie_word_embeddings": tied,
        "torch_dtype": "bfloat16", "use_cache": true, "use_sliding_window": false,
        "vocab_size": vocab
    })
}

/// The shape called `name` (one of [`SHAPES`]), with the dimensions its published config.json
/// gives.
pub fn shape(name: &str) -> Option<Shape> {
    let config = match name {
        "llama-3.2-1b" => llama((2048, 8192, 16), (32, 8, 64), (128256, true, 32.0)),
        "llama-3.2-3b" => llama((3072, 8192, 28), (24, 8, 128), (128256, true, 32.0)),
        "llama-3.1-8b" => llama((4096, 14336, 32), (32, 8, 128), (128256, false, 8.0)),
        "qwen2.5-1.5b" => qwen2((1536, 8960, 28), (12, 2), (151936, true, 32768)),
        "qwen2.5-7b" => qwen2((3584, 18944, 28), (28, 4), (152064, false, 131072)),
        "qwen3-8b" => qwen3((4096, 12288, 36), (32, 8, 128), (151936, false)),
        "tiny-llama" => llama((128, 256, 2), (4, 2, 32), (512, true, 8.0)),
        "tiny-qwen2" => qwen2((128, 256, 2), (4, 2), (512, true, 4096)),
        "tiny-qwen3" => qwen3((128, 256, 2), (4, 2, 32), (512, false)),
        _ => return None,
    };
    let name = SHAPES.into_iter().find(|s| *s == name)?;
    Some(Shape { name, config })
}

/// How [`write_synthetic`] writes a model.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticOptions {
    /// Keep only the first this many layers (all when `None`).
    pub layers: Option<usize>,
    /// Seed of the weights.
    pub seed: u64,
    /// Largest shard, in bytes (transformers' default is 5 GB); one shard is
    /// `model.safetensors`, more are `model-0000N-of-0000M.safetensors` with an index.
    pub max_shard_bytes: u64,
}

impl Default for SyntheticOptions {
    fn default() -> Self {
        Self {
            layers: None,
            seed: 0,
            max_shard_bytes: 5_000_000_000,
        }
    }
}

/// What [`write_synthetic`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// The weight files and, when sharded, the index, in writing order.
    pub files: Vec<String>,
    /// Bytes of tensor data.
    pub tensor_bytes: u64,
    /// Parameters.
    pub parameters: u64,
}

/// How one tensor's values are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fill {
    /// Gaussian with this standard deviation.
    Normal(f32),
    /// Around 1 with a few outlier channels (the same ones in every norm of the model).
    Norm,
    /// The embedding: a low-rank table plus noise.
    Embedding,
}

/// One tensor to write: name, shape, how it is filled, and its own seed.
#[derive(Debug, Clone)]
struct Planned {
    name: String,
    shape: Vec<usize>,
    fill: Fill,
    seed: u64,
}

/// Input channels with large norm weights, as trained models have a few.
const OUTLIERS: [usize; 4] = [7, 100, 613, 1500];
/// Rank of the embedding table's structure.
const EMBEDDING_RANK: usize = 16;

impl Planned {
    fn bytes(&self) -> u64 {
        2 * self.shape.iter().product::<usize>() as u64
    }

    /// The values, in bf16 little-endian bytes.
    fn generate(&self) -> Vec<u8> {
        let columns = (*self.shape.last().unwrap_or(&1)).max(1);
        let rows = self.shape.iter().product::<usize>() / columns;
        // The embedding's low-rank basis, `[EMBEDDING_RANK, columns]`, shared by every token.
        let basis: Vec<f32> = match self.fill {
            Fill::Embedding => {
                let mut rng = SplitMix64::new(self.seed ^ 0xB0B0);
                (0..EMBEDDING_RANK * columns)
                    .map(|_| normal(&mut rng))
                    .collect()
            }
            _ => Vec::new(),
        };
        let mut bytes = vec![0u8; 2 * rows * columns];
        // Row by row, each row from its own seed: the same values on any number of threads.
        bytes
            .par_chunks_mut(2 * columns)
            .enumerate()
            .for_each(|(r, out)| {
                let mut rng = SplitMix64::new(self.seed ^ (r as u64).wrapping_mul(0x9E37_79B9));
                let row = self.row(columns, &basis, &mut rng);
                for (o, v) in out.chunks_exact_mut(2).zip(row) {
                    o.copy_from_slice(&half::bf16::from_f32(v).to_le_bytes());
                }
            });
        bytes
    }

    fn row(&self, columns: usize, basis: &[f32], rng: &mut SplitMix64) -> Vec<f32> {
        match self.fill {
            Fill::Normal(std) => (0..columns).map(|_| std * normal(rng)).collect(),
            Fill::Norm => (0..columns)
                .map(|c| {
                    let base = if OUTLIERS.contains(&c) { 12.0 } else { 1.0 };
                    base * (1.0 + 0.1 * normal(rng))
                })
                .collect(),
            Fill::Embedding => {
                // The token's coordinates in the low-rank space, then noise of its own.
                let scale = 0.015 / (EMBEDDING_RANK as f32).sqrt();
                let mut row = vec![0.0f32; columns];
                for direction in basis.chunks_exact(columns) {
                    let k = scale * normal(rng);
                    for (v, b) in row.iter_mut().zip(direction) {
                        *v += k * b;
                    }
                }
                row.iter_mut().for_each(|v| *v += 0.005 * normal(rng));
                row
            }
        }
    }
}

/// A standard normal value (Irwin–Hall: the sum of four uniforms, rescaled; cheap, and close
/// enough for weights).
fn normal(rng: &mut SplitMix64) -> f32 {
    let x = rng.next_u64();
    let sum: u32 = (0..4).map(|i| ((x >> (16 * i)) & 0xFFFF) as u32).sum();
    // Mean 2·65535, variance 4·65536²/12.
    (sum as f32 - 2.0 * 65535.0) / (65536.0 * (4.0f32 / 12.0).sqrt())
}

/// Every tensor of `shape`'s first `layers` layers, in the order transformers saves them.
fn plan(shape: &Shape, layers: usize, seed: u64) -> Vec<Planned> {
    let c = &shape.config;
    let size = |f: &str| c[f].as_u64().unwrap_or(0) as usize;
    let (hidden, inter, vocab) = (
        size("hidden_size"),
        size("intermediate_size"),
        size("vocab_size"),
    );
    let heads = size("num_attention_heads");
    let head_dim = match size("head_dim") {
        0 => hidden / heads.max(1),
        d => d,
    };
    let (q, kv) = (heads * head_dim, size("num_key_value_heads") * head_dim);
    let model_type = c["model_type"].as_str().unwrap_or("");
    let mut seeds = SplitMix64::new(seed);
    let mut out = Vec::new();
    let mut add = |name: String, shape: Vec<usize>, fill: Fill| {
        out.push(Planned {
            name,
            shape,
            fill,
            seed: seeds.next_u64(),
        });
    };
    add(
        "model.embed_tokens.weight".into(),
        vec![vocab, hidden],
        Fill::Embedding,
    );
    let linear = |rows: usize, columns: usize| {
        (
            vec![rows, columns],
            Fill::Normal(1.0 / (columns as f32).sqrt()),
        )
    };
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        add(
            format!("{p}.input_layernorm.weight"),
            vec![hidden],
            Fill::Norm,
        );
        for (name, rows, columns) in [
            ("self_attn.q_proj", q, hidden),
            ("self_attn.k_proj", kv, hidden),
            ("self_attn.v_proj", kv, hidden),
            ("self_attn.o_proj", hidden, q),
        ] {
            let (s, f) = linear(rows, columns);
            add(format!("{p}.{name}.weight"), s, f);
            if model_type == "qwen2" && name != "self_attn.o_proj" {
                add(format!("{p}.{name}.bias"), vec![rows], Fill::Normal(0.05));
            }
        }
        if model_type == "qwen3" {
            for n in ["q_norm", "k_norm"] {
                add(
                    format!("{p}.self_attn.{n}.weight"),
                    vec![head_dim],
                    Fill::Norm,
                );
            }
        }
        add(
            format!("{p}.post_attention_layernorm.weight"),
            vec![hidden],
            Fill::Norm,
        );
        for (name, rows, columns) in [
            ("mlp.gate_proj", inter, hidden),
            ("mlp.up_proj", inter, hidden),
            ("mlp.down_proj", hidden, inter),
        ] {
            let (s, f) = linear(rows, columns);
            add(format!("{p}.{name}.weight"), s, f);
        }
    }
    add("model.norm.weight".into(), vec![hidden], Fill::Norm);
    if !c["tie_word_embeddings"].as_bool().unwrap_or(false) {
        let (s, f) = linear(vocab, hidden);
        add("lm_head.weight".into(), s, f);
    }
    out
}

/// A tensor whose bytes are made when the writer asks for them, so that only one tensor is
/// in memory at a time.
struct Lazy<'a>(&'a Planned);

impl View for Lazy<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::BF16
    }
    fn shape(&self) -> &[usize] {
        &self.0.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.0.generate())
    }
    fn data_len(&self) -> usize {
        self.0.bytes() as usize
    }
}

/// Writes a random bf16 checkpoint of `shape` into the directory `out` (created if needed;
/// it must not hold a config.json already): config.json, and the weights sharded as
/// transformers shards them.
pub fn write_synthetic(shape: &Shape, out: &Path, options: &SyntheticOptions) -> Result<Written> {
    let all = shape.layers();
    let layers = options.layers.unwrap_or(all);
    if layers == 0 || layers > all {
        return Err(ModelError::UnsupportedFeature(format!(
            "--layers {layers}: {} has {all} layers; keep 1 to {all} of them",
            shape.name
        )));
    }
    if out.join("config.json").exists() {
        return Err(ModelError::UnsupportedFeature(format!(
            "{} already holds a model (config.json): choose an empty directory",
            out.display()
        )));
    }
    std::fs::create_dir_all(out).map_err(|e| ModelError::io(out, e))?;
    let tensors = plan(shape, layers, options.seed);
    let shards = shard(&tensors, options.max_shard_bytes.max(1));
    let count = shards.len();
    let name = |k: usize| match count {
        1 => "model.safetensors".to_string(),
        _ => format!("model-{:05}-of-{count:05}.safetensors", k + 1),
    };
    let mut files = Vec::new();
    let mut weight_map = BTreeMap::new();
    let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    for (k, shard) in shards.iter().enumerate() {
        let file = name(k);
        let path = out.join(&file);
        let views = shard.iter().map(|t| (t.name.as_str(), Lazy(t)));
        safetensors::serialize_to_file(views, metadata.clone(), &path)
            .map_err(|e| ModelError::io(&path, std::io::Error::other(e.to_string())))?;
        for t in shard {
            weight_map.insert(t.name.clone(), file.clone());
        }
        files.push(file);
    }
    let tensor_bytes: u64 = tensors.iter().map(Planned::bytes).sum();
    if count > 1 {
        let index = json!({"metadata": {"total_size": tensor_bytes}, "weight_map": weight_map});
        write_json(&out.join("model.safetensors.index.json"), &index)?;
        files.push("model.safetensors.index.json".into());
    }
    let mut config = shape.config.clone();
    config["num_hidden_layers"] = layers.into();
    write_json(&out.join("config.json"), &config)?;
    Ok(Written {
        files,
        tensor_bytes,
        parameters: tensor_bytes / 2,
    })
}

/// `tensors` in consecutive groups of at most `max_bytes` each (a larger tensor alone).
fn shard(tensors: &[Planned], max_bytes: u64) -> Vec<Vec<&Planned>> {
    let mut shards: Vec<Vec<&Planned>> = vec![Vec::new()];
    let mut size = 0;
    for t in tensors {
        if size > 0 && size + t.bytes() > max_bytes {
            shards.push(Vec::new());
            size = 0;
        }
        shards.last_mut().expect("one shard at least").push(t);
        size += t.bytes();
    }
    shards
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("JSON values serialize") + "\n";
    std::fs::write(path, text).map_err(|e| ModelError::io(path, e))
}

/// `count` calibration windows of `len` random token ids below `vocab`, as the token-id JSON
/// that `gptq quantize --calib` reads (`{"windows": [[...], ...]}`).
pub fn calibration_windows(vocab: usize, count: usize, len: usize, seed: u64) -> Value {
    let mut rng = SplitMix64::new(seed ^ 0xCA11B);
    let windows: Vec<Vec<u64>> = (0..count)
        .map(|_| (0..len).map(|_| rng.below(vocab as u64)).collect())
        .collect();
    json!({ "windows": windows })
}

/// Writes [`calibration_windows`] to `path`.
pub fn write_calibration(path: &Path, windows: &Value) -> Result<()> {
    write_json(path, windows)
}
