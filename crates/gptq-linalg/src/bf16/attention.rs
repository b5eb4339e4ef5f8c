//! One head's causal attention with bf16-rounded operands: the two products of attention
//! (`q kᵀ` and `P v`) rounded like the linears' products of [`super::x_wt`], so that a forward
//! pass with bf16 products rounds all of its products the same way.
//!
//! Queries go in blocks of 64; a block needs the keys up to its last query only, so the masked
//! upper triangle is mostly skipped. On the kernels, `q` and `k` are converted to bf16 once per
//! head (the keys packed in the kernel's 64-key panels), `v` is packed with pairs of consecutive
//! keys, and each block's probabilities are converted to pairs after the softmax. Elsewhere the
//! rounded operands go through faer's f32 products.

use gptq_core::{HeadAttention, Result};
use ndarray::{Array2, ArrayViewMut2};

use super::{PANEL, kernels_available, round_bf16};
use crate::attention::{
    BlockProducts, QUERY_BLOCK, QueryBlock, f32_scores, f32_weighted_values, run_blocks,
};

/// `out = P · v` for one head of one sequence, `P` being the softmax of the visible scores
/// `q kᵀ` (see [`AttentionProducts`](gptq_core::AttentionProducts)), with `q`, `k`, `v` and `P`
/// rounded to bf16 and the sums in f32.
///
/// ```
/// use gptq_core::HeadAttention;
/// use gptq_linalg::bf16;
/// use ndarray::{Array2, array};
///
/// // Two tokens: the first sees only itself, the second both, with equal scores.
/// let q = array![[0.0f32, 0.0], [0.0, 0.0]];
/// let v = array![[2.0f32, 4.0], [6.0, 8.0]];
/// let head = HeadAttention { q: q.view(), k: q.view(), v: v.view(), window: None };
/// let mut out = Array2::zeros((2, 2));
/// bf16::head_attention(head, out.view_mut())?;
/// assert_eq!(out, array![[2.0, 4.0], [4.0, 6.0]]);
/// # Ok::<(), gptq_core::GptqError>(())
/// ```
pub fn head_attention(head: HeadAttention<'_>, out: ArrayViewMut2<'_, f32>) -> Result<()> {
    if !kernels_available() {
        return head_attention_portable(head, out);
    }
    head.check(&out)?;
    #[cfg(target_arch = "x86_64")]
    if !out.is_empty() {
        let unit_columns = out.strides()[1] == 1 && out.strides()[0] >= 0;
        if !unit_columns {
            let mut dense = Array2::zeros(out.dim());
            kernel::head_attention(&head, dense.view_mut());
            let mut out = out;
            out.assign(&dense);
        } else {
            kernel::head_attention(&head, out);
        }
    }
    Ok(())
}

/// [`head_attention`] without the kernels, what CPUs without them run: the rounded operands
/// through faer's f32 products (the same numbers up to the order of the f32 sums).
pub fn head_attention_portable(
    head: HeadAttention<'_>,
    mut out: ArrayViewMut2<'_, f32>,
) -> Result<()> {
    head.check(&out)?;
    if !out.is_empty() {
        run_blocks(&head, &mut RoundedHead::new(&head), &mut out, PANEL);
    }
    Ok(())
}

/// The rounded operands for faer's f32 products.
struct RoundedHead {
    q: Array2<f32>,
    k: Array2<f32>,
    v: Array2<f32>,
    probabilities: Vec<f32>,
}

impl RoundedHead {
    fn new(head: &HeadAttention<'_>) -> Self {
        RoundedHead {
            q: head.q.mapv(round_bf16),
            k: head.k.mapv(round_bf16),
            v: head.v.mapv(round_bf16),
            probabilities: Vec::new(),
        }
    }
}

impl BlockProducts for RoundedHead {
    fn scores(&mut self, block: QueryBlock, scores: &mut [f32]) {
        f32_scores(self.q.view(), self.k.view(), block, scores);
    }

    fn weighted_values(&mut self, block: QueryBlock, p: &[f32], out: &mut ArrayViewMut2<'_, f32>) {
        self.probabilities.clear();
        self.probabilities.extend(p.iter().map(|&p| round_bf16(p)));
        f32_weighted_values(self.v.view(), block, &self.probabilities, out);
    }
}

#[cfg(target_arch = "x86_64")]
mod kernel {
    use faer::Par;
    use gptq_core::HeadAttention;
    use ndarray::ArrayViewMut2;

    use super::super::{Layout, Operand, PANEL, PackedPanels, Panels, RowPairs, x86};
    use super::{BlockProducts, QueryBlock, run_blocks};

    /// Memory of the converted operands, kept between heads on each thread.
    #[derive(Default)]
    struct Buffers {
        queries: Vec<u32>,
        keys: Vec<u32>,
        key_panels: Vec<u32>,
        value_panels: Vec<u32>,
        probabilities: Vec<u32>,
    }

    thread_local! {
        static SCRATCH: std::cell::RefCell<Buffers> = std::cell::RefCell::default();
    }

    /// [`super::head_attention`] on the kernels; `out` has unit column stride and is not empty.
    pub(super) fn head_attention(head: &HeadAttention<'_>, mut out: ArrayViewMut2<'_, f32>) {
        let buffers = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
        let mut products = KernelHead::new(head, buffers);
        run_blocks(head, &mut products, &mut out, PANEL);
        SCRATCH.with(|s| *s.borrow_mut() = products.into_buffers());
    }

