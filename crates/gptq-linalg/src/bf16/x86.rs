//! The AVX-512 BF16 kernels: operand conversion (`VCVTNE2PS2BF16`) and a 6 × 64 micro-kernel
//! of `VDPBF16PS`, which multiplies pairs of bf16 and adds both products to an f32 lane. On Zen 4
//! one such instruction per cycle does 64 flops, twice what f32 fused multiply-adds do.
//!
//! Every function here requires AVX-512F and AVX512-BF16; callers check
//! [`super::kernels_available`] first.

use std::arch::x86_64::*;
use std::ops::Range;

use super::{Operand, PANEL, Panels};

/// Rows of a micro-tile. 6 rows × 4 registers of 16 columns = 24 accumulators, plus the 4 panel
/// registers and a broadcast: 29 of the 32 vector registers.
const TILE_ROWS: usize = 6;

/// Pairs of the shared dimension per cache block: a 64-column panel slice of 64 pairs is 16 KiB,
/// half the L1 data cache, reused by every micro-tile of a row chunk.
const BLOCK_PAIRS: usize = 64;

/// Converts `values` (f32, any length) to bf16 pairs, rounding to nearest even: pair `p` holds
/// `values[2p]` in its low half and `values[2p + 1]` (or zero past the end) in its high half.
/// `out` must have `values.len().div_ceil(2)` entries.
///
/// # Safety
/// The CPU must support AVX-512F and AVX512-BF16.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn to_pairs(values: &[f32], out: &mut [u32]) {
    debug_assert_eq!(out.len(), values.len().div_ceil(2));
    let mut start = 0;
    while start < values.len() {
        let take = (values.len() - start).min(32);
        let low_count = take.min(16);
        let high_count = take - low_count;
        // SAFETY: the masks select only `take` elements from `start`, all inside `values`.
        let (low, high) = unsafe {
            let base = values.as_ptr().add(start);
            (
                _mm512_maskz_loadu_ps(mask(low_count), base),
                _mm512_maskz_loadu_ps(mask(high_count), base.add(16)),
            )
        };
        // The second operand fills the low 16 bf16 lanes: element i of `low` lands in lane i,
        // so lane pair p is (values[start + 2p], values[start + 2p + 1]).
        let packed: __m512i = unsafe { std::mem::transmute(_mm512_cvtne2ps_pbh(high, low)) };
        let pairs = take.div_ceil(2);
        // SAFETY: `out` has a pair for every two values, so `pairs` stores from `start / 2` fit.
        unsafe {
            _mm512_mask_storeu_epi32(out.as_mut_ptr().add(start / 2).cast(), mask(pairs), packed)
        };
        start += take;
    }
}

/// The first `count` (≤ 16) lanes.
#[inline]
fn mask(count: usize) -> __mmask16 {
    ((1u32 << count) - 1) as __mmask16
}

/// Where a work item writes: `c[r * stride + j]` for its rows `r` and the panel's columns `j`.
#[derive(Clone, Copy)]
pub(super) struct Output {
    pub ptr: *mut f32,
    pub stride: usize,
}

/// One call of [`panel_product`]: which rows, pairs and panel, how many of the panel's columns
/// to write (≤ 64), and whether to add to `C` instead of replacing it.
pub(super) struct Tile {
    pub rows: Range<usize>,
    pub pairs: Range<usize>,
    pub panel: usize,
    pub columns: usize,
    pub accumulate: bool,
}

/// `C[rows, panel columns] (+)= A[rows, pairs] · panel[pairs]`, blocked over the shared
/// dimension; `tile.pairs` is not empty.
///
/// # Safety
/// AVX-512F and AVX512-BF16; every `C[r, j]` for `r` in `tile.rows` and `j < tile.columns` must
/// be valid for reads and writes at `out` and touched by no one else during the call.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn panel_product(a: Operand<'_>, b: Panels<'_>, out: Output, tile: Tile) {
    let Tile {
        rows,
        pairs,
        panel,
        columns,
        accumulate,
    } = tile;
    let masks: [__mmask16; 4] =
        std::array::from_fn(|v| mask(columns.saturating_sub(16 * v).min(16)));
    let mut block = pairs.start;
    while block < pairs.end {
        let len = (pairs.end - block).min(BLOCK_PAIRS);
        let panel_block = b.panel(panel)[block * PANEL..].as_ptr();
        let add = accumulate || block > pairs.start;
        let mut r = rows.start;
        while r < rows.end {
            let tile = (rows.end - r).min(TILE_ROWS).min(a.layout.rows_alike(r));
            let a_ptr = a.data[a.layout.offset(r, block)..].as_ptr();
            let a_strides = a.layout.strides();
            // SAFETY: the caller's contract; rows `0..tile` of `A` from `a_ptr` at `a_strides`
            // hold `len` pairs from `block`, the panel `len` pairs × 64 columns from
            // `panel_block`.
            unsafe {
                let c = out.ptr.add(r * out.stride);
                let tile_args = (
                    a_ptr,
                    a_strides,
                    panel_block,
                    len,
                    c,
                    out.stride,
                    masks,
                    add,
                );
                match tile {
                    6 => micro_tile::<6>(tile_args),
                    5 => micro_tile::<5>(tile_args),
                    4 => micro_tile::<4>(tile_args),
                    3 => micro_tile::<3>(tile_args),
                    2 => micro_tile::<2>(tile_args),
                    _ => micro_tile::<1>(tile_args),
                }
            }
            r += tile;
        }
        block += len;
    }
}

