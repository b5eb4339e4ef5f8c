//! A checkpoint directory, and the whole model built from it.

use std::path::{Path, PathBuf};

use faer::Par;
use gptq_linalg::elementwise::{is_parallel, log_sum_exp};
use ndarray::{Array1, Array2, ArrayView2, s};
use rayon::prelude::*;

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::forward::forward_layer;
use crate::layer::{DecoderLayer, HeadNorms, LinearId};
use crate::linear::Linear;
use crate::ops::rms_norm_par;
use crate::pool::recycle;
use crate::tokenizer::Tokenizer;
use crate::weights::WeightStore;

/// Name of the token embedding tensor.
pub const EMBED_TOKENS: &str = "model.embed_tokens.weight";
/// Name of the final RMSNorm weight.
pub const FINAL_NORM: &str = "model.norm.weight";
/// Name of the untied output projection.
pub const LM_HEAD: &str = "lm_head.weight";

/// A Hugging Face checkpoint directory: config parsed, weights memory-mapped, nothing converted
/// until asked for.
#[derive(Debug)]
pub struct Checkpoint {
    dir: PathBuf,
    config: ModelConfig,
    weights: WeightStore,
}

impl Checkpoint {
    /// Opens `dir`: reads `config.json`, maps `model.safetensors` (or the shards of
    /// `model.safetensors.index.json`).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(ModelError::ConfigNotFound {
                dir: dir.to_path_buf(),
            });
        }
        let config = ModelConfig::from_dir(dir)?;
        let weights = WeightStore::open(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            weights,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The parsed `config.json`.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The memory-mapped tensors.
    pub fn weights(&self) -> &WeightStore {
        &self.weights
    }

    /// Decoder layer `i` as owned f32 weights.
    pub fn load_layer(&self, i: usize) -> Result<DecoderLayer> {
        let c = &self.config;
        if i >= c.num_hidden_layers {
            return Err(ModelError::InvalidArgument(format!(
                "layer {i} does not exist: the model has {} layers",
                c.num_hidden_layers
            )));
        }
        let shape = c.layer_shape(i);
        let h = c.hidden_size;
        let linear = |id: LinearId| -> Result<Linear> {
            let (o, n) = id.dims(&shape);
            let prefix = id.tensor_prefix(i);
            let weight = match &c.quantization {
                Some(q) if crate::gptq::is_packed(&self.weights, &prefix) => {
                    crate::gptq::load_packed(&self.weights, &prefix, q, (o, n))?.dequantize()
                }
                _ => self
                    .weights
                    .load_matrix(&format!("{prefix}.weight"), o, n)?,
            };
            let bias = if has_bias(c, id) {
                Some(self.weights.load_vector(&format!("{prefix}.bias"), o)?)
            } else {
                None
            };
            Linear::new(weight, bias)
        };
        let norm = |name: &str, len: usize| {
            self.weights
                .load_vector(&format!("model.layers.{i}.{name}.weight"), len)
        };
        let head_norms = if c.architecture.normalizes_heads() {
            let [q, k] = HeadNorms::NAMES;
            Some(HeadNorms {
                q: norm(q, c.head_dim)?,
                k: norm(k, c.head_dim)?,
            })
        } else {
            None
        };
        let layer = DecoderLayer {
            index: i,
            shape,
            input_layernorm: norm("input_layernorm", h)?,
            q_proj: linear(LinearId::Q)?,
            k_proj: linear(LinearId::K)?,
            v_proj: linear(LinearId::V)?,
            head_norms,
            o_proj: linear(LinearId::O)?,
            post_attention_layernorm: norm("post_attention_layernorm", h)?,
            gate_proj: linear(LinearId::Gate)?,
            up_proj: linear(LinearId::Up)?,
            down_proj: linear(LinearId::Down)?,
        };
        layer.validate()?;
        Ok(layer)
    }

    /// Checks from the safetensors headers alone, without reading any weight, that every
    /// decoder layer's full-precision tensors exist with the shapes `config.json` implies: a
    /// config that names more layers than the weights hold, or weights of another model, fail
    /// here instead of at the layer where a long run reaches them.
    pub fn check_layer_tensors(&self) -> Result<()> {
        let c = &self.config;
        let shape = c.layer_shape(0); // every layer has the same dimensions
        let head_norms: &[&str] = if c.architecture.normalizes_heads() {
            &HeadNorms::NAMES
        } else {
            &[]
        };
        for i in 0..c.num_hidden_layers {
            let norms = ["input_layernorm", "post_attention_layernorm"]
                .map(|n| (n, c.hidden_size))
                .into_iter()
                .chain(head_norms.iter().map(|&n| (n, c.head_dim)))
                .map(|(n, len)| (format!("model.layers.{i}.{n}.weight"), vec![len]));
            let linears = LinearId::ALL.into_iter().flat_map(|id| {
                let (rows, columns) = id.dims(&shape);
                let prefix = id.tensor_prefix(i);
                let bias = has_bias(c, id).then(|| (format!("{prefix}.bias"), vec![rows]));
                std::iter::once((format!("{prefix}.weight"), vec![rows, columns])).chain(bias)
            });
            for (name, expected) in norms.into_iter().chain(linears) {
                let actual = self.weights.meta(&name)?.shape;
                if actual != expected {
                    return Err(ModelError::TensorShape {
                        name,
                        expected,
                        actual,
                    });
                }
            }
        }
        Ok(())
    }

    /// Checks the tensors outside the decoder layers that a loader reads: the embedding, the
    /// final norm and, unless the embeddings are tied, `lm_head.weight`, each with the shape
    /// `config.json` implies and only finite values. They are read whole (a chunk at a time),
    /// so that a checkpoint a loader would reject is not quantized first.
    pub fn check_outer_tensors(&self) -> Result<()> {
        let c = &self.config;
        let table = [c.vocab_size, c.hidden_size];
        self.weights.check_finite(EMBED_TOKENS, Some(&table))?;
        self.weights
            .check_finite(FINAL_NORM, Some(&[c.hidden_size]))?;
        if !c.tie_word_embeddings {
            self.weights.check_finite(LM_HEAD, Some(&table))?;
        }
        Ok(())
    }

    /// The token embedding `[vocab, hidden]`.
    pub fn load_embedding(&self) -> Result<Array2<f32>> {
        let c = &self.config;
        self.weights
            .load_matrix(EMBED_TOKENS, c.vocab_size, c.hidden_size)
    }

    /// The final RMSNorm weight `[hidden]`.
    pub fn load_final_norm(&self) -> Result<Array1<f32>> {
        self.weights
            .load_vector(FINAL_NORM, self.config.hidden_size)
    }

    /// The output projection `[vocab, hidden]`; with tied embeddings, a copy of the embedding
    /// (use [`Checkpoint::load_model`] to share one matrix instead).
    pub fn load_lm_head(&self) -> Result<Linear> {
        let c = &self.config;
        let w = if c.tie_word_embeddings {
            self.load_embedding()?
        } else {
            self.weights
                .load_matrix(LM_HEAD, c.vocab_size, c.hidden_size)?
        };
        Linear::new(w, None)
    }

    /// `DIR/tokenizer.json`.
    pub fn load_tokenizer(&self) -> Result<Tokenizer> {
        Tokenizer::from_dir(&self.dir)
    }

    /// Every layer, the embedding, final norm and output projection, in f32.
    pub fn load_model(&self) -> Result<Model> {
        let c = &self.config;
        let layers = (0..c.num_hidden_layers)
            .map(|i| self.load_layer(i))
            .collect::<Result<Vec<_>>>()?;
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(self.load_lm_head()?)
        };
        Ok(Model {
            config: c.clone(),
            embed_tokens: self.load_embedding()?,
            layers,
            norm: self.load_final_norm()?,
            lm_head,
        })
    }
}

