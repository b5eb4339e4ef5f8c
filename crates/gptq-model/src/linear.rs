//! `nn.Linear`, its products through a [`Compute`]'s [`ForwardCompute`](gptq_core::ForwardCompute).

use gptq_core::QuantizedTensor;
use ndarray::{Array1, Array2, ArrayView2, ArrayViewMut2};

use crate::compute::Compute;
use crate::error::{ModelError, Result};

/// A linear layer `y = x Wᵀ + b`, with `W` stored `[out_features, in_features]` like
/// PyTorch's `nn.Linear`, so that quantizers see rows = output channels, columns = inputs.
///
/// The fields are public so that the quantization pipeline can swap in dequantized weights
/// between forward stages; [`Linear::set_weight`] does so with a shape check, and
/// [`Linear::set_quantized`] keeps the quantized weight too, for products that multiply its
/// codes ([`ForwardCompute::quantized`](gptq_core::ForwardCompute::quantized)).
#[derive(Debug, Clone, PartialEq)]
pub struct Linear {
    /// `[out_features, in_features]`.
    pub weight: Array2<f32>,
    /// `[out_features]`, if the layer has a bias.
    pub bias: Option<Array1<f32>>,
    /// The quantized weight that `weight` dequantizes, if [`Linear::set_quantized`] set it.
    quantized: Option<QuantizedTensor>,
}

impl Linear {
    /// A layer from its weight and optional bias.
    pub fn new(weight: Array2<f32>, bias: Option<Array1<f32>>) -> Result<Self> {
        if let Some(b) = &bias
            && b.len() != weight.nrows()
        {
            return Err(ModelError::shape(
                "linear bias",
                format!("[{}]", weight.nrows()),
                format!("[{}]", b.len()),
            ));
        }
        Ok(Self {
            weight,
            bias,
            quantized: None,
        })
    }

    /// Input width.
    pub fn in_features(&self) -> usize {
        self.weight.ncols()
    }

    /// Output width.
    pub fn out_features(&self) -> usize {
        self.weight.nrows()
    }

    /// Replaces the weight (e.g. with a quantized-dequantized one) after checking its shape,
    /// returning the old one.
    pub fn set_weight(&mut self, weight: Array2<f32>) -> Result<Array2<f32>> {
        if weight.dim() != self.weight.dim() {
            return Err(ModelError::shape(
                "replacement weight",
                format!("{:?}", self.weight.shape()),
                format!("{:?}", weight.shape()),
            ));
        }
        self.quantized = None;
        Ok(std::mem::replace(&mut self.weight, weight))
    }

    /// Replaces the weight by the dequantized `quantized` and keeps `quantized`, so that
    /// products that multiply quantized weights by their codes can (see [`Linear::quantized`]);
    /// returns the old weight.
    pub fn set_quantized(&mut self, quantized: QuantizedTensor) -> Result<Array2<f32>> {
        let old = self.set_weight(quantized.dequantize())?;
        self.quantized = Some(quantized);
        Ok(old)
    }

    /// The quantized weight that [`Linear::set_quantized`] set, until the next
    /// [`Linear::set_weight`].
    pub fn quantized(&self) -> Option<&QuantizedTensor> {
        self.quantized.as_ref()
    }

    /// `x · Wᵀ + b` for `x` of shape `[tokens, in_features]`.
    pub fn forward<'c>(
        &self,
        x: ArrayView2<'_, f32>,
        compute: impl Into<Compute<'c>>,
    ) -> Result<Array2<f32>> {
        let compute = compute.into();
        self.check_input(&x)?;
        // Overwritten whole: by the product (`Accum::Replace`) or by the bias it accumulates onto.
        let mut out = crate::pool::scratch(x.nrows(), self.out_features());
        if let Some(b) = &self.bias {
            // Start from the bias so that the product accumulates onto it in one pass.
            out.assign(b);
        }
        self.product(out.view_mut(), self.bias.is_some(), x, compute)?;
        Ok(out)
    }

    /// `out += x · Wᵀ + b`: the residual connection without a temporary.
    pub fn forward_add<'c>(
        &self,
        x: ArrayView2<'_, f32>,
        out: &mut Array2<f32>,
        compute: impl Into<Compute<'c>>,
    ) -> Result<()> {
        self.check_input(&x)?;
        if out.dim() != (x.nrows(), self.out_features()) {
            return Err(ModelError::shape(
                "linear accumulation target",
                format!("[{}, {}]", x.nrows(), self.out_features()),
                format!("{:?}", out.shape()),
            ));
        }
        if let Some(b) = &self.bias {
            *out += b;
        }
        self.product(out.view_mut(), true, x, compute.into())
    }

    /// `out (+)= x · Wᵀ` where `compute` says: from the quantized weight's codes when it has
    /// one and the products multiply those, from `weight` otherwise.
    fn product(
        &self,
        out: ArrayViewMut2<'_, f32>,
        accumulate: bool,
        x: ArrayView2<'_, f32>,
        compute: Compute<'_>,
    ) -> Result<()> {
        match (&self.quantized, compute.quantized()) {
            (Some(quantized), Some(products)) => products.x_qwt(x, quantized, out, accumulate),
            _ => compute
                .products()
                .x_wt(x, self.weight.view(), out, accumulate),
        }
        .map_err(ModelError::Products)
    }

    fn check_input(&self, x: &ArrayView2<'_, f32>) -> Result<()> {
        if x.ncols() != self.in_features() {
            return Err(ModelError::shape(
                "linear input",
                format!("[tokens, {}]", self.in_features()),
                format!("{:?}", x.shape()),
            ));
        }
        Ok(())
    }
}
