//! Rotary position embeddings: how `config.json` describes them, their frequencies, and the
//! cos/sin tables the attention rotates queries and keys with.

use serde_json::Value;

use crate::config_json::{RawConfig, RawRope, field_error};
use crate::error::{ModelError, Result};

/// How the rotary frequencies are derived from the plain ones, `theta^(-2i/d)`: transformers'
/// `rope_type`. Other kinds (dynamic, yarn, longrope...) are refused when the config is read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// `rope_type` "default": the plain frequencies.
    None,
    /// `rope_type` "linear": every frequency divided by `factor` (positions interpolated).
    Linear {
        /// The divisor.
        factor: f64,
    },
    /// `rope_type` "llama3" (Llama 3.1 and later): wavelengths longer than
    /// `original_max_position_embeddings / low_freq_factor` are stretched by `factor`, those
    /// shorter than `original_max_position_embeddings / high_freq_factor` kept, and the ones
    /// between blended smoothly.
    Llama3 {
        /// Stretch of the long wavelengths.
        factor: f64,
        /// Sets where stretching is complete.
        low_freq_factor: f64,
        /// Sets where stretching begins.
        high_freq_factor: f64,
        /// The context length the model was first trained with.
        original_max_position_embeddings: f64,
    },
}

impl RopeScaling {
    /// The `head_dim / 2` inverse frequencies for base `theta`, in f32 and in the order of
    /// operations transformers uses, so that the angles round the same way.
    pub fn inverse_frequencies(self, theta: f64, head_dim: usize) -> Vec<f32> {
        let base = theta as f32;
        let mut inv_freq: Vec<f32> = (0..head_dim / 2)
            .map(|i| 1.0 / base.powf((2 * i) as f32 / head_dim as f32))
            .collect();
        match self {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => {
                for f in &mut inv_freq {
                    *f /= factor as f32;
                }
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: context,
            } => {
                let factor = factor as f32;
                let long = (context / low_freq_factor) as f32;
                let short = (context / high_freq_factor) as f32;
                let blend_width = (high_freq_factor - low_freq_factor) as f32;
                for f in &mut inv_freq {
                    let wavelength = std::f32::consts::TAU / *f;
                    if wavelength > long {
                        *f /= factor;
                    } else if wavelength >= short {
                        let smooth =
                            (context as f32 / wavelength - low_freq_factor as f32) / blend_width;
                        *f = (1.0 - smooth) * *f / factor + smooth * *f;
                    }
                }
            }
        }
        inv_freq
    }
}

impl std::fmt::Display for RopeScaling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            RopeScaling::None => write!(f, "no scaling"),
            RopeScaling::Linear { factor } => write!(f, "linear scaling (factor {factor})"),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => write!(
                f,
                "llama3 scaling (factor {factor}, low/high frequency factors \
                 {low_freq_factor}/{high_freq_factor}, original context \
                 {original_max_position_embeddings})"
            ),
        }
    }
}

/// The rotary base and scaling of a `config.json` (`raw`, read as `fields`). transformers 4
/// writes `rope_theta` at the top level and the scaling as `rope_scaling`; transformers 5
/// writes both inside `rope_parameters`. Where both places are filled they must agree; where
/// neither is, the base is the architecture's `default_theta`.
pub(crate) fn rotary_settings(
    raw: &Value,
    fields: &RawConfig,
    default_theta: f64,
) -> Result<(f64, RopeScaling)> {
    let parse = |field: &'static str, rope: &Option<RawRope>| {
        rope.as_ref()
            .map(|rope| parse_scaling(field, &raw[field], rope))
            .transpose()
    };
    let old = parse("rope_scaling", &fields.rope_scaling)?;
    let new = parse("rope_parameters", &fields.rope_parameters)?;
    let scaling = match (old, new) {
        (Some(old), Some(new)) if old != new => {
            return Err(ModelError::UnsupportedFeature(format!(
                "rope_scaling and rope_parameters describe different rotary embeddings \
                 ({old:?} and {new:?}): keep one of them"
            )));
        }
        (old, new) => new.or(old).unwrap_or(RopeScaling::None),
    };
    let top = fields.rope_theta;
    let nested = fields.rope_parameters.as_ref().and_then(|p| p.rope_theta);
    let theta = match (top, nested) {
        (Some(a), Some(b)) if a != b => {
            return Err(field_error(
                "rope_theta",
                format!("is {a}, but rope_parameters.rope_theta is {b}: they must agree"),
            ));
        }
        (a, b) => a.or(b).unwrap_or(default_theta),
    };
    if !(theta.is_finite() && theta > 0.0) {
        return Err(field_error(
            "rope_theta",
            format!("is {theta}: it must be finite and positive"),
        ));
    }
    Ok((theta, scaling))
}