/// Negative log-likelihood of one sequence's next-token predictions.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct NllSum {
    /// Sum over predicted tokens of `-ln p(token | prefix)`.
    pub sum: f64,
    /// Number of predicted tokens (sequence length − 1).
    pub count: usize,
}

/// A whole Llama-family model in f32.
#[derive(Debug, Clone)]
pub struct Model {
    /// The configuration it was built from.
    pub config: ModelConfig,
    /// Token embedding `[vocab, hidden]`.
    pub embed_tokens: Array2<f32>,
    /// The decoder layers.
    pub layers: Vec<DecoderLayer>,
    /// Final RMSNorm weight `[hidden]`.
    pub norm: Array1<f32>,
    /// Untied output projection; `None` when it is the embedding.
    pub lm_head: Option<Linear>,
}

/// Rows of logits computed at a time by [`Model::nll`]: bounds the `[rows, vocab]` buffer
/// (256 × 49152 floats = 48 MiB) whatever the batch.
const LOGIT_ROWS: usize = 256;

impl Model {
    /// Looks up token embeddings: `[tokens.len(), hidden]`.
    pub fn embed(&self, tokens: &[u32]) -> Result<Array2<f32>> {
        embed(self.embed_tokens.view(), tokens)
    }

    /// The output projection's weight `[vocab, hidden]` (the embedding when tied).
    pub fn lm_head_weight(&self) -> ArrayView2<'_, f32> {
        match &self.lm_head {
            Some(l) => l.weight.view(),
            None => self.embed_tokens.view(),
        }
    }

    /// Embedding and all decoder layers, then the final norm: `[tokens, hidden]` for the
    /// sequences `tokens` holds end to end, `seq_lens` long each.
    pub fn final_hidden(
        &self,
        tokens: &[u32],
        seq_lens: &[usize],
        par: Par,
    ) -> Result<Array2<f32>> {
        let mut x = self.embed(tokens)?;
        for layer in &self.layers {
            let next = forward_layer(layer, x.view(), seq_lens, par)?;
            recycle(std::mem::replace(&mut x, next));
        }
        let out = rms_norm_par(x.view(), self.norm.view(), self.config.rms_norm_eps, par);
        recycle(x);
        out
    }

    /// Logits `[tokens, vocab]`. For long inputs prefer [`Model::nll`], which never holds
    /// more than a few hundred rows of logits.
    pub fn logits(&self, tokens: &[u32], seq_lens: &[usize], par: Par) -> Result<Array2<f32>> {
        let hidden = self.final_hidden(tokens, seq_lens, par)?;
        let w = self.lm_head_weight();
        let mut out = match self.lm_head.as_ref().and_then(|l| l.bias.as_ref()) {
            Some(b) => b
                .broadcast((hidden.nrows(), b.len()))
                .expect("bias")
                .to_owned(),
            None => Array2::zeros((hidden.nrows(), w.nrows())),
        };
        let has_bias = self.lm_head.as_ref().is_some_and(|l| l.bias.is_some());
        gptq_linalg::x_wt(hidden.view(), w, out.view_mut(), has_bias, par)
            .map_err(ModelError::Products)?;
        Ok(out)
    }

    /// Next-token NLL of each sequence: position `t` predicts token `t + 1`. Logits are made
    /// 256 rows at a time and reduced at once, so memory stays bounded whatever the batch.
    /// A sequence whose NLL is not finite (activations that overflowed) is an error, not a
    /// NaN.
    pub fn nll(&self, tokens: &[u32], seq_lens: &[usize], par: Par) -> Result<Vec<NllSum>> {
        let hidden = self.final_hidden(tokens, seq_lens, par)?;
        let (w, bias) = match &self.lm_head {
            Some(l) => (l.weight.view(), l.bias.as_ref()),
            None => (self.embed_tokens.view(), None),
        };
        // Target of each row, or None for the last row of a sequence (it predicts nothing).
        let mut targets: Vec<Option<u32>> = Vec::with_capacity(tokens.len());
        let mut owner: Vec<usize> = Vec::with_capacity(tokens.len());
        let mut at = 0;
        for (sid, &n) in seq_lens.iter().enumerate() {
            for t in 0..n {
                targets.push((t + 1 < n).then(|| tokens[at + t + 1]));
                owner.push(sid);
            }
            at += n;
        }
        let mut sums = vec![NllSum::default(); seq_lens.len()];
        let vocab = w.nrows();
        let mut logits = Array2::<f32>::zeros((LOGIT_ROWS.min(hidden.nrows()), vocab));
        for r0 in (0..hidden.nrows()).step_by(LOGIT_ROWS) {
            let r1 = (r0 + LOGIT_ROWS).min(hidden.nrows());
            let mut block = logits.slice_mut(s![..r1 - r0, ..]);
            if let Some(b) = bias {
                block.assign(&b.broadcast((r1 - r0, vocab)).expect("bias"));
            }
            let rows = hidden.slice(s![r0..r1, ..]);
            gptq_linalg::x_wt(rows, w, block.view_mut(), bias.is_some(), par)
                .map_err(ModelError::Products)?;
            let block = logits.slice(s![..r1 - r0, ..]);
            let row_nll = |r: usize| -> Option<(usize, f64)> {
                let tgt = targets[r0 + r]? as usize;
                let row = block.row(r);
                let row = row.as_slice().expect("contiguous row");
                Some((owner[r0 + r], log_sum_exp(row) - row[tgt] as f64))
            };
            let parts: Vec<Option<(usize, f64)>> = if is_parallel(par) {
                (0..r1 - r0).into_par_iter().map(row_nll).collect()
            } else {
                (0..r1 - r0).map(row_nll).collect()
            };
            for (sid, nll) in parts.into_iter().flatten() {
                sums[sid].sum += nll;
                sums[sid].count += 1;
            }
        }
        recycle(hidden);
        recycle(logits);
        if let Some(sequence) = sums.iter().position(|s| !s.sum.is_finite()) {
            return Err(ModelError::NonFiniteLikelihood { sequence });
        }
        Ok(sums)
    }
}

/// Looks up rows of `table` (`[vocab, hidden]`) for `tokens`, checking every id.
pub fn embed(table: ArrayView2<'_, f32>, tokens: &[u32]) -> Result<Array2<f32>> {
    let (vocab, h) = table.dim();
    let mut out = Array2::<f32>::zeros((tokens.len(), h));
    for (mut row, &t) in out.rows_mut().into_iter().zip(tokens) {
        if t as usize >= vocab {
            return Err(ModelError::TokenOutOfRange {
                context: "the input sequence".into(),
                id: t,
                vocab_size: vocab,
            });
        }
        row.assign(&table.row(t as usize));
    }
    Ok(out)
}

/// Whether linear `id` has a bias in a model of this configuration.
fn has_bias(config: &ModelConfig, id: LinearId) -> bool {
    match id {
        LinearId::Q | LinearId::K | LinearId::V => config.attention_bias,
        // Qwen2 has q/k/v biases but none on o_proj; Llama's (and Qwen3's) attention_bias
        // covers o.
        LinearId::O => config.attention_bias && config.architecture != crate::Architecture::Qwen2,
        LinearId::Gate | LinearId::Up | LinearId::Down => config.mlp_bias,
    }
}
