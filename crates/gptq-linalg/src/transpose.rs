//! Gathering token rows into the column-major buffer of the Hessian accumulator.
//!
//! The accumulator multiplies `XᵀX` with `X` column-major (faer's triangular product runs about
//! 10 % faster that way than on the row-major activations), so every batch is transposed once.
//! Done element by element with strided writes, that copy cost about a sixth of the Hessian
//! time; the AVX2 path moves 8 × 8 blocks through registers instead. [`gather_scalar`] is the
//! plain version the fast path is tested against.

/// What to gather: columns `j0..j0 + width` of the rows `tokens` of the row-major `data`
/// (`n` columns, row `r` at `data[r * n..]`).
#[derive(Clone, Copy)]
pub(crate) struct Selection<'a, S> {
    pub data: &'a [S],
    pub n: usize,
    pub j0: usize,
    pub width: usize,
    pub tokens: &'a [usize],
}

impl<'a, S> Selection<'a, S> {
    /// The same rows and columns of `data`, another view of the same matrix.
    pub fn with_data<U>(self, data: &'a [U]) -> Selection<'a, U> {
        Selection {
            data,
            n: self.n,
            j0: self.j0,
            width: self.width,
            tokens: self.tokens,
        }
    }
}

/// Where to write: column `jj` of the selection, token `t` at `dst[jj * stride + offset + t]`.
pub(crate) struct ColumnTile<'a, T> {
    pub dst: &'a mut [T],
    pub stride: usize,
    pub offset: usize,
}

/// `tile[jj][offset + t] = data[tokens[t]][j0 + jj]` for f32 data, vectorized where AVX2 is.
///
/// # Panics
/// If a token or column is out of range of `data`, or the tile is too small; callers pass
/// validated tokens, so this is a bug check.
pub(crate) fn gather(sel: Selection<'_, f32>, tile: ColumnTile<'_, f32>) {
    check_ranges(&sel, &tile);
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present, and `check_ranges` proved every read and write in bounds.
        unsafe { gather_avx2(sel, tile) };
        return;
    }
    gather_scalar(sel, tile, |v| v);
}

fn check_ranges<S, T>(sel: &Selection<'_, S>, tile: &ColumnTile<'_, T>) {
    let rows = sel.data.len() / sel.n.max(1);
    let end = sel.j0 + sel.width;
    assert!(end <= sel.n, "columns {}..{end} of {}", sel.j0, sel.n);
    let past = sel.tokens.iter().any(|&t| t >= rows);
    assert!(!past, "a token is past row {rows}");
    if sel.width > 0 && !sel.tokens.is_empty() {
        let count = sel.tokens.len();
        let last = (sel.width - 1) * tile.stride + tile.offset + count;
        assert!(tile.offset + count <= tile.stride && last <= tile.dst.len());
    }
}

/// The plain loop, one element at a time, converting each: the oracle of the fast path and
/// the path of every other element type.
pub(crate) fn gather_scalar<S: Copy, T>(
    sel: Selection<'_, S>,
    tile: ColumnTile<'_, T>,
    convert: impl Fn(S) -> T,
) {
    let (n, j0) = (sel.n, sel.j0);
    for (t, &token) in sel.tokens.iter().enumerate() {
        let row = &sel.data[token * n + j0..token * n + j0 + sel.width];
        for (jj, &value) in row.iter().enumerate() {
            tile.dst[jj * tile.stride + tile.offset + t] = convert(value);
        }
    }
}

