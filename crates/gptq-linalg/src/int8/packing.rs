//! [`super::x_qwt`] on the kernels: the operands converted into the kernels' layouts, then the
//! product in work items of rows × 64-column panels.

use faer::Par;
use gptq_core::QuantizedTensor;
use ndarray::{ArrayView2, ArrayViewMut2};
use rayon::prelude::*;

use super::x86::{self, Activations, QuadBlock, WeightPanel};
use super::{BLOCK, BlockPlan};
use crate::bf16::{PANEL, SharedOutput, WorkItem, recycled, row_chunk_items};

/// Memory of the converted operands, kept between products (as the bf16 products do).
#[derive(Default)]
struct Buffers {
    quads: Vec<u32>,
    scales: Vec<f32>,
    weights: Vec<u32>,
    weight_scales: Vec<f32>,
    offsets: Vec<i32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Buffers> = std::cell::RefCell::default();
}

/// `x`'s rows rounded per block into `quads` (`plan.quads` per row) and `scales` (one per block
/// per row).
fn round_rows(
    x: ArrayView2<'_, f32>,
    plan: &BlockPlan,
    (quads, scales): (&mut [u32], &mut [f32]),
    par: Par,
) {
    let blocks = plan.blocks.len();
    let round_row = |((r, row_quads), row_scales): ((usize, &mut [u32]), &mut [f32])| {
        let row = x.row(r);
        let contiguous = row.as_slice().filter(|_| plan.order.is_none());
        let mut gathered = [0.0f32; BLOCK];
        let bytes: &mut [u8] = bytes_of(row_quads);
        for (block, scale) in plan.blocks.iter().zip(row_scales.iter_mut()) {
            let values: &[f32] = match contiguous {
                Some(values) => &values[block.positions.clone()],
                None => {
                    let gathered = &mut gathered[..block.positions.len()];
                    for (value, p) in gathered.iter_mut().zip(block.positions.clone()) {
                        *value = row[plan.column(p)];
                    }
                    gathered
                }
            };
            let out = &mut bytes[4 * block.first_quad..4 * (block.first_quad + block.quads())];
            // SAFETY: only called when the kernels are available.
            *scale = unsafe { x86::round_block(values, out) };
        }
    };
    let rows = quads
        .chunks_mut(plan.quads)
        .enumerate()
        .zip(scales.chunks_mut(blocks));
    match par {
        Par::Seq => rows.for_each(round_row),
        _ => quads
            .par_chunks_mut(plan.quads)
            .enumerate()
            .zip(scales.par_chunks_mut(blocks))
            .for_each(round_row),
    }
}

/// The bytes of `quads`, four per entry in memory order (the kernel reads byte `i` of a quad as
/// its `i`-th column).
fn bytes_of(quads: &mut [u32]) -> &mut [u8] {
    // SAFETY: u32 has no invalid bit patterns and u8 no alignment; the length covers the same
    // memory, borrowed mutably for the same lifetime.
    unsafe { std::slice::from_raw_parts_mut(quads.as_mut_ptr().cast(), quads.len() * 4) }
}

/// One panel's index and its parts of the packed weight: quads, scales, offsets.
type PanelParts<'a> = (((usize, &'a mut [u32]), &'a mut [f32]), &'a mut [i32]);

