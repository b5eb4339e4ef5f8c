//! Checking a backend against the reference implementation's fixtures.
//!
//! A fixture folder holds, per case `NAME`, `NAME.json` (configuration and the reference's
//! losses) and `NAME.safetensors` (inputs `X` when stored, weight `W`, Hessian `H`, and the
//! reference's results: `Q`, `scale`, `zero`, `g_idx`, `perm`, `codes`, and for symmetric cases
//! the packed checkpoint tensors `packed.*`). [`check_case`] runs one case through a backend in
//! parity and default mode and compares everything.

use std::path::{Path, PathBuf};

use gptq_core::{
    ActivationBatch, Backend, GptqError, GroupSize, HessianAccumulator, HessianOptions,
    QuantConfig, QuantizedTensor, Result,
};
use gptq_quant::{CheckpointFormat, MinMaxGrid, PackedTensor, pack};
use half::f16;
use ndarray::{Array2, Array3, ArrayView2, s};
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

use crate::{Gptq, SolveOptions, round_to_nearest};

/// The pass/fail thresholds (defaults: the acceptance criteria of the project).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Relative Frobenius error of the Hessian accumulated from `X`.
    pub hessian: f64,
    /// Fraction of codes identical to the reference's.
    pub codes: f64,
    /// Relative error allowed for a scale; the fraction of scales and zero points that must
    /// agree is [`Thresholds::codes`], as both follow from the same propagated weights.
    pub params: f64,
    /// Relative difference of the parity-mode loss from the reference's.
    pub loss: f64,
    /// Largest default-mode loss as a multiple of the reference's.
    pub default_loss_ratio: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            hessian: 1e-5,
            codes: 0.995,
            params: 1e-5,
            loss: 1e-3,
            default_loss_ratio: 1.01,
        }
    }
}

#[derive(Debug, Deserialize)]
struct CaseJson {
    name: String,
    bits: u8,
    group_size: i64,
    sym: bool,
    act_order: bool,
    static_groups: bool,
    damp_percent: f64,
    blocksize: usize,
    batch: usize,
    loss_gptq: f64,
    loss_rtn: f64,
}

/// One reference case, loaded.
#[derive(Debug, Clone)]
pub struct ReferenceCase {
    /// Case name.
    pub name: String,
    /// The configuration the reference ran with.
    pub config: QuantConfig,
    /// Sequences per Hessian update.
    pub batch: usize,
    /// The reference's GPTQ loss.
    pub loss_gptq: f64,
    /// The reference's round-to-nearest loss.
    pub loss_rtn: f64,
    /// Calibration inputs `[sequences, tokens, columns]`, when stored.
    pub inputs: Option<Array3<f32>>,
    /// The original weight `[rows, columns]`.
    pub weight: Array2<f32>,
    /// The reference Hessian.
    pub hessian: Array2<f32>,
    /// The reference result.
    pub result: QuantizedTensor,
    /// The reference's packed v1 tensors, when stored.
    pub packed: Option<PackedTensor>,
}

/// The `NAME.json` files of a fixture folder that have a `NAME.safetensors` beside them, sorted.
pub fn list_cases(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| io(format!("cannot list {}", dir.display()), e))?;
    let mut cases: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "json") && p.with_extension("safetensors").is_file()
        })
        .collect();
    cases.sort();
    Ok(cases)
}

fn io(context: String, source: std::io::Error) -> GptqError {
    GptqError::Io { context, source }
}

fn bad_data(path: &Path, message: impl std::fmt::Display) -> GptqError {
    io(
        format!("{} is not a valid reference fixture", path.display()),
        std::io::Error::new(std::io::ErrorKind::InvalidData, message.to_string()),
    )
}

