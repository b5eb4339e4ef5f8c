//! The AVX512-VNNI kernels: rounding a block of activations to unsigned bytes, and a 6 × 64
//! micro-kernel of `VPDPBUSD` (four products of an unsigned and a signed byte added to an i32
//! lane) that scales each block's exact integer sums into the f32 output.
//!
//! The activations go in as `p + 128` (unsigned bytes) and the weights as signed bytes `q − z`,
//! so each block's sum carries `128 · Σ (q − z)` too: the weight panels store that per output
//! column and block, and the epilogue subtracts it.
//!
//! Every function here requires AVX-512F, AVX-512BW and AVX512-VNNI; callers check
//! [`super::kernels_available`] first.

use std::arch::x86_64::*;

use super::{BLOCK, TINY, block_scale, to_integer};
use crate::bf16::PANEL;

/// Rows of a micro-tile: 6 rows × 4 registers of 16 columns = 24 accumulators, plus the 4 panel
/// registers and a broadcast.
const TILE_ROWS: usize = 6;

/// The first `count` (≤ 16) lanes.
#[inline]
fn mask(count: usize) -> __mmask16 {
    ((1u32 << count) - 1) as __mmask16
}

/// Rounds one block (at most [`BLOCK`] values) to `p + 128` bytes in `out` (the values' count
/// rounded up to whole quads; padding bytes get 128, that is `p = 0`) and returns its scale.
///
/// # Safety
/// AVX-512F, AVX-512BW and AVX512-VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn round_block(values: &[f32], out: &mut [u8]) -> f32 {
    debug_assert!(values.len() <= BLOCK && out.len() == values.len().div_ceil(4) * 4);
    let load = |start: usize| {
        let count = (values.len() - start).min(16);
        // SAFETY: masked to the `count` values from `start`, all inside `values`.
        unsafe { _mm512_maskz_loadu_ps(mask(count), values.as_ptr().add(start)) }
    };
    let (mut max, mut bad) = (_mm512_setzero_ps(), 0u16);
    let infinity = _mm512_set1_ps(f32::INFINITY);
    for start in (0..values.len()).step_by(16) {
        let magnitude = _mm512_abs_ps(load(start));
        // Not below infinity: infinite, or NaN (unordered).
        bad |= _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(magnitude, infinity);
        max = _mm512_max_ps(max, magnitude);
    }
    let max_abs = if bad != 0 {
        f32::NAN
    } else {
        _mm512_reduce_max_ps(max)
    };
    let (scale, inverse) = block_scale(max_abs);
    out.fill(128);
    if scale < TINY && scale > 0.0 {
        for (byte, &v) in out.iter_mut().zip(values) {
            *byte = (to_integer(v, scale, inverse) as i16 + 128) as u8;
        }
        return scale;
    }
    let (inverse, offset) = (_mm512_set1_ps(inverse), _mm512_set1_epi32(128));
    for start in (0..values.len()).step_by(16) {
        let count = (values.len() - start).min(16);
        // Rounds to nearest even (the default rounding mode), like `to_integer`.
        let integers = _mm512_cvtps_epi32(_mm512_mul_ps(load(start), inverse));
        let bytes = _mm512_cvtepi32_epi8(_mm512_add_epi32(integers, offset));
        // SAFETY: `count` bytes from `start` lie inside `out`.
        unsafe { _mm_mask_storeu_epi8(out.as_mut_ptr().add(start).cast(), mask(count), bytes) };
    }
    scale
}

/// The rounded activations as the kernel reads them: row `r`'s quads from `quads[r *
/// quads_per_row]`, its block scales from `scales[r * blocks_per_row]`.
#[derive(Clone, Copy)]
pub(super) struct Activations<'a> {
    pub quads: &'a [u32],
    pub quads_per_row: usize,
    pub scales: &'a [f32],
    pub blocks_per_row: usize,
}

/// One 64-column weight panel: quad `q` of its 64 columns at `quads[q * 64..]`, block `b`'s
/// scales and offsets (`128 · Σ (q − z)`) at `[b * 64..]`.
#[derive(Clone, Copy)]
pub(super) struct WeightPanel<'a> {
    pub quads: &'a [u32],
    pub scales: &'a [f32],
    pub offsets: &'a [i32],
}

/// One block of the shared dimension: its index, its first quad and its quads.
#[derive(Clone, Copy)]
pub(super) struct QuadBlock {
    pub index: usize,
    pub first_quad: usize,
    pub quads: usize,
}

