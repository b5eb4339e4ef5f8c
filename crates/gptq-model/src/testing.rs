//! Test support (feature `testing`): tiny random Llama-family checkpoints written to temporary
//! directories, for this crate's tests and for crates that build on it.
//!
//! These helpers panic on I/O errors: they are for tests only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::calib::SplitMix64;
use safetensors::Dtype;
use safetensors::tensor::TensorView;
use serde_json::{Value, json};

/// A directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh directory whose name contains `tag`.
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "gptq-model-test-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).expect("test fixture I/O");
        Self(p)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Dimensions of a tiny model.
#[derive(Clone, Copy, Debug)]
pub struct Tiny {
    /// `model_type` (llama, mistral, qwen2, qwen3, smollm3).
    pub model_type: &'static str,
    /// Hidden size.
    pub hidden: usize,
    /// MLP size.
    pub inter: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Tied embeddings.
    pub tied: bool,
}

impl Default for Tiny {
    fn default() -> Self {
        Self {
            model_type: "llama",
            hidden: 32,
            inter: 48,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            vocab: 64,
            tied: true,
        }
    }
}

impl Tiny {
    /// Width of one head.
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    /// The `config.json` value.
    pub fn config(&self) -> Value {
        let mut config = json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": self.model_type,
            "hidden_size": self.hidden,
            "intermediate_size": self.inter,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "vocab_size": self.vocab,
            "tie_word_embeddings": self.tied,
            "hidden_act": "silu",
            "bos_token_id": 1
        });
        // Qwen3's head_dim defaults to 128, not hidden / heads.
        if self.model_type == "qwen3" {
            config["head_dim"] = self.head_dim().into();
        }
        // SmolLM3: every other layer, from layer 1, without rotary embeddings.
        if self.model_type == "smollm3" {
            config["no_rope_layers"] = (0..self.layers).map(|i| i32::from(i % 2 == 0)).collect();
        }
        config
    }

    /// Every tensor of the model, random, in f32, in a sorted map.
    pub fn tensors(&self, seed: u64) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
        let mut rng = SplitMix64::new(seed);
        let mut t = BTreeMap::new();
        let d = self.head_dim();
        let mut add = |name: String, shape: Vec<usize>, scale: f32, offset: f32| {
            let n = shape.iter().product();
            t.insert(name, (shape, random(&mut rng, n, scale, offset)));
        };
        add(
            "model.embed_tokens.weight".into(),
            vec![self.vocab, self.hidden],
            1.0,
            0.0,
        );
        add("model.norm.weight".into(), vec![self.hidden], 0.2, 1.0);
        if !self.tied {
            add(
                "lm_head.weight".into(),
                vec![self.vocab, self.hidden],
                0.3,
                0.0,
            );
        }
        let ws = 1.0 / (self.hidden as f32).sqrt();
        for l in 0..self.layers {
            let p = format!("model.layers.{l}");
            add(
                format!("{p}.input_layernorm.weight"),
                vec![self.hidden],
                0.2,
                1.0,
            );
            add(
                format!("{p}.post_attention_layernorm.weight"),
                vec![self.hidden],
                0.2,
                1.0,
            );
            add(
                format!("{p}.self_attn.q_proj.weight"),
                vec![self.heads * d, self.hidden],
                2.0 * ws,
                0.0,
            );
            add(
                format!("{p}.self_attn.k_proj.weight"),
                vec![self.kv_heads * d, self.hidden],
                2.0 * ws,
                0.0,
            );
            add(
                format!("{p}.self_attn.v_proj.weight"),
                vec![self.kv_heads * d, self.hidden],
                ws,
                0.0,
            );
            add(
                format!("{p}.self_attn.o_proj.weight"),
                vec![self.hidden, self.heads * d],
                ws,
                0.0,
            );
            add(
                format!("{p}.mlp.gate_proj.weight"),
                vec![self.inter, self.hidden],
                ws,
                0.0,
            );
            add(
                format!("{p}.mlp.up_proj.weight"),
                vec![self.inter, self.hidden],
                ws,
                0.0,
            );
            add(
                format!("{p}.mlp.down_proj.weight"),
                vec![self.hidden, self.inter],
                ws,
                0.0,
            );
            if self.model_type == "qwen3" {
                for n in ["q_norm", "k_norm"] {
                    add(format!("{p}.self_attn.{n}.weight"), vec![d], 0.5, 1.0);
                }
            }
            if self.model_type == "qwen2" {
                for (n, w) in [
                    ("q_proj", self.heads * d),
                    ("k_proj", self.kv_heads * d),
                    ("v_proj", self.kv_heads * d),
                ] {
                    add(format!("{p}.self_attn.{n}.bias"), vec![w], 0.5, 0.0);
                }
            }
        }
        t
    }

    /// Writes config.json and model.safetensors (f32) into a new temp dir.
    pub fn write(&self, seed: u64) -> TempDir {
        let dir = TempDir::new(self.model_type);
        write_config(dir.path(), &self.config());
        write_safetensors(
            &dir.path().join("model.safetensors"),
            &self.tensors(seed),
            Dtype::F32,
        );
        dir
    }
}

/// Uniform in `offset ± scale`.
pub fn random(rng: &mut SplitMix64, n: usize, scale: f32, offset: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u = (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
            offset + scale * (2.0 * u - 1.0)
        })
        .collect()
}

/// Writes `config.json` into `dir`.
pub fn write_config(dir: &Path, config: &Value) {
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(config).expect("test fixture I/O"),
    )
    .expect("test fixture I/O");
}

/// Encodes f32 values as `dtype` (F32, F16 or BF16) little-endian bytes.
pub fn encode(values: &[f32], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::F16 => values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect(),
        Dtype::BF16 => values
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect(),
        other => panic!("test helper cannot encode {other:?}"),
    }
}

/// Writes `tensors` into a safetensors file, encoded as `dtype`.
pub fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    dtype: Dtype,
) {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(k, (s, v))| (k.clone(), s.clone(), encode(v, dtype)))
        .collect();
    write_raw(path, &bytes, dtype);
}

/// Writes already-encoded tensors into a safetensors file.
pub fn write_raw(path: &Path, tensors: &[(String, Vec<usize>, Vec<u8>)], dtype: Dtype) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(k, s, b)| {
            (
                k.clone(),
                TensorView::new(dtype, s.clone(), b).expect("test fixture I/O"),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).expect("test fixture I/O");
}

/// Largest absolute difference.
pub fn max_diff(a: &ndarray::Array2<f32>, b: &ndarray::Array2<f32>) -> f32 {
    assert_eq!(a.dim(), b.dim());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
