//! The blocked GPTQ solve on the GPU.
//!
//! The working weights live on the device column-major (`rows × columns`, element (r, j) at
//! `j·rows + r`): a thread of the column-loop kernel owns one row, so the 32 threads of a warp
//! read and write 32 consecutive floats at every step, and cuBLAS takes the layout as it is.
//! Per block the kernel runs the column loop and leaves the block's scaled errors `E`
//! (`rows × width`, column-major); one SGEMM then applies the lazy update
//! `W[:, end..] -= E · U[block, end..]`, where the row-major block of `U` is the transpose of a
//! column-major `(columns − end) × width` matrix with leading dimension `columns`.

use std::time::{Duration, Instant};

use cudarc::cublas::sys as blas;
use cudarc::driver::{CudaEvent, LaunchConfig, PushKernelArg, sys as driver_sys};
use gptq_core::{
    BlockSolution, ClipSearch, FitSource, GptqError, GridSpec, GroupPlan, QuantGrid, Result,
    SolvePlan, SolveTimings, shape_string,
};
use ndarray::{Array2, ArrayView2};

use crate::device::{Session, address, address_mut, launch};
use crate::error::{Context, backend_error, int, unsupported};
use crate::factor::CudaFactor;

/// Kernel modes, as in kernels.cu.
const FIXED: i32 = 0;
const DYNAMIC_CURRENT: i32 = 1;
const DYNAMIC_BLOCK_START: i32 = 2;

/// The grid as the kernel takes it.
struct KernelGrid {
    max_code: i32,
    symmetric: i32,
    min_zero: i32,
    clip_steps: i32,
    clip_grid: u32,
    clip_norm: f32,
}

fn kernel_grid<G: QuantGrid + ?Sized>(grid: &G) -> Result<KernelGrid> {
    let spec = grid.spec().ok_or_else(|| {
        unsupported(
            "grids without a GridSpec (custom QuantGrid implementations run only on the CPU \
             backend); use gptq_quant::MinMaxGrid",
        )
    })?;
    match spec {
        GridSpec::MinMax {
            bits,
            symmetric,
            clip_search,
            min_zero,
        } => {
            if bits != grid.bits() || !(2..=8).contains(&bits) {
                return Err(GptqError::InvalidConfig(format!(
                    "the grid says {} bits but its spec {bits}",
                    grid.bits()
                )));
            }
            let (clip_steps, clip_grid, clip_norm) = match clip_search {
                None => (0, 1, 1.0),
                Some(ClipSearch {
                    grid,
                    max_shrink,
                    norm,
                }) => {
                    let steps = ClipSearch {
                        grid,
                        max_shrink,
                        norm,
                    }
                    .steps();
                    (
                        i32::try_from(steps).map_err(|_| {
                            unsupported(format!("a clipping search of {steps} steps"))
                        })?,
                        grid.max(1),
                        norm,
                    )
                }
            };
            Ok(KernelGrid {
                max_code: i32::from(grid.max_code()),
                symmetric: i32::from(symmetric),
                min_zero: i32::from(min_zero),
                clip_steps,
                clip_grid,
                clip_norm,
            })
        }
        other => Err(unsupported(format!("the grid {other:?}"))),
    }
}

/// Device-side timing of the blocks: an event before the first block and after each step.
struct Timeline {
    events: Vec<CudaEvent>,
}

impl Timeline {
    fn mark(&mut self, session: &Session<'_>) -> Result<()> {
        let event = session
            .device
            .ctx
            .new_event(Some(driver_sys::CUevent_flags::CU_EVENT_DEFAULT))
            .context(|| "cannot create a timing event".into())?;
        event
            .record(session.stream())
            .context(|| "cannot record a timing event".into())?;
        self.events.push(event);
        Ok(())
    }

    /// Milliseconds between event `from` and event `to`.
    fn elapsed(&self, from: usize, to: usize) -> Result<Duration> {
        let ms = self.events[from]
            .elapsed_ms(&self.events[to])
            .context(|| "cannot read a timing event".into())?;
        Ok(Duration::from_secs_f64(f64::from(ms.max(0.0)) / 1000.0))
    }
}