fn unsupported(field: &str, value: &Value, why: &str) -> ModelError {
    ModelError::UnsupportedFeature(format!("{field} {value}: {why}"))
}

/// The scaling that `rope` (the field `field` of config.json, written as `value`) describes.
fn parse_scaling(field: &'static str, value: &Value, rope: &RawRope) -> Result<RopeScaling> {
    let Some(kind) = rope.rope_type.as_deref().or(rope.legacy_type.as_deref()) else {
        // Without a type only the base may be given (a dict per layer type is not plain).
        let only_base = rope.other.is_empty()
            && [
                rope.factor,
                rope.low_freq_factor,
                rope.high_freq_factor,
                rope.original_max_position_embeddings,
            ]
            .iter()
            .all(Option::is_none);
        if only_base {
            return Ok(RopeScaling::None);
        }
        return Err(unsupported(field, value, "it names no rope_type"));
    };
    let number = |name: &str, number: Option<f64>| -> Result<f64> {
        number.filter(|v| v.is_finite() && *v > 0.0).ok_or_else(|| {
            unsupported(field, value, &format!("`{name}` must be a positive number"))
        })
    };
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear {
            factor: number("factor", rope.factor)?,
        }),
        "llama3" => {
            let low_freq_factor = number("low_freq_factor", rope.low_freq_factor)?;
            let high_freq_factor = number("high_freq_factor", rope.high_freq_factor)?;
            if high_freq_factor <= low_freq_factor {
                return Err(unsupported(
                    field,
                    value,
                    "high_freq_factor must be larger than low_freq_factor",
                ));
            }
            Ok(RopeScaling::Llama3 {
                factor: number("factor", rope.factor)?,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: number(
                    "original_max_position_embeddings",
                    rope.original_max_position_embeddings,
                )?,
            })
        }
        _ => Err(unsupported(
            field,
            value,
            "implemented are the rope_types default, linear and llama3",
        )),
    }
}

/// cos/sin tables of rotary position embeddings for positions `0..len`, `[len, head_dim/2]`
/// each, computed like transformers' rotary embedding (f32 inverse frequencies, f32 angles) so
/// that rounding matches the reference.
#[derive(Debug, Clone)]
pub struct RopeTable {
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    /// Tables for `len` positions of heads `head_dim` wide with base `theta` and `scaling`.
    pub fn new(len: usize, head_dim: usize, theta: f64, scaling: RopeScaling) -> Self {
        let half = head_dim / 2;
        let inv_freq = scaling.inverse_frequencies(theta, head_dim);
        let mut cos = Vec::with_capacity(len * half);
        let mut sin = Vec::with_capacity(len * half);
        for p in 0..len {
            for &f in &inv_freq {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Self { half, cos, sin }
    }

    /// Positions covered.
    pub fn len(&self) -> usize {
        self.cos.len().checked_div(self.half).unwrap_or(0)
    }

    /// Whether the table covers no position.
    pub fn is_empty(&self) -> bool {
        self.cos.is_empty()
    }

    /// Rotates every head of one row at position `pos` in place (rotate-half convention:
    /// the first half of a head pairs with the second half), then multiplies by `scale`.
    #[inline]
    pub(crate) fn rotate_row(&self, row: &mut [f32], pos: usize, scale: f32) {
        let half = self.half;
        let cos = &self.cos[pos * half..(pos + 1) * half];
        let sin = &self.sin[pos * half..(pos + 1) * half];
        for head in row.chunks_exact_mut(2 * half) {
            let (a, b) = head.split_at_mut(half);
            for i in 0..half {
                let (x1, x2) = (a[i], b[i]);
                a[i] = (x1 * cos[i] - x2 * sin[i]) * scale;
                b[i] = (x2 * cos[i] + x1 * sin[i]) * scale;
            }
        }
    }
}
