//! Element-wise kernels of a decoder's forward pass on the CPU: RMSNorm, SiLU, softmax,
//! log-sum-exp and a vectorizable `exp`. The loops are compiled for the baseline target, AVX2
//! and AVX-512, with the same results.

use faer::Par;
use rayon::prelude::*;

/// Rows per rayon task in the element-wise kernels: large enough that scheduling costs nothing
/// next to the work, small enough to balance two to a few dozen threads.
const ROWS_PER_TASK: usize = 64;

/// Whether `par` asks for more than one thread.
pub fn is_parallel(par: Par) -> bool {
    matches!(par, Par::Rayon(n) if n.get() > 1)
}

/// `exp(x)` in f32 with a Cephes-style polynomial: relative error below 2e-7 on
/// `[-87, 88]`, branch-free so that loops over it auto-vectorize. The attention softmax
/// and SiLU evaluate it ~10⁶ times per sequence and layer, where the libm call would cost
/// a sizeable fraction of the layer's GEMM time.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that n·ln2 is exact in the first part.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding then subtracting 1.5·2²³ rounds to the nearest integer without a libm call.
    const ROUND: f32 = 12_582_912.0;
    // Below -87.3 the result would be subnormal; above 88 2ⁿ overflows the exponent field.
    // Compare-and-select rather than clamp or max/min: it vectorizes, and keeps a NaN a NaN
    // (comparisons with NaN are false) so that a diverging activation stays visible.
    let x = if x < -87.3 { -87.3 } else { x };
    let x = if x > 88.0 { 88.0 } else { x };
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // n sits in the low mantissa bits of t: 2ⁿ from integer operations alone, which vectorize
    // where a float-to-int `as` cast (saturating, NaN-checking) does not.
    let n_int = t.to_bits().wrapping_sub(ROUND.to_bits());
    let scale = f32::from_bits(n_int.wrapping_add(127) << 23);
    y * scale
}

/// RMSNorm of the row-major rows of `x` (each `weight.len()` wide) into `out`, as in Hugging Face
/// Llama: `w ⊙ x / sqrt(mean(x²) + eps)` in f32, rows spread over the threads of `par`.
///
/// ```
/// use gptq_linalg::{Par, elementwise::rms_norm_rows};
///
/// let mut out = [0.0f32; 2];
/// rms_norm_rows(&[3.0, 4.0], &[1.0, 2.0], 0.0, &mut out, Par::Seq);
/// let rms = 12.5f32.sqrt(); // sqrt(mean(9, 16))
/// assert!((out[0] - 3.0 / rms).abs() < 1e-6 && (out[1] - 8.0 / rms).abs() < 1e-6);
/// ```
pub fn rms_norm_rows(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32], par: Par) {
    let h = weight.len();
    assert_eq!(
        x.len(),
        out.len(),
        "RMSNorm input and output of different sizes"
    );
    if h == 0 || x.is_empty() {
        return;
    }
    let norm_rows = |(src, dst): (&[f32], &mut [f32])| {
        for (xr, yr) in src.chunks_exact(h).zip(dst.chunks_exact_mut(h)) {
            let inv = inverse_rms(xr, eps);
            for ((y, &v), &g) in yr.iter_mut().zip(xr).zip(weight) {
                *y = g * (v * inv);
            }
        }
    };
    let chunk = ROWS_PER_TASK * h;
    if is_parallel(par) {
        x.par_chunks(chunk)
            .zip(out.par_chunks_mut(chunk))
            .for_each(norm_rows);
    } else {
        x.chunks(chunk)
            .zip(out.chunks_mut(chunk))
            .for_each(norm_rows);
    }
}

/// `1 / sqrt(mean(x²) + eps)`, the factor RMSNorm scales a row by.
fn inverse_rms(x: &[f32], eps: f32) -> f32 {
    // Eight partial sums: vectorizes, and rounds no worse than a pairwise sum.
    let mut acc = [0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            acc[i] += c[i] * c[i];
        }
    }
    let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    let ss = acc.iter().sum::<f32>() + tail;
    1.0 / (ss / x.len() as f32 + eps).sqrt()
}

