//! Calibration activations, the input of Hessian accumulation.

use half::{bf16, f16};
use std::ops::Range;

use ndarray::{ArrayView2, s};

use crate::error::{GptqError, Position, Result, shape_string};
use crate::validate::check_finite;

/// A `[tokens, columns]` matrix of a linear layer's inputs, in the precision the model runs in.
#[derive(Debug, Clone, Copy)]
pub enum ActivationData<'a> {
    /// 32-bit floats.
    F32(ArrayView2<'a, f32>),
    /// IEEE half precision.
    F16(ArrayView2<'a, f16>),
    /// bfloat16.
    BF16(ArrayView2<'a, bf16>),
}

impl ActivationData<'_> {
    /// `(tokens, columns)`.
    pub fn dim(&self) -> (usize, usize) {
        match self {
            ActivationData::F32(x) => x.dim(),
            ActivationData::F16(x) => x.dim(),
            ActivationData::BF16(x) => x.dim(),
        }
    }
}

impl<'a> From<ArrayView2<'a, f32>> for ActivationData<'a> {
    fn from(x: ArrayView2<'a, f32>) -> Self {
        ActivationData::F32(x)
    }
}
impl<'a> From<ArrayView2<'a, f16>> for ActivationData<'a> {
    fn from(x: ArrayView2<'a, f16>) -> Self {
        ActivationData::F16(x)
    }
}
impl<'a> From<ArrayView2<'a, bf16>> for ActivationData<'a> {
    fn from(x: ArrayView2<'a, bf16>) -> Self {
        ActivationData::BF16(x)
    }
}

/// One batch for a Hessian accumulator: the tokens of `sequences` sequences, optionally with a
/// mask that drops padding tokens.
///
/// The Hessian follows the reference's running mean over sequences, `H = (2/N) Σ x xᵀ` where N
/// counts sequences (not tokens), so say how many sequences the tokens came from.
///
/// ```
/// use gptq_core::ActivationBatch;
/// use ndarray::Array2;
/// let x = Array2::<f32>::zeros((6, 4)); // two sequences of three tokens
/// let mask = [true, true, false, true, true, true];
/// let batch = ActivationBatch::new(x.view()).sequences(2).mask(&mask);
/// assert_eq!(batch.tokens(), 6);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ActivationBatch<'a> {
    data: ActivationData<'a>,
    sequences: usize,
    mask: Option<&'a [bool]>,
}

impl<'a> ActivationBatch<'a> {
    /// A batch of one sequence with every token kept.
    pub fn new(data: impl Into<ActivationData<'a>>) -> Self {
        ActivationBatch {
            data: data.into(),
            sequences: 1,
            mask: None,
        }
    }
    /// Sets how many sequences the tokens belong to.
    pub fn sequences(mut self, sequences: usize) -> Self {
        self.sequences = sequences;
        self
    }
    /// Keeps only the tokens whose mask entry is `true` (one entry per token).
    pub fn mask(mut self, mask: &'a [bool]) -> Self {
        self.mask = Some(mask);
        self
    }
    /// The activations.
    pub fn data(&self) -> ActivationData<'a> {
        self.data
    }
    /// Number of sequences.
    pub fn sequence_count(&self) -> usize {
        self.sequences
    }
    /// The token mask, if any.
    pub fn token_mask(&self) -> Option<&'a [bool]> {
        self.mask
    }
    /// Number of token rows (kept or not).
    pub fn tokens(&self) -> usize {
        self.data.dim().0
    }
    /// Number of input columns.
    pub fn columns(&self) -> usize {
        self.data.dim().1
    }

    /// The checks every Hessian accumulator makes before adding this batch to a `columns`-wide
    /// sum (the width, at least one sequence, finite values, a mask of the right length), so
    /// that all backends reject the same inputs with the same errors. Returns the indices of
    /// the tokens kept by the mask.
    ///
    /// ```
    /// use gptq_core::{ActivationBatch, GptqError};
    /// use ndarray::array;
    ///
    /// let x = array![[1.0f32, 2.0], [3.0, f32::NAN]];
    /// let err = ActivationBatch::new(x.view()).kept_tokens(2).unwrap_err();
    /// assert!(matches!(err, GptqError::NonFinite { position, .. } if position.row == 1));
    /// ```
    pub fn kept_tokens(&self, columns: usize) -> Result<Vec<usize>> {
        let kept = self.kept_tokens_trusting_values(columns)?;
        self.check_finite_rows(0..self.tokens())?;
        Ok(kept)
    }

    /// [`kept_tokens`](Self::kept_tokens) without the check of the values, for accumulators
    /// that make it themselves with [`check_finite_rows`](Self::check_finite_rows) (e.g. on
    /// several threads, a row range each) before adding anything.
    pub fn kept_tokens_trusting_values(&self, columns: usize) -> Result<Vec<usize>> {
        let (tokens, width) = self.data.dim();
        if width != columns {
            return Err(GptqError::ShapeMismatch {
                what: "activation batch",
                expected: format!("[tokens, {columns}]"),
                actual: shape_string(&[tokens, width]),
            });
        }
        if self.sequences == 0 {
            return Err(GptqError::InvalidConfig(
                "an activation batch must come from at least one sequence".into(),
            ));
        }
        match self.mask {
            None => Ok((0..tokens).collect()),
            Some(mask) if mask.len() == tokens => Ok((0..tokens).filter(|&t| mask[t]).collect()),
            Some(mask) => Err(GptqError::ShapeMismatch {
                what: "token mask",
                expected: format!("[{tokens}]"),
                actual: format!("[{}]", mask.len()),
            }),
        }
    }

    /// Fails with [`GptqError::NonFinite`] at the first NaN or infinity in token rows `rows`
    /// (a range outside the batch is an error); the position is counted from the batch's first
    /// row.
    pub fn check_finite_rows(&self, rows: Range<usize>) -> Result<()> {
        if rows.start > rows.end || rows.end > self.tokens() {
            return Err(GptqError::InvalidConfig(format!(
                "token rows {rows:?} are not inside a batch of {} tokens",
                self.tokens()
            )));
        }
        let first = rows.start;
        let found = match self.data {
            ActivationData::F32(x) => check_finite("activations", x.slice(s![rows, ..])),
            ActivationData::F16(x) => check_finite("activations", x.slice(s![rows, ..])),
            ActivationData::BF16(x) => check_finite("activations", x.slice(s![rows, ..])),
        };
        found.map_err(|e| match e {
            GptqError::NonFinite {
                what,
                value,
                position,
            } => GptqError::NonFinite {
                what,
                value,
                position: Position {
                    row: position.row + first,
                    column: position.column,
                },
            },
            other => other,
        })
    }
}

/// Precision of the Hessian sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HessianPrecision {
    /// Products and sums in f64: immune to the rounding of long sums over many tokens.
    #[default]
    F64,
    /// Products and sums in f32, as the reference; half the memory.
    F32,
    /// Activations rounded to bf16 (8 significant bits), products summed in f32: twice as fast
    /// as [`F32`](Self::F32) on CPUs with AVX512-BF16 (the same numbers, slowly, elsewhere).
    Bf16,
}

/// Options of a Hessian accumulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HessianOptions {
    /// Precision of the running sum.
    pub precision: HessianPrecision,
}
