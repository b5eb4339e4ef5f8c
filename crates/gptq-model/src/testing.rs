//! Test support (feature `testing`): tiny random Llama-family checkpoints written to temporary
//! directories, for this crate's tests and for crates that build on it.
//!
//! These helpers panic on I/O errors: they are for tests only.

use std::collections::BTreeMap;
use std::path::Path;

use crate::calib::SplitMix64;
use crate::{Checkpoint, PerplexityOptions, perplexity};
use gptq_core::QuantizedTensor;
use gptq_quant::{CheckpointFormat, pack};
use ndarray::Array2;
use safetensors::Dtype;
use safetensors::tensor::TensorView;
use serde_json::{Value, json};

/// A fresh directory under the system temp dir (`tempfile`), removed on drop.
#[derive(Debug)]
pub struct TempDir(tempfile::TempDir);

impl TempDir {
    /// A fresh directory whose name contains `tag`.
    pub fn new(tag: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("gptq-model-test-{tag}-"))
            .tempdir()
            .expect("test fixture I/O");
        Self(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.0.path()
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

/// How [`Tiny::write_gptq`] stores the linears of a tiny model.
#[derive(Clone, Copy, Debug)]
pub struct TinyGptq {
    /// Bits per weight (the tiny model's input widths must be packable at this width).
    pub bits: u8,
    /// Columns per group.
    pub group_size: usize,
    /// How zero points are stored.
    pub format: CheckpointFormat,
    /// Whether `g_idx` assigns columns to groups in a shuffled order, as act-order checkpoints
    /// do (`desc_act` true), instead of consecutive runs.
    pub act_order: bool,
}

impl Default for TinyGptq {
    fn default() -> Self {
        Self {
            bits: 4,
            group_size: 16,
            format: CheckpointFormat::GptqV2,
            act_order: false,
        }
    }
}

/// One tensor to write: name, element type, shape, little-endian bytes.
pub type EncodedTensor = (String, Dtype, Vec<usize>, Vec<u8>);

impl Tiny {
    /// Writes a GPTQ checkpoint of this model, as another tool would: random codes, scales and
    /// zero points for every linear, packed by `q`, and every other tensor in f32. Returns the
    /// directory and each linear's quantized tensor by prefix (`model.layers.0.mlp.up_proj`).
    pub fn write_gptq(
        &self,
        seed: u64,
        q: TinyGptq,
    ) -> (TempDir, BTreeMap<String, QuantizedTensor>) {
        let dir = TempDir::new("gptq");
        let mut config = self.config();
        config["quantization_config"] = json!({
            "quant_method": "gptq", "bits": q.bits, "group_size": q.group_size,
            "desc_act": q.act_order, "sym": false, "checkpoint_format": q.format.as_str()
        });
        write_config(dir.path(), &config);
        let mut rng = SplitMix64::new(seed ^ 0x5151_5151);
        let mut encoded: Vec<EncodedTensor> = Vec::new();
        let mut linears = BTreeMap::new();
        for (name, (shape, values)) in self.tensors(seed) {
            let Some(prefix) = name
                .strip_suffix(".weight")
                .filter(|p| p.ends_with("_proj"))
            else {
                encoded.push((name, Dtype::F32, shape, encode(&values, Dtype::F32)));
                continue;
            };
            let tensor = random_quantized(&mut rng, q, (shape[0], shape[1]));
            let packed = pack(&tensor, q.format).expect("tiny shapes are packable");
            let ints = |a: &Array2<i32>| a.iter().flat_map(|v| v.to_le_bytes()).collect();
            let halves = packed.scales.iter().flat_map(|v| v.to_le_bytes()).collect();
            let g_idx = packed.g_idx.iter().flat_map(|v| v.to_le_bytes()).collect();
            let dims = |a: &Array2<i32>| vec![a.nrows(), a.ncols()];
            encoded.extend([
                (
                    format!("{prefix}.qweight"),
                    Dtype::I32,
                    dims(&packed.qweight),
                    ints(&packed.qweight),
                ),
                (
                    format!("{prefix}.qzeros"),
                    Dtype::I32,
                    dims(&packed.qzeros),
                    ints(&packed.qzeros),
                ),
                (
                    format!("{prefix}.scales"),
                    Dtype::F16,
                    vec![packed.scales.nrows(), packed.scales.ncols()],
                    halves,
                ),
                (
                    format!("{prefix}.g_idx"),
                    Dtype::I32,
                    vec![packed.g_idx.len()],
                    g_idx,
                ),
            ]);
            linears.insert(prefix.to_string(), tensor);
        }
        write_tensors(&dir.path().join("model.safetensors"), &encoded);
        (dir, linears)
    }
}

/// Random codes and zero points, and scales near a trained weight's (`1/√columns` over the
/// grid's half range), already f16 values so that packing loses nothing.
fn random_quantized(
    rng: &mut SplitMix64,
    q: TinyGptq,
    (rows, columns): (usize, usize),
) -> QuantizedTensor {
    let levels = 1u64 << q.bits;
    let groups = columns.div_ceil(q.group_size);
    let mut g_idx: Vec<u32> = (0..columns).map(|c| (c / q.group_size) as u32).collect();
    if q.act_order {
        for i in (1..columns).rev() {
            g_idx.swap(i, rng.below(i as u64 + 1) as usize);
        }
    }
    let step = 2.0 / (columns as f32).sqrt() / levels as f32;
    let codes = Array2::from_shape_simple_fn((rows, columns), || rng.below(levels) as u8);
    let scales = Array2::from_shape_simple_fn((groups, rows), || {
        let u = rng.below(1 << 16) as f32 / (1 << 16) as f32;
        half::f16::from_f32(step * (0.5 + u)).to_f32()
    });
    // At least 1: the v1 format stores `zero - 1`.
    let zeros = Array2::from_shape_simple_fn((groups, rows), || 1 + rng.below(levels - 1) as u16);
    QuantizedTensor::new(q.bits, codes, scales, zeros, g_idx, None)
        .expect("random tensors are valid")
}

/// `original` with edits applied, as a fuzzer would make them: `edits` is read five bytes at a
/// time, a little-endian position and a byte to write there (positions with the top bit set
/// fall in the first 4 KiB, where the safetensors header is, the others anywhere); 1 to 4
/// bytes left over cut the file at the position they spell.
pub fn corrupt(original: &[u8], edits: &[u8]) -> Vec<u8> {
    let mut bytes = original.to_vec();
    if bytes.is_empty() {
        return bytes;
    }
    let mut chunks = edits.chunks_exact(5);
    for chunk in &mut chunks {
        let at = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        let span = if at >> 31 == 1 {
            bytes.len().min(4096)
        } else {
            bytes.len()
        };
        let at = (at & 0x7fff_ffff) as usize % span;
        bytes[at] = chunk[4];
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut word = [0u8; 4];
        word[..rest.len()].copy_from_slice(rest);
        bytes.truncate(u32::from_le_bytes(word) as usize % bytes.len());
    }
    bytes
}

/// The property fuzzed on checkpoints: writes `bytes` as `dir/model.safetensors` (beside the
/// `config.json` already there) and reads it the ways `gptq inspect` and `gptq eval` do —
/// every tensor's header and bytes, the shape check, every layer (packed linears unpacked), and
/// the perplexity of two windows. Whatever the bytes, each step returns a value or an error;
/// a panic or a NaN fails the check.
pub fn check_reading_checkpoint(dir: &Path, bytes: &[u8]) {
    std::fs::write(dir.join("model.safetensors"), bytes).expect("test fixture I/O");
    let Ok(checkpoint) = Checkpoint::open(dir) else {
        return;
    };
    let weights = checkpoint.weights();
    for name in weights.names() {
        let _ = weights.meta(name);
        let _ = weights.raw(name);
    }
    let _ = checkpoint.check_layer_tensors();
    let Ok(model) = checkpoint.load_model() else {
        return;
    };
    let vocab = checkpoint.config().vocab_size as u32;
    let tokens: Vec<u32> = (0..32u32).map(|t| (t * 7 + 3) % vocab).collect();
    let options = PerplexityOptions {
        seqlen: 16,
        max_windows: None,
        batch_windows: 2,
        par: faer::Par::Seq,
    };
    if let Ok(report) = perplexity(&model, &tokens, &options, |_, _| {}) {
        // A finite mean NLL past ~709 nats is a perplexity that overflows f64: infinite is
        // then the right answer, NaN never is.
        assert!(
            report.mean_nll.is_finite() && !report.perplexity.is_nan(),
            "mean NLL {}, perplexity {}",
            report.mean_nll,
            report.perplexity
        );
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

/// Writes already-encoded tensors, all of element type `dtype`, into a safetensors file.
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

/// Writes already-encoded tensors of any element types into a safetensors file.
pub fn write_tensors(path: &Path, tensors: &[EncodedTensor]) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(k, dtype, s, b)| {
            (
                k.clone(),
                TensorView::new(*dtype, s.clone(), b).expect("test fixture I/O"),
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

/// A GPTQ configuration decoded from fuzzer bytes: where it is written and what it says.
#[derive(Debug, Clone)]
pub struct FuzzedConfig {
    /// The `quantization_config` of config.json, if any.
    pub main: Option<Value>,
    /// The contents of quantize_config.json, if any.
    pub legacy: Option<Value>,
}

/// Decodes `data` into a GPTQ configuration, starting from `valid` (a checkpoint's own
/// `quantization_config`) so that most inputs stay close to acceptable: byte 0 chooses where
/// it goes (config.json, quantize_config.json, or both with either one fuzzed), then each
/// three bytes set or remove one field: a key (mostly the ones loaders read), a kind of value
/// and a payload.
pub fn fuzzed_config(valid: &Value, data: &[u8]) -> FuzzedConfig {
    const KEYS: [&str; 12] = [
        "quant_method",
        "bits",
        "group_size",
        "desc_act",
        "sym",
        "checkpoint_format",
        "static_groups",
        "true_sequential",
        "damp_percent",
        "model_file_base_name",
        "meta",
        "dynamic",
    ];
    const STRINGS: [&str; 8] = ["gptq", "gptq_v2", "awq", "", "4", "128", "true", "GPTQ"];
    let (placement, edits) = data.split_first().map_or((0, &[][..]), |(p, e)| (*p, e));
    let mut fuzzed = valid.clone();
    for edit in edits.chunks(3) {
        let [key, kind, payload] = [0, 1, 2].map(|i| edit.get(i).copied().unwrap_or(0));
        let key = KEYS[key as usize % KEYS.len()];
        let small = i64::from(payload as i8);
        let value = match kind % 10 {
            0 => {
                if let Some(o) = fuzzed.as_object_mut() {
                    o.remove(key);
                }
                continue;
            }
            1 => Value::Null,
            2 => Value::Bool(payload % 2 == 1),
            3 | 4 => json!(small),
            5 => json!(1i64 << (payload % 64)),
            6 => json!(f64::from(payload as i8) / 4.0),
            7 => json!(STRINGS[payload as usize % STRINGS.len()]),
            8 => json!([small]),
            _ => {
                // Now and then the whole configuration is something else than an object.
                if payload < 16 {
                    fuzzed = json!(small);
                    continue;
                }
                json!({ "x": small })
            }
        };
        if let Some(o) = fuzzed.as_object_mut() {
            o.insert(key.to_string(), value);
        }
    }
    match placement % 4 {
        0 => FuzzedConfig {
            main: Some(fuzzed),
            legacy: None,
        },
        1 => FuzzedConfig {
            main: None,
            legacy: Some(fuzzed),
        },
        2 => FuzzedConfig {
            main: Some(valid.clone()),
            legacy: Some(fuzzed),
        },
        _ => FuzzedConfig {
            main: Some(fuzzed),
            legacy: Some(valid.clone()),
        },
    }
}

/// The dequantized weight of every packed linear of the checkpoint in `dir`, by prefix, or
/// `None` when opening it or reading one of them fails.
fn dequantized_linears(dir: &Path) -> Option<BTreeMap<String, Array2<f32>>> {
    let checkpoint = Checkpoint::open(dir).ok()?;
    let config = checkpoint.config();
    let quantization = config.quantization.as_ref()?;
    let shape = config.layer_shape(0);
    let mut weights = BTreeMap::new();
    for layer in 0..config.num_hidden_layers {
        for id in crate::LinearId::ALL {
            let prefix = id.tensor_prefix(layer);
            let tensor = crate::gptq::load_packed(
                checkpoint.weights(),
                &prefix,
                quantization,
                id.dims(&shape),
            )
            .ok()?;
            weights.insert(prefix, tensor.dequantize());
        }
    }
    Some(weights)
}

/// Writes `config` beside the packed tensors in `dir` (whose config.json holds the model's
/// fields): config.json with `config.main` as its quantization_config, and quantize_config.json
/// when `config.legacy` is given.
fn write_gptq_config(dir: &Path, model_config: &Value, config: &FuzzedConfig) {
    let mut main = model_config.clone();
    if let Some(o) = main.as_object_mut() {
        o.remove("quantization_config");
    }
    if let Some(q) = &config.main {
        main["quantization_config"] = q.clone();
    }
    write_config(dir, &main);
    let legacy = dir.join("quantize_config.json");
    match &config.legacy {
        Some(q) => std::fs::write(&legacy, q.to_string()).expect("test fixture I/O"),
        None => {
            let _ = std::fs::remove_file(&legacy);
        }
    }
}

/// The property fuzzed on GPTQ configurations: with `config` written beside the valid packed
/// tensors of the checkpoint in `dir` (see [`Tiny::write_gptq`]), opening the checkpoint and
/// unpacking every linear never panics; and when every linear unpacks, the same tensors under
/// the canonical form of the configuration that was read (the five fields, in config.json
/// only) unpack to the same dequantized weights. `model_config` is the checkpoint's own
/// config.json, which is restored at the end.
pub fn check_gptq_config(dir: &Path, model_config: &Value, config: &FuzzedConfig) {
    write_gptq_config(dir, model_config, config);
    let read = Checkpoint::open(dir)
        .ok()
        .and_then(|c| c.config().quantization.clone());
    let accepted = dequantized_linears(dir);
    if let (Some(q), Some(accepted)) = (read, accepted) {
        let canonical = FuzzedConfig {
            main: Some(json!({
                "quant_method": "gptq", "bits": q.bits, "group_size": q.group_size,
                "desc_act": q.desc_act, "sym": q.sym, "checkpoint_format": q.format.as_str()
            })),
            legacy: None,
        };
        write_gptq_config(dir, model_config, &canonical);
        let canonical = dequantized_linears(dir)
            .expect("the canonical form of an accepted configuration is accepted");
        assert_eq!(accepted.len(), canonical.len());
        for (name, weight) in &accepted {
            let same = weight
                .iter()
                .zip(canonical[name].iter())
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{name} dequantizes differently under {config:?}");
        }
    }
    write_gptq_config(
        dir,
        model_config,
        &FuzzedConfig {
            main: model_config.get("quantization_config").cloned(),
            legacy: None,
        },
    );
}