/// RMSNorm of every `weight.len()`-wide head of every row of the row-major `x`, in place, all
/// heads with the same weight (Qwen3's `q_norm` and `k_norm`).
pub fn rms_norm_heads_in_place(x: &mut [f32], weight: &[f32], eps: f32, par: Par) {
    let d = weight.len();
    if d == 0 {
        return;
    }
    let norm_heads = |rows: &mut [f32]| {
        for head in rows.chunks_exact_mut(d) {
            let inv = inverse_rms(head, eps);
            for (v, &g) in head.iter_mut().zip(weight) {
                *v = g * (*v * inv);
            }
        }
    };
    // Rows are a whole number of heads wide, so any multiple of d is a clean chunk.
    let chunk = ROWS_PER_TASK * d;
    if is_parallel(par) {
        x.par_chunks_mut(chunk).for_each(norm_heads);
    } else {
        x.chunks_mut(chunk).for_each(norm_heads);
    }
}

/// Whether this CPU runs the AVX2+FMA versions of the element-wise kernels. The crate is
/// built for the baseline x86-64 target, where these loops get 4-lane SSE2 code; compiling a
/// second copy with AVX2 enabled doubles their width. (`is_x86_feature_detected!` caches its
/// answer, so asking per call is cheap.)
#[cfg(target_arch = "x86_64")]
#[inline]
fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// Whether this CPU runs the AVX-512 versions (16 lanes), on top of [`has_avx2`].
#[cfg(target_arch = "x86_64")]
#[inline]
fn has_avx512() -> bool {
    has_avx2() && is_x86_feature_detected!("avx512f")
}

/// Defines `$name` calling `$generic` compiled three times: for the baseline target, with AVX2
/// and with AVX-512. The loops are element-wise or reduce in fixed lanes, so every version
/// computes the same values.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident / $avx:ident, $avx512:ident = $generic:ident ($($a:ident : $t:ty),*) $(-> $r:ty)?) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        fn $avx($($a: $t),*) $(-> $r)? {
            $generic($($a),*)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,avx2,fma")]
        fn $avx512($($a: $t),*) $(-> $r)? {
            $generic($($a),*)
        }

        $(#[$m])*
        $vis fn $name($($a: $t),*) $(-> $r)? {
            #[cfg(target_arch = "x86_64")]
            if has_avx512() {
                // SAFETY: the CPU supports the features $avx512 was compiled for.
                return unsafe { $avx512($($a),*) };
            }
            #[cfg(target_arch = "x86_64")]
            if has_avx2() {
                // SAFETY: the CPU supports the features $avx was compiled for.
                return unsafe { $avx($($a),*) };
            }
            $generic($($a),*)
        }
    };
}

#[inline(always)]
fn silu_mul_generic(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        let x = *g;
        *g = x / (1.0 + exp_f32(-x)) * u;
    }
}

multiversion!(fn silu_mul / silu_mul_avx2, silu_mul_avx512 = silu_mul_generic(gate: &mut [f32], up: &[f32]));

/// `silu(gate) ⊙ up`, written into `gate`.
pub fn silu_mul_inplace(gate: &mut [f32], up: &[f32], par: Par) {
    let f = |(g, u): (&mut [f32], &[f32])| silu_mul(g, u);
    const CHUNK: usize = 1 << 14;
    if is_parallel(par) {
        gate.par_chunks_mut(CHUNK)
            .zip(up.par_chunks(CHUNK))
            .for_each(f);
    } else {
        gate.chunks_mut(CHUNK).zip(up.chunks(CHUNK)).for_each(f);
    }
}

