//! # gptq-quant
//!
//! Quantization grids and the GPTQ checkpoint packing format.
//!
//! - [`MinMaxGrid`]: the reference's min–max grid (symmetric or asymmetric, per row and group,
//!   optional clipping search), bit-identical to it in f32.
//! - [`pack`] / [`unpack`]: the int32 `qweight` / `qzeros`, f16 `scales`, int32 `g_idx` layout
//!   read by Hugging Face transformers, vLLM, ExLlamaV2 and mistral.rs, in checkpoint formats
//!   "gptq" (v1) and "gptq_v2".
//!
//! ```
//! use gptq_core::QuantizedTensor;
//! use gptq_quant::{CheckpointFormat, pack, unpack};
//! use ndarray::Array2;
//!
//! let codes = Array2::from_shape_fn((32, 64), |(r, c)| ((r + c) % 16) as u8);
//! let tensor = QuantizedTensor::new(
//!     4, codes, Array2::from_elem((2, 32), 0.0625), Array2::from_elem((2, 32), 8),
//!     (0..64).map(|c| c / 32).collect(), None,
//! )?;
//! let packed = pack(&tensor, CheckpointFormat::Gptq)?;
//! assert_eq!(packed.qweight.dim(), (8, 32)); // [in·bits/32, out]
//! assert_eq!(unpack(&packed)?, tensor); // exact here: 0.0625 is an f16 value
//! # Ok::<(), gptq_core::GptqError>(())
//! ```

#![warn(missing_docs)]

mod grid;
mod pack;
#[cfg(feature = "testing")]
pub mod testing;

pub use grid::{MinMaxGrid, fit_table};
pub use pack::{CheckpointFormat, PackedTensor, check_packable, pack, packed_bytes, unpack};
