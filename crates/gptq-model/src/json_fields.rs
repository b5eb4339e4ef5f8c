//! Typed reads of the fields of a JSON object (config.json): each missing, null or mistyped field
//! is a [`ModelError::ConfigField`] that names it. A leaf module, shared by the configuration and
//! the rotary settings.

use serde_json::Value;

use crate::error::{ModelError, Result};

/// A JSON object.
pub(crate) type Obj = serde_json::Map<String, Value>;

pub(crate) fn opt_usize(obj: &Obj, field: &'static str) -> Result<Option<usize>> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(|n| Some(n as usize))
            .ok_or(ModelError::ConfigField {
                field,
                reason: format!("is {v}, expected a non-negative integer"),
            }),
    }
}

/// The largest layer dimension, head count or vocabulary accepted: far above any real model's
/// (vocabularies reach 2^18), and low enough that products of two sizes cannot overflow.
pub(crate) const MAX_SIZE: usize = 1 << 24;

/// A model dimension: a non-negative integer no larger than [`MAX_SIZE`].
pub(crate) fn opt_size(obj: &Obj, field: &'static str) -> Result<Option<usize>> {
    match opt_usize(obj, field)? {
        Some(v) if v > MAX_SIZE => Err(ModelError::ConfigField {
            field,
            reason: format!("is {v}, larger than any model's ({MAX_SIZE} at most)"),
        }),
        v => Ok(v),
    }
}

pub(crate) fn req_size(obj: &Obj, field: &'static str) -> Result<usize> {
    opt_size(obj, field)?.ok_or(ModelError::ConfigField {
        field,
        reason: "is missing".into(),
    })
}

/// A required size that must not be 0 (it divides or multiplies other sizes).
pub(crate) fn req_positive(obj: &Obj, field: &'static str) -> Result<usize> {
    match req_size(obj, field)? {
        0 => Err(ModelError::ConfigField {
            field,
            reason: "is 0".into(),
        }),
        v => Ok(v),
    }
}

pub(crate) fn opt_f64(obj: &Obj, field: &'static str) -> Result<Option<f64>> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or(ModelError::ConfigField {
            field,
            reason: format!("is {v}, expected a number"),
        }),
    }
}

pub(crate) fn opt_bool(obj: &Obj, field: &'static str) -> Result<Option<bool>> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_bool().map(Some).ok_or(ModelError::ConfigField {
            field,
            reason: format!("is {v}, expected true or false"),
        }),
    }
}