/// Maximum of a slice in eight lanes (a sequential fold would not vectorize).
#[inline(always)]
fn max_lanes(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let mut it = x.chunks_exact(8);
    for c in &mut it {
        for i in 0..8 {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    it.remainder()
        .iter()
        .chain(&acc)
        .copied()
        .fold(f32::NEG_INFINITY, f32::max)
}

/// Sum of a slice in eight lanes.
#[inline(always)]
fn sum_lanes(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut it = x.chunks_exact(8);
    for c in &mut it {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + it.remainder().iter().sum::<f32>()
}

#[inline(always)]
fn softmax_generic(x: &mut [f32]) {
    let max = max_lanes(x);
    for v in x.iter_mut() {
        *v = exp_f32(*v - max);
    }
    let inv = 1.0 / sum_lanes(x);
    for v in x.iter_mut() {
        *v *= inv;
    }
}

multiversion!(
    /// Softmax with max subtraction, in f32, in place.
    pub fn softmax_in_place / softmax_avx2, softmax_avx512 = softmax_generic(x: &mut [f32])
);

#[inline(always)]
fn log_sum_exp_generic(x: &[f32]) -> f64 {
    let max = max_lanes(x);
    let mut total = 0f64;
    let mut buf = [0f32; 256];
    for block in x.chunks(256) {
        let buf = &mut buf[..block.len()];
        for (b, &v) in buf.iter_mut().zip(block) {
            *b = exp_f32(v - max);
        }
        total += sum_lanes(buf) as f64;
    }
    max as f64 + total.ln()
}

multiversion!(
    /// `ln Σ exp(x)` with max subtraction. It runs once per vocabulary entry and predicted
    /// token, so it uses the vectorizable [`exp_f32`]; partial sums of 256 terms go into an
    /// f64 total so that a 50k-way sum does not lose the small terms.
    pub fn log_sum_exp / log_sum_exp_avx2, log_sum_exp_avx512 = log_sum_exp_generic(x: &[f32]) -> f64
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_libm() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = exp_f32(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.001_7;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(-1e30) >= 0.0 && exp_f32(-1e30) < 1e-37);
        assert!(exp_f32(1e30).is_finite());
    }

    #[test]
    fn softmax_and_log_sum_exp() {
        let x: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin() * 20.0).collect();
        let m = x.iter().copied().fold(f32::MIN, f32::max) as f64;
        let lse = m + x.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
        assert!((log_sum_exp(&x) - lse).abs() < 1e-5);
        let mut y = x.clone();
        softmax_in_place(&mut y);
        for (a, b) in y.iter().zip(&x) {
            assert!((*a as f64 - (*b as f64 - lse).exp()).abs() < 1e-6);
        }
        let mut g = vec![-100.0f32, -1.0, 0.0, 2.0, 100.0];
        silu_mul_inplace(&mut g, &[2.0; 5], Par::Seq);
        let want = [-0.0, -2.0 * 0.268_941_43, 0.0, 2.0 * 1.761_594_2, 200.0];
        for (a, b) in g.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod versions {
    use super::*;

    /// One compiled version of the element-wise kernels.
    struct Version {
        name: &'static str,
        softmax: fn(&mut [f32]),
        silu: fn(&mut [f32], &[f32]),
        log_sum: fn(&[f32]) -> f64,
    }

    /// The versions this CPU can run besides the baseline one.
    fn versions() -> Vec<Version> {
        let mut versions = Vec::new();
        if has_avx2() {
            // SAFETY (each closure): the CPU has AVX2 and FMA, checked just above.
            versions.push(Version {
                name: "avx2",
                softmax: |x| unsafe { softmax_avx2(x) },
                silu: |g, u| unsafe { silu_mul_avx2(g, u) },
                log_sum: |x| unsafe { log_sum_exp_avx2(x) },
            });
        }
        if has_avx512() {
            // SAFETY (each closure): the CPU has AVX-512F, AVX2 and FMA, checked just above.
            versions.push(Version {
                name: "avx512",
                softmax: |x| unsafe { softmax_avx512(x) },
                silu: |g, u| unsafe { silu_mul_avx512(g, u) },
                log_sum: |x| unsafe { log_sum_exp_avx512(x) },
            });
        }
        versions
    }

    /// Every compiled version of the element-wise kernels gives the same bits as the baseline
    /// one, on lengths around the vector widths and on values that reach exp's clamps.
    #[test]
    fn all_versions_agree_bitwise() {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for len in [1, 7, 8, 15, 16, 17, 31, 33, 100, 288, 1000] {
            let x: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin() * 95.0).collect();
            let up: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos()).collect();
            let mut softmax = x.clone();
            softmax_generic(&mut softmax);
            let mut silu = x.clone();
            silu_mul_generic(&mut silu, &up);
            let log_sum = log_sum_exp_generic(&x);
            for v in versions() {
                let mut got = x.clone();
                (v.softmax)(&mut got);
                assert_eq!(
                    bits(&got),
                    bits(&softmax),
                    "{} softmax, length {len}",
                    v.name
                );
                let mut got = x.clone();
                (v.silu)(&mut got, &up);
                assert_eq!(bits(&got), bits(&silu), "{} silu, length {len}", v.name);
                let got = (v.log_sum)(&x);
                assert_eq!(got.to_bits(), log_sum.to_bits(), "{} log-sum-exp", v.name);
            }
        }
    }
}
