//! The min–max grid of the reference implementation.

use std::ops::Range;

use gptq_core::{
    ClipSearch, GptqError, GridSpec, GroupParams, ParamTable, QuantConfig, QuantGrid, RangeSearch,
    Result, dequantize_code, fit_searched, quantize_value,
};
use ndarray::ArrayView2;

/// The reference's `Quantizer`: a grid spanning `[min(w, 0), max(w, 0)]`, asymmetric (zero point
/// fitted) or symmetric (range `±max|w|`, zero point `(max_code + 1) / 2`), optionally shrunk by
/// the clipping search. Every step is computed in f32 as the reference does, so fits agree bit
/// for bit.
///
/// ```
/// use gptq_core::QuantGrid;
/// use gptq_quant::MinMaxGrid;
/// let grid = MinMaxGrid::new(4, false)?;
/// let params = grid.fit(&[-1.0, 0.5, 2.0]);
/// assert_eq!(params.scale, 0.2);
/// assert_eq!(params.zero, 5);
/// # Ok::<(), gptq_core::GptqError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MinMaxGrid {
    bits: u8,
    symmetric: bool,
    clip_search: Option<ClipSearch>,
    min_zero: u16,
}

impl MinMaxGrid {
    /// A plain min–max grid; `bits` must be 2..=8.
    pub fn new(bits: u8, symmetric: bool) -> Result<Self> {
        if !(2..=8).contains(&bits) {
            return Err(GptqError::InvalidConfig(format!(
                "bits must be between 2 and 8, got {bits}"
            )));
        }
        Ok(MinMaxGrid {
            bits,
            symmetric,
            clip_search: None,
            min_zero: 0,
        })
    }

    /// The grid a (validated) configuration describes.
    pub fn from_config(config: &QuantConfig) -> Self {
        MinMaxGrid {
            bits: config.bits(),
            symmetric: config.symmetric(),
            clip_search: config.clip_search(),
            min_zero: 0,
        }
    }

    /// Adds the clipping search.
    pub fn with_clip_search(mut self, clip: ClipSearch) -> Self {
        self.clip_search = Some(clip);
        self
    }

    /// Keeps asymmetric zero points at or above `min_zero` (at most half the codes), widening
    /// the step so that the range still fits: checkpoint format "gptq" (v1) stores `zero - 1`
    /// and so needs `min_zero = 1`. Symmetric zero points are always at least 2.
    pub fn with_min_zero(mut self, min_zero: u16) -> Self {
        self.min_zero = min_zero.min(self.max_code() / 2);
        self
    }

    /// The smallest zero point the grid produces.
    pub fn min_zero(&self) -> u16 {
        self.min_zero
    }

    /// Whether the grid is symmetric.
    pub fn symmetric(&self) -> bool {
        self.symmetric
    }

    #[inline(always)]
    fn min_max_params(&self, xmin: f32, xmax: f32) -> GroupParams {
        let max_code = self.max_code();
        let maxq = max_code as f32;
        let mut scale = (xmax - xmin) / maxq;
        if !scale.is_finite() {
            // The range overflowed f32 (|w| near f32::MAX): divide first.
            scale = xmax / maxq - xmin / maxq;
        }
        if self.symmetric {
            return GroupParams {
                scale,
                zero: max_code.div_ceil(2),
            };
        }
        let zero = ((-xmin / scale).round_ties_even().clamp(0.0, maxq)) as u16;
        if zero >= self.min_zero {
            return GroupParams { scale, zero };
        }
        // Raise the zero point and widen the step so that [xmin, xmax] is still covered.
        let raised = self.min_zero as f32;
        GroupParams {
            scale: (xmax / (maxq - raised)).max(-xmin / raised).max(scale),
            zero: self.min_zero,
        }
    }

