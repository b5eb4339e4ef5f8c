//! `gptq eval`: perplexity by the GPTQ protocol.

use std::path::PathBuf;
use std::time::Instant;

use gptq_model::{Checkpoint, Par, PerplexityOptions, perplexity};

use crate::progress::Bars;
use crate::{CliResult, thread_pool};

// Numeric flags take `allow_negative_numbers` so that `--damp -0.1` is refused for its value,
// not as an unknown flag `-0`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model directory (full precision or GPTQ).
    #[arg(long)]
    model: PathBuf,
    /// Text file: tokenized whole, cut into consecutive windows; or a .json of token-id windows
    /// ({"windows": [[...], ...]}, as `--calib` takes), joined and cut the same way (no
    /// tokenizer needed).
    #[arg(long)]
    text: PathBuf,
    /// Tokens per window.
    #[arg(long, default_value_t = 512, allow_negative_numbers = true)]
    seqlen: usize,
    /// Evaluate only the first N windows (all by default).
    #[arg(long, allow_negative_numbers = true)]
    windows: Option<usize>,
    /// Threads (0 = all cores).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    threads: usize,
}

pub fn run(args: Args) -> CliResult {
    let (pool, threads) = thread_pool(args.threads)?;
    pool.install(|| evaluate(&args, threads))
}

fn evaluate(args: &Args, threads: usize) -> CliResult {
    if args.windows == Some(0) {
        return Err("--windows 0 evaluates nothing: pass at least 1".into());
    }
    let start = Instant::now();
    let mut bars = Bars::new();
    let checkpoint = crate::open_checkpoint(&args.model)?;
    if !args.text.is_file() {
        return Err(format!(
            "text file {} not found: pass --text with a UTF-8 text file or token-id .json",
            args.text.display()
        ));
    }
    // The text is tokenized and cut into windows before the model is loaded, so that a text
    // too short for one window fails at once.
    let tokens = if args.text.extension().is_some_and(|e| e == "json") {
        let windows =
            gptq_model::calib::load_calib_json(&args.text, checkpoint.config().vocab_size)
                .map_err(|e| e.to_string())?;
        windows.concat()
    } else {
        let tokenizer = checkpoint.load_tokenizer().map_err(|e| e.to_string())?;
        tokenizer
            .encode_file(&args.text, false)
            .map_err(|e| e.to_string())?
    };
    let total = gptq_model::eval_windows(&tokens, args.seqlen, args.windows)
        .map_err(|e| e.in_file(&args.text).to_string())?
        .len() as u64;
    let layers = checkpoint.config().num_hidden_layers as u64;
    bars.start("loading model", layers);
    let model = checkpoint.load_model().map_err(|e| e.to_string())?;
    bars.set_position(layers);
    bars.finish();
    let options = PerplexityOptions {
        seqlen: args.seqlen,
        max_windows: args.windows,
        batch_windows: 4,
        par: if threads == 1 {
            Par::Seq
        } else {
            Par::rayon(threads)
        },
    };
    for warning in window_warnings(args, &checkpoint, total as usize) {
        gptq_pipeline::Progress::event(&mut bars, gptq_pipeline::Event::Warning(warning));
    }
    bars.start("evaluating windows", total);
    let report = perplexity(&model, &tokens, &options, |done, _| {
        bars.set_position(done as u64)
    })
    .map_err(|e| e.to_string())?;
    bars.finish();
    let kind = match &checkpoint.config().quantization {
        Some(q) => format!("GPTQ {}-bit ({})", q.bits, q.format),
        None => "full precision".to_string(),
    };
    println!(
        "{}: {kind}, {} windows x {} tokens ({} predicted), {:.1} s",
        args.model.display(),
        report.windows,
        args.seqlen,
        report.predicted_tokens,
        start.elapsed().as_secs_f64()
    );
    println!("perplexity {:.4}", report.perplexity);
    Ok(())
}

/// What differs from what the flags asked for: fewer windows in the text than `--windows`, or
/// windows longer than the model's trained context.
fn window_warnings(args: &Args, checkpoint: &Checkpoint, windows: usize) -> Vec<String> {
    let mut warnings = Vec::new();
    if let Some(asked) = args.windows
        && windows < asked
    {
        warnings.push(format!(
            "{} holds {windows} windows of {} tokens, fewer than --windows {asked}: evaluating \
             those",
            args.text.display(),
            args.seqlen
        ));
    }
    warnings.extend(checkpoint.config().context_warning(args.seqlen));
    warnings
}
