//! The error type of `gptq-model`.

use std::path::{Path, PathBuf};

/// Everything that can go wrong while loading, running or evaluating a model; every message
/// names the problem and what to change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },

    /// The directory has no `config.json`.
    #[error("config.json not found in {dir}: pass a Hugging Face model directory")]
    ConfigNotFound {
        /// The directory that was searched.
        dir: PathBuf,
    },

    /// A JSON file (config, shard index, calibration data) is not valid JSON of the expected form.
    #[error("{path} is not valid: {reason}")]
    InvalidJson {
        /// The file.
        path: PathBuf,
        /// What the parser or validator reported.
        reason: String,
    },

    /// A config field is missing or has an unusable value.
    #[error("config.json field `{field}` {reason}")]
    ConfigField {
        /// The field's name, or its path (`rope_scaling.factor`) inside an object.
        field: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The `model_type` is not a Llama-family architecture.
    #[error(
        "unsupported architecture `{model_type}`: supported are llama, mistral, qwen2, qwen3, smollm3"
    )]
    UnsupportedArchitecture {
        /// The `model_type` found in config.json.
        model_type: String,
    },

    /// A feature of the architecture this crate does not implement.
    #[error("unsupported model feature: {0}")]
    UnsupportedFeature(String),

    /// No weights file in the directory.
    #[error(
        "neither model.safetensors nor model.safetensors.index.json found in {dir}: \
         the directory must hold the weights in safetensors format (convert .bin checkpoints first)"
    )]
    WeightsNotFound {
        /// The directory that was searched.
        dir: PathBuf,
    },

    /// A safetensors file has a corrupt header or layout.
    #[error("{path} is not a valid safetensors file: {reason}")]
    InvalidSafetensors {
        /// The file.
        path: PathBuf,
        /// What the parser reported.
        reason: String,
    },

    /// A tensor the architecture needs is not in the checkpoint.
    #[error("tensor {name} missing from {file}")]
    MissingTensor {
        /// The Hugging Face tensor name.
        name: String,
        /// The file (or index) that should hold it.
        file: String,
    },

    /// A tensor has a shape that does not match the config.
    #[error(
        "tensor {name} has shape {actual:?}, but config.json implies {expected:?}: \
         config.json and the weights do not belong together"
    )]
    TensorShape {
        /// The tensor name.
        name: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape in the file.
        actual: Vec<usize>,
    },

    /// A tensor has an element type other than f32, f16 or bf16.
    #[error("tensor {name} has dtype {dtype}: only F32, F16 and BF16 weights are supported")]
    UnsupportedDtype {
        /// The tensor name.
        name: String,
        /// The dtype in the file.
        dtype: String,
    },

    /// A weight holds NaN or an infinity.
    #[error(
        "tensor {name} holds a non-finite value ({value}) at flat index {index}: \
         the checkpoint is corrupt or overflowed when it was saved"
    )]
    NonFiniteWeight {
        /// The tensor name.
        name: String,
        /// Row-major index of the first bad element.
        index: usize,
        /// The bad value.
        value: f32,
    },

    /// No `tokenizer.json`.
    #[error(
        "tokenizer.json not found in {dir}: the model directory needs a Hugging Face \
         fast-tokenizer file (save it with tokenizer.save_pretrained)"
    )]
    TokenizerNotFound {
        /// The directory that was searched.
        dir: PathBuf,
    },

    /// The tokenizers library failed.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),

    /// A token id does not fit the vocabulary.
    #[error(
        "token id {id} in {context} is out of range for a vocabulary of {vocab_size}: \
         the token ids were made with a different tokenizer"
    )]
    TokenOutOfRange {
        /// Where the id was found.
        context: String,
        /// The id.
        id: u32,
        /// The model's vocabulary size.
        vocab_size: usize,
    },

    /// A text is too short to cut one calibration or evaluation window from it.
    #[error(
        "{text} has {tokens} tokens, fewer than one window of {seqlen}: \
         use a longer file or a smaller --seqlen"
    )]
    TextTooShort {
        /// The text: its file where known (see [`ModelError::in_file`]), else "the text".
        text: String,
        /// Tokens in the text.
        tokens: usize,
        /// The requested window length.
        seqlen: usize,
    },

    /// The model's output for a sequence is NaN or infinite although its weights are finite:
    /// somewhere in the forward pass a value overflowed f32.
    #[error(
        "the next-token log-likelihood of sequence {sequence} (counting from 0) is not finite: \
         the model's activations overflow f32, so its weights are corrupt or far outside the \
         range they were trained in"
    )]
    NonFiniteLikelihood {
        /// The sequence (an evaluation window in [`perplexity`](crate::perplexity)).
        sequence: usize,
    },

    /// An input to a forward stage has the wrong shape.
    #[error("shape mismatch for {what}: expected {expected}, got {actual}")]
    Shape {
        /// Which input.
        what: &'static str,
        /// The expected shape.
        expected: String,
        /// The given shape.
        actual: String,
    },

    /// A backend's product of the forward pass failed (out of device memory, a driver error).
    #[error("a matrix product of the forward pass failed: {0}")]
    Products(#[source] gptq_core::GptqError),

    /// An argument is out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// A packed GPTQ layer is malformed.
    #[error("packed GPTQ layer {name} is invalid: {reason}")]
    InvalidQuantized {
        /// The layer's tensor prefix.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// `Result` with [`ModelError`].
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

impl ModelError {
    /// Names `path` as the text a [`ModelError::TextTooShort`] speaks of; other errors are
    /// returned as they are.
    pub fn in_file(self, path: &Path) -> Self {
        match self {
            Self::TextTooShort { tokens, seqlen, .. } => Self::TextTooShort {
                text: path.display().to_string(),
                tokens,
                seqlen,
            },
            other => other,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn shape(
        what: &'static str,
        expected: impl ToString,
        actual: impl ToString,
    ) -> Self {
        Self::Shape {
            what,
            expected: expected.to_string(),
            actual: actual.to_string(),
        }
    }
}