    /// The converted operands of one head.
    struct KernelHead {
        /// `q` as pairs along each row.
        queries: RowPairs,
        /// `k` as pairs along each row (kept only for its memory).
        keys: RowPairs,
        /// `k` in panels of 64 keys: the right operand of the scores.
        key_panels: PackedPanels,
        /// `v` in panels of 64 of its columns, pair `j` holding keys `2j` and `2j + 1`.
        value_panels: Vec<u32>,
        /// Probabilities of a block as pairs of consecutive keys, `len.div_ceil(2)` per row;
        /// pair `j` is keys `2j` and `2j + 1`, so that a block's pairs line up with `v`'s.
        probabilities: Vec<u32>,
        len: usize,
        head_dim: usize,
    }

    impl KernelHead {
        fn new(head: &HeadAttention<'_>, buffers: Buffers) -> Self {
            let (len, head_dim) = head.q.dim();
            let queries = RowPairs::from_rows(head.q, Par::Seq, buffers.queries);
            let keys = RowPairs::from_rows(head.k, Par::Seq, buffers.keys);
            let key_panels = PackedPanels::from_rows(&keys, Par::Seq, buffers.key_panels);
            let key_pairs = len.div_ceil(2);
            let mut value_panels = buffers.value_panels;
            value_panels.resize(head_dim.div_ceil(PANEL) * key_pairs * PANEL, 0);
            let row = |i: usize| -> std::borrow::Cow<'_, [f32]> {
                let r = head.v.row(i);
                match r.to_slice() {
                    Some(values) => values.into(),
                    None => r.to_vec().into(),
                }
            };
            for pair in 0..key_pairs {
                let first = row(2 * pair);
                let second = (2 * pair + 1 < len).then(|| row(2 * pair + 1));
                // SAFETY: kernels are available (checked by the caller); the panels hold
                // `key_pairs` pairs of every panel of `head_dim` columns.
                unsafe {
                    x86::write_pair(
                        &first,
                        second.as_deref(),
                        value_panels.as_mut_ptr(),
                        key_pairs * PANEL,
                        pair,
                    )
                };
            }
            let mut probabilities = buffers.probabilities;
            probabilities.resize(super::QUERY_BLOCK.min(len) * key_pairs, 0);
            KernelHead {
                queries,
                keys,
                key_panels,
                value_panels,
                probabilities,
                len,
                head_dim,
            }
        }

        fn into_buffers(self) -> Buffers {
            Buffers {
                queries: self.queries.data,
                keys: self.keys.data,
                key_panels: self.key_panels.data,
                value_panels: self.value_panels,
                probabilities: self.probabilities,
            }
        }
    }

    impl BlockProducts for KernelHead {
        fn scores(&mut self, block: QueryBlock, scores: &mut [f32]) {
            let QueryBlock { r0, rows, kb, nk } = block;
            let pairs = self.queries.pairs;
            let a = Operand {
                data: &self.queries.data[r0 * pairs..],
                layout: Layout::Rows { pairs },
            };
            let b = self.key_panels.view();
            for panel in kb / PANEL..(kb + nk).div_ceil(PANEL) {
                let column = panel * PANEL - kb;
                let tile = x86::Tile {
                    rows: 0..rows,
                    pairs: 0..pairs,
                    panel,
                    columns: (nk - column).min(PANEL),
                    accumulate: false,
                };
                let target = x86::Output {
                    // SAFETY: `column < nk`, inside the first row of `scores`.
                    ptr: unsafe { scores.as_mut_ptr().add(column) },
                    stride: nk,
                };
                // SAFETY: kernels are available; the tile's rows and columns lie inside
                // `scores` (rows × nk), which nothing else touches during the call.
                unsafe { x86::panel_product(a, b, target, tile) };
            }
        }

        fn weighted_values(
            &mut self,
            block: QueryBlock,
            probabilities: &[f32],
            out: &mut ArrayViewMut2<'_, f32>,
        ) {
            let QueryBlock { r0, rows, kb, nk } = block;
            let key_pairs = self.len.div_ceil(2);
            // `kb` is even (a panel start), so the block's pairs start at pair kb / 2.
            let (first, count) = (kb / 2, nk.div_ceil(2));
            for (r, row) in probabilities.chunks_exact(nk).enumerate() {
                let start = r * key_pairs + first;
                // SAFETY: kernels are available.
                unsafe { x86::to_pairs(row, &mut self.probabilities[start..start + count]) };
            }
            let a = Operand {
                data: &self.probabilities,
                layout: Layout::Rows { pairs: key_pairs },
            };
            let b = Panels {
                data: &self.value_panels,
                stride: key_pairs * PANEL,
            };
            let stride = out.strides()[0] as usize;
            for panel in 0..self.head_dim.div_ceil(PANEL) {
                let tile = x86::Tile {
                    rows: 0..rows,
                    pairs: first..first + count,
                    panel,
                    columns: (self.head_dim - panel * PANEL).min(PANEL),
                    accumulate: false,
                };
                let target = x86::Output {
                    // SAFETY: row r0 and column 64·panel lie inside `out`.
                    ptr: unsafe { out.as_mut_ptr().add(r0 * stride + panel * PANEL) },
                    stride,
                };
                // SAFETY: kernels are available; rows r0..r0 + rows and the panel's columns lie
                // inside `out` (unit column stride), which nothing else touches during the call.
                unsafe { x86::panel_product(a, b, target, tile) };
            }
        }
    }
}
