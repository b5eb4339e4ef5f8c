//! Where a forward pass computes: a [`ForwardCompute`] for the products, and faer's parallelism
//! for the element-wise work and the spreading of attention heads over threads.

use faer::Par;
use gptq_core::{AttentionProducts, ForwardCompute, QuantizedProducts};
use gptq_linalg::{CpuCompute, ProductPrecision};

/// How the forward stages compute: a [`Par`] for the element-wise work and for spreading
/// attention heads over threads, and a [`ForwardCompute`] for the products (the CPU's
/// [`CpuCompute`] at some [`ProductPrecision`], or any other implementation, e.g. a GPU's).
///
/// Every forward function takes `impl Into<Compute>`, so a plain [`Par`] means "f32 on the
/// CPU":
///
/// ```
/// use gptq_model::{Compute, Par, ProductPrecision};
///
/// let cpu: Compute<'_> = Par::Seq.into();
/// assert_eq!(cpu.precision(), "f32");
/// assert_eq!(Compute::cpu(ProductPrecision::Bf16, Par::Seq).precision(), "bf16");
/// ```
#[derive(Clone, Copy)]
pub struct Compute<'a> {
    par: Par,
    products: Products<'a>,
    /// Attention for products that do not compute it themselves.
    f32_attention: CpuCompute,
}

/// The products of a [`Compute`].
#[derive(Clone, Copy)]
enum Products<'a> {
    Cpu(CpuCompute),
    Given(&'a dyn ForwardCompute),
}

impl std::fmt::Debug for Compute<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compute")
            .field("par", &self.par)
            .field("precision", &self.precision())
            .finish()
    }
}

impl From<Par> for Compute<'_> {
    fn from(par: Par) -> Self {
        Compute::new(par)
    }
}

impl<'a> Compute<'a> {
    /// f32 on the CPU with `par`.
    pub fn new(par: Par) -> Self {
        Compute::cpu(ProductPrecision::F32, par)
    }

    /// The CPU's products at `precision` ([`CpuCompute`]), everything spread over `par`.
    pub fn cpu(precision: ProductPrecision, par: Par) -> Self {
        Compute {
            par,
            products: Products::Cpu(CpuCompute::new(precision, par)),
            f32_attention: CpuCompute::f32(par),
        }
    }

    /// The products on `products` (a GPU's, a test's); attention too when `products` computes
    /// it ([`ForwardCompute::attention`]), f32 on the CPU otherwise.
    pub fn with_products(self, products: &'a dyn ForwardCompute) -> Self {
        Compute {
            products: Products::Given(products),
            ..self
        }
    }

    /// The CPU parallelism.
    pub fn par(&self) -> Par {
        self.par
    }

    /// The products of the linears.
    pub fn products(&self) -> &dyn ForwardCompute {
        match &self.products {
            Products::Cpu(cpu) => cpu,
            Products::Given(given) => *given,
        }
    }

    /// How the products round their operands ([`ForwardCompute::precision`]).
    pub fn precision(&self) -> &'static str {
        self.products().precision()
    }

    /// Attention: the products' own, or f32 on the CPU.
    pub(crate) fn attention(&self) -> &dyn AttentionProducts {
        self.products().attention().unwrap_or(&self.f32_attention)
    }

    /// The products of quantized weights, when the products multiply codes.
    pub(crate) fn quantized(&self) -> Option<&dyn QuantizedProducts> {
        self.products().quantized()
    }
}
