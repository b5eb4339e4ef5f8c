//! Matrix products of bf16-rounded operands, summed in f32: the calibration products on CPUs
//! whose bf16 dot-product instructions (AVX512-BF16) run twice as many flops per cycle as f32
//! fused multiply-adds.
//!
//! Both operands are rounded to bf16 (8 significant bits, nearest even) and each product of two
//! bf16 is exact in f32, so the only difference from the f32 products is the rounding of the
//! operands, a relative 2⁻⁹ per element: the precision the model's own bf16 weights were stored
//! in, and coarser than the f16 forward passes the reference implementation runs on a GPU. The
//! sums stay f32.
//!
//! The same kernels run one head's causal attention ([`head_attention`]: `q kᵀ`, then the
//! probabilities times `v`), so that a forward pass with bf16 products rounds attention's
//! operands like the linears'. [`CpuCompute`](crate::CpuCompute) at
//! [`ProductPrecision::Bf16`](crate::ProductPrecision::Bf16) hands both to a model.
//!
//! Where the CPU lacks AVX512-BF16 the same products are computed by rounding the operands and
//! running faer's f32 product: the same numbers up to the order of the f32 sums, without the
//! speed. [`kernels_available`] says which one runs.

mod attention;
pub use attention::{head_attention, head_attention_portable};
#[cfg(target_arch = "x86_64")]
mod x86;

use std::ops::Range;

use faer::Par;
use gptq_core::{Result, check_x_wt};
use half::bf16;
use ndarray::{ArrayView2, ArrayViewMut2};
use rayon::prelude::*;

use crate::matmul::{f32_x_wt, on_row_major, trivial_product};

/// Columns of a packed panel: four 16-lane registers.
pub(crate) const PANEL: usize = 64;

/// Rows of the output per work item: enough micro-tiles to reuse each panel block from L1 many
/// times, few enough that two threads get many items to share.
pub(crate) const CHUNK_ROWS: usize = 192;

/// Whether this CPU runs the bf16 kernels (x86-64 with AVX-512F/BW and AVX512-BF16, e.g. AMD Zen 4
/// or Intel Cooper Lake and later); otherwise the products fall back to rounded f32 products.
pub fn kernels_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `v` rounded to the nearest bf16 (ties to even), as f32.
pub fn round_bf16(v: f32) -> f32 {
    bf16::from_f32(v).to_f32()
}

/// `out = x · wᵀ` (or `out += x · wᵀ` when `accumulate`) with `x` and `w` rounded to bf16 and the
/// sums in f32: `x` is `[m, k]`, `w` is `[n, k]`, `out` is `[m, n]`, any strides.
///
/// ```
/// use gptq_linalg::{Par, bf16};
/// use ndarray::{Array2, array};
///
/// let x = array![[1.0f32, 2.0], [3.0, 1.0 + 1.0 / 1024.0]]; // 1 + 2⁻¹⁰ rounds to 1 in bf16
/// let w = array![[1.0f32, 1.0]];
/// let mut out = Array2::zeros((2, 1));
/// bf16::x_wt(x.view(), w.view(), out.view_mut(), false, Par::Seq)?;
/// assert_eq!(out, array![[3.0], [4.0]]);
/// # Ok::<(), gptq_core::GptqError>(())
/// ```
pub fn x_wt(
    x: ArrayView2<'_, f32>,
    w: ArrayView2<'_, f32>,
    mut out: ArrayViewMut2<'_, f32>,
    accumulate: bool,
    par: Par,
) -> Result<()> {
    check_x_wt(&x, &w, &out)?;
    if trivial_product(&mut out, x.ncols(), accumulate) {
        return Ok(());
    }
    if !kernels_available() {
        return x_wt_portable(x, w, out, accumulate, par);
    }
    on_row_major(out, accumulate, |out| {
        kernel_x_wt(x, w, out, accumulate, par)
    });
    Ok(())
}

