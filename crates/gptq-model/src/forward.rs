//! The decoder layer's forward pass, in the stages the GPTQ pipeline needs.
//!
//! Every stage works on a *batch*: the rows of the activation matrix are the tokens of one or
//! more sequences laid end to end, and `seq_lens` says how many rows each sequence has
//! (`&[x.nrows()]` for a single sequence). The linear layers run on all rows at once — one
//! large GEMM per linear, which is where batching pays, and what a [`Compute`] sends to its
//! products — while attention runs per sequence and head, with (sequence, head) pairs spread
//! over the CPU threads, each computed by the products' attention (f32 on the CPU when they
//! have none, [`gptq_core::ForwardCompute::attention`]).
//!
//! The layer is one sequence of [`LayerStage`]s, each computing the input of a group of linears
//! from the previous one; [`forward_layer_observed`] runs them on one batch, and a quantization
//! pipeline runs each over all of its batches before the next:
//!
//! ```text
//! normed  = rms_norm(x, input_layernorm)                 ← input of q/k/v_proj   (Attention)
//! attn    = attention_core(layer, normed)                ← input of o_proj       (AttentionOutput)
//! h       = x + o_proj(attn)
//! normed2 = rms_norm(h, post_attention_layernorm)        ← input of gate/up_proj (Mlp)
//! inner   = mlp_inner(layer, normed2)                    ← input of down_proj    (MlpOutput)
//! out     = h + down_proj(inner)                                                 (finish_layer)
//! ```

use faer::Par;
use gptq_core::HeadAttention;
use gptq_linalg::elementwise::{is_parallel, rms_norm_heads_in_place, silu_mul_inplace};
use ndarray::{Array2, ArrayView2, ArrayViewMut2, ShapeBuilder};
use rayon::prelude::*;

use crate::compute::Compute;
use crate::error::{ModelError, Result};
use crate::layer::{DecoderLayer, LinearId};
use crate::ops::rms_norm_par;
use crate::pool::recycle;
use crate::rope::RopeTable;

fn check_batch(
    what: &'static str,
    x: &ArrayView2<'_, f32>,
    width: usize,
    seq_lens: &[usize],
) -> Result<()> {
    let total: usize = seq_lens.iter().sum();
    if x.ncols() != width || x.nrows() != total {
        return Err(ModelError::shape(
            what,
            format!("[{total}, {width}] (rows = sum of seq_lens {seq_lens:?})"),
            format!("{:?}", x.shape()),
        ));
    }
    Ok(())
}

