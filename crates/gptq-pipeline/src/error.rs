//! The pipeline's error: one line that names the problem and the fix.

use std::path::PathBuf;

use gptq_core::GptqError;
use gptq_model::ModelError;

/// Everything that can stop a quantization run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// Loading or running the model failed.
    #[error(transparent)]
    Model(#[from] ModelError),

    /// Quantization failed.
    #[error("{context}: {source}")]
    Quantization {
        /// Which layer or step.
        context: String,
        /// The solver's error.
        source: GptqError,
    },

    /// Writing the output failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },

    /// The filesystem that would receive the checkpoint lacks room for it.
    #[error(
        "the checkpoint needs about {} MiB but {} has {} MiB free: free some space, or choose \
         another --out",
        needed.div_ceil(1 << 20),
        path.display(),
        available >> 20
    )]
    NoSpace {
        /// The directory the checkpoint would be written in.
        path: PathBuf,
        /// Bytes the checkpoint takes (an upper bound).
        needed: u64,
        /// Bytes free there for this user.
        available: u64,
    },

    /// The request cannot be carried out as given.
    #[error("{0}")]
    Invalid(String),
}

impl PipelineError {
    pub(crate) fn quantization(context: impl Into<String>) -> impl FnOnce(GptqError) -> Self {
        let context = context.into();
        move |source| PipelineError::Quantization { context, source }
    }

    pub(crate) fn write(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| PipelineError::Write { path, source }
    }
}

/// `Result` with [`PipelineError`].
pub type Result<T, E = PipelineError> = std::result::Result<T, E>;