/// The arguments of one micro-tile: `A` (pointer, strides of a row and of a pair), the panel
/// block, pairs in the block, `C` (pointer, row stride), column masks, and whether to add to `C`.
type TileArgs = (
    *const u32,
    (usize, usize),
    *const u32,
    usize,
    *mut f32,
    usize,
    [__mmask16; 4],
    bool,
);

/// `ROWS × 64` accumulators held in registers through the block's pairs.
///
/// # Safety
/// AVX-512F and AVX512-BF16; the pointers of `args` cover the tile as [`panel_product`] says.
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
unsafe fn micro_tile<const ROWS: usize>(args: TileArgs) {
    let (a, (a_row, a_pair), b, pairs, c, c_stride, masks, add) = args;
    let mut acc = [[_mm512_setzero_ps(); 4]; ROWS];
    if add {
        for (r, row) in acc.iter_mut().enumerate() {
            for (v, lane) in row.iter_mut().enumerate() {
                // SAFETY: masked to the valid columns of row r.
                *lane = unsafe { _mm512_maskz_loadu_ps(masks[v], c.add(r * c_stride + 16 * v)) };
            }
        }
    }
    for p in 0..pairs {
        // SAFETY: the panel block holds `pairs` rows of 64 pairs.
        let panel: [__m512bh; 4] = std::array::from_fn(|v| unsafe {
            std::mem::transmute(_mm512_loadu_si512(b.add(p * PANEL + 16 * v).cast()))
        });
        for (r, row) in acc.iter_mut().enumerate() {
            // SAFETY: pair p of row r of A is at `a + r * a_row + p * a_pair`.
            let pair = unsafe { *a.add(r * a_row + p * a_pair) };
            let broadcast: __m512bh =
                unsafe { std::mem::transmute(_mm512_set1_epi32(pair as i32)) };
            for (lane, column) in row.iter_mut().zip(panel) {
                *lane = _mm512_dpbf16_ps(*lane, broadcast, column);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (v, lane) in row.iter().enumerate() {
            // SAFETY: masked to the valid columns of row r.
            unsafe { _mm512_mask_storeu_ps(c.add(r * c_stride + 16 * v), masks[v], *lane) };
        }
    }
}

/// Lane `2k` takes word `k` (the first token's column `k`), lane `2k + 1` word `16 + k` (the
/// second token's): the pairs of one 16-column step.
const INTERLEAVE: [u16; 32] = {
    let mut index = [0u16; 32];
    let mut k = 0;
    while k < 16 {
        index[2 * k] = k as u16;
        index[2 * k + 1] = 16 + k as u16;
        k += 1;
    }
    index
};

/// Writes two tokens (`first`, and `second` or zeros) as pair `pair` of every 64-column panel:
/// entry `j` of panel `p`, at `panels[p * panel_stride + pair * 64 + j]`, holds the bf16 of
/// `(first[64p + j], second[64p + j])`, rounded to nearest even; columns past the tokens' length
/// get zeros.
///
/// # Safety
/// AVX-512F, AVX512-BW and AVX512-BF16; `second` as long as `first`; `panels` holds
/// `first.len().div_ceil(64)` panels of `panel_stride ≥ (pair + 1) · 64` entries.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(super) unsafe fn write_pair(
    first: &[f32],
    second: Option<&[f32]>,
    panels: *mut u32,
    panel_stride: usize,
    pair: usize,
) {
    let n = first.len();
    // SAFETY: INTERLEAVE is 32 u16, one 512-bit load.
    let index = unsafe { _mm512_loadu_si512(INTERLEAVE.as_ptr().cast()) };
    for start in (0..n.div_ceil(PANEL) * PANEL).step_by(16) {
        let count = n.saturating_sub(start).min(16);
        let lanes = mask(count);
        // SAFETY: only the `count` lanes inside the tokens are read (none when count is 0, and
        // then no pointer past the end is formed).
        let load = |values: &[f32]| unsafe {
            if count == 0 {
                _mm512_setzero_ps()
            } else {
                _mm512_maskz_loadu_ps(lanes, values.as_ptr().add(start))
            }
        };
        let low = load(first);
        let high = match second {
            Some(values) => load(values),
            None => _mm512_setzero_ps(),
        };
        // The second operand fills the low 16 words: first's columns, then second's.
        let words: __m512i = unsafe { std::mem::transmute(_mm512_cvtne2ps_pbh(high, low)) };
        let pairs = _mm512_permutexvar_epi16(index, words);
        let (panel, column) = (start / PANEL, start % PANEL);
        // SAFETY: the caller's contract on `panels`.
        unsafe {
            let target = panels.add(panel * panel_stride + pair * PANEL + column);
            _mm512_storeu_si512(target.cast(), pairs);
        }
    }
}