/// [`x_wt`] without the kernels, what it runs on CPUs that lack them: faer's f32 product of the
/// rounded operands (the same numbers up to the order of the f32 sums, at the f32 speed).
pub fn x_wt_portable(
    x: ArrayView2<'_, f32>,
    w: ArrayView2<'_, f32>,
    out: ArrayViewMut2<'_, f32>,
    accumulate: bool,
    par: Par,
) -> Result<()> {
    check_x_wt(&x, &w, &out)?;
    let (x, w) = (x.mapv(round_bf16), w.mapv(round_bf16));
    f32_x_wt(x.view(), w.view(), out, accumulate, par);
    Ok(())
}

/// Memory of the converted operands, kept between products: allocating it afresh for each
/// product cost page faults and TLB shootdowns.
#[derive(Default)]
struct Buffers {
    rows: Vec<u32>,
    weights: Vec<u32>,
    panels: Vec<u32>,
}

thread_local! {
    /// The buffers of [`x_wt`] on the calling thread.
    static SCRATCH: std::cell::RefCell<Buffers> = std::cell::RefCell::default();
}

/// `buffer` resized to `len` (new elements zero; old contents left for the caller to overwrite).
pub(crate) fn recycled<T: Copy + Default>(mut buffer: Vec<T>, len: usize) -> Vec<T> {
    buffer.resize(len, T::default());
    buffer
}

/// Rows of a matrix as bf16 pairs along each row (`pairs` per row, the last one padded with a
/// zero when the row length is odd), row-major.
struct RowPairs {
    data: Vec<u32>,
    rows: usize,
    pairs: usize,
}

/// `count` rows of `len` pairs in panels of [`PANEL`] rows: entry `(panel, pair, j)` holds pair
/// `pair` of row `PANEL · panel + j` (zero past the last row), so that one pair index reads 64
/// consecutive values.
struct PackedPanels {
    data: Vec<u32>,
    pairs: usize,
}

/// Panels as the kernels read them: panel `p` starts at `data[p * stride]`, pair `q` of it at
/// `q * 64` from there.
#[derive(Clone, Copy)]
struct Panels<'a> {
    data: &'a [u32],
    stride: usize,
}

impl Panels<'_> {
    fn count(&self) -> usize {
        self.data.len() / self.stride
    }

    /// Panel `p`.
    fn panel(&self, p: usize) -> &[u32] {
        &self.data[p * self.stride..(p + 1) * self.stride]
    }
}

/// The left operand as the kernels read it: pair `q` of row `r` at `data[layout.offset(r, q)]`.
#[derive(Clone, Copy)]
struct Operand<'a> {
    data: &'a [u32],
    layout: Layout,
}

/// How the left operand's pairs are laid out.
#[derive(Clone, Copy)]
enum Layout {
    /// Row-major, `pairs` per row (the activations of `x_wt`).
    Rows { pairs: usize },
    /// The 64-row panels of [`Panels`] with this stride (a Hessian's tokens, which are both
    /// operands of `xᵀx`).
    Panels { stride: usize },
}

impl Layout {
    fn offset(&self, row: usize, pair: usize) -> usize {
        match *self {
            Layout::Rows { pairs } => row * pairs + pair,
            Layout::Panels { stride } => (row / PANEL) * stride + pair * PANEL + row % PANEL,
        }
    }

    /// Distances between rows and between pairs, within [`Layout::rows_alike`] rows.
    fn strides(&self) -> (usize, usize) {
        match *self {
            Layout::Rows { pairs } => (pairs, 1),
            Layout::Panels { .. } => (1, PANEL),
        }
    }

    /// How many rows from `row` on are at the distances of [`Layout::strides`].
    fn rows_alike(&self, row: usize) -> usize {
        match *self {
            Layout::Rows { .. } => usize::MAX,
            Layout::Panels { .. } => PANEL - row % PANEL,
        }
    }
}