/// Self-attention up to, not including, `o_proj`: q/k/v projections (with biases if any),
/// Qwen3's per-head RMSNorm of queries and keys (if the layer has one), rotary embeddings in
/// Hugging Face's rotate-half convention (except in SmolLM3's layers without them), and
/// grouped-query causal attention with a max-subtracted softmax on the compute's attention
/// products. `normed` is
/// `[tokens, hidden]` (the output of the input RMSNorm); the result is
/// `[tokens, heads·head_dim]`, the input of `o_proj`.
pub fn attention_core<'c>(
    layer: &DecoderLayer,
    normed: ArrayView2<'_, f32>,
    seq_lens: &[usize],
    compute: impl Into<Compute<'c>>,
) -> Result<Array2<f32>> {
    let compute = compute.into();
    let par = compute.par();
    let s = layer.shape;
    check_batch("attention input", &normed, s.hidden_size, seq_lens)?;
    layer.validate()?;
    let mut q = layer.q_proj.forward(normed, compute)?;
    let mut k = layer.k_proj.forward(normed, compute)?;
    let v = layer.v_proj.forward(normed, compute)?;

    if let Some(norms) = &layer.head_norms {
        for (m, w) in [(&mut q, &norms.q), (&mut k, &norms.k)] {
            let w = w.to_vec();
            rms_norm_heads_in_place(
                m.as_slice_mut().expect("fresh array"),
                &w,
                s.rms_norm_eps,
                par,
            );
        }
    }

    let d = s.head_dim;
    let max_len = seq_lens.iter().copied().max().unwrap_or(0);
    // Folding the 1/sqrt(d) score scale into q costs nothing here; for head_dim 64 (1/8) it is
    // exact, so scores round as transformers' do.
    let scale = 1.0 / (d as f32).sqrt();
    let positions: Vec<usize> = seq_lens.iter().flat_map(|&n| 0..n).collect();
    if s.rotary {
        let rope = RopeTable::new(max_len, d, s.rope_theta, s.rope_scaling);
        rotate_rows(&mut q, &positions, &rope, scale, par);
        rotate_rows(&mut k, &positions, &rope, 1.0, par);
    } else {
        // SmolLM3's NoPE layers: positions enter only through the causal mask.
        q.mapv_inplace(|v| v * scale);
    }

    let starts: Vec<usize> = seq_lens
        .iter()
        .scan(0, |acc, &n| {
            let start = *acc;
            *acc += n;
            Some(start)
        })
        .collect();
    let tasks: Vec<(usize, usize)> = (0..seq_lens.len())
        .filter(|&i| seq_lens[i] > 0)
        .flat_map(|i| (0..s.num_heads).map(move |h| (i, h)))
        .collect();
    let group = s.num_heads / s.num_kv_heads;
    let qs = q.as_slice().expect("fresh array");
    let ks = k.as_slice().expect("fresh array");
    let vs = v.as_slice().expect("fresh array");
    let width = s.q_width();
    // Every (sequence, head) task below writes its whole block, so no zero fill is needed.
    let mut out = crate::pool::scratch(q.nrows(), width);
    let dst = OutPtr(out.as_mut_ptr());
    let attention = compute.attention();
    let run = |&(i, h): &(usize, usize)| -> Result<()> {
        let geo = HeadGeometry {
            start: starts[i],
            len: seq_lens[i],
            head_dim: d,
            q_stride: s.q_width(),
            q_col: h * d,
            kv_stride: s.kv_width(),
            kv_col: (h / group) * d,
            window: s.sliding_window,
        };
        // SAFETY: `out` outlives every task; task (i, h) writes only rows
        // starts[i]..starts[i]+seq_lens[i] of columns h·d..(h+1)·d, and no two tasks share
        // both a sequence and a head, so the regions written are disjoint and nothing reads
        // `out` until all tasks are done.
        let block = unsafe {
            ArrayViewMut2::from_shape_ptr(
                (seq_lens[i], d).strides((width, 1)),
                dst.get().add(starts[i] * width + h * d),
            )
        };
        attention
            .head_attention(geo.head(qs, ks, vs), block)
            .map_err(ModelError::Products)
    };
    if is_parallel(par) {
        tasks.par_iter().try_for_each(run)?;
    } else {
        tasks.iter().try_for_each(run)?;
    }
    for a in [q, k, v] {
        recycle(a);
    }
    Ok(out)
}

/// The output pointer shared by the attention tasks, which write disjoint blocks through it.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: see the use in `attention_core`: tasks write disjoint regions.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// A method (not field access) so that closures capture the whole `Sync` wrapper.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Rotates (and scales) every row of `x` in place at its position within its sequence.
fn rotate_rows(x: &mut Array2<f32>, positions: &[usize], rope: &RopeTable, scale: f32, par: Par) {
    let w = x.ncols();
    let data = x.as_slice_mut().expect("fresh array");
    if is_parallel(par) {
        data.par_chunks_mut(w)
            .zip(positions.par_iter())
            .for_each(|(row, &p)| rope.rotate_row(row, p, scale));
    } else {
        for (row, &p) in data.chunks_mut(w).zip(positions) {
            rope.rotate_row(row, p, scale);
        }
    }
}

/// Where one head of one sequence sits in the row-major q/k/v matrices.
struct HeadGeometry {
    start: usize,
    len: usize,
    head_dim: usize,
    q_stride: usize,
    q_col: usize,
    kv_stride: usize,
    kv_col: usize,
    window: Option<usize>,
}

