//! Quantizes one synthetic layer with GPTQ and prints its loss against round-to-nearest.
//!
//! ```text
//! cargo run --release -p gptq-solver --example quantize_layer -- [ROWS COLUMNS TOKENS BITS GROUP]
//! ```
//! Defaults: a 576×1536 layer (SmolLM2's MLP down projection shape), 4096 calibration tokens,
//! 4 bits, groups of 128. The inputs are correlated (as real activations are), which is where
//! GPTQ's error feedback pays off. Also prints the loss of the reference algorithm (parity
//! mode), which the default mode's Hessian-weighted range search improves on.

use std::time::Instant;

use clap::Parser;
use gptq_core::testing::seeded_matrix;
use gptq_core::{ActivationBatch, GroupSize, HessianAccumulator, QuantConfig};
use gptq_quant::MinMaxGrid;
use gptq_solver::{CpuBackend, Gptq, SolveOptions, round_to_nearest};
use ndarray::Array2;

/// Quantizes one synthetic layer with GPTQ and prints its loss against round-to-nearest.
#[derive(Parser)]
#[command(name = "quantize_layer")]
struct Args {
    /// Output rows of the layer.
    #[arg(default_value_t = 576)]
    rows: usize,
    /// Input columns of the layer.
    #[arg(default_value_t = 1536)]
    columns: usize,
    /// Calibration tokens of the Hessian.
    #[arg(default_value_t = 4096)]
    tokens: usize,
    /// Bits per weight.
    #[arg(default_value_t = 4)]
    bits: usize,
    /// Columns per quantization group.
    #[arg(default_value_t = 128)]
    group: usize,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Args {
        rows,
        columns,
        tokens,
        bits,
        group,
    } = Args::parse();

    let config = QuantConfig::builder()
        .bits(u8::try_from(bits)?)
        .group_size(GroupSize::Columns(group))
        .symmetric(false)
        .build()?;
    let weight = seeded_matrix(rows, columns, 1, 0.02);
    // Correlated inputs: a few shared latent directions plus noise, with uneven channel scales.
    let latent = seeded_matrix(tokens, 32, 2, 1.0);
    let mixing = seeded_matrix(32, columns, 3, 1.0);
    let noise = seeded_matrix(tokens, columns, 4, 0.3);
    let channel_scale = Array2::from_shape_fn((1, columns), |(_, c)| 0.2 + (c % 17) as f32 / 8.0);
    let inputs = (latent.dot(&mixing) + noise) * &channel_scale;

    let gptq = Gptq::new(CpuBackend::new(), config.clone());
    let reference =
        Gptq::new(CpuBackend::new(), config.clone()).with_options(SolveOptions::parity());
    let t = Instant::now();
    let mut accumulator = gptq.accumulator(columns)?;
    accumulator.add_batch(&ActivationBatch::new(inputs.view()))?;
    let hessian = accumulator.finish()?;
    let hessian_time = t.elapsed();
    let layer = gptq.quantize(weight.view(), &hessian)?;
    let rtn = round_to_nearest(weight.view(), &config, &MinMaxGrid::from_config(&config))?;
    let rtn_loss = gptq.loss(weight.view(), &rtn, &hessian)?;
    let loss = layer.report.loss.expect("loss is computed by default");
    let reference_loss = reference
        .quantize(weight.view(), &hessian)?
        .report
        .loss
        .expect("computed");
    let t = &layer.report.timings;
    println!("layer {rows}x{columns}, {tokens} tokens, {bits}-bit, group {group}, asymmetric");
    println!("GPTQ loss                          {loss:.6}");
    println!("GPTQ loss, reference algorithm     {reference_loss:.6}  (parity mode)");
    println!("round-to-nearest loss              {rtn_loss:.6}");
    println!("GPTQ / round-to-nearest            {:.4}", loss / rtn_loss);
    println!(
        "damping                            {:.4} of mean diag",
        layer.report.damping.damp_percent
    );
    println!(
        "time: hessian {:.3}s, inverse factor {:.3}s, column loop {:.3}s, block updates {:.3}s, loss {:.3}s",
        hessian_time.as_secs_f64(),
        t.inverse_factor.as_secs_f64(),
        t.column_loop.as_secs_f64(),
        t.block_updates.as_secs_f64(),
        t.loss.as_secs_f64()
    );
    Ok(())
}