impl ReferenceCase {
    /// Loads `NAME.json` and `NAME.safetensors`.
    pub fn load(json_path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(json_path)
            .map_err(|e| io(format!("cannot read {}", json_path.display()), e))?;
        let meta: CaseJson = serde_json::from_str(&text).map_err(|e| bad_data(json_path, e))?;
        let config = QuantConfig::builder()
            .bits(meta.bits)
            .group_size(GroupSize::from_reference_int(meta.group_size)?)
            .symmetric(meta.sym)
            .act_order(meta.act_order)
            .static_groups(meta.static_groups)
            .damp_percent(meta.damp_percent)
            .block_size(meta.blocksize)
            .build()?;
        let path = json_path.with_extension("safetensors");
        let bytes =
            std::fs::read(&path).map_err(|e| io(format!("cannot read {}", path.display()), e))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| bad_data(&path, e))?;
        let tensors = Tensors {
            st: &st,
            path: &path,
        };

        let weight = tensors.matrix_f32("W")?;
        let codes = tensors.matrix_i32("codes")?;
        let scales = tensors.matrix_f32("scale")?;
        let zeros = tensors.matrix_f32("zero")?;
        let g_idx = tensors.vector_i32("g_idx")?;
        let permutation = if tensors.has("perm") {
            Some(tensors.vector_i32("perm")?)
        } else {
            None
        };
        let to_u32 = |v: Vec<i32>| v.into_iter().map(|x| x as u32).collect::<Vec<u32>>();
        let result = QuantizedTensor::new(
            meta.bits,
            codes.mapv(|c| c as u8),
            scales,
            zeros.mapv(|z| z as u16),
            to_u32(g_idx),
            permutation.map(to_u32),
        )?;
        let inputs = if tensors.has("X") {
            Some(tensors.array3_f32("X")?)
        } else {
            None
        };
        let packed = if tensors.has("packed.qweight") {
            Some(PackedTensor {
                bits: meta.bits,
                format: CheckpointFormat::Gptq,
                qweight: tensors.matrix_i32("packed.qweight")?,
                qzeros: tensors.matrix_i32("packed.qzeros")?,
                scales: tensors.matrix_f16("packed.scales")?,
                g_idx: tensors.vector_i32("packed.g_idx")?,
            })
        } else {
            None
        };
        Ok(ReferenceCase {
            name: meta.name,
            config,
            batch: meta.batch,
            loss_gptq: meta.loss_gptq,
            loss_rtn: meta.loss_rtn,
            inputs,
            weight,
            hessian: tensors.matrix_f32("H")?,
            result,
            packed,
        })
    }
}

struct Tensors<'a> {
    st: &'a SafeTensors<'a>,
    path: &'a Path,
}

impl Tensors<'_> {
    fn has(&self, name: &str) -> bool {
        self.st.names().contains(&name)
    }

    fn raw(&self, name: &str, dtype: Dtype, rank: usize) -> Result<(Vec<usize>, &[u8])> {
        let t = self
            .st
            .tensor(name)
            .map_err(|e| bad_data(self.path, format!("{name}: {e}")))?;
        if t.dtype() != dtype || t.shape().len() != rank {
            return Err(bad_data(
                self.path,
                format!(
                    "{name} is {:?} {:?}, expected {dtype:?} of rank {rank}",
                    t.dtype(),
                    t.shape()
                ),
            ));
        }
        Ok((t.shape().to_vec(), t.data()))
    }

    /// The tensor's shape and values, copied out of the (possibly unaligned) little-endian data.
    fn values<T: bytemuck::Pod>(
        &self,
        name: &str,
        dtype: Dtype,
        rank: usize,
    ) -> Result<(Vec<usize>, Vec<T>)> {
        let (shape, data) = self.raw(name, dtype, rank)?;
        Ok((shape, bytemuck::pod_collect_to_vec(data)))
    }

    fn matrix_f32(&self, name: &str) -> Result<Array2<f32>> {
        let (shape, v) = self.values(name, Dtype::F32, 2)?;
        Ok(Array2::from_shape_vec((shape[0], shape[1]), v).expect("safetensors checked the size"))
    }

    fn matrix_i32(&self, name: &str) -> Result<Array2<i32>> {
        let (shape, v) = self.values(name, Dtype::I32, 2)?;
        Ok(Array2::from_shape_vec((shape[0], shape[1]), v).expect("safetensors checked the size"))
    }

    fn vector_i32(&self, name: &str) -> Result<Vec<i32>> {
        Ok(self.values(name, Dtype::I32, 1)?.1)
    }

    fn array3_f32(&self, name: &str) -> Result<Array3<f32>> {
        let (shape, v) = self.values(name, Dtype::F32, 3)?;
        Ok(Array3::from_shape_vec((shape[0], shape[1], shape[2]), v)
            .expect("safetensors checked the size"))
    }

    fn matrix_f16(&self, name: &str) -> Result<Array2<f16>> {
        let (shape, v) = self.values::<f16>(name, Dtype::F16, 2)?;
        Ok(Array2::from_shape_vec((shape[0], shape[1]), v).expect("safetensors checked the size"))
    }
}