impl PackedPanels {
    fn view(&self) -> Panels<'_> {
        Panels {
            data: &self.data,
            stride: self.pairs * PANEL,
        }
    }

    /// The rows of `a` packed into panels, in `buffer`'s memory.
    fn from_rows(a: &RowPairs, par: Par, buffer: Vec<u32>) -> Self {
        let pairs = a.pairs;
        let panels = a.rows.div_ceil(PANEL);
        let mut data = recycled(buffer, panels * pairs * PANEL);
        let fill = |(p, panel): (usize, &mut [u32])| {
            let first = p * PANEL;
            let rows = PANEL.min(a.rows - first);
            if rows < PANEL {
                // Zero columns past the last row: the kernel multiplies them too.
                for pair in panel.chunks_mut(PANEL) {
                    pair[rows..].fill(0);
                }
            }
            for j in 0..rows {
                let row = &a.data[(first + j) * pairs..(first + j + 1) * pairs];
                for (pair, &value) in row.iter().enumerate() {
                    panel[pair * PANEL + j] = value;
                }
            }
        };
        for_each_chunk(&mut data, pairs * PANEL, par, fill);
        PackedPanels { data, pairs }
    }
}

/// Runs `f(index, chunk)` on consecutive `size`-element chunks of `data`, on rayon's threads
/// unless `par` is sequential.
pub(crate) fn for_each_chunk<T: Send>(
    data: &mut [T],
    size: usize,
    par: Par,
    f: impl Fn((usize, &mut [T])) + Send + Sync,
) {
    match par {
        Par::Seq => data.chunks_mut(size).enumerate().for_each(f),
        _ => data.par_chunks_mut(size).enumerate().for_each(f),
    }
}

/// One unit of parallel work: rows `rows` of the output against panel `panel`.
pub(crate) type WorkItem = (usize, Range<usize>);

/// A raw output shared by work items that write disjoint parts of it.
#[derive(Clone, Copy)]
pub(crate) struct SharedOutput {
    pub(crate) ptr: *mut f32,
    pub(crate) stride: usize,
    pub(crate) columns: usize,
}

// SAFETY: work items are built so that no two of them write the same element, and the output
// outlives the parallel loop that uses it.
unsafe impl Send for SharedOutput {}
// SAFETY: as above.
unsafe impl Sync for SharedOutput {}

impl SharedOutput {
    /// Columns left from column `first` (which must be inside the output), at most a panel.
    pub(crate) fn panel_columns(&self, first: usize) -> usize {
        (self.columns - first).min(PANEL)
    }

    /// The output from column `first` of row 0 on (methods, not fields, so that closures
    /// capture the whole `Sync` struct rather than its raw pointer).
    #[cfg(target_arch = "x86_64")]
    fn at_column(&self, first: usize) -> x86::Output {
        x86::Output {
            ptr: self.column(first),
            stride: self.stride,
        }
    }

    /// Row 0's element in column `first`, which must lie inside the output.
    pub(crate) fn column(&self, first: usize) -> *mut f32 {
        debug_assert!(first < self.columns);
        self.ptr.wrapping_add(first)
    }
}

/// The work items of an `[m, panels · 64]` product: row chunks outside, panels inside, so that
/// consecutive items share their rows of the left operand in cache.
pub(crate) fn row_chunk_items(m: usize, panels: usize) -> Vec<WorkItem> {
    (0..m)
        .step_by(CHUNK_ROWS)
        .flat_map(|r| (0..panels).map(move |p| (p, r..(r + CHUNK_ROWS).min(m))))
        .collect()
}

#[cfg(target_arch = "x86_64")]
impl RowPairs {
    /// The rows of `x`, converted by the kernel into `buffer`'s memory.
    fn from_rows(x: ArrayView2<'_, f32>, par: Par, buffer: Vec<u32>) -> Self {
        let (rows, len) = x.dim();
        let pairs = len.div_ceil(2);
        let mut data = recycled(buffer, rows * pairs);
        for_each_chunk(&mut data, pairs, par, |(r, out)| {
            let row = x.row(r);
            match row.as_slice() {
                // SAFETY: only called when `kernels_available()`.
                Some(values) => unsafe { x86::to_pairs(values, out) },
                None => unsafe { x86::to_pairs(&row.to_vec(), out) },
            }
        });
        RowPairs { data, rows, pairs }
    }
}

