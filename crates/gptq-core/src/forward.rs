//! What computes a model's forward pass: the products of its linears and, optionally, its
//! attention and the products of already quantized weights.
//!
//! This is a trait of its own, apart from the solver's [`Backend`](crate::Backend): a
//! quantization pipeline takes a solver backend (where Hessians live and GPTQ runs) and a
//! forward compute (where the calibration forward passes run) side by side, so that either can
//! change alone (bf16 kernels on a CPU solver, a GPU's products, test doubles that count calls).
//! The model's code is written once against it, as candle writes its models once for every
//! device.
//!
//! Optional capabilities are types, not flags: [`ForwardCompute::attention`] and
//! [`ForwardCompute::quantized`] return the implementation when there is one, so nothing is
//! called that can only answer "unsupported".

use ndarray::{ArrayView2, ArrayViewMut2};

use crate::error::{GptqError, Result, shape2};
use crate::tensor::QuantizedTensor;

/// The dense products of a model's forward pass, `out = x · wᵀ` (or `out += x · wᵀ`), and the
/// optional parts of a forward pass that an implementation computes itself.
///
/// A quantization run spends most of its time in the forward passes that produce the
/// calibration activations, and almost all of that in these products (one per linear layer and
/// calibration batch). Implementations check shapes with [`check_x_wt`] and report failures
/// (out of device memory, a driver error) as errors, leaving `out` unspecified.
pub trait ForwardCompute: Send + Sync {
    /// How the products round their operands, for reports and run fingerprints: `"f32"` for
    /// products that compute f32 `x · wᵀ` (up to the order of the sums), otherwise a name of
    /// the rounding (e.g. `"bf16"`, `"int8"`), since such products change a run's results.
    fn precision(&self) -> &'static str;

    /// `out = x · wᵀ`, or `out += x · wᵀ` when `accumulate`: `x` is `[m, k]`, `w` is `[n, k]`
    /// (`nn.Linear`'s weight layout), `out` is `[m, n]`; any strides.
    fn x_wt(
        &self,
        x: ArrayView2<'_, f32>,
        w: ArrayView2<'_, f32>,
        out: ArrayViewMut2<'_, f32>,
        accumulate: bool,
    ) -> Result<()>;

    /// The attention these products compute, if any. `None` (the default) leaves attention to
    /// the model's own f32 CPU code; products that change the numbers (e.g. round operands to
    /// bf16) return theirs, so that attention's products are rounded like the linears'.
    fn attention(&self) -> Option<&dyn AttentionProducts> {
        None
    }

    /// The products of already quantized weights from their integer codes, if these products
    /// have them. `None` (the default): a model multiplies a quantized linear's dequantized
    /// weights with [`x_wt`](Self::x_wt).
    fn quantized(&self) -> Option<&dyn QuantizedProducts> {
        None
    }
}

/// Causal self-attention of one head over one sequence.
pub trait AttentionProducts: Send + Sync {
    /// `out = P · v`, where row `i` of `P` is the max-subtracted softmax of the scores
    /// `q[i] · k[j]` of the keys `j` that query `i` sees ([`HeadAttention::visible_keys`]) and
    /// zero elsewhere. Check the operands with [`HeadAttention::check`].
    fn head_attention(&self, head: HeadAttention<'_>, out: ArrayViewMut2<'_, f32>) -> Result<()>;
}

/// Products of already quantized weights.
pub trait QuantizedProducts: Send + Sync {
    /// `out = x · Wᵀ`, or `out += x · Wᵀ` when `accumulate`, where `W` is the dequantized `w`
    /// (`[n, k]`); `x` is `[m, k]`, `out` `[m, n]`, any strides. Products that compute it from
    /// the codes may round `x` too (e.g. to 8 bits per block of inputs) and say so. Check the
    /// shapes with [`check_x_qwt`].
    fn x_qwt(
        &self,
        x: ArrayView2<'_, f32>,
        w: &QuantizedTensor,
        out: ArrayViewMut2<'_, f32>,
        accumulate: bool,
    ) -> Result<()>;
}

