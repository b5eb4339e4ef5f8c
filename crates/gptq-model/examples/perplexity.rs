//! WikiText-2-style perplexity of a Hugging Face checkpoint, by the GPTQ protocol.
//!
//! ```text
//! cargo run --release -p gptq-model --example perplexity -- \
//!     --model DIR --text FILE [--windows N] [--seqlen 512] [--batch 4] [--threads 0] [--bos]
//! ```
//! `--bos` prepends the config's `bos_token_id` to the token stream (for comparison: the
//! default encodes exactly as `transformers`' `tokenizer(text)` does).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use gptq_model::{Checkpoint, Par, PerplexityOptions, perplexity};

/// WikiText-2-style perplexity of a Hugging Face checkpoint, by the GPTQ protocol.
#[derive(Parser)]
#[command(name = "perplexity", args_override_self = true)]
struct Args {
    /// The Hugging Face checkpoint folder.
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// The text file to evaluate on, encoded as one string.
    #[arg(long, value_name = "FILE")]
    text: PathBuf,
    /// Evaluate only the first N windows (default: all of them).
    #[arg(long, value_name = "N")]
    windows: Option<usize>,
    /// Tokens per window.
    #[arg(long, value_name = "N", default_value_t = 512)]
    seqlen: usize,
    /// Windows per forward pass.
    #[arg(long, value_name = "N", default_value_t = 4)]
    batch: usize,
    /// Worker threads (0: rayon's default, all cores).
    #[arg(long, value_name = "N", default_value_t = 0)]
    threads: usize,
    /// Prepend the config's `bos_token_id` to the token stream.
    #[arg(long)]
    bos: bool,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let Args {
        model: model_dir,
        text,
        windows,
        seqlen,
        batch,
        threads,
        bos,
    } = Args::parse();

    let t0 = Instant::now();
    let ckpt = Checkpoint::open(&model_dir)?;
    let tokenizer = ckpt.load_tokenizer()?;
    let mut tokens = tokenizer.encode_file(&text, true)?;
    if bos {
        let id = ckpt
            .config()
            .bos_token_id
            .ok_or("config.json has no bos_token_id")?;
        tokens.insert(0, id);
    }
    let t_tok = t0.elapsed();
    let m = ckpt.load_model()?;
    let t_load = t0.elapsed() - t_tok;
    println!(
        "{} tokens ({:.2} s to tokenize; post-processor adds special tokens: {}), model loaded in {:.2} s",
        tokens.len(),
        t_tok.as_secs_f64(),
        tokenizer.adds_special_tokens()?,
        t_load.as_secs_f64()
    );
    let opts = PerplexityOptions {
        seqlen,
        max_windows: windows,
        batch_windows: batch,
        par: Par::rayon(threads),
    };
    let t1 = Instant::now();
    let report = perplexity(&m, &tokens, &opts, |done, total| {
        eprint!(
            "\r{done}/{total} windows, {:.1} s",
            t1.elapsed().as_secs_f64()
        );
    })?;
    eprintln!();
    println!(
        "perplexity {:.4} (mean NLL {:.5}) over {} windows x {} tokens, {:.1} s",
        report.perplexity,
        report.mean_nll,
        report.windows,
        seqlen,
        t1.elapsed().as_secs_f64()
    );
    Ok(())
}