    /// The reference's clipping search: shrink the range by `p = 1 - i/grid`, keep the fit with
    /// the smallest `Σ |q(x) - x|^norm` (first one on ties).
    fn clip(&self, clip: &ClipSearch, weights: &[f32], xmin: f32, xmax: f32) -> GroupParams {
        let max_code = self.max_code();
        let mut best = self.min_max_params(xmin, xmax);
        let mut best_err = f64::INFINITY;
        for i in 0..clip.steps() {
            let p = (1.0 - f64::from(i) / f64::from(clip.grid)) as f32;
            let params = self.min_max_params(p * xmin, p * xmax);
            if !usable(params.scale) {
                continue;
            }
            let err: f64 = weights
                .iter()
                .map(|&x| {
                    let q = dequantize_code(quantize_value(x, params, max_code), params);
                    f64::from((q - x).abs()).powf(f64::from(clip.norm))
                })
                .sum();
            if err < best_err {
                best_err = err;
                best = params;
            }
        }
        best
    }
}

impl MinMaxGrid {
    /// The fit of `[lo, hi]`, the (0-including) range of the values.
    #[inline(always)]
    fn fit_range(&self, weights: &[f32], lo: f32, hi: f32) -> GroupParams {
        let (mut xmin, mut xmax) = (lo, hi);
        if self.symmetric {
            xmax = xmax.max(xmin.abs());
            if xmin < 0.0 {
                xmin = -xmax;
            }
        }
        if !usable(self.min_max_params(xmin, xmax).scale) {
            // All zeros (or so tiny the step underflows): any grid containing 0 is exact.
            xmin = -1.0;
            xmax = 1.0;
        }
        match &self.clip_search {
            None => self.min_max_params(xmin, xmax),
            Some(clip) => self.clip(clip, weights, xmin, xmax),
        }
    }
}

/// A scale every code can use: positive and finite (false for NaN).
#[inline(always)]
fn usable(scale: f32) -> bool {
    scale > 0.0 && scale.is_finite()
}

/// `(min(values, 0), max(values, 0))`.
#[inline(always)]
fn range(values: &[f32]) -> (f32, f32) {
    values
        .iter()
        .fold((0f32, 0f32), |(lo, hi), &x| (lo.min(x), hi.max(x)))
}

impl QuantGrid for MinMaxGrid {
    fn bits(&self) -> u8 {
        self.bits
    }

    // Always inlined: the CPU backend calls it from kernels compiled for wider vector units.
    #[inline(always)]
    fn fit(&self, weights: &[f32]) -> GroupParams {
        let (lo, hi) = range(weights);
        self.fit_range(weights, lo, hi)
    }

    /// Scaling by a positive factor commutes with min and max in f32, so only the range is
    /// scaled; the clipping search, which needs the scaled values, takes the default path.
    #[inline(always)]
    fn fit_scaled(&self, values: &[f32], factor: f32, scratch: &mut Vec<f32>) -> GroupParams {
        if self.clip_search.is_some() || factor.is_sign_negative() || factor == 0.0 {
            scratch.clear();
            scratch.extend(values.iter().map(|x| x * factor));
            return self.fit(scratch);
        }
        let (lo, hi) = range(values);
        self.fit_range(values, lo * factor, hi * factor)
    }

    fn spec(&self) -> Option<GridSpec> {
        Some(GridSpec::MinMax {
            bits: self.bits,
            symmetric: self.symmetric,
            clip_search: self.clip_search,
            min_zero: self.min_zero,
        })
    }
}

