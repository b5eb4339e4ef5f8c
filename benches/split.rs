//! Where the time of one layer's quantization goes, next to faer's f32 GEMM rate measured in the
//! same run. `cargo run --release -p gptq-benches --bin split [-- REPEATS]` prints medians.

use std::time::{Duration, Instant};

use clap::Parser;
use gptq::{CpuBackend, Gptq, GroupSize, HessianOptions, LayerTimings, QuantConfig, SolveOptions};
use gptq_benches::{LLAMA_ATTENTION, SMOLLM_DOWN, Shape, gemm, gemm_operands, hessian, weight};

/// Where one layer's quantization time goes, next to faer's f32 GEMM rate.
#[derive(Parser)]
#[command(name = "split")]
struct Args {
    /// Timed runs of each measurement (at least 1), of which the median is printed.
    #[arg(default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    repeats: u32,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn main() {
    let repeats = Args::parse().repeats as usize;
    let backend = CpuBackend::new();
    let par = faer::Par::rayon(backend.threads());
    let n = LLAMA_ATTENTION.columns;
    let (a, b, mut out) = gemm_operands(n);
    gemm(&a, &b, &mut out, par);
    let gemm_time = median(
        (0..repeats)
            .map(|_| {
                let t = Instant::now();
                gemm(&a, &b, &mut out, par);
                t.elapsed()
            })
            .collect(),
    );
    let gemm_rate = 2.0 * (n as f64).powi(3) / seconds(gemm_time) / 1e9;
    println!(
        "machine: {} threads; faer f32 GEMM {n}^3: {:.3} s = {gemm_rate:.1} GFLOP/s (median of {repeats})",
        backend.threads(),
        seconds(gemm_time)
    );
    let config = QuantConfig::builder()
        .bits(4)
        .group_size(GroupSize::Columns(128))
        .build()
        .unwrap();
    for shape in [LLAMA_ATTENTION, SMOLLM_DOWN] {
        report(
            &backend,
            &config,
            shape,
            repeats,
            gemm_rate,
            seconds(gemm_time) * (shape.columns as f64 / n as f64).powi(3),
        );
    }
}

fn report(
    backend: &CpuBackend,
    config: &QuantConfig,
    shape: Shape,
    repeats: usize,
    gemm_rate: f64,
    gemm_seconds: f64,
) {
    let mut hessian_times = Vec::new();
    let mut h = None;
    for _ in 0..repeats {
        let t = Instant::now();
        h = Some(hessian(backend, shape, HessianOptions::default()));
        hessian_times.push(t.elapsed());
    }
    let h = h.expect("at least one repeat");
    let hessian_time = seconds(median(hessian_times));
    let flops = 2.0 * (shape.columns as f64).powi(2) * shape.tokens as f64;
    println!(
        "\n{} ({} tokens): Hessian (f64) {hessian_time:.3} s = {:.1} GFLOP/s as a full product = {:.0}% of the GEMM rate",
        shape.name,
        shape.tokens,
        flops / hessian_time / 1e9,
        100.0 * flops / hessian_time / 1e9 / gemm_rate
    );
    let w = weight(shape);
    for (label, options) in [
        (
            "default",
            SolveOptions {
                compute_loss: false,
                ..SolveOptions::default()
            },
        ),
        (
            "parity",
            SolveOptions {
                compute_loss: false,
                ..SolveOptions::parity()
            },
        ),
    ] {
        let gptq = Gptq::new(backend, config.clone()).with_options(options);
        let runs: Vec<LayerTimings> = (0..repeats)
            .map(|_| gptq.quantize(w.view(), &h).unwrap().report.timings)
            .collect();
        let pick = |f: fn(&LayerTimings) -> Duration| seconds(median(runs.iter().map(f).collect()));
        let (total, factor) = (pick(|t| t.total), pick(|t| t.inverse_factor));
        println!(
            "  solve {label:<8} {total:.3} s: inverse factor {factor:.3}, column loop {:.3}, block updates {:.3}, prepare {:.3}, copies {:.3}",
            pick(|t| t.column_loop),
            pick(|t| t.block_updates),
            pick(|t| t.prepare),
            pick(|t| t.upload) + pick(|t| t.download),
        );
        println!(
            "           = {:.2}x (inverse factor + one {}^3 GEMM = {:.3} s)",
            total / (factor + gemm_seconds),
            shape.columns,
            factor + gemm_seconds
        );
    }
}
