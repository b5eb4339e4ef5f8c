//! Calibration data: token-id windows, random windows of a text file, or a JSONL of texts.

use std::path::{Path, PathBuf};

use gptq_model::{Checkpoint, calib};

use crate::error::{PipelineError, Result};

/// Where calibration sequences come from.
#[derive(Debug, Clone, PartialEq)]
pub enum CalibrationSource {
    /// A JSON object with `windows`: a list of token-id lists (as made by the reference's
    /// scripts); the first `nsamples` are used, each cut to `seqlen`.
    TokenIds {
        /// The file.
        path: PathBuf,
    },
    /// A text file: tokenized whole, then windows of `seqlen` at random start positions.
    Text {
        /// The file.
        path: PathBuf,
        /// Seed of the start positions.
        seed: u64,
    },
    /// One JSON object with a `text` field per line, each one sample cut to `seqlen`.
    Jsonl {
        /// The file.
        path: PathBuf,
    },
}

impl CalibrationSource {
    /// Picks the kind from the file name: `.jsonl` → JSONL, `.json` → token ids, else text.
    pub fn detect(path: impl AsRef<Path>, seed: u64) -> Self {
        let path = path.as_ref().to_path_buf();
        match path.extension().and_then(|e| e.to_str()) {
            Some("jsonl") => CalibrationSource::Jsonl { path },
            Some("json") => CalibrationSource::TokenIds { path },
            _ => CalibrationSource::Text { path, seed },
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        match self {
            CalibrationSource::TokenIds { path }
            | CalibrationSource::Text { path, .. }
            | CalibrationSource::Jsonl { path } => path,
        }
    }

    /// Loads up to `nsamples` sequences of at most `seqlen` tokens.
    pub fn load(
        &self,
        checkpoint: &Checkpoint,
        nsamples: usize,
        seqlen: usize,
    ) -> Result<Vec<Vec<u32>>> {
        if nsamples == 0 || seqlen == 0 {
            return Err(PipelineError::Invalid(
                "--nsamples and --seqlen must be at least 1".into(),
            ));
        }
        if self.path().is_dir() {
            return Err(PipelineError::Invalid(format!(
                "calibration file {} is a directory: pass --calib with a text, .jsonl or \
                 token-id .json file",
                self.path().display()
            )));
        }
        if !self.path().is_file() {
            return Err(PipelineError::Invalid(format!(
                "calibration file {} not found: pass --calib with a text, .jsonl or token-id .json file",
                self.path().display()
            )));
        }
        let vocab = checkpoint.config().vocab_size;
        let mut samples = match self {
            CalibrationSource::TokenIds { path } => calib::load_calib_json(path, vocab)?,
            CalibrationSource::Text { path, seed } => {
                let tokenizer = checkpoint.load_tokenizer()?;
                calib::load_calib_text(path, &tokenizer, nsamples, seqlen, *seed)?
            }
            CalibrationSource::Jsonl { path } => {
                let tokenizer = checkpoint.load_tokenizer()?;
                calib::load_calib_jsonl(path, &tokenizer, seqlen)?
            }
        };
        samples.truncate(nsamples);
        for sample in &mut samples {
            sample.truncate(seqlen);
        }
        samples.retain(|s| !s.is_empty());
        if samples.is_empty() {
            return Err(PipelineError::Invalid(format!(
                "{} holds no calibration tokens: give it some text",
                self.path().display()
            )));
        }
        Ok(samples)
    }
}