/// Everything measured on one case.
#[derive(Debug, Clone, PartialEq)]
pub struct ParityOutcome {
    /// Case name.
    pub name: String,
    /// Relative Frobenius error of the Hessian accumulated from `X` (when stored).
    pub hessian_error: Option<f64>,
    /// Fraction of codes equal to the reference's (parity mode).
    pub code_agreement: f64,
    /// Fraction of scales within the relative threshold.
    pub scale_agreement: f64,
    /// Fraction of zero points equal.
    pub zero_agreement: f64,
    /// Largest relative scale difference.
    pub max_scale_error: f64,
    /// `g_idx` identical.
    pub g_idx_identical: bool,
    /// Permutation identical (or both absent).
    pub permutation_identical: bool,
    /// Parity-mode loss over the reference's.
    pub loss_ratio: f64,
    /// Default-mode loss over the reference's.
    pub default_loss_ratio: f64,
    /// Round-to-nearest loss over the reference's round-to-nearest loss.
    pub rtn_loss_ratio: f64,
    /// Packing the reference's result gives the reference's packed tensors bit for bit.
    pub packed_identical: Option<bool>,
    /// What failed, in words; empty when the case passes.
    pub failures: Vec<String>,
}

impl ParityOutcome {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// One line: name, code agreement, loss ratios, pass/fail.
    pub fn summary(&self) -> String {
        format!(
            "{:<48} codes {:>7.3}%  loss/ref {:.5}  default/ref {:.5}  rtn/ref {:.5}  {}",
            self.name,
            100.0 * self.code_agreement,
            self.loss_ratio,
            self.default_loss_ratio,
            self.rtn_loss_ratio,
            if self.passed() {
                "PASS".to_string()
            } else {
                format!("FAIL: {}", self.failures.join("; "))
            }
        )
    }
}

