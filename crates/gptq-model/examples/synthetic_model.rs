//! Writes a random bf16 Hugging Face checkpoint with the exact shapes and config.json fields of
//! a published model (see `gptq_model::synthetic`), and optionally token-id calibration windows
//! for it.
//!
//! ```text
//! cargo run --release -p gptq-model --example synthetic_model -- \
//!     --shape llama-3.2-1b --out DIR [--layers N] [--seed S] [--max-shard-mib 4768] \
//!     [--calib FILE --nsamples 128 --seqlen 512]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use gptq_model::synthetic::{
    SHAPES, SyntheticOptions, calibration_windows, shape, write_calibration, write_synthetic,
};

/// Writes a random checkpoint shaped like a published model.
#[derive(Parser)]
#[command(name = "synthetic_model", args_override_self = true)]
struct Args {
    /// The published model to copy the shapes of.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(SHAPES))]
    shape: String,
    /// The checkpoint folder to write (created; must not hold a model).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Keep only the first N layers.
    #[arg(long, value_name = "N")]
    layers: Option<usize>,
    /// Seed of the weights and of the calibration windows.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Largest shard in MiB (default: transformers' 5 GB).
    #[arg(long, value_name = "MIB")]
    max_shard_mib: Option<u64>,
    /// Also write random token-id calibration windows to FILE.
    #[arg(long, value_name = "FILE")]
    calib: Option<PathBuf>,
    /// Calibration windows.
    #[arg(long, default_value_t = 128)]
    nsamples: usize,
    /// Tokens per calibration window.
    #[arg(long, default_value_t = 512)]
    seqlen: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let shape = shape(&args.shape).expect("clap checked the name");
    let mut options = SyntheticOptions {
        layers: args.layers,
        seed: args.seed,
        ..SyntheticOptions::default()
    };
    if let Some(mib) = args.max_shard_mib {
        options.max_shard_bytes = mib.max(1) << 20;
    }
    let start = Instant::now();
    let written = match write_synthetic(&shape, &args.out, &options) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "wrote {} ({} layers, {:.2} B parameters, {:.2} GiB) into {} in {:.1} s: {}",
        shape.name,
        args.layers.unwrap_or(shape.layers()),
        written.parameters as f64 / 1e9,
        written.tensor_bytes as f64 / (1u64 << 30) as f64,
        args.out.display(),
        start.elapsed().as_secs_f64(),
        written.files.join(", ")
    );
    if let Some(path) = &args.calib {
        let windows =
            calibration_windows(shape.vocab_size(), args.nsamples, args.seqlen, args.seed);
        if let Err(e) = write_calibration(path, &windows) {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
        println!(
            "wrote {} calibration windows of {} tokens into {}",
            args.nsamples,
            args.seqlen,
            path.display()
        );
    }
    ExitCode::SUCCESS
}
