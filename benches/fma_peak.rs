//! The f32 arithmetic peak of this machine: every thread runs twelve independent chains of
//! 256-bit fused multiply-adds, enough to keep both FMA pipes of a Zen 3 or Skylake-class core
//! busy whatever their latency. This is the ceiling the speed analysis of docs/pipeline.md §8
//! divides the run's unavoidable FLOPs by.
//!
//! `cargo run --release -p gptq-benches --bin fma_peak [-- THREADS]` prints GFLOP/s on one
//! thread, then on THREADS threads at once (all cores by default); x86-64 with AVX2 and FMA only.
//! On CPUs with AVX512-BF16 it measures the bf16 dot products' peak the same way.

use std::time::Instant;

#[cfg(target_arch = "x86_64")]
use clap::Parser;

/// Fused multiply-adds per chain per measurement.
const STEPS: u64 = 200_000_000;
/// Independent chains per thread: more than FMA latency × FMA pipes (4 × 2 on Zen 3).
const CHAINS: usize = 12;
/// f32 lanes of a 256-bit register.
const LANES: usize = 8;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn fma_chains(steps: u64) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_setzero_ps(); CHAINS];
    for (i, a) in acc.iter_mut().enumerate() {
        *a = _mm256_set1_ps(i as f32);
    }
    let (scale, shift) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
    for _ in 0..steps {
        for a in acc.iter_mut() {
            *a = _mm256_fmadd_ps(*a, scale, shift);
        }
    }
    let mut sum = 0.0;
    for a in acc {
        let mut lanes = [0.0f32; LANES];
        // SAFETY: `lanes` holds exactly the eight f32 a 256-bit store writes.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), a) };
        sum += lanes[0];
    }
    sum
}

/// The same chains of 512-bit bf16 dot products (`VDPBF16PS`: 16 lanes, each adding two
/// products, 64 flops per instruction), the peak of the bf16 products of `gptq_linalg::bf16`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
fn bf16_chains(steps: u64) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_ps(); CHAINS];
    // Pairs of bf16 near one (0x3f80 = 1.0, 0x3f7f just below): the sums grow slowly.
    let a: __m512bh = unsafe { std::mem::transmute(_mm512_set1_epi32(0x3f80_3f80)) };
    let b: __m512bh = unsafe { std::mem::transmute(_mm512_set1_epi32(0x3f7f_3f7f)) };
    for _ in 0..steps {
        for c in acc.iter_mut() {
            *c = _mm512_dpbf16_ps(*c, a, b);
        }
    }
    acc.iter().map(|&c| _mm512_reduce_add_ps(c)).sum()
}

/// The f32 FMA peak of this machine (and the AVX512-BF16 dot products' where the CPU has them).
#[cfg(target_arch = "x86_64")]
#[derive(Parser)]
#[command(name = "fma_peak")]
struct Args {
    /// Threads running at once in the second measurement (default: all cores).
    threads: Option<usize>,
}

/// GFLOP/s of one thread running the f32 FMA chains, or the bf16 ones.
#[cfg(target_arch = "x86_64")]
fn one_thread(bf16: bool) -> f64 {
    let start = Instant::now();
    // SAFETY: main only calls these after detecting AVX2 and FMA, or AVX-512F and BF16.
    let (sum, flops) = if bf16 {
        (
            unsafe { bf16_chains(STEPS / 2) },
            STEPS / 2 * (CHAINS * 64) as u64,
        )
    } else {
        (
            unsafe { fma_chains(STEPS) },
            STEPS * (CHAINS * LANES * 2) as u64,
        )
    };
    std::hint::black_box(sum);
    flops as f64 / start.elapsed().as_secs_f64() / 1e9
}

/// Prints the peak on one thread, then on `threads` threads at once.
#[cfg(target_arch = "x86_64")]
fn report(label: &str, threads: usize, bf16: bool) {
    println!("{label}, 1 thread: {:.1} GFLOP/s", one_thread(bf16));
    let each: Vec<f64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| s.spawn(move || one_thread(bf16)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let per_thread: Vec<String> = each.iter().map(|g| format!("{g:.1}")).collect();
    println!(
        "{label}, {threads} threads at once: {:.1} GFLOP/s (per thread {})",
        each.iter().sum::<f64>(),
        per_thread.join(", ")
    );
}

#[cfg(target_arch = "x86_64")]
fn main() {
    if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
        eprintln!("fma_peak needs a CPU with AVX2 and FMA");
        std::process::exit(1);
    }
    let threads = Args::parse()
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    report("f32 FMA", threads, false);
    if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16") {
        report("bf16 dot products (AVX512-BF16)", threads, true);
    } else {
        println!("bf16 dot products: this CPU lacks AVX512-BF16");
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    eprintln!("fma_peak measures x86-64 AVX2 FMA throughput; this is another architecture");
    std::process::exit(1);
}
