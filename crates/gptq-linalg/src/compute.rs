//! The CPU's forward compute: a model's products in f32 on faer, or rounded to bf16 or 8 bits
//! on the kernels of [`bf16`](crate::bf16) and [`int8`](crate::int8).

use faer::Par;
use gptq_core::{
    AttentionProducts, ForwardCompute, HeadAttention, HessianPrecision, QuantizedProducts,
    QuantizedTensor, Result, check_x_qwt,
};
use ndarray::{ArrayView2, ArrayViewMut2};

use crate::attention::head_attention_f32;
use crate::{bf16, int8};

/// How a [`CpuCompute`] rounds the operands of its products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ProductPrecision {
    /// f32 operands and sums: the model as it is, on faer's kernels.
    #[default]
    F32,
    /// Operands rounded to bf16, f32 sums ([`bf16`](crate::bf16)): linears and attention.
    Bf16,
    /// As [`Bf16`](Self::Bf16), except that quantized linears multiply their integer codes by
    /// activations rounded to 8 bits per block of inputs ([`int8`](crate::int8)).
    Int8,
}

impl ProductPrecision {
    /// `"f32"`, `"bf16"` or `"int8"`.
    pub fn name(self) -> &'static str {
        match self {
            ProductPrecision::F32 => "f32",
            ProductPrecision::Bf16 => "bf16",
            ProductPrecision::Int8 => "int8",
        }
    }

    /// The fastest precision this CPU has kernels for: [`Int8`](Self::Int8) with AVX512-VNNI and
    /// AVX512-BF16 (the int8 products leave attention and the linears not yet quantized to the
    /// bf16 kernels), [`F32`](Self::F32) otherwise. On SmolLM2-135M the int8 runs' perplexities
    /// were no worse than f32's (docs/pipeline.md §8); the fallbacks of bf16 and int8 on a CPU
    /// without those instructions compute the same results no faster, so they are never chosen.
    pub fn fastest() -> Self {
        if int8::kernels_available() && bf16::kernels_available() {
            ProductPrecision::Int8
        } else {
            ProductPrecision::F32
        }
    }
}

/// The fastest Hessian precision this CPU has kernels for: bf16-rounded activations summed in f32
/// where AVX512-BF16 exists (twice the f32 speed), f32 (the reference's) otherwise.
pub fn fastest_hessian() -> HessianPrecision {
    if bf16::kernels_available() {
        HessianPrecision::Bf16
    } else {
        HessianPrecision::F32
    }
}

/// A model's forward products on the CPU at a [`ProductPrecision`], with the parallelism `par`:
/// the linears' `x · wᵀ`, one head's attention, and quantized linears' products.
///
/// ```
/// use gptq_core::ForwardCompute;
/// use gptq_linalg::{CpuCompute, Par, ProductPrecision};
/// use ndarray::{Array2, array};
///
/// let compute = CpuCompute::new(ProductPrecision::F32, Par::Seq);
/// let (x, w) = (array![[1.0f32, 2.0]], array![[3.0f32, 4.0], [5.0, 6.0]]);
/// let mut out = Array2::zeros((1, 2));
/// compute.x_wt(x.view(), w.view(), out.view_mut(), false)?;
/// assert_eq!(out, array![[11.0, 17.0]]);
/// assert!(compute.quantized().is_none()); // only int8 products multiply codes
/// assert!(CpuCompute::new(ProductPrecision::Int8, Par::Seq).quantized().is_some());
/// # Ok::<(), gptq_core::GptqError>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct CpuCompute {
    precision: ProductPrecision,
    par: Par,
}

impl CpuCompute {
    /// Products at `precision`, each spread over the threads of `par`.
    pub fn new(precision: ProductPrecision, par: Par) -> Self {
        CpuCompute { precision, par }
    }

    /// f32 products with `par`.
    pub fn f32(par: Par) -> Self {
        CpuCompute::new(ProductPrecision::F32, par)
    }

    /// How the products round their operands.
    pub fn product_precision(&self) -> ProductPrecision {
        self.precision
    }

    /// The parallelism of each product.
    pub fn par(&self) -> Par {
        self.par
    }
}

impl ForwardCompute for CpuCompute {
    fn precision(&self) -> &'static str {
        self.precision.name()
    }

    fn x_wt(
        &self,
        x: ArrayView2<'_, f32>,
        w: ArrayView2<'_, f32>,
        out: ArrayViewMut2<'_, f32>,
        accumulate: bool,
    ) -> Result<()> {
        match self.precision {
            ProductPrecision::F32 => crate::x_wt(x, w, out, accumulate, self.par),
            ProductPrecision::Bf16 | ProductPrecision::Int8 => {
                bf16::x_wt(x, w, out, accumulate, self.par)
            }
        }
    }

    /// Always: f32 attention at f32, bf16-rounded attention otherwise.
    fn attention(&self) -> Option<&dyn AttentionProducts> {
        Some(self)
    }

    /// At [`ProductPrecision::Int8`] only.
    fn quantized(&self) -> Option<&dyn QuantizedProducts> {
        (self.precision == ProductPrecision::Int8).then_some(self as &dyn QuantizedProducts)
    }
}

impl AttentionProducts for CpuCompute {
    /// The head's products one after another on the calling thread (a model spreads heads over
    /// the threads, not the products of one head).
    fn head_attention(&self, head: HeadAttention<'_>, out: ArrayViewMut2<'_, f32>) -> Result<()> {
        match self.precision {
            ProductPrecision::F32 => head_attention_f32(head, out),
            ProductPrecision::Bf16 | ProductPrecision::Int8 => bf16::head_attention(head, out),
        }
    }
}

impl QuantizedProducts for CpuCompute {
    /// From the codes ([`int8::x_qwt`]) at [`ProductPrecision::Int8`]; otherwise the dequantized
    /// weight's product at this precision.
    fn x_qwt(
        &self,
        x: ArrayView2<'_, f32>,
        w: &QuantizedTensor,
        out: ArrayViewMut2<'_, f32>,
        accumulate: bool,
    ) -> Result<()> {
        match self.precision {
            ProductPrecision::Int8 => int8::x_qwt(x, w, out, accumulate, self.par),
            ProductPrecision::F32 | ProductPrecision::Bf16 => {
                check_x_qwt(&x, w, &out)?;
                self.x_wt(x, w.dequantize().view(), out, accumulate)
            }
        }
    }
}
