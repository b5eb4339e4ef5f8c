//! `gptq`: quantize a Hugging Face model with GPTQ, evaluate perplexity, inspect checkpoints.
//!
//! ```text
//! gptq quantize --model DIR --calib FILE --out DIR [--bits 4 --group-size 128 --asym ...]
//! gptq eval --model DIR --text FILE [--seqlen 512 --windows N]
//! gptq inspect DIR
//! ```
//! Every failure ends with one line `error: ...` that names the problem and the fix, and a
//! non-zero exit code.

mod eval;
mod inspect;
mod progress;
mod quantize;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// GPTQ post-training quantization of Hugging Face models, in Rust.
#[derive(Debug, Parser)]
#[command(name = "gptq", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Quantize a model directory into a GPTQ checkpoint.
    Quantize(quantize::Args),
    /// Perplexity of a model (full precision or GPTQ) on a text, by the GPTQ paper's protocol.
    Eval(eval::Args),
    /// Summarize a model or GPTQ checkpoint directory.
    Inspect(inspect::Args),
}

/// A failure to report on one line.
type CliResult<T = ()> = Result<T, String>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Quantize(args) => quantize::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Inspect(args) => inspect::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// A rayon pool of `threads` threads (all cores when 0), inside which everything runs.
/// Opens the model or checkpoint at `dir`, printing what its configuration warns about.
fn open_checkpoint(dir: &std::path::Path) -> CliResult<gptq_model::Checkpoint> {
    let checkpoint = gptq_model::Checkpoint::open(dir).map_err(|e| e.to_string())?;
    for warning in &checkpoint.config().warnings {
        eprintln!("warning: {warning}");
    }
    Ok(checkpoint)
}

fn thread_pool(threads: usize) -> CliResult<(rayon::ThreadPool, usize)> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = match threads {
        0 => cpus,
        // More threads than CPUs only adds switching; far more (100000) would take the
        // machine down while they start.
        n if n > cpus => {
            eprintln!(
                "warning: --threads {n} is more than the {cpus} CPUs this process may use: \
                 using {cpus}"
            );
            cpus
        }
        n => n,
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| format!("cannot start {threads} threads: {e}"))?;
    Ok((pool, threads))
}
