//! The decoder layer's forward pass, in the stages the GPTQ pipeline needs.
//!
//! Every stage works on a *batch*: the rows of the activation matrix are the tokens of one or
//! more sequences laid end to end, and `seq_lens` says how many rows each sequence has
//! (`&[x.nrows()]` for a single sequence). The linear layers run on all rows at once — one
//! large GEMM per linear, which is where batching pays, and what a [`Compute`] can send to a
//! backend's products — while attention runs per sequence and head on the CPU threads, with
//! (sequence, head) pairs spread over them: in f32 here, or with the backend's products when
//! they compute attention too ([`gptq_core::ForwardProducts::computes_attention`], e.g. bf16).
//!
//! ```text
//! normed  = rms_norm(x, input_layernorm)                 ← input of q/k/v_proj
//! attn    = attention_core(layer, normed)                ← input of o_proj
//! h       = x + o_proj(attn)
//! normed2 = rms_norm(h, post_attention_layernorm)        ← input of gate/up_proj
//! inner   = mlp_inner(layer, normed2)                    ← input of down_proj
//! out     = h + down_proj(inner)
//! ```

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use gptq_core::HeadAttention;
use ndarray::{Array2, ArrayView2, ArrayViewMut2, ShapeBuilder};
use rayon::prelude::*;

use crate::compute::Compute;
use crate::error::{ModelError, Result};
use crate::layer::{DecoderLayer, LinearId};
use crate::ops::{
    is_parallel, rms_norm_heads_in_place, rms_norm_par, silu_mul_inplace, softmax_in_place,
};
use crate::pool::recycle;
use crate::rope::RopeTable;

/// Query rows per attention block. Causal attention only needs keys up to the block's last
/// query, so blocking skips most of the masked upper triangle (12 % waste at 512 tokens)
/// while keeping each product a reasonably sized GEMM.
const QUERY_BLOCK: usize = 64;

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
/// grouped-query causal attention with an f32 max-subtracted softmax. `normed` is
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
    let products = compute.attention_products();
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
            MatMut::from_raw_parts_mut(
                dst.get().add(starts[i] * width + h * d),
                seq_lens[i],
                d,
                width as isize,
                1,
            )
        };
        match products {
            Some(products) => {
                let head = geo.head(qs, ks, vs);
                products
                    .head_attention(head, &softmax_in_place, faer_to_ndarray(block))
                    .map_err(ModelError::Products)
            }
            None => {
                head_attention(qs, ks, vs, &geo, block);
                Ok(())
            }
        }
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

/// An ndarray view of a faer block (same memory, same strides).
fn faer_to_ndarray(m: MatMut<'_, f32>) -> ArrayViewMut2<'_, f32> {
    let (rows, cols) = (m.nrows(), m.ncols());
    let strides = (m.row_stride() as usize, m.col_stride() as usize);
    // SAFETY: the faer view covers `rows × cols` elements at these (non-negative) strides for
    // its lifetime, which the ndarray view inherits; consuming it leaves the new view the only
    // access.
    unsafe { ArrayViewMut2::from_shape_ptr((rows, cols).strides(strides), m.as_ptr_mut()) }
}

/// Causal attention of one head over one sequence, written into `out` (`[len, head_dim]`).
fn head_attention(q: &[f32], k: &[f32], v: &[f32], g: &HeadGeometry, mut out: MatMut<'_, f32>) {
    let len = g.len;
    let mut scores = vec![0f32; QUERY_BLOCK.min(len) * len];
    // Strided views of this head's columns: no copy of q, k or v.
    fn view<'a>(
        m: &'a [f32],
        g: &HeadGeometry,
        stride: usize,
        col: usize,
        row0: usize,
        rows: usize,
    ) -> MatRef<'a, f32> {
        let off = (g.start + row0) * stride + col;
        let end = off + (rows - 1) * stride + g.head_dim;
        MatRef::from_row_major_slice_with_stride(&m[off..end], rows, g.head_dim, stride)
    }
    for r0 in (0..len).step_by(QUERY_BLOCK) {
        let r1 = (r0 + QUERY_BLOCK).min(len);
        let rows = r1 - r0;
        // First key any query of the block may see.
        let k0 = g.window.map_or(0, |w| (r0 + 1).saturating_sub(w));
        let nk = r1 - k0;
        let sc = &mut scores[..rows * nk];
        matmul(
            MatMut::from_row_major_slice_mut(sc, rows, nk),
            Accum::Replace,
            view(q, g, g.q_stride, g.q_col, r0, rows),
            view(k, g, g.kv_stride, g.kv_col, k0, nk).transpose(),
            1.0f32,
            Par::Seq,
        );
        for (r, row) in sc.chunks_exact_mut(nk).enumerate() {
            let i = r0 + r;
            // Keys k0 + lo ..= i are visible to query i.
            let lo = g.window.map_or(0, |w| (i + 1).saturating_sub(w)) - k0;
            let hi = i - k0 + 1;
            softmax_in_place(&mut row[lo..hi]);
            row[..lo].fill(0.0);
            row[hi..].fill(0.0);
        }
        matmul(
            out.as_mut().subrows_mut(r0, rows),
            Accum::Replace,
            MatRef::from_row_major_slice(sc, rows, nk),
            view(v, g, g.kv_stride, g.kv_col, k0, nk),
            1.0f32,
            Par::Seq,
        );
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
/// is computed (four calls: q/k/v, o, gate/up, down) — e.g. to accumulate GPTQ Hessians in
/// one pass. An error from `observe` stops the pass and is returned.
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
    let par = compute.par();
    let s = layer.shape;
    check_batch("decoder layer input", &x, s.hidden_size, seq_lens)?;
    let normed = rms_norm_par(x, layer.input_layernorm.view(), s.rms_norm_eps, par)?;
    observe(LinearInput {
        ids: LinearId::Q.input_group(),
        input: normed.view(),
    })?;
    let attn = attention_core(layer, normed.view(), seq_lens, compute)?;
    recycle(normed);
    observe(LinearInput {
        ids: LinearId::O.input_group(),
        input: attn.view(),
    })?;
    let mut h = crate::pool::scratch(x.nrows(), x.ncols());
    h.assign(&x);
    layer.o_proj.forward_add(attn.view(), &mut h, compute)?;
    recycle(attn);
    let normed2 = rms_norm_par(
        h.view(),
        layer.post_attention_layernorm.view(),
        s.rms_norm_eps,
        par,
    )?;
    observe(LinearInput {
        ids: LinearId::Gate.input_group(),
        input: normed2.view(),
    })?;
    let inner = mlp_inner(layer, normed2.view(), compute)?;
    recycle(normed2);
    observe(LinearInput {
        ids: LinearId::Down.input_group(),
        input: inner.view(),
    })?;
    layer.down_proj.forward_add(inner.view(), &mut h, compute)?;
    recycle(inner);
    Ok(h)
}