pub(crate) fn blocked_solve<G: QuantGrid + ?Sized>(
    session: &mut Session<'_>,
    weights: ArrayView2<'_, f32>,
    factor: &CudaFactor,
    plan: &SolvePlan,
    grid: &G,
) -> Result<BlockSolution> {
    let (rows, columns) = weights.dim();
    plan.validate(rows, columns)?;
    if factor.columns != columns {
        return Err(GptqError::ShapeMismatch {
            what: "inverse factor",
            expected: shape_string(&[columns, columns]),
            actual: shape_string(&[factor.columns, factor.columns]),
        });
    }
    let kernel_grid = kernel_grid(grid)?;
    let slots = plan.slots(columns);
    if rows == 0 || columns == 0 {
        let params = match &plan.groups {
            GroupPlan::Fixed { table, .. } => table.clone(),
            GroupPlan::Dynamic { .. } => gptq_core::ParamTable::zeroed(slots, rows),
        };
        return Ok(BlockSolution {
            codes: Array2::zeros((rows, columns)),
            params,
            timings: SolveTimings::default(),
        });
    }
    let (rows_i, columns_i) = (int(rows, "weight rows")?, int(columns, "weight columns")?);
    let widest = plan.blocks.iter().map(|b| b.len()).max().unwrap_or(0);
    let kernels = session.kernels()?;
    let stream = session.stream().clone();
    let mut timings = SolveTimings::default();

    // Upload: the weights row-major, transposed on the device; the grid tables; importance.
    let t = Instant::now();
    let host = weights.as_standard_layout();
    let host = host
        .as_slice()
        .ok_or_else(|| backend_error("internal error: weights not contiguous"))?;
    let row_major = session.upload(host, "the weights")?;
    let mut w = session.zeros::<f32>(rows * columns, "the working weights")?;
    {
        let config = LaunchConfig {
            grid_dim: (
                columns.div_ceil(32) as u32,
                u32::try_from(rows.div_ceil(32))
                    .ok()
                    .filter(|&y| y <= 65_535)
                    .ok_or_else(|| unsupported(format!("{rows} weight rows")))?,
                1,
            ),
            block_dim: (32, 8, 1),
            shared_mem_bytes: 0,
        };
        let mut args = stream.launch_builder(&kernels.transpose_f32);
        args.arg(&row_major).arg(&w).arg(&rows_i).arg(&columns_i);
        launch(args, config, "transpose")?;
    }
    let (mode, group_size, candidates, shrink_step) = match &plan.groups {
        GroupPlan::Fixed { .. } => (FIXED, 1, 0u32, 0.0f32),
        GroupPlan::Dynamic {
            group_size,
            fit_from,
            search,
        } => (
            match fit_from {
                FitSource::Current => DYNAMIC_CURRENT,
                FitSource::BlockStart => DYNAMIC_BLOCK_START,
            },
            int(*group_size, "group size")?,
            search.map_or(0, |s| s.candidates),
            search.map_or(0.0, |s| s.shrink_step),
        ),
    };
    let (scales, zeros, slot_of_column) = match &plan.groups {
        GroupPlan::Fixed {
            table,
            slot_of_column,
        } => {
            let scales = table.scales.as_standard_layout();
            let zeros = table.zeros.as_standard_layout();
            (
                session.upload(scales.as_slice().unwrap_or(&[]), "the grid scales")?,
                session.upload(zeros.as_slice().unwrap_or(&[]), "the grid zero points")?,
                session.upload(slot_of_column, "the column slots")?,
            )
        }
        GroupPlan::Dynamic { .. } => (
            session.zeros::<f32>(slots * rows, "the grid scales")?,
            session.zeros::<u16>(slots * rows, "the grid zero points")?,
            session.zeros::<u32>(1, "the column slots")?,
        ),
    };
    let importance: Vec<f32> = factor.diagonal.iter().map(|u| 1.0 / (u * u)).collect();
    let importance = session.upload(&importance, "the column importance")?;
    let codes = session.zeros::<u8>(rows * columns, "the codes")?;
    let mut errors = session.zeros::<f32>(rows * widest, "the block errors")?;
    let mut snapshot = session.zeros::<f32>(
        if mode == DYNAMIC_BLOCK_START {
            rows * widest
        } else {
            1
        },
        "the block-start weights",
    )?;
    session.synchronize()?;
    drop(row_major);
    timings.upload = t.elapsed();

    // The blocks: column loop, then the lazy update of the columns after the block.
    let threads = if rows >= 64 * session.device.multiprocessors {
        128
    } else {
        32
    };
    let loop_config = LaunchConfig {
        grid_dim: (rows.div_ceil(threads) as u32, 1, 1),
        block_dim: (threads as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut timeline = Timeline { events: Vec::new() };
    timeline.mark(session)?;
    for block in &plan.blocks {
        let (start, end) = (block.start, block.end);
        let width = end - start;
        if mode == DYNAMIC_BLOCK_START {
            let source = w.slice(start * rows..end * rows);
            let mut target = snapshot.slice_mut(..width * rows);
            stream
                .memcpy_dtod(&source, &mut target)
                .context(|| "cannot copy the block-start weights".into())?;
        }
        let (start_i, end_i) = (start as i32, end as i32);
        let mut args = stream.launch_builder(&kernels.column_loop);
        args.arg(&w)
            .arg(&factor.upper)
            .arg(&importance)
            .arg(&codes)
            .arg(&errors)
            .arg(&scales)
            .arg(&zeros)
            .arg(&slot_of_column)
            .arg(&snapshot)
            .arg(&rows_i)
            .arg(&columns_i)
            .arg(&start_i)
            .arg(&end_i)
            .arg(&mode)
            .arg(&group_size)
            .arg(&candidates)
            .arg(&shrink_step)
            .arg(&kernel_grid.max_code)
            .arg(&kernel_grid.symmetric)
            .arg(&kernel_grid.min_zero)
            .arg(&kernel_grid.clip_steps)
            .arg(&kernel_grid.clip_grid)
            .arg(&kernel_grid.clip_norm);
        launch(args, loop_config, "column loop")?;
        timeline.mark(session)?;

        if end < columns {
            let (minus_one, one) = (-1.0f32, 1.0f32);
            let c = address_mut(&mut w, &stream) + (end * rows * 4) as u64;
            let a = address_mut(&mut errors, &stream);
            let b = address(&factor.upper, &stream) + ((start * columns + end) * 4) as u64;
            // SAFETY: C = W[:, end..] is rows × (columns − end) at ldc = rows; A = E is
            // rows × width at lda = rows; op(B) = Bᵀ with B the (columns − end) × width
            // column-major view (ldb = columns) of the row-major U[start..end, end..]. All inside
            // their buffers.
            unsafe {
                blas::cublasSgemm_v2(
                    session.blas(),
                    blas::cublasOperation_t::CUBLAS_OP_N,
                    blas::cublasOperation_t::CUBLAS_OP_T,
                    rows_i,
                    int(columns - end, "weight columns")?,
                    int(width, "block width")?,
                    &minus_one,
                    a as *const f32,
                    rows_i,
                    b as *const f32,
                    columns_i,
                    &one,
                    c as *mut f32,
                    rows_i,
                )
            }
            .result()
            .context(|| "cuBLAS SGEMM failed on the block update".into())?;
        }
        timeline.mark(session)?;
    }
    session.synchronize()?;
    for k in 0..plan.blocks.len() {
        timings.column_loop += timeline.elapsed(2 * k, 2 * k + 1)?;
        timings.block_updates += timeline.elapsed(2 * k + 1, 2 * k + 2)?;
    }

    // Download: codes (column-major, turned row-major on the host) and fitted grids.
    let t = Instant::now();
    let column_major = session.download(&codes, rows * columns, "the codes")?;
    let codes = Array2::from_shape_vec((columns, rows), column_major)
        .map_err(|e| backend_error(format!("internal error: {e}")))?
        .reversed_axes()
        .as_standard_layout()
        .into_owned();
    let params = match &plan.groups {
        GroupPlan::Fixed { table, .. } => table.clone(),
        GroupPlan::Dynamic { .. } => {
            let scales = session.download(&scales, slots * rows, "the grid scales")?;
            let zeros = session.download(&zeros, slots * rows, "the grid zero points")?;
            let shape_error =
                |e: ndarray::ShapeError| backend_error(format!("internal error: {e}"));
            gptq_core::ParamTable {
                scales: Array2::from_shape_vec((slots, rows), scales).map_err(shape_error)?,
                zeros: Array2::from_shape_vec((slots, rows), zeros).map_err(shape_error)?,
            }
        }
    };
    timings.download = t.elapsed();
    session
        .device
        .ctx
        .check_err()
        .context(|| "a deferred CUDA error".into())?;
    Ok(BlockSolution {
        codes,
        params,
        timings,
    })
}
