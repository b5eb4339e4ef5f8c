//! Reading GPTQ checkpoints: `quantization_config` and the packed linear layers.
//!
//! A GPTQ checkpoint replaces `PREFIX.weight` of each quantized linear by `PREFIX.qweight`,
//! `PREFIX.qzeros`, `PREFIX.scales` and `PREFIX.g_idx`; `config.json` says how in its
//! `quantization_config`. Such layers are unpacked with `gptq-quant` and dequantized to f32, so
//! the rest of this crate runs them like any other layer.

use gptq_core::QuantizedTensor;
use gptq_quant::{CheckpointFormat, PackedTensor, unpack};
use half::slice::HalfFloatSliceExt;
use half::vec::HalfFloatVecExt;
use half::{bf16, f16};
use ndarray::Array2;
use safetensors::Dtype;
use serde_json::Value;

use crate::config_json::{RawQuantization, field_error, read};
use crate::error::{ModelError, Result};
use crate::weights::{WeightStore, le_values};

/// The `quantization_config` of a GPTQ checkpoint (the fields this crate reads; the whole
/// object stays in [`ModelConfig::raw`](crate::ModelConfig::raw)).
#[derive(Debug, Clone, PartialEq)]
pub struct GptqQuantization {
    /// Bits per weight.
    pub bits: u8,
    /// Columns per group, `-1` for per-channel.
    pub group_size: i64,
    /// Act-order ("desc_act").
    pub desc_act: bool,
    /// Symmetric grid.
    pub sym: bool,
    /// How zero points are stored ("gptq" when the field is absent, as older tools wrote).
    pub format: CheckpointFormat,
}

impl GptqQuantization {
    /// Parses `config.json`'s `quantization_config`, if any. Quantization methods other than
    /// GPTQ are refused.
    pub fn from_config(raw: &Value) -> Result<Option<Self>> {
        let Some(q) = raw.get("quantization_config").filter(|q| !q.is_null()) else {
            return Ok(None);
        };
        if !q.is_object() {
            return Err(field_error("quantization_config", "must be a JSON object"));
        }
        let fields: RawQuantization = read(q, "quantization_config")?;
        let method = fields.quant_method.as_deref().unwrap_or("gptq");
        if method != "gptq" {
            return Err(ModelError::UnsupportedFeature(format!(
                "quantization method `{method}`: only GPTQ checkpoints can be read"
            )));
        }
        let bits = fields
            .bits
            .filter(|b| matches!(b, 2 | 3 | 4 | 8))
            .ok_or_else(|| {
                field_error(
                    "quantization_config.bits",
                    format!(
                        "is {}, expected 2, 3, 4 or 8",
                        q.get("bits").unwrap_or(&Value::Null)
                    ),
                )
            })?;
        let format = match fields.checkpoint_format.as_deref() {
            None => CheckpointFormat::Gptq,
            Some(s) => s.parse().map_err(|e: gptq_core::GptqError| {
                field_error("quantization_config.checkpoint_format", e.to_string())
            })?,
        };
        Ok(Some(GptqQuantization {
            bits,
            group_size: fields.group_size.unwrap_or(-1),
            desc_act: fields.desc_act.unwrap_or(false),
            sym: fields.sym.unwrap_or(false),
            format,
        }))
    }
}

impl GptqQuantization {
    /// One line: `4-bit, group size 128, desc_act false, sym true, gptq_v2`.
    pub fn summary(&self) -> String {
        format!(
            "{}-bit, group size {}, desc_act {}, sym {}, {}",
            self.bits, self.group_size, self.desc_act, self.sym, self.format
        )
    }
}

/// Whether the linear at `prefix` (e.g. `model.layers.0.mlp.up_proj`) is stored packed.
pub fn is_packed(weights: &WeightStore, prefix: &str) -> bool {
    weights.contains(&format!("{prefix}.qweight"))
}

/// Reads the packed linear at `prefix` (`out × in`) and unpacks it.
pub fn load_packed(
    weights: &WeightStore,
    prefix: &str,
    quantization: &GptqQuantization,
    (out_features, in_features): (usize, usize),
) -> Result<QuantizedTensor> {
    let packed = read_packed(weights, prefix, quantization, in_features)?;
    let invalid = |reason: String| ModelError::InvalidQuantized {
        name: prefix.to_string(),
        reason,
    };
    let tensor = unpack(&packed).map_err(|e| invalid(e.to_string()))?;
    if (tensor.rows(), tensor.columns()) != (out_features, in_features) {
        return Err(invalid(format!(
            "unpacks to {}×{} but config.json implies {out_features}×{in_features}",
            tensor.rows(),
            tensor.columns()
        )));
    }
    Ok(tensor)
}

