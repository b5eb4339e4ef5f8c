//! Where one layer's time goes on the GPU, next to the CPU: Hessian accumulation, inverse
//! factor, column loop, block updates, transfers, loss; and how close the two results are.
//!
//! ```text
//! cargo run --release -p gptq-cuda --example gpu_split -- [ROWS COLUMNS TOKENS BITS GROUP]
//! ```
//! Defaults: 4096×4096 (a 7B model's attention projection), 8192 tokens, 4 bits, groups of 128.
//! Exits with status 2 and a message on a machine without a GPU.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use gptq_core::testing::seeded_matrix;
use gptq_core::{ActivationBatch, Backend, GroupSize, HessianAccumulator, QuantConfig};
use gptq_cuda::CudaBackend;
use gptq_solver::testing::compare;
use gptq_solver::{CpuBackend, Gptq, QuantizedLayer};
use ndarray::{Array2, s};

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Accumulates the inputs in batches of 2048 tokens and quantizes; returns the layer and the
/// Hessian time.
fn run<B: Backend>(
    backend: B,
    config: &QuantConfig,
    weight: &Array2<f32>,
    inputs: &Array2<f32>,
) -> Result<(QuantizedLayer, Duration), gptq_core::GptqError> {
    let gptq = Gptq::new(backend, config.clone());
    let t = Instant::now();
    let mut accumulator = gptq.accumulator(inputs.ncols())?;
    for start in (0..inputs.nrows()).step_by(2048) {
        let end = (start + 2048).min(inputs.nrows());
        accumulator.add_batch(&ActivationBatch::new(inputs.slice(s![start..end, ..])))?;
    }
    let hessian = accumulator.finish()?;
    let hessian_time = t.elapsed();
    let layer = gptq.quantize(weight.view(), &hessian)?;
    Ok((layer, hessian_time))
}

fn print(name: &str, layer: &QuantizedLayer, hessian: Duration) {
    let t = &layer.report.timings;
    println!(
        "{name:<5} hessian {:.3}s  factor {:.3}s  upload {:.3}s  column loop {:.3}s  \
         block updates {:.3}s  download {:.3}s  loss {:.3}s  total {:.3}s (+ hessian)",
        secs(hessian),
        secs(t.inverse_factor),
        secs(t.upload),
        secs(t.column_loop),
        secs(t.block_updates),
        secs(t.download),
        secs(t.loss),
        secs(t.total),
    );
}

fn main() -> ExitCode {
    let args: Vec<usize> = match std::env::args().skip(1).map(|a| a.parse()).collect() {
        Ok(args) => args,
        Err(_) => {
            eprintln!("usage: gpu_split [ROWS COLUMNS TOKENS BITS GROUP]");
            return ExitCode::from(2);
        }
    };
    let arg = |i: usize, default: usize| args.get(i).copied().unwrap_or(default);
    let (rows, columns, tokens, bits, group) = (
        arg(0, 4096),
        arg(1, 4096),
        arg(2, 8192),
        arg(3, 4),
        arg(4, 128),
    );
    let cuda = match CudaBackend::new(0) {
        Ok(cuda) => cuda,
        Err(e) => {
            eprintln!("no GPU to measure: {e}");
            return ExitCode::from(2);
        }
    };
    let t = Instant::now();
    if let Err(e) = cuda.warm_up() {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    println!(
        "{} (compute {:?}); kernels compiled in {:.2}s",
        cuda.device_name(),
        cuda.compute_capability(),
        t.elapsed().as_secs_f64()
    );
    let config = match QuantConfig::builder()
        .bits(bits.clamp(2, 8) as u8)
        .group_size(GroupSize::Columns(group))
        .build()
    {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let weight = seeded_matrix(rows, columns, 1, 0.02);
    let latent = seeded_matrix(tokens, 32, 2, 1.0);
    let mixing = seeded_matrix(32, columns, 3, 1.0);
    let noise = seeded_matrix(tokens, columns, 4, 0.3);
    let scale = Array2::from_shape_fn((1, columns), |(_, c)| 0.2 + (c % 17) as f32 / 8.0);
    let inputs = (latent.dot(&mixing) + noise) * &scale;
    println!("layer {rows}x{columns}, {tokens} tokens, {bits}-bit, group {group}");

    let gpu = run(&cuda, &config, &weight, &inputs);
    let cpu = run(CpuBackend::new(), &config, &weight, &inputs);
    match (gpu, cpu) {
        (Ok((gpu, gpu_hessian)), Ok((cpu, cpu_hessian))) => {
            print("cuda", &gpu, gpu_hessian);
            print("cpu", &cpu, cpu_hessian);
            let (agreement, ratio) = compare(
                &gpu.tensor,
                gpu.report.loss.unwrap_or(f64::NAN),
                &cpu.tensor,
                cpu.report.loss.unwrap_or(f64::NAN),
            );
            println!(
                "codes equal {:.4}%, loss cuda/cpu {ratio:.6}",
                100.0 * agreement
            );
            ExitCode::SUCCESS
        }
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
