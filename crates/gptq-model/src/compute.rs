//! Where a forward pass computes: faer's parallelism for everything, and optionally a backend's
//! products for the linear layers.

use faer::Par;
use gptq_core::ForwardProducts;
use ndarray::{ArrayView2, ArrayViewMut2};

use crate::error::{ModelError, Result};
use crate::linear::matmul_xwt;

/// How the forward stages compute: a [`Par`] for faer's products and the element-wise work, and,
/// if given, a backend's [`ForwardProducts`] for the products of the linear layers (one per
/// linear and batch: where a forward pass spends its time). Attention's per-head products, the
/// norms and the activations stay on the CPU.
///
/// Every forward function takes `impl Into<Compute>`, so a plain [`Par`] means "all on the CPU":
///
/// ```
/// use gptq_model::{Compute, Par};
///
/// let cpu: Compute<'_> = Par::Seq.into();
/// assert!(!cpu.has_products());
/// ```
#[derive(Clone, Copy)]
pub struct Compute<'a> {
    par: Par,
    products: Option<&'a dyn ForwardProducts>,
}

impl std::fmt::Debug for Compute<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compute")
            .field("par", &self.par)
            .field("products", &self.products.map(|_| "backend"))
            .finish()
    }
}

impl From<Par> for Compute<'_> {
    fn from(par: Par) -> Self {
        Compute {
            par,
            products: None,
        }
    }
}

impl<'a> Compute<'a> {
    /// Everything on the CPU with `par`.
    pub fn new(par: Par) -> Self {
        par.into()
    }

    /// The linears' products on `products` when it is `Some` (e.g.
    /// `gptq_core::Backend::forward_products` of a GPU backend), on the CPU otherwise.
    pub fn with_products(self, products: Option<&'a dyn ForwardProducts>) -> Self {
        Compute { products, ..self }
    }

    /// The CPU parallelism.
    pub fn par(&self) -> Par {
        self.par
    }

    /// Whether a backend computes the linears' products.
    pub fn has_products(&self) -> bool {
        self.products.is_some()
    }

    /// The backend's products when they compute attention too
    /// ([`ForwardProducts::computes_attention`]).
    pub(crate) fn attention_products(&self) -> Option<&'a dyn ForwardProducts> {
        self.products.filter(|p| p.computes_attention())
    }

    /// The backend's products when they multiply quantized weights by their codes
    /// ([`ForwardProducts::computes_quantized`]).
    pub(crate) fn quantized_products(&self) -> Option<&'a dyn ForwardProducts> {
        self.products.filter(|p| p.computes_quantized())
    }

    /// `out (+)= x · wᵀ` where this compute says.
    pub(crate) fn x_wt(
        &self,
        out: ArrayViewMut2<'_, f32>,
        accumulate: bool,
        x: ArrayView2<'_, f32>,
        w: ArrayView2<'_, f32>,
    ) -> Result<()> {
        match self.products {
            Some(products) => products
                .x_wt(x, w, out, accumulate)
                .map_err(ModelError::Products),
            None => {
                matmul_xwt(out, accumulate, x, w, self.par);
                Ok(())
            }
        }
    }
}
