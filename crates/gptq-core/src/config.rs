//! The validated quantization configuration.

use crate::error::{GptqError, Result};

/// How input columns are grouped: each group of a row has its own scale and zero point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupSize {
    /// One scale and zero point per output row (the reference's `group_size = -1`).
    PerChannel,
    /// Groups of this many consecutive input columns (in quantization order).
    Columns(usize),
}

impl GroupSize {
    /// The reference's integer encoding: `-1` for per-channel, else the size.
    pub fn as_reference_int(self) -> i64 {
        match self {
            GroupSize::PerChannel => -1,
            GroupSize::Columns(n) => n as i64,
        }
    }

    /// Parses the reference's encoding (`-1` = per-channel).
    pub fn from_reference_int(value: i64) -> Result<Self> {
        match value {
            -1 => Ok(GroupSize::PerChannel),
            n if n >= 1 => Ok(GroupSize::Columns(n as usize)),
            n => Err(GroupSize::invalid(n)),
        }
    }

    /// The number of columns of each group for a layer of `columns` inputs.
    pub fn columns_per_group(self, columns: usize) -> usize {
        match self {
            GroupSize::PerChannel => columns,
            GroupSize::Columns(n) => n,
        }
    }

    /// The number of groups for a layer of `columns` inputs.
    pub fn groups(self, columns: usize) -> usize {
        columns.div_ceil(self.columns_per_group(columns).max(1))
    }

    fn invalid(n: i64) -> GptqError {
        GptqError::InvalidConfig(format!(
            "group size {n} is invalid: use a positive number of columns or -1 for per-channel"
        ))
    }
}

/// The clipping search of the reference's `mse` option: try shrinking the min–max range by
/// factors `1 - i/grid` for `i < max_shrink·grid`, keep the one with the smallest
/// `Σ |q(x) - x|^norm` per row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipSearch {
    /// Number of shrink steps per unit (reference: 100).
    pub grid: u32,
    /// Largest fraction of the range removed (reference: 0.8).
    pub max_shrink: f32,
    /// Exponent of the error norm (reference: 2.4).
    pub norm: f32,
}

impl Default for ClipSearch {
    fn default() -> Self {
        ClipSearch {
            grid: 100,
            max_shrink: 0.8,
            norm: 2.4,
        }
    }
}

impl ClipSearch {
    /// How many shrink factors are tried.
    pub fn steps(&self) -> u32 {
        (self.max_shrink * self.grid as f32) as u32
    }

    fn validate(&self) -> Result<()> {
        if self.grid == 0 {
            return Err(GptqError::InvalidConfig(
                "clip search grid must be at least 1 (the reference uses 100)".into(),
            ));
        }
        if !(self.max_shrink > 0.0 && self.max_shrink < 1.0) {
            return Err(GptqError::InvalidConfig(format!(
                "clip search max_shrink {} must lie strictly between 0 and 1 (the reference uses 0.8)",
                self.max_shrink
            )));
        }
        if !(self.norm.is_finite() && self.norm > 0.0) {
            return Err(GptqError::InvalidConfig(format!(
                "clip search norm {} must be a positive number (the reference uses 2.4)",
                self.norm
            )));
        }
        Ok(())
    }
}

/// A validated GPTQ configuration. Build it with [`QuantConfig::builder`].
///
/// ```
/// use gptq_core::{GroupSize, QuantConfig};
/// let config = QuantConfig::builder()
///     .bits(3)
///     .group_size(GroupSize::Columns(64))
///     .symmetric(false)
///     .act_order(true)
///     .build()?;
/// assert_eq!(config.max_code(), 7);
/// # Ok::<(), gptq_core::GptqError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct QuantConfig {
    bits: u8,
    group_size: GroupSize,
    symmetric: bool,
    act_order: bool,
    static_groups: bool,
    damp_percent: f64,
    block_size: usize,
    clip_search: Option<ClipSearch>,
}

impl Default for QuantConfig {
    /// 4 bits, groups of 128, symmetric, natural order, 1% damping, blocks of 128.
    fn default() -> Self {
        QuantConfig {
            bits: 4,
            group_size: GroupSize::Columns(128),
            symmetric: true,
            act_order: false,
            static_groups: false,
            damp_percent: 0.01,
            block_size: 128,
            clip_search: None,
        }
    }
}

impl QuantConfig {
    /// Starts from [`QuantConfig::default`].
    pub fn builder() -> QuantConfigBuilder {
        QuantConfigBuilder {
            config: QuantConfig::default(),
        }
    }

    /// Bits per weight, 2..=8.
    pub fn bits(&self) -> u8 {
        self.bits
    }
    /// The largest code, `2^bits - 1`.
    pub fn max_code(&self) -> u16 {
        (1u16 << self.bits) - 1
    }
    /// Column grouping.
    pub fn group_size(&self) -> GroupSize {
        self.group_size
    }
    /// Symmetric grid (zero point fixed at `(max_code + 1) / 2`).
    pub fn symmetric(&self) -> bool {
        self.symmetric
    }
    /// Quantize columns in order of decreasing Hessian diagonal ("desc_act").
    pub fn act_order(&self) -> bool {
        self.act_order
    }
    /// Fit every group's grid before the solve, in the original column order.
    pub fn static_groups(&self) -> bool {
        self.static_groups
    }
    /// Damping as a fraction of the mean Hessian diagonal.
    pub fn damp_percent(&self) -> f64 {
        self.damp_percent
    }
    /// Columns per lazy-batch block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }
    /// The clipping search, if enabled.
    pub fn clip_search(&self) -> Option<ClipSearch> {
        self.clip_search
    }