/// The operands of [`AttentionProducts::head_attention`]: one head of one sequence of `len`
/// tokens.
#[derive(Debug, Clone, Copy)]
pub struct HeadAttention<'a> {
    /// Queries `[len, head_dim]`, already scaled (by `1/sqrt(head_dim)` in Llama).
    pub q: ArrayView2<'a, f32>,
    /// Keys `[len, head_dim]`.
    pub k: ArrayView2<'a, f32>,
    /// Values `[len, head_dim]`.
    pub v: ArrayView2<'a, f32>,
    /// A sliding window: query `i` sees only the last `window` keys up to itself.
    pub window: Option<usize>,
}

impl HeadAttention<'_> {
    /// Tokens in the sequence.
    pub fn len(&self) -> usize {
        self.q.nrows()
    }

    /// Whether the sequence is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The keys query `i` sees: `i + 1 - window..=i` (from 0 without a window).
    ///
    /// ```
    /// use gptq_core::HeadAttention;
    /// use ndarray::Array2;
    ///
    /// let x = Array2::<f32>::zeros((8, 4));
    /// let head = HeadAttention { q: x.view(), k: x.view(), v: x.view(), window: Some(3) };
    /// assert_eq!(head.visible_keys(1), 0..2);
    /// assert_eq!(head.visible_keys(5), 3..6);
    /// ```
    pub fn visible_keys(&self, i: usize) -> std::ops::Range<usize> {
        self.window.map_or(0, |w| (i + 1).saturating_sub(w))..i + 1
    }

    /// Checks that `q`, `k`, `v` and `out` all have the shape `[len, head_dim]` of `q`.
    pub fn check(&self, out: &ArrayViewMut2<'_, f32>) -> Result<()> {
        for (what, dim) in [
            ("attention keys", self.k.dim()),
            ("attention values", self.v.dim()),
            ("attention output", out.dim()),
        ] {
            if dim != self.q.dim() {
                return Err(GptqError::ShapeMismatch {
                    what,
                    expected: shape2(self.q.nrows(), self.q.ncols()),
                    actual: shape2(dim.0, dim.1),
                });
            }
        }
        if self.window == Some(0) {
            return Err(GptqError::InvalidConfig(
                "an attention window must hold at least one key".into(),
            ));
        }
        Ok(())
    }
}

/// Checks the shapes of a [`ForwardCompute::x_wt`] call: `x` `[m, k]`, `w` `[n, k]`, `out`
/// `[m, n]`.
pub fn check_x_wt(
    x: &ArrayView2<'_, f32>,
    w: &ArrayView2<'_, f32>,
    out: &ArrayViewMut2<'_, f32>,
) -> Result<()> {
    check_product_shapes("weight of x · wᵀ", x, w.dim(), out)
}

/// Checks the shapes of a [`QuantizedProducts::x_qwt`] call: `x` `[m, k]`, `w` `[n, k]`, `out`
/// `[m, n]`.
pub fn check_x_qwt(
    x: &ArrayView2<'_, f32>,
    w: &QuantizedTensor,
    out: &ArrayViewMut2<'_, f32>,
) -> Result<()> {
    check_product_shapes(
        "quantized weight of x · wᵀ",
        x,
        (w.rows(), w.columns()),
        out,
    )
}

/// `x` `[m, k]`, a weight (`weight`) of shape `(n, k)`, `out` `[m, n]`.
fn check_product_shapes(
    weight: &'static str,
    x: &ArrayView2<'_, f32>,
    (n, k): (usize, usize),
    out: &ArrayViewMut2<'_, f32>,
) -> Result<()> {
    if k != x.ncols() {
        return Err(GptqError::ShapeMismatch {
            what: weight,
            expected: format!("[n, {}] (as many columns as x)", x.ncols()),
            actual: shape2(n, k),
        });
    }
    if out.dim() != (x.nrows(), n) {
        return Err(GptqError::ShapeMismatch {
            what: "output of x · wᵀ",
            expected: shape2(x.nrows(), n),
            actual: shape2(out.nrows(), out.ncols()),
        });
    }
    Ok(())
}