impl HeadGeometry {
    /// This head's queries, keys and values as strided views of the row-major q/k/v matrices.
    fn head<'a>(&self, q: &'a [f32], k: &'a [f32], v: &'a [f32]) -> HeadAttention<'a> {
        let view = |m: &'a [f32], stride: usize, col: usize| {
            let shape = (self.len, self.head_dim).strides((stride, 1));
            ArrayView2::from_shape(shape, &m[self.start * stride + col..])
                .expect("the head lies inside the matrix")
        };
        HeadAttention {
            q: view(q, self.q_stride, self.q_col),
            k: view(k, self.kv_stride, self.kv_col),
            v: view(v, self.kv_stride, self.kv_col),
            window: self.window,
        }
    }
}

/// The MLP up to, not including, `down_proj`: `silu(gate_proj(x)) ⊙ up_proj(x)`.
/// `normed2` is `[tokens, hidden]`; the result is `[tokens, intermediate]`.
pub fn mlp_inner<'c>(
    layer: &DecoderLayer,
    normed2: ArrayView2<'_, f32>,
    compute: impl Into<Compute<'c>>,
) -> Result<Array2<f32>> {
    let compute = compute.into();
    let mut gate = layer.gate_proj.forward(normed2, compute)?;
    let up = layer.up_proj.forward(normed2, compute)?;
    silu_mul_inplace(
        gate.as_slice_mut().expect("fresh array"),
        up.as_slice().expect("fresh array"),
        compute.par(),
    );
    recycle(up);
    Ok(gate)
}

/// What [`forward_layer_observed`] shows its observer: the input shared by `ids`.
#[derive(Debug, Clone, Copy)]
pub struct LinearInput<'a> {
    /// The linears that read this input (q/k/v, o, gate/up, or down).
    pub ids: &'static [LinearId],
    /// `[tokens, in_features]`.
    pub input: ArrayView2<'a, f32>,
}

/// One decoder layer: `h = x + o(attention_core(norm1(x)))`, `out = h + down(mlp_inner(norm2(h)))`.
/// `x` is `[tokens, hidden]` for the sequences of `seq_lens` laid end to end.
pub fn forward_layer<'c>(
    layer: &DecoderLayer,
    x: ArrayView2<'_, f32>,
    seq_lens: &[usize],
    compute: impl Into<Compute<'c>>,
) -> Result<Array2<f32>> {
    forward_layer_observed(layer, x, seq_lens, compute, |_| Ok(()))
}

/// [`forward_layer`], calling `observe` with the input of each group of linears as soon as it
/// is computed (four calls: q/k/v, o, gate/up, down; see [`LayerStage`]) — e.g. to accumulate
/// GPTQ Hessians in one pass. An error from `observe` stops the pass and is returned.
pub fn forward_layer_observed<'c, F>(
    layer: &DecoderLayer,
    x: ArrayView2<'_, f32>,
    seq_lens: &[usize],
    compute: impl Into<Compute<'c>>,
    mut observe: F,
) -> Result<Array2<f32>>
where
    F: FnMut(LinearInput<'_>) -> Result<()>,
{
    let compute = compute.into();
    check_batch("decoder layer input", &x, layer.shape.hidden_size, seq_lens)?;
    let mut hidden = crate::pool::scratch(x.nrows(), x.ncols());
    hidden.assign(&x);
    let mut input: Option<Array2<f32>> = None;
    for stage in LayerStage::ALL {
        let next = stage.input(layer, &mut hidden, input.take(), seq_lens, compute)?;
        observe(LinearInput {
            ids: stage.linears(),
            input: next.view(),
        })?;
        input = Some(next);
    }
    finish_layer(layer, &mut hidden, input, compute)?;
    Ok(hidden)
}

/// The stages of a decoder layer, in forward order: each computes the input that one group of
/// linears reads (GPTQ's true-sequential groups) from the residual stream and the previous
/// stage's input. The evaluation forward pass ([`forward_layer_observed`]) runs them one batch
/// at a time; a quantization pipeline runs each over every batch, quantizing its linears before
/// the next stage multiplies them.
///
/// ```
/// use gptq_model::{LayerStage, LinearId};
///
/// let groups: Vec<&[LinearId]> = LayerStage::ALL.iter().map(|s| s.linears()).collect();
/// assert_eq!(groups[0], &[LinearId::Q, LinearId::K, LinearId::V]);
/// assert_eq!(groups[3], &[LinearId::Down]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LayerStage {
    /// The input RMSNorm: the input of q/k/v.
    Attention,
    /// Attention up to `o_proj` ([`attention_core`]): the input of `o_proj`.
    AttentionOutput,
    /// `o_proj` added to the residual stream, then the post-attention RMSNorm: the input of
    /// gate/up.
    Mlp,
    /// `silu(gate) ⊙ up` ([`mlp_inner`]): the input of `down_proj`.
    MlpOutput,
}

