//! Perplexity by the GPTQ paper's protocol.
//!
//! The whole test text is tokenized once and cut into consecutive, non-overlapping windows of
//! `seqlen` tokens (the tail shorter than a window is dropped). In each window, positions
//! `0..seqlen-1` predict tokens `1..seqlen`; perplexity is `exp` of the mean NLL over all
//! predicted tokens of all windows.

use faer::Par;

use crate::error::{ModelError, Result};
use crate::model::{Model, NllSum};

/// How to evaluate.
#[derive(Debug, Clone, Copy)]
pub struct PerplexityOptions {
    /// Tokens per window.
    pub seqlen: usize,
    /// Evaluate only the first this many windows (all when `None`).
    pub max_windows: Option<usize>,
    /// Windows run through the model together: their linears share one GEMM. Four windows
    /// of 512 tokens are enough for faer to reach its full rate.
    pub batch_windows: usize,
    /// Threads for GEMMs and attention.
    pub par: Par,
}

impl PerplexityOptions {
    /// `seqlen`-token windows, all of them, four at a time, on every rayon thread.
    pub fn new(seqlen: usize) -> Self {
        Self {
            seqlen,
            max_windows: None,
            batch_windows: 4,
            par: Par::rayon(0),
        }
    }
}

/// The outcome of [`perplexity`].
#[derive(Debug, Clone, PartialEq)]
pub struct PerplexityReport {
    /// `exp(mean NLL)`.
    pub perplexity: f64,
    /// Mean NLL per predicted token, in nats.
    pub mean_nll: f64,
    /// Windows evaluated.
    pub windows: usize,
    /// Tokens predicted (`windows · (seqlen − 1)`).
    pub predicted_tokens: usize,
    /// Mean NLL of each window, in order.
    pub window_nll: Vec<f64>,
}

/// The consecutive non-overlapping windows of `seqlen` tokens, at most `max_windows` of them.
pub fn eval_windows(
    tokens: &[u32],
    seqlen: usize,
    max_windows: Option<usize>,
) -> Result<Vec<&[u32]>> {
    if seqlen < 2 {
        return Err(ModelError::InvalidArgument(format!(
            "seqlen {seqlen}: a window needs at least 2 tokens to predict one"
        )));
    }
    if tokens.len() < seqlen {
        return Err(ModelError::TextTooShort {
            text: "the text".into(),
            tokens: tokens.len(),
            seqlen,
        });
    }
    let all = tokens.chunks_exact(seqlen);
    Ok(match max_windows {
        Some(n) => all.take(n).collect(),
        None => all.collect(),
    })
}

/// Perplexity of `model` on the token stream `tokens` (see the module docs for the protocol).
/// `progress` is called after each batch with (windows done, windows total).
pub fn perplexity(
    model: &Model,
    tokens: &[u32],
    opts: &PerplexityOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<PerplexityReport> {
    let windows = eval_windows(tokens, opts.seqlen, opts.max_windows)?;
    if windows.is_empty() {
        return Err(ModelError::InvalidArgument(
            "max_windows is 0: evaluate at least one window".into(),
        ));
    }
    let batch = opts.batch_windows.max(1);
    let mut sums: Vec<NllSum> = Vec::with_capacity(windows.len());
    for group in windows.chunks(batch) {
        let flat: Vec<u32> = group.concat();
        let lens = vec![opts.seqlen; group.len()];
        let done = sums.len();
        let group_sums = model.nll(&flat, &lens, opts.par).map_err(|e| match e {
            // Number the window within the whole evaluation, not within its batch.
            ModelError::NonFiniteLikelihood { sequence } => ModelError::NonFiniteLikelihood {
                sequence: done + sequence,
            },
            other => other,
        })?;
        sums.extend(group_sums);
        progress(sums.len(), windows.len());
    }
    let total: f64 = sums.iter().map(|s| s.sum).sum();
    let count: usize = sums.iter().map(|s| s.count).sum();
    let mean_nll = total / count as f64;
    Ok(PerplexityReport {
        perplexity: mean_nll.exp(),
        mean_nll,
        windows: windows.len(),
        predicted_tokens: count,
        window_nll: sums.iter().map(|s| s.sum / s.count as f64).collect(),
    })
}
