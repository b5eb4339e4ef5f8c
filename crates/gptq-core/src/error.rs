//! The one error type of gptq-rs.

use std::fmt;

/// Everything that can go wrong in gptq-rs, each with a message that says what to change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GptqError {
    /// A configuration value is out of range or two values contradict each other.
    #[error("invalid quantization config: {0}")]
    InvalidConfig(String),

    /// A matrix or vector has the wrong shape for the operation.
    #[error("shape mismatch for {what}: expected {expected}, got {actual}")]
    ShapeMismatch {
        /// Which input is wrong.
        what: &'static str,
        /// The shape the operation needed.
        expected: String,
        /// The shape it was given.
        actual: String,
    },

    /// An input has no elements.
    #[error("{what} is empty (shape {shape}); give it at least one row and one column")]
    Empty {
        /// Which input is empty.
        what: &'static str,
        /// Its shape.
        shape: String,
    },

    /// An input holds NaN or an infinity.
    #[error(
        "{what} contains a non-finite value ({value}) at {position}; \
         check the source data for overflow or uninitialised values"
    )]
    NonFinite {
        /// Which input holds the value.
        what: &'static str,
        /// The offending value.
        value: f64,
        /// Where it is, as `[row, column]`.
        position: Position,
    },

    /// The group size does not fit the layer.
    #[error(
        "group size {group_size} does not fit a layer with {columns} input columns: \
         use a group size of at most {columns}, or per-channel quantization"
    )]
    GroupSize {
        /// The configured group size.
        group_size: usize,
        /// The layer's input columns.
        columns: usize,
    },

    /// No calibration data reached the Hessian.
    #[error(
        "no calibration sequences were accumulated into the {columns}-column Hessian; \
         call add_batch with at least one batch first"
    )]
    NoSamples {
        /// Hessian size.
        columns: usize,
    },

    /// The damped Hessian stayed indefinite for every damping the policy allowed.
    #[error(
        "the Hessian of a layer with {columns} input columns is not positive definite even with \
         damping {tried:?} (fractions of its mean diagonal); the calibration data may hold \
         too few tokens, or raise damp_percent / the retry count"
    )]
    NotPositiveDefinite {
        /// Hessian size.
        columns: usize,
        /// Every damp percent tried, in order.
        tried: Vec<f64>,
    },

    /// A quantized tensor cannot be written in (or read from) the GPTQ packed format.
    #[error("cannot pack or unpack: {0}")]
    Packing(String),

    /// A backend cannot run this request, e.g. a custom grid on a device backend.
    #[error("backend {backend} does not support {what}")]
    Unsupported {
        /// Backend name.
        backend: &'static str,
        /// What was asked.
        what: String,
    },

    /// A backend failed (device error, out of memory, kernel compilation).
    #[error("backend {backend} failed: {message}")]
    Backend {
        /// Backend name.
        backend: &'static str,
        /// What the backend reported.
        message: String,
    },

    /// An I/O error while reading or writing data.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// A `[row, column]` position inside a matrix, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Row index.
    pub row: usize,
    /// Column index.
    pub column: usize,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {}]", self.row, self.column)
    }
}

/// `Result` with [`GptqError`].
pub type Result<T, E = GptqError> = std::result::Result<T, E>;

/// Formats a 2-D shape as `[rows, columns]`.
pub(crate) fn shape2(rows: usize, columns: usize) -> String {
    shape_string(&[rows, columns])
}

/// Formats a shape as `[d0, d1, ...]` for error messages.
pub fn shape_string(dims: &[usize]) -> String {
    let parts: Vec<String> = dims.iter().map(usize::to_string).collect();
    format!("[{}]", parts.join(", "))
}