/// 8 tokens × 8 columns at a time through an in-register transpose; the ragged edges go
/// through [`gather_scalar`].
///
/// # Safety
/// AVX2 must be available and the ranges must pass `check_ranges`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn gather_avx2(sel: Selection<'_, f32>, tile: ColumnTile<'_, f32>) {
    use std::arch::x86_64::*;
    let (tokens, width) = (sel.tokens, sel.width);
    let (full_tokens, full_columns) = (tokens.len() / 8 * 8, width / 8 * 8);
    let s = sel.data.as_ptr();
    let d = tile.dst.as_mut_ptr();
    for t in (0..full_tokens).step_by(8) {
        let rows: [*const f32; 8] = std::array::from_fn(|i| {
            // SAFETY: tokens[t + i] < rows and j0 + width <= n (checked).
            unsafe { s.add(tokens[t + i] * sel.n + sel.j0) }
        });
        for c in (0..full_columns).step_by(8) {
            // SAFETY: columns c..c + 8 lie inside the width of every row; the writes go to
            // columns c..c + 8 of the tile, tokens t..t + 8, inside the checked extent.
            unsafe {
                let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(rows[i].add(c)));
                let t0 = _mm256_unpacklo_ps(r[0], r[1]);
                let t1 = _mm256_unpackhi_ps(r[0], r[1]);
                let t2 = _mm256_unpacklo_ps(r[2], r[3]);
                let t3 = _mm256_unpackhi_ps(r[2], r[3]);
                let t4 = _mm256_unpacklo_ps(r[4], r[5]);
                let t5 = _mm256_unpackhi_ps(r[4], r[5]);
                let t6 = _mm256_unpacklo_ps(r[6], r[7]);
                let t7 = _mm256_unpackhi_ps(r[6], r[7]);
                let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
                let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
                let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
                let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
                let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
                let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
                let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
                let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
                let columns = [
                    _mm256_permute2f128_ps::<0x20>(s0, s4),
                    _mm256_permute2f128_ps::<0x20>(s1, s5),
                    _mm256_permute2f128_ps::<0x20>(s2, s6),
                    _mm256_permute2f128_ps::<0x20>(s3, s7),
                    _mm256_permute2f128_ps::<0x31>(s0, s4),
                    _mm256_permute2f128_ps::<0x31>(s1, s5),
                    _mm256_permute2f128_ps::<0x31>(s2, s6),
                    _mm256_permute2f128_ps::<0x31>(s3, s7),
                ];
                for (k, column) in columns.into_iter().enumerate() {
                    _mm256_storeu_ps(d.add((c + k) * tile.stride + tile.offset + t), column);
                }
            }
        }
    }
    // The last columns of every token, then every column of the last tokens.
    if full_columns < width {
        let columns = Selection {
            j0: sel.j0 + full_columns,
            width: width - full_columns,
            tokens: &tokens[..full_tokens],
            ..sel
        };
        let rest = ColumnTile {
            dst: &mut tile.dst[full_columns * tile.stride..],
            ..tile
        };
        gather_scalar(columns, rest, |v| v);
    }
    let rows = Selection {
        tokens: &tokens[full_tokens..],
        ..sel
    };
    let rest = ColumnTile {
        offset: tile.offset + full_tokens,
        ..tile
    };
    gather_scalar(rows, rest, |v| v);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast path against the plain loop on ragged shapes, shuffled and repeated tokens,
    /// and a nonzero offset.
    #[test]
    fn fast_gather_matches_scalar() {
        let n = 37;
        let rows = 29;
        let data: Vec<f32> = (0..rows * n).map(|i| i as f32 * 0.5 - 3.0).collect();
        for (j0, width) in [(0, 37), (3, 8), (5, 17), (0, 7), (36, 1)] {
            for count in [0, 1, 7, 8, 9, 16, 23] {
                let tokens: Vec<usize> = (0..count).map(|i| (i * 11 + 3) % rows).collect();
                let sel = Selection {
                    data: &data,
                    n,
                    j0,
                    width,
                    tokens: &tokens,
                };
                let (stride, offset) = (31, 5);
                let mut fast = vec![f32::NAN; width * stride];
                let mut plain = vec![f32::NAN; width * stride];
                let tile = |dst| ColumnTile {
                    dst,
                    stride,
                    offset,
                };
                gather(sel, tile(&mut fast));
                gather_scalar(sel, tile(&mut plain), |v| v);
                let same = fast
                    .iter()
                    .zip(&plain)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "j0 {j0} width {width} tokens {count}");
                // And the plain loop does what it says.
                for (t, &token) in tokens.iter().enumerate() {
                    for jj in 0..width {
                        assert_eq!(plain[jj * stride + offset + t], data[token * n + j0 + jj]);
                    }
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "past row")]
    fn out_of_range_token_is_caught() {
        let data = vec![0.0f32; 8 * 8];
        let mut dst = vec![0.0f32; 64];
        let sel = Selection {
            data: &data,
            n: 8,
            j0: 0,
            width: 8,
            tokens: &[8],
        };
        let tile = ColumnTile {
            dst: &mut dst,
            stride: 8,
            offset: 0,
        };
        gather(sel, tile);
    }
}
