//! # gptq-solver
//!
//! The GPTQ algorithm (Frantar et al., 2022), written once against the
//! [`Backend`](gptq_core::Backend) trait of gptq-core: dead columns, act-order, static and
//! dynamic groups, blocks with lazy batch updates, the per-layer report. Also:
//!
//! - [`CpuBackend`] (feature `cpu`, on by default): faer and rayon, bit-identical at any thread
//!   count.
//! - [`round_to_nearest`]: the baseline on the same grid.
//! - [`reference`](mod@reference): a plain float64 transcription of the reference implementation, the oracle
//!   of the tests.
//! - [`parity`]: reads the reference's fixtures and checks a backend against them.
//! - `testing` (feature): conformance checks any backend can run.

#![warn(missing_docs)]

#[cfg(feature = "cpu")]
mod cpu;
mod options;
pub mod parity;
pub mod plan;
#[cfg(feature = "cpu")]
pub mod reference;
mod report;
mod solver;
#[cfg(feature = "testing")]
pub mod testing;

#[cfg(feature = "cpu")]
pub use cpu::CpuBackend;
pub use options::SolveOptions;
pub use report::{LayerReport, LayerTimings, QuantizedLayer};
pub use solver::{Gptq, round_to_nearest};