    /// Checks that the group size fits a layer with `columns` inputs.
    pub fn check_columns(&self, columns: usize) -> Result<()> {
        match self.group_size {
            GroupSize::Columns(g) if g > columns => Err(GptqError::GroupSize {
                group_size: g,
                columns,
            }),
            _ => Ok(()),
        }
    }

    fn validate(&self) -> Result<()> {
        if !(2..=8).contains(&self.bits) {
            return Err(GptqError::InvalidConfig(format!(
                "bits must be between 2 and 8, got {}",
                self.bits
            )));
        }
        if self.group_size == GroupSize::Columns(0) {
            return Err(GroupSize::invalid(0));
        }
        if self.static_groups && self.group_size == GroupSize::PerChannel {
            return Err(GptqError::InvalidConfig(
                "static groups need a group size; per-channel grids are always static".into(),
            ));
        }
        // A fraction, not a percentage despite the reference's name: 2 would add twice the mean
        // diagonal and quietly turn GPTQ into little more than rounding. The reference refuses
        // values outside (0, 1); 0 is allowed here and retried with damping when H is singular.
        if !(self.damp_percent.is_finite() && (0.0..1.0).contains(&self.damp_percent)) {
            return Err(GptqError::InvalidConfig(format!(
                "damp_percent is a fraction of the mean Hessian diagonal and must be in [0, 1) \
                 (the reference uses 0.01; 2% is 0.02), got {}",
                self.damp_percent
            )));
        }
        if self.block_size == 0 {
            return Err(GptqError::InvalidConfig(
                "block size must be at least 1 (the reference uses 128)".into(),
            ));
        }
        if let Some(clip) = &self.clip_search {
            clip.validate()?;
        }
        Ok(())
    }
}

/// Builder of [`QuantConfig`]; [`build`](QuantConfigBuilder::build) validates.
#[derive(Debug, Clone)]
pub struct QuantConfigBuilder {
    config: QuantConfig,
}

impl QuantConfigBuilder {
    /// Bits per weight, 2..=8.
    pub fn bits(mut self, bits: u8) -> Self {
        self.config.bits = bits;
        self
    }
    /// Column grouping.
    pub fn group_size(mut self, group_size: GroupSize) -> Self {
        self.config.group_size = group_size;
        self
    }
    /// Symmetric (true) or asymmetric (false) grid.
    pub fn symmetric(mut self, symmetric: bool) -> Self {
        self.config.symmetric = symmetric;
        self
    }
    /// Quantize columns in order of decreasing Hessian diagonal.
    pub fn act_order(mut self, act_order: bool) -> Self {
        self.config.act_order = act_order;
        self
    }
    /// Fit all group grids before the solve.
    pub fn static_groups(mut self, static_groups: bool) -> Self {
        self.config.static_groups = static_groups;
        self
    }
    /// Damping as a fraction of the mean Hessian diagonal.
    pub fn damp_percent(mut self, damp_percent: f64) -> Self {
        self.config.damp_percent = damp_percent;
        self
    }
    /// Columns per lazy-batch block.
    pub fn block_size(mut self, block_size: usize) -> Self {
        self.config.block_size = block_size;
        self
    }
    /// Enables or disables the clipping search.
    pub fn clip_search(mut self, clip_search: Option<ClipSearch>) -> Self {
        self.config.clip_search = clip_search;
        self
    }
    /// Validates and returns the configuration.
    pub fn build(self) -> Result<QuantConfig> {
        self.config.validate()?;
        Ok(self.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_out_of_range_values_with_typed_errors() {
        let bad = [
            QuantConfig::builder().bits(1).build(),
            QuantConfig::builder().bits(9).build(),
            QuantConfig::builder()
                .group_size(GroupSize::Columns(0))
                .build(),
            QuantConfig::builder().damp_percent(f64::NAN).build(),
            QuantConfig::builder().damp_percent(-0.1).build(),
            QuantConfig::builder().damp_percent(1.0).build(),
            QuantConfig::builder().damp_percent(2.0).build(),
            QuantConfig::builder().block_size(0).build(),
            QuantConfig::builder()
                .group_size(GroupSize::PerChannel)
                .static_groups(true)
                .build(),
            QuantConfig::builder()
                .clip_search(Some(ClipSearch {
                    max_shrink: 1.5,
                    ..ClipSearch::default()
                }))
                .build(),
        ];
        for result in bad {
            assert!(
                matches!(result, Err(GptqError::InvalidConfig(_))),
                "{result:?}"
            );
        }
    }

    #[test]
    fn group_size_must_fit_the_layer() {
        let config = QuantConfig::builder()
            .group_size(GroupSize::Columns(256))
            .build()
            .unwrap();
        assert!(config.check_columns(256).is_ok());
        let err = config.check_columns(128).unwrap_err();
        assert!(err.to_string().contains("per-channel"), "{err}");
    }

    #[test]
    fn reference_group_encoding_round_trips() {
        for g in [GroupSize::PerChannel, GroupSize::Columns(32)] {
            assert_eq!(
                GroupSize::from_reference_int(g.as_reference_int()).unwrap(),
                g
            );
        }
        assert!(GroupSize::from_reference_int(0).is_err());
        assert_eq!(GroupSize::Columns(128).groups(300), 3);
        assert_eq!(GroupSize::PerChannel.groups(300), 1);
    }
}