/// The weight's integers `q − z` as signed bytes in 64-column panels (`plan.quads` quads × 64
/// per panel), with each block's scales and offsets `128 · Σ (q − z)` (`blocks × 64` per panel).
/// Columns past the weight's rows get zeros.
fn pack_weights(
    w: &QuantizedTensor,
    plan: &BlockPlan,
    (quads, scales, offsets): (&mut [u32], &mut [f32], &mut [i32]),
    par: Par,
) {
    let blocks = plan.blocks.len();
    let (codes, zeros, group_scales) = (w.codes(), w.zeros(), w.scales());
    let fill = |(((p, panel_quads), panel_scales), panel_offsets): PanelParts<'_>| {
        panel_quads.fill(0);
        panel_scales.fill(0.0);
        panel_offsets.fill(0);
        let bytes = bytes_of(panel_quads);
        for j in 0..PANEL.min(w.rows() - p * PANEL) {
            let n = p * PANEL + j;
            for (b, block) in plan.blocks.iter().enumerate() {
                let zero = i32::from(zeros[[block.group, n]]);
                let mut sum = 0i32;
                for (i, position) in block.positions.clone().enumerate() {
                    let value = i32::from(codes[[n, plan.column(position)]]) - zero;
                    let quad = block.first_quad + i / 4;
                    bytes[4 * (quad * PANEL + j) + i % 4] = value as i8 as u8;
                    sum += value;
                }
                panel_scales[b * PANEL + j] = group_scales[[block.group, n]];
                panel_offsets[b * PANEL + j] = 128 * sum;
            }
        }
    };
    let per_panel = (plan.quads * PANEL, blocks * PANEL);
    match par {
        Par::Seq => quads
            .chunks_mut(per_panel.0)
            .enumerate()
            .zip(scales.chunks_mut(per_panel.1))
            .zip(offsets.chunks_mut(per_panel.1))
            .for_each(fill),
        _ => quads
            .par_chunks_mut(per_panel.0)
            .enumerate()
            .zip(scales.par_chunks_mut(per_panel.1))
            .zip(offsets.par_chunks_mut(per_panel.1))
            .for_each(fill),
    }
}

/// [`super::x_qwt`] on the kernels, for shapes already checked, weights below 8 bits, `k > 0`
/// and rows of unit column stride.
pub(super) fn kernel_x_qwt(
    x: ArrayView2<'_, f32>,
    w: &QuantizedTensor,
    mut out: ArrayViewMut2<'_, f32>,
    accumulate: bool,
    par: Par,
) {
    let (m, n) = out.dim();
    let plan = BlockPlan::new(w.g_idx());
    let blocks = plan.blocks.len();
    let panels = n.div_ceil(PANEL);
    let mut b = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    let mut quads = recycled(std::mem::take(&mut b.quads), m * plan.quads);
    let mut scales = recycled(std::mem::take(&mut b.scales), m * blocks);
    round_rows(x, &plan, (&mut quads, &mut scales), par);
    let mut weights = recycled(std::mem::take(&mut b.weights), panels * plan.quads * PANEL);
    let mut weight_scales = recycled(
        std::mem::take(&mut b.weight_scales),
        panels * blocks * PANEL,
    );
    let mut offsets = recycled(std::mem::take(&mut b.offsets), panels * blocks * PANEL);
    pack_weights(
        w,
        &plan,
        (&mut weights, &mut weight_scales, &mut offsets),
        par,
    );
    let quad_blocks: Vec<QuadBlock> = plan
        .blocks
        .iter()
        .enumerate()
        .map(|(index, block)| QuadBlock {
            index,
            first_quad: block.first_quad,
            quads: block.quads(),
        })
        .collect();
    let activations = Activations {
        quads: &quads,
        quads_per_row: plan.quads,
        scales: &scales,
        blocks_per_row: blocks,
    };
    let shared = SharedOutput {
        ptr: out.as_mut_ptr(),
        stride: out.strides()[0] as usize,
        columns: n,
    };
    let run = |(panel, rows): &WorkItem| {
        let weight_panel = WeightPanel {
            quads: &weights[panel * plan.quads * PANEL..(panel + 1) * plan.quads * PANEL],
            scales: &weight_scales[panel * blocks * PANEL..(panel + 1) * blocks * PANEL],
            offsets: &offsets[panel * blocks * PANEL..(panel + 1) * blocks * PANEL],
        };
        let first = panel * PANEL;
        let target = (shared.column(first), shared.stride);
        let columns = shared.panel_columns(first);
        // SAFETY: kernels are available (checked by the caller); the item's rows and the panel's
        // columns lie inside the output and no other item writes them; the blocks lie inside
        // both operands by construction.
        unsafe {
            x86::panel_product(
                activations,
                weight_panel,
                &quad_blocks,
                target,
                (rows.clone(), columns),
                accumulate,
            )
        };
    };
    let items = row_chunk_items(m, panels);
    match par {
        Par::Seq => items.iter().for_each(run),
        _ => items.par_iter().for_each(run),
    }
    b.quads = quads;
    b.scales = scales;
    b.weights = weights;
    b.weight_scales = weight_scales;
    b.offsets = offsets;
    SCRATCH.with(|s| *s.borrow_mut() = b);
}