/// Fits `grid` to each group of columns of every row of `weights` (`[rows, columns]`): slot `s`
/// of the returned table covers columns `groups[s]`. With `search`, each fit is a
/// [`fit_searched`] with the given per-column importance.
pub fn fit_table<G: QuantGrid + ?Sized>(
    grid: &G,
    weights: ArrayView2<'_, f32>,
    groups: &[Range<usize>],
    search: Option<(&RangeSearch, &[f32])>,
) -> ParamTable {
    let mut table = ParamTable::zeroed(groups.len(), weights.nrows());
    let (mut buffer, mut scratch) = (Vec::new(), Vec::new());
    for (row, w) in weights.rows().into_iter().enumerate() {
        for (slot, range) in groups.iter().enumerate() {
            buffer.clear();
            buffer.extend(w.slice(ndarray::s![range.clone()]).iter().copied());
            let params = match search {
                None => grid.fit(&buffer),
                Some((search, importance)) => fit_searched(
                    grid,
                    &buffer,
                    &importance[range.clone()],
                    search,
                    &mut scratch,
                ),
            };
            table.set(slot, row, params);
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use gptq_core::testing::{check_grid_idempotent, check_grid_round_trip, weight_rows};
    use proptest::prelude::*;

    #[test]
    fn symmetric_grid_mirrors_the_largest_magnitude() {
        let grid = MinMaxGrid::new(4, true).unwrap();
        let p = grid.fit(&[-0.5, 3.0]);
        assert_eq!(p.zero, 8);
        assert_eq!(p.scale, 6.0 / 15.0);
        // The reference keeps xmin = 0 when no weight is negative.
        let p = grid.fit(&[0.0, 1.5]);
        assert_eq!(p.scale, 0.1);
    }

    #[test]
    fn degenerate_groups_get_a_usable_grid() {
        for symmetric in [false, true] {
            let grid = MinMaxGrid::new(3, symmetric).unwrap();
            for w in [vec![0.0; 4], vec![1e-45, -1e-45], vec![1e37, -1e37]] {
                let p = grid.fit(&w);
                assert!(p.scale.is_finite() && p.scale > 0.0, "{w:?} -> {p:?}");
                assert!(p.zero <= 7);
                for x in w {
                    let back = dequantize_code(quantize_value(x, p, 7), p);
                    assert!(back.is_finite());
                }
            }
        }
    }

    #[test]
    fn clipping_never_fits_worse_than_plain_min_max() {
        let mut w: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 64) as f32 - 31.5) / 32.0)
            .collect();
        w[5] = 1.6; // a mild outlier worth clipping
        for symmetric in [false, true] {
            let plain = MinMaxGrid::new(3, symmetric).unwrap();
            let clipped = plain.with_clip_search(ClipSearch::default());
            let err = |p: GroupParams| -> f64 {
                w.iter()
                    .map(|&x| {
                        let q = dequantize_code(quantize_value(x, p, 7), p);
                        f64::from((q - x).abs()).powf(2.4)
                    })
                    .sum()
            };
            assert!(
                err(clipped.fit(&w)) < err(plain.fit(&w)),
                "symmetric: {symmetric}"
            );
        }
    }

    #[test]
    fn a_raised_zero_point_still_covers_the_range() {
        let grid = MinMaxGrid::new(4, false).unwrap().with_min_zero(1);
        let w = [0.0, 0.3, 1.5];
        let p = grid.fit(&w);
        assert_eq!(p.zero, 1);
        for x in w {
            let back = dequantize_code(quantize_value(x, p, 15), p);
            assert!((back - x).abs() <= p.scale / 2.0 + 1e-6, "{x} -> {back}");
        }
        // Groups with negative weights keep their natural zero point.
        assert_eq!(
            grid.fit(&[-1.0, 1.0]),
            MinMaxGrid::new(4, false).unwrap().fit(&[-1.0, 1.0])
        );
    }

    proptest! {
        #[test]
        fn every_grid_round_trips_within_half_a_step(
            row in weight_rows(1..200), bits in 2u8..=8, symmetric: bool, clip: bool, raise: bool,
        ) {
            let mut grid = MinMaxGrid::new(bits, symmetric).unwrap().with_min_zero(u16::from(raise));
            if clip {
                grid = grid.with_clip_search(ClipSearch::default());
            }
            check_grid_round_trip(&grid, &row)?;
            check_grid_idempotent(&grid, &row)?;
        }
    }
}