impl LayerStage {
    /// Every stage, in forward order.
    pub const ALL: [LayerStage; 4] = [
        LayerStage::Attention,
        LayerStage::AttentionOutput,
        LayerStage::Mlp,
        LayerStage::MlpOutput,
    ];

    /// The linears that read this stage's output.
    pub fn linears(self) -> &'static [LinearId] {
        match self {
            LayerStage::Attention => LinearId::Q.input_group(),
            LayerStage::AttentionOutput => LinearId::O.input_group(),
            LayerStage::Mlp => LinearId::Gate.input_group(),
            LayerStage::MlpOutput => LinearId::Down.input_group(),
        }
    }

    /// This stage on one batch (`seq_lens` long sequences laid end to end): `hidden` is the
    /// residual stream (`[tokens, hidden]`, updated in place where the stage adds to it) and
    /// `previous` the previous stage's output (`None` for the first stage), consumed. Returns
    /// the input of [`linears`](Self::linears).
    pub fn input(
        self,
        layer: &DecoderLayer,
        hidden: &mut Array2<f32>,
        previous: Option<Array2<f32>>,
        seq_lens: &[usize],
        compute: Compute<'_>,
    ) -> Result<Array2<f32>> {
        let s = layer.shape;
        let par = compute.par();
        let previous = match (self, previous) {
            (LayerStage::Attention, _) => {
                let norm = layer.input_layernorm.view();
                return rms_norm_par(hidden.view(), norm, s.rms_norm_eps, par);
            }
            (_, Some(previous)) => previous,
            (_, None) => {
                return Err(ModelError::InvalidArgument(format!(
                    "decoder layer stage {self:?} needs the previous stage's output"
                )));
            }
        };
        // Each input is handed back as soon as it is used.
        Ok(match self {
            // (The first stage returned above.)
            LayerStage::Attention | LayerStage::AttentionOutput => {
                let attention = attention_core(layer, previous.view(), seq_lens, compute)?;
                recycle(previous);
                attention
            }
            LayerStage::Mlp => {
                layer.o_proj.forward_add(previous.view(), hidden, compute)?;
                recycle(previous);
                let norm = layer.post_attention_layernorm.view();
                rms_norm_par(hidden.view(), norm, s.rms_norm_eps, par)?
            }
            LayerStage::MlpOutput => {
                let inner = mlp_inner(layer, previous.view(), compute)?;
                recycle(previous);
                inner
            }
        })
    }
}

/// Ends a decoder layer on one batch: `hidden += down_proj(down_input)`, `down_input` being the
/// output of [`LayerStage::MlpOutput`]; `hidden` then holds the layer's output.
pub fn finish_layer(
    layer: &DecoderLayer,
    hidden: &mut Array2<f32>,
    down_input: Option<Array2<f32>>,
    compute: Compute<'_>,
) -> Result<()> {
    let inner = down_input.ok_or_else(|| {
        ModelError::InvalidArgument(
            "a decoder layer ends with the input of down_proj, which was not computed".into(),
        )
    })?;
    layer.down_proj.forward_add(inner.view(), hidden, compute)?;
    recycle(inner);
    Ok(())
}