/// `C[rows, ..columns] (+)= Σ_blocks` of the activations' rows against the panel.
///
/// # Safety
/// AVX-512F/BW and AVX512-VNNI; `out` (row stride `stride`) must be valid for reads and writes
/// of `columns` (≤ 64) values in each row of `rows`, touched by no one else during the call; the
/// blocks must lie inside both operands.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn panel_product(
    a: Activations<'_>,
    b: WeightPanel<'_>,
    blocks: &[QuadBlock],
    (out, stride): (*mut f32, usize),
    (rows, columns): (std::ops::Range<usize>, usize),
    accumulate: bool,
) {
    let masks: [__mmask16; 4] =
        std::array::from_fn(|v| mask(columns.saturating_sub(16 * v).min(16)));
    for (i, block) in blocks.iter().enumerate() {
        let mut r = rows.start;
        while r < rows.end {
            let tile = (rows.end - r).min(TILE_ROWS);
            let args = TileArgs {
                a: a.quads[r * a.quads_per_row + block.first_quad..].as_ptr(),
                a_row: a.quads_per_row,
                a_scales: a.scales[r * a.blocks_per_row + block.index..].as_ptr(),
                a_scale_row: a.blocks_per_row,
                panel: b.quads[block.first_quad * PANEL..].as_ptr(),
                quads: block.quads,
                scales: b.scales[block.index * PANEL..].as_ptr(),
                offsets: b.offsets[block.index * PANEL..].as_ptr(),
                // SAFETY: row r of the output is inside the caller's rows.
                c: unsafe { out.add(r * stride) },
                c_stride: stride,
                masks,
                add: accumulate || i > 0,
            };
            // SAFETY: the caller's contract covers the tile's rows, quads and columns.
            unsafe {
                match tile {
                    6 => micro_tile::<6>(&args),
                    5 => micro_tile::<5>(&args),
                    4 => micro_tile::<4>(&args),
                    3 => micro_tile::<3>(&args),
                    2 => micro_tile::<2>(&args),
                    _ => micro_tile::<1>(&args),
                }
            }
            r += tile;
        }
    }
}

/// One micro-tile: `ROWS` rows of activations from `a` (quads `a_row` apart, block scales
/// `a_scale_row` apart), the block's `quads` quads of the panel, its scales and offsets, and the
/// output from `c`.
struct TileArgs {
    a: *const u32,
    a_row: usize,
    a_scales: *const f32,
    a_scale_row: usize,
    panel: *const u32,
    quads: usize,
    scales: *const f32,
    offsets: *const i32,
    c: *mut f32,
    c_stride: usize,
    masks: [__mmask16; 4],
    add: bool,
}

/// `ROWS × 64` i32 sums held in registers through one block, then scaled into `C`.
///
/// # Safety
/// AVX-512F/BW and AVX512-VNNI; the pointers of `t` cover the tile as [`panel_product`] says.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn micro_tile<const ROWS: usize>(t: &TileArgs) {
    let mut acc = [[_mm512_setzero_si512(); 4]; ROWS];
    for q in 0..t.quads {
        // SAFETY: the panel holds the block's quads × 64 columns.
        let panel: [__m512i; 4] = std::array::from_fn(|v| unsafe {
            _mm512_loadu_si512(t.panel.add(q * PANEL + 16 * v).cast())
        });
        for (r, row) in acc.iter_mut().enumerate() {
            // SAFETY: quad q of row r is at `a + r * a_row + q`.
            let quad = unsafe { *t.a.add(r * t.a_row + q) };
            let broadcast = _mm512_set1_epi32(quad as i32);
            for (lane, column) in row.iter_mut().zip(panel) {
                *lane = _mm512_dpbusd_epi32(*lane, broadcast, column);
            }
        }
    }
    // SAFETY: the panel holds 64 scales and offsets for the block.
    let (scales, offsets): ([__m512; 4], [__m512i; 4]) = unsafe {
        (
            std::array::from_fn(|v| _mm512_loadu_ps(t.scales.add(16 * v))),
            std::array::from_fn(|v| _mm512_loadu_si512(t.offsets.add(16 * v).cast())),
        )
    };
    for (r, row) in acc.iter().enumerate() {
        // SAFETY: row r's scale of this block is at `a_scales + r * a_scale_row`.
        let a_scale = _mm512_set1_ps(unsafe { *t.a_scales.add(r * t.a_scale_row) });
        for (v, &lane) in row.iter().enumerate() {
            let exact = _mm512_cvtepi32_ps(_mm512_sub_epi32(lane, offsets[v]));
            let scale = _mm512_mul_ps(scales[v], a_scale);
            // SAFETY: masked to the valid columns of row r.
            unsafe {
                let c = t.c.add(r * t.c_stride + 16 * v);
                let before = if t.add {
                    _mm512_maskz_loadu_ps(t.masks[v], c)
                } else {
                    _mm512_setzero_ps()
                };
                _mm512_mask_storeu_ps(c, t.masks[v], _mm512_fmadd_ps(exact, scale, before));
            }
        }
    }
}