/// Reads the four tensors of the packed linear at `prefix` (`in_features` inputs) as they are
/// stored, without unpacking them: scales stored in BF16 or F32 are converted to F16, and an
/// absent `g_idx` (older checkpoints without act-order) becomes consecutive groups.
pub fn read_packed(
    weights: &WeightStore,
    prefix: &str,
    quantization: &GptqQuantization,
    in_features: usize,
) -> Result<PackedTensor> {
    let bits = quantization.bits;
    let invalid = |reason: String| ModelError::InvalidQuantized {
        name: prefix.to_string(),
        reason,
    };
    let int_matrix = |suffix: &str| -> Result<Array2<i32>> {
        let name = format!("{prefix}.{suffix}");
        let raw = weights.raw(&name)?;
        if raw.dtype != Dtype::I32 || raw.shape.len() != 2 {
            return Err(invalid(format!(
                "{name} is {:?} {:?}, expected a 2-D I32 tensor",
                raw.dtype, raw.shape
            )));
        }
        let values = le_values::<i32>(raw.data);
        Ok(Array2::from_shape_vec((raw.shape[0], raw.shape[1]), values)
            .expect("safetensors checked the size"))
    };
    let qweight = int_matrix("qweight")?;
    let qzeros = int_matrix("qzeros")?;
    let scales = {
        let name = format!("{prefix}.scales");
        let raw = weights.raw(&name)?;
        if raw.shape.len() != 2 {
            return Err(invalid(format!(
                "{name} has shape {:?}, expected 2-D",
                raw.shape
            )));
        }
        let values: Vec<f16> = match raw.dtype {
            Dtype::F16 => le_values::<f16>(raw.data),
            Dtype::BF16 => Vec::<f16>::from_f32_slice(&le_values::<bf16>(raw.data).to_f32_vec()),
            Dtype::F32 => Vec::<f16>::from_f32_slice(&le_values::<f32>(raw.data)),
            other => return Err(invalid(format!("{name} has dtype {other:?}, expected F16"))),
        };
        Array2::from_shape_vec((raw.shape[0], raw.shape[1]), values)
            .expect("safetensors checked the size")
    };
    let g_idx = match weights.raw(&format!("{prefix}.g_idx")) {
        Ok(raw) if raw.dtype == Dtype::I32 && raw.shape == [in_features] => le_values(raw.data),
        Ok(raw) => {
            return Err(invalid(format!(
                "g_idx is {:?} {:?}, expected I32 [{in_features}]",
                raw.dtype, raw.shape
            )));
        }
        // Older checkpoints without act-order omit g_idx: groups are consecutive columns.
        Err(_) => {
            let group = if quantization.group_size > 0 {
                quantization.group_size as usize
            } else {
                in_features
            };
            (0..in_features).map(|c| (c / group) as i32).collect()
        }
    };
    check_groups(quantization, in_features, &scales, &qzeros, &g_idx).map_err(invalid)?;
    Ok(PackedTensor {
        bits,
        format: quantization.format,
        qweight,
        qzeros,
        scales,
        g_idx,
    })
}

/// Checks the packed tensors' groups against `quantization_config`: as many scale and zero
/// rows as `group_size` makes groups of the `in_features` inputs, and with `desc_act` false,
/// consecutive groups in `g_idx` (loaders that trust desc_act ignore g_idx).
fn check_groups(
    quantization: &GptqQuantization,
    in_features: usize,
    scales: &Array2<f16>,
    qzeros: &Array2<i32>,
    g_idx: &[i32],
) -> std::result::Result<(), String> {
    let group = match quantization.group_size {
        g if g > 0 => g as usize,
        _ => in_features,
    };
    let groups = in_features.div_ceil(group.max(1));
    for (name, rows) in [("scales", scales.nrows()), ("qzeros", qzeros.nrows())] {
        if rows != groups {
            return Err(format!(
                "{name} has {rows} rows, but quantization_config's group_size {} over \
                 {in_features} inputs makes {groups} groups",
                quantization.group_size
            ));
        }
    }
    if !quantization.desc_act
        && let Some(c) = (0..in_features).find(|&c| g_idx.get(c) != Some(&((c / group) as i32)))
    {
        return Err(format!(
            "g_idx puts input {c} in group {}, but quantization_config says desc_act false, \
             so loaders that trust it read group {} there",
            g_idx.get(c).copied().unwrap_or(-1),
            c / group
        ));
    }
    Ok(())
}