/// Runs the work items with the kernel over the first `pairs` pairs of the shared dimension.
#[cfg(target_arch = "x86_64")]
fn run_items(
    (a, b, pairs): (Operand<'_>, Panels<'_>, usize),
    items: &[WorkItem],
    out: SharedOutput,
    accumulate: bool,
    par: Par,
) {
    // Each item runs over all pairs, so the threads meet once per product (passes over the
    // pairs with a barrier each left one thread idle at every pass's end: 6-8 % of a 1536-wide
    // Hessian or `down_proj` product on two threads).
    let run = |(panel, rows): &WorkItem| {
        let first = panel * PANEL;
        let tile = x86::Tile {
            rows: rows.clone(),
            pairs: 0..pairs,
            panel: *panel,
            columns: out.panel_columns(first),
            accumulate,
        };
        // SAFETY: kernels are available (checked by every caller); the item's rows and columns
        // lie inside the output and no other item writes them.
        unsafe { x86::panel_product(a, b, out.at_column(first), tile) };
    };
    match par {
        Par::Seq => items.iter().for_each(run),
        _ => items.par_iter().for_each(run),
    }
}

/// [`x_wt`] on the kernel, `out` having unit column stride.
#[cfg(target_arch = "x86_64")]
fn kernel_x_wt(
    x: ArrayView2<'_, f32>,
    w: ArrayView2<'_, f32>,
    mut out: ArrayViewMut2<'_, f32>,
    accumulate: bool,
    par: Par,
) {
    let (m, n) = out.dim();
    assert!(
        out.strides()[1] == 1 && out.strides()[0] >= 0,
        "the kernel writes rows of unit column stride"
    );
    let mut buffers = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    let a = RowPairs::from_rows(x, par, std::mem::take(&mut buffers.rows));
    let w = RowPairs::from_rows(w, par, std::mem::take(&mut buffers.weights));
    let b = PackedPanels::from_rows(&w, par, std::mem::take(&mut buffers.panels));
    let panels = b.view().count();
    let items = row_chunk_items(m, panels);
    let out = SharedOutput {
        ptr: out.as_mut_ptr(),
        stride: out.strides()[0] as usize,
        columns: n,
    };
    let operand = Operand {
        data: &a.data,
        layout: Layout::Rows { pairs: a.pairs },
    };
    run_items((operand, b.view(), a.pairs), &items, out, accumulate, par);
    buffers.rows = a.data;
    buffers.weights = w.data;
    buffers.panels = b.data;
    SCRATCH.with(|s| *s.borrow_mut() = buffers);
}

/// A Hessian's running sum `Σ x xᵀ` of bf16-rounded tokens on the kernels. Tokens go in pairs
/// straight into 64-column panels, each read and converted once; the panels are both operands
/// of the product (the left one read across a panel, the right one along it), and each full
/// buffer is multiplied into the lower triangle of the f32 sum. Converting through the f32
/// column-major buffer, bf16 rows and packed panels instead cost as much as the products for a
/// 576-column Hessian.
pub(crate) struct PanelSum {
    columns: usize,
    /// `columns × columns`, column-major, lower triangle valid.
    sum: Vec<f32>,
    /// `columns.div_ceil(64)` panels of `capacity` pairs × 64.
    panels: Vec<u32>,
    capacity: usize,
    filled: usize,
    /// A token waiting for the next one to make a pair (empty when none).
    pending: Vec<f32>,
}

/// The panels' memory, written at disjoint pairs by parallel tasks.
#[derive(Clone, Copy)]
struct SharedPanels(*mut u32);
// SAFETY: each task writes the pairs it was given and no other.
unsafe impl Send for SharedPanels {}
// SAFETY: as above.
unsafe impl Sync for SharedPanels {}