/// Runs one case through `backend` and compares with the reference.
pub fn check_case<B: Backend>(
    backend: &B,
    case: &ReferenceCase,
    thresholds: &Thresholds,
) -> Result<ParityOutcome> {
    let mut failures = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            failures.push(what);
        }
    };
    let reference_h = case.hessian.mapv(f64::from);

    let hessian_error = match &case.inputs {
        None => None,
        Some(x) => {
            let ours = backend.hessian_to_host(&accumulate(backend, x, case.batch)?)?;
            let error = relative_frobenius(ours.view(), reference_h.view());
            check(
                error <= thresholds.hessian,
                format!("Hessian error {error:.2e}"),
            );
            Some(error)
        }
    };

    let hessian = backend.hessian_from_host(reference_h.view())?;
    let parity = Gptq::new(backend, case.config.clone()).with_options(SolveOptions::parity());
    let ours = parity.quantize(case.weight.view(), &hessian)?;
    let reference = &case.result;
    let tensor = &ours.tensor;

    let code_agreement = agreement(
        tensor
            .codes()
            .iter()
            .zip(reference.codes())
            .map(|(a, b)| a == b),
    );
    check(
        code_agreement >= thresholds.codes,
        format!("codes agree {:.3}%", 100.0 * code_agreement),
    );
    let shapes_match = tensor.scales().dim() == reference.scales().dim();
    let scale_errors: Vec<f64> = if shapes_match {
        tensor
            .scales()
            .iter()
            .zip(reference.scales())
            .map(|(a, b)| f64::from((a - b).abs() / b.abs()))
            .collect()
    } else {
        vec![f64::INFINITY]
    };
    let scale_agreement = agreement(scale_errors.iter().map(|e| *e <= thresholds.params));
    let max_scale_error = scale_errors.iter().copied().fold(0.0, f64::max);
    let zero_agreement = if shapes_match {
        agreement(
            tensor
                .zeros()
                .iter()
                .zip(reference.zeros())
                .map(|(a, b)| a == b),
        )
    } else {
        0.0
    };
    check(
        scale_agreement >= thresholds.codes,
        format!(
            "scales within {:.0e}: {:.3}%",
            thresholds.params,
            100.0 * scale_agreement
        ),
    );
    check(
        zero_agreement >= thresholds.codes,
        format!("zero points agree {:.3}%", 100.0 * zero_agreement),
    );
    let g_idx_identical = tensor.g_idx() == reference.g_idx();
    check(g_idx_identical, "g_idx differs".into());
    let permutation_identical = tensor.permutation() == reference.permutation();
    check(permutation_identical, "permutation differs".into());

    let loss = ours.report.loss.expect("compute_loss is on");
    let loss_ratio = loss / case.loss_gptq;
    check(
        (loss_ratio - 1.0).abs() <= thresholds.loss,
        format!("loss ratio {loss_ratio:.5}"),
    );

    let default = Gptq::new(backend, case.config.clone()).quantize(case.weight.view(), &hessian)?;
    let default_loss_ratio = default.report.loss.expect("compute_loss is on") / case.loss_gptq;
    check(
        default_loss_ratio <= thresholds.default_loss_ratio,
        format!("default-mode loss ratio {default_loss_ratio:.5}"),
    );

    let rtn = round_to_nearest(
        case.weight.view(),
        &case.config,
        &MinMaxGrid::from_config(&case.config),
    )?;
    let rtn_loss_ratio = parity.loss(case.weight.view(), &rtn, &hessian)? / case.loss_rtn;
    check(
        (rtn_loss_ratio - 1.0).abs() <= thresholds.loss,
        format!("round-to-nearest loss ratio {rtn_loss_ratio:.5}"),
    );

    let packed_identical = match &case.packed {
        None => None,
        Some(expected) => {
            let packed = pack(reference, CheckpointFormat::Gptq)?;
            let identical = packed.qweight == expected.qweight
                && packed.qzeros == expected.qzeros
                && packed.scales.mapv(f16::to_bits) == expected.scales.mapv(f16::to_bits)
                && packed.g_idx == expected.g_idx;
            check(identical, "packed tensors differ".into());
            Some(identical)
        }
    };

    Ok(ParityOutcome {
        name: case.name.clone(),
        hessian_error,
        code_agreement,
        scale_agreement,
        zero_agreement,
        max_scale_error,
        g_idx_identical,
        permutation_identical,
        loss_ratio,
        default_loss_ratio,
        rtn_loss_ratio,
        packed_identical,
        failures,
    })
}

fn accumulate<B: Backend>(backend: &B, x: &Array3<f32>, batch: usize) -> Result<B::Hessian> {
    let (sequences, tokens, columns) = x.dim();
    let mut acc = backend.accumulator(columns, HessianOptions::default())?;
    for start in (0..sequences).step_by(batch.max(1)) {
        let end = (start + batch.max(1)).min(sequences);
        let chunk = x.slice(s![start..end, .., ..]);
        let flat = chunk
            .to_shape(((end - start) * tokens, columns))
            .map_err(|e| GptqError::InvalidConfig(e.to_string()))?;
        acc.add_batch(&ActivationBatch::new(flat.view()).sequences(end - start))?;
    }
    acc.finish()
}

fn agreement(matches: impl Iterator<Item = bool>) -> f64 {
    let (mut yes, mut all) = (0usize, 0usize);
    for m in matches {
        yes += usize::from(m);
        all += 1;
    }
    if all == 0 {
        1.0
    } else {
        yes as f64 / all as f64
    }
}

fn relative_frobenius(a: ArrayView2<'_, f64>, b: ArrayView2<'_, f64>) -> f64 {
    let diff = (&a - &b).mapv(|x| x * x).sum();
    (diff / b.mapv(|x| x * x).sum()).sqrt()
}
