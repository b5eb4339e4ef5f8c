//! The f32 arithmetic peak of this machine: every thread runs twelve independent chains of
//! 256-bit fused multiply-adds, enough to keep both FMA pipes of a Zen 3 or Skylake-class core
//! busy whatever their latency. This is the ceiling the speed analysis of docs/pipeline.md §8
//! divides the run's unavoidable FLOPs by.
//!
//! `cargo run --release -p gptq-benches --bin fma_peak [-- THREADS]` prints GFLOP/s on one
//! thread, then on THREADS threads at once (all cores by default); x86-64 with AVX2 and FMA only.

use std::time::Instant;

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

/// GFLOP/s of one thread running the chains.
#[cfg(target_arch = "x86_64")]
fn one_thread() -> f64 {
    let start = Instant::now();
    // SAFETY: main only calls this after detecting AVX2 and FMA.
    let sum = unsafe { fma_chains(STEPS) };
    std::hint::black_box(sum);
    (STEPS * (CHAINS * LANES * 2) as u64) as f64 / start.elapsed().as_secs_f64() / 1e9
}

#[cfg(target_arch = "x86_64")]
fn main() {
    if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
        eprintln!("fma_peak needs a CPU with AVX2 and FMA");
        std::process::exit(1);
    }
    let threads = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    println!("1 thread: {:.1} GFLOP/s", one_thread());
    let each: Vec<f64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|_| s.spawn(one_thread)).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let per_thread: Vec<String> = each.iter().map(|g| format!("{g:.1}")).collect();
    println!(
        "{threads} threads at once: {:.1} GFLOP/s (per thread {})",
        each.iter().sum::<f64>(),
        per_thread.join(", ")
    );
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    eprintln!("fma_peak measures x86-64 AVX2 FMA throughput; this is another architecture");
    std::process::exit(1);
}