impl SharedPanels {
    /// The pointer (a method, so that closures capture the whole `Sync` struct).
    fn get(&self) -> *mut u32 {
        self.0
    }
}

impl PanelSum {
    /// An empty sum over `columns` inputs that multiplies `tokens` tokens at a time; `None`
    /// when this CPU lacks the kernels.
    pub(crate) fn new(columns: usize, tokens: usize) -> Option<Self> {
        if !kernels_available() {
            return None;
        }
        let capacity = tokens.div_ceil(2).max(1);
        Some(PanelSum {
            columns,
            sum: vec![0.0; columns * columns],
            panels: vec![0; columns.div_ceil(PANEL) * capacity * PANEL],
            capacity,
            filled: 0,
            pending: Vec::new(),
        })
    }

    /// Adds the rows `kept` of the row-major `x` (`columns` values per row).
    pub(crate) fn push(&mut self, x: &[f32], kept: &[usize], par: Par) {
        let n = self.columns;
        let row = |t: usize| &x[t * n..(t + 1) * n];
        let mut rest = kept;
        if !self.pending.is_empty() {
            let Some((&first, later)) = rest.split_first() else {
                return;
            };
            let pending = std::mem::take(&mut self.pending);
            self.write_pairs(&[(&pending, row(first))], par);
            rest = later;
        }
        while rest.len() >= 2 {
            let take = (rest.len() / 2).min(self.capacity - self.filled);
            let (now, later) = rest.split_at(2 * take);
            let pairs: Vec<(&[f32], &[f32])> = now
                .chunks(2)
                .map(|two| (row(two[0]), row(two[1])))
                .collect();
            self.write_pairs(&pairs, par);
            rest = later;
        }
        if let Some(&last) = rest.first() {
            self.pending = row(last).to_vec();
        }
    }

    /// Multiplies what is buffered, pairing a token left without a partner with zeros.
    pub(crate) fn finish(&mut self, par: Par) {
        if !self.pending.is_empty() {
            let pending = std::mem::take(&mut self.pending);
            let panels = SharedPanels(self.panels.as_mut_ptr());
            // SAFETY: kernels are available (checked in `new`); pair `filled` < capacity.
            unsafe { x86::write_pair(&pending, None, panels.get(), self.stride(), self.filled) };
            self.filled += 1;
        }
        self.flush(par);
    }

    /// `columns × columns`, column-major, lower triangle valid: the sum of what was multiplied.
    pub(crate) fn sum(&self) -> &[f32] {
        &self.sum
    }

    fn stride(&self) -> usize {
        self.capacity * PANEL
    }

    /// Writes `pairs` (at most the free ones) as consecutive pairs, in parallel, multiplying
    /// when the buffer is full.
    fn write_pairs(&mut self, pairs: &[(&[f32], &[f32])], par: Par) {
        let (panels, stride, first) = (
            SharedPanels(self.panels.as_mut_ptr()),
            self.stride(),
            self.filled,
        );
        let write = |(index, (a, b)): (usize, &(&[f32], &[f32]))| {
            // SAFETY: kernels are available; each task writes its own pair, below capacity.
            unsafe { x86::write_pair(a, Some(b), panels.get(), stride, first + index) };
        };
        match par {
            Par::Seq => pairs.iter().enumerate().for_each(write),
            _ => pairs
                .par_iter()
                .enumerate()
                .with_min_len(64)
                .for_each(write),
        }
        self.filled += pairs.len();
        if self.filled == self.capacity {
            self.flush(par);
        }
    }

    /// Multiplies the buffered pairs into the sum.
    fn flush(&mut self, par: Par) {
        if self.filled > 0 {
            let panels = Panels {
                data: &self.panels,
                stride: self.stride(),
            };
            kernel_gram(&mut self.sum, panels, self.filled, self.columns, par);
            self.filled = 0;
        }
    }
}

