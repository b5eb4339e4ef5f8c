//! WikiText-2-style perplexity of a Hugging Face checkpoint, by the GPTQ protocol.
//!
//! ```text
//! cargo run --release -p gptq-model --example perplexity -- \
//!     --model DIR --text FILE [--windows N] [--seqlen 512] [--batch 4] [--threads 0] [--bos]
//! ```
//! `--bos` prepends the config's `bos_token_id` to the token stream (for comparison: the
//! default encodes exactly as `transformers`' `tokenizer(text)` does).

use std::process::ExitCode;
use std::time::Instant;

use gptq_model::{Checkpoint, Par, PerplexityOptions, perplexity};

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
    let mut model = None;
    let mut text = None;
    let mut windows = None;
    let mut seqlen = 512usize;
    let mut batch = 4usize;
    let mut threads = 0usize;
    let mut bos = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--model" => model = Some(value()?),
            "--text" => text = Some(value()?),
            "--windows" => windows = Some(value()?.parse()?),
            "--seqlen" => seqlen = value()?.parse()?,
            "--batch" => batch = value()?.parse()?,
            "--threads" => threads = value()?.parse()?,
            "--bos" => bos = true,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let model_dir = model.ok_or("--model DIR is required")?;
    let text = text.ok_or("--text FILE is required")?;

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
