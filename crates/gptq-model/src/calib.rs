//! Calibration data: token windows from a JSON file, a text file or a JSONL file.

use std::path::Path;

use crate::error::{ModelError, Result};
use crate::tokenizer::Tokenizer;

/// SplitMix64 (Steele, Lea & Flood 2014): a tiny, fast, well-mixed deterministic generator.
/// Enough for drawing calibration windows reproducibly from a seed, without a `rand`
/// dependency whose streams change between versions.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (`bound > 0`), without modulo bias (Lemire's widening multiply
    /// with rejection).
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "SplitMix64::below needs a positive bound");
        let threshold = bound.wrapping_neg() % bound;
        loop {
            let m = (self.next_u64() as u128) * (bound as u128);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }
}

/// Loads windows from a JSON object `{"windows": [[id, ...], ...]}`, checking each id against
/// `vocab_size`.
pub fn load_calib_json(path: impl AsRef<Path>, vocab_size: usize) -> Result<Vec<Vec<u32>>> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    #[derive(serde::Deserialize)]
    struct File {
        windows: Vec<Vec<u32>>,
    }
    let file: File = serde_json::from_str(&text).map_err(|e| ModelError::InvalidJson {
        path: path.to_path_buf(),
        reason: format!("{e} (expected an object with `windows`: a list of lists of token ids)"),
    })?;
    if file.windows.is_empty() || file.windows.iter().any(Vec::is_empty) {
        return Err(ModelError::InvalidJson {
            path: path.to_path_buf(),
            reason: "`windows` must hold at least one non-empty list of token ids".into(),
        });
    }
    for (w, win) in file.windows.iter().enumerate() {
        check_ids(win, vocab_size, || {
            format!("window {w} of {}", path.display())
        })?;
    }
    Ok(file.windows)
}

/// `nsamples` windows of `seqlen` tokens at uniformly random start positions of `tokens`
/// (as GPTQ's data loaders draw them), reproducible from `seed`.
pub fn sample_windows(
    tokens: &[u32],
    nsamples: usize,
    seqlen: usize,
    seed: u64,
) -> Result<Vec<Vec<u32>>> {
    if seqlen == 0 {
        return Err(ModelError::InvalidArgument("seqlen is 0".into()));
    }
    if tokens.len() < seqlen {
        return Err(ModelError::TextTooShort {
            text: "the text".into(),
            tokens: tokens.len(),
            seqlen,
        });
    }
    let mut rng = SplitMix64::new(seed);
    let starts = (tokens.len() - seqlen + 1) as u64;
    Ok((0..nsamples)
        .map(|_| {
            let s = rng.below(starts) as usize;
            tokens[s..s + seqlen].to_vec()
        })
        .collect())
}

/// Tokenizes a text file (without special tokens) and draws [`sample_windows`] from it.
pub fn load_calib_text(
    path: impl AsRef<Path>,
    tokenizer: &Tokenizer,
    nsamples: usize,
    seqlen: usize,
    seed: u64,
) -> Result<Vec<Vec<u32>>> {
    let tokens = tokenizer.encode_file(&path, false)?;
    sample_windows(&tokens, nsamples, seqlen, seed).map_err(|e| e.in_file(path.as_ref()))
}

/// One sample per line of a JSONL file: an object with a `text` field, tokenized (without
/// special tokens) and truncated to `seqlen` tokens. Blank lines and texts that tokenize to
/// nothing are skipped.
pub fn load_calib_jsonl(
    path: impl AsRef<Path>,
    tokenizer: &Tokenizer,
    seqlen: usize,
) -> Result<Vec<Vec<u32>>> {
    let path = path.as_ref();
    if seqlen == 0 {
        return Err(ModelError::InvalidArgument("seqlen is 0".into()));
    }
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| ModelError::InvalidJson {
            path: path.to_path_buf(),
            reason: format!("line {}: {reason}", n + 1),
        };
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let sample = v
            .get("text")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| bad("expected an object with a string field `text`".into()))?;
        let mut ids = tokenizer.encode(sample, false)?;
        ids.truncate(seqlen);
        if !ids.is_empty() {
            out.push(ids);
        }
    }
    if out.is_empty() {
        return Err(ModelError::InvalidJson {
            path: path.to_path_buf(),
            reason: "no line holds a non-empty `text`".into(),
        });
    }
    Ok(out)
}

/// Errors if any id is `>= vocab_size`.
pub fn check_ids(ids: &[u32], vocab_size: usize, context: impl FnOnce() -> String) -> Result<()> {
    match ids.iter().find(|&&id| id as usize >= vocab_size) {
        Some(&id) => Err(ModelError::TokenOutOfRange {
            context: context(),
            id,
            vocab_size,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_reference_values() {
        // First outputs for seed 1234567, from the reference C implementation.
        let mut r = SplitMix64::new(1234567);
        assert_eq!(r.next_u64(), 6457827717110365317);
        assert_eq!(r.next_u64(), 3203168211198807973);
    }

    #[test]
    fn below_is_in_range_and_covers() {
        let mut r = SplitMix64::new(7);
        let mut seen = [false; 5];
        for _ in 0..1000 {
            let v = r.below(5) as usize;
            seen[v] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn sample_windows_deterministic_and_in_bounds() {
        let tokens: Vec<u32> = (0..100).collect();
        let a = sample_windows(&tokens, 8, 10, 42).unwrap();
        let b = sample_windows(&tokens, 8, 10, 42).unwrap();
        assert_eq!(a, b);
        for w in &a {
            assert_eq!(w.len(), 10);
            assert!(w.windows(2).all(|p| p[1] == p[0] + 1));
        }
        assert_ne!(a, sample_windows(&tokens, 8, 10, 43).unwrap());
        // A window exactly as long as the text.
        assert_eq!(sample_windows(&tokens, 2, 100, 1).unwrap()[0], tokens);
        let err = sample_windows(&tokens, 1, 101, 1).unwrap_err().to_string();
        assert!(
            err.contains("the text has 100 tokens, fewer than one window of 101"),
            "{err}"
        );
    }
}