/// `sum += xᵀx` on the kernel, `x` being the first `pairs` token pairs of `panels`. The sum is
/// column-major with the lower triangle valid, which is the row-major upper triangle: row `r` of
/// the row-major view needs columns `c ≥ r`, so panel `p` (columns `64p..64p + 64`) needs rows
/// `0..64p + 64`. The few entries below the diagonal inside those tiles are written too and
/// never read.
#[cfg(target_arch = "x86_64")]
fn kernel_gram(sum: &mut [f32], panels: Panels<'_>, pairs: usize, n: usize, par: Par) {
    // Row chunks outside, as for `x_wt`; a chunk starting at row r needs the panels from the
    // one holding column r on, each down to its last column.
    let count = panels.count();
    let items: Vec<WorkItem> = (0..n)
        .step_by(CHUNK_ROWS)
        .flat_map(|r| {
            (r / PANEL..count).map(move |p| (p, r..(r + CHUNK_ROWS).min((p + 1) * PANEL).min(n)))
        })
        .collect();
    assert_eq!(sum.len(), n * n, "Hessian sum of the wrong size");
    let out = SharedOutput {
        ptr: sum.as_mut_ptr(),
        stride: n,
        columns: n,
    };
    let operand = Operand {
        data: panels.data,
        layout: Layout::Panels {
            stride: panels.stride,
        },
    };
    run_items((operand, panels, pairs), &items, out, true, par);
}

#[cfg(not(target_arch = "x86_64"))]
fn kernel_x_wt(
    _x: ArrayView2<'_, f32>,
    _w: ArrayView2<'_, f32>,
    _out: ArrayViewMut2<'_, f32>,
    _accumulate: bool,
    _par: Par,
) {
    unreachable!("kernels_available() is false off x86-64")
}

#[cfg(not(target_arch = "x86_64"))]
fn kernel_gram(_: &mut [f32], _: Panels<'_>, _: usize, _: usize, _: Par) {
    unreachable!("kernels_available() is false off x86-64")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lower triangle of `xᵀx` of the rounded rows `kept` of `x`, in f64.
    fn plain_gram(x: &ndarray::Array2<f32>, kept: &[usize]) -> Vec<f64> {
        let n = x.ncols();
        let value = |t: usize, j: usize| f64::from(round_bf16(x[[t, j]]));
        let mut sum = vec![0.0; n * n];
        for j in 0..n {
            for i in j..n {
                sum[j * n + i] = kept.iter().map(|&t| value(t, i) * value(t, j)).sum();
            }
        }
        sum
    }

    /// Odd and even batches, a buffer that fills mid-batch, a token pending across batches.
    #[test]
    fn panel_sums_match_the_plain_loops() {
        if !kernels_available() {
            gptq_core::testing::announce_skip("panel sums: this CPU lacks AVX512-BF16");
            return;
        }
        for (n, capacity) in [(70, 10), (64, 7), (5, 3), (130, 64)] {
            let x = gptq_core::testing::seeded_matrix(41, n, n as u64, 1.0);
            let masked: Vec<usize> = (13..41).filter(|t| t % 3 != 0).collect();
            let batches: [&[usize]; 5] = [
                &[0, 1, 2],
                &[3],
                &[4, 5, 6, 7, 8, 9, 10, 11, 12],
                &[],
                &masked,
            ];
            let mut sum = PanelSum::new(n, capacity).unwrap();
            let mut kept = Vec::new();
            for (i, batch) in batches.iter().enumerate() {
                let par = if i % 2 == 0 { Par::Seq } else { Par::rayon(2) };
                sum.push(x.as_slice().unwrap(), batch, par);
                kept.extend_from_slice(batch);
            }
            sum.finish(Par::rayon(2));
            let expected = plain_gram(&x, &kept);
            let got = sum.sum();
            for j in 0..n {
                for i in j..n {
                    let (g, w) = (f64::from(got[j * n + i]), expected[j * n + i]);
                    assert!((g - w).abs() < 1e-4, "n {n}: ({i}, {j}) {g} against {w}");
                }
            }
        }
    }
}
