//! The GPTQ checkpoint layout: int32 words of little-endian bit streams.
//!
//! - `qweight [in·bits/32, out]`: for each output column, the codes of all inputs, packed along
//!   the input dimension (first value in the lowest bits).
//! - `qzeros [groups, out·bits/32]`: for each group, the zero points of all outputs, packed along
//!   the output dimension. Format "gptq" (v1) stores `zero - 1`, "gptq_v2" the zero itself.
//! - `scales [groups, out]` in f16, `g_idx [in]` in int32.
//!
//! Packing is one bit stream per column: value `j` occupies bits `j·bits .. (j+1)·bits`, so
//! 3-bit values straddle words exactly as in the reference (32 values in 3 words).

use std::fmt;
use std::str::FromStr;

use gptq_core::{GptqError, QuantizedTensor, Result, shape_string};
use half::f16;
use ndarray::{Array2, ArrayView1};

/// How zero points are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckpointFormat {
    /// `checkpoint_format: "gptq"` (v1): `qzeros` hold `zero - 1`; what most loaders expect.
    Gptq,
    /// `checkpoint_format: "gptq_v2"`: `qzeros` hold the zero point itself.
    GptqV2,
}

impl CheckpointFormat {
    /// The `checkpoint_format` string.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckpointFormat::Gptq => "gptq",
            CheckpointFormat::GptqV2 => "gptq_v2",
        }
    }

    /// What the format adds to a zero point before storing it.
    fn zero_offset(self) -> i32 {
        match self {
            CheckpointFormat::Gptq => -1,
            CheckpointFormat::GptqV2 => 0,
        }
    }
}

impl fmt::Display for CheckpointFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CheckpointFormat {
    type Err = GptqError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "gptq" => Ok(CheckpointFormat::Gptq),
            "gptq_v2" => Ok(CheckpointFormat::GptqV2),
            other => Err(GptqError::Packing(format!(
                "unknown checkpoint_format {other:?}: expected \"gptq\" or \"gptq_v2\""
            ))),
        }
    }
}

/// One quantized linear layer as a GPTQ checkpoint stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedTensor {
    /// Bits per code: 2, 3, 4 or 8.
    pub bits: u8,
    /// How `qzeros` store zero points.
    pub format: CheckpointFormat,
    /// `[in·bits/32, out]`.
    pub qweight: Array2<i32>,
    /// `[groups, out·bits/32]`.
    pub qzeros: Array2<i32>,
    /// `[groups, out]`.
    pub scales: Array2<f16>,
    /// `[in]`.
    pub g_idx: Vec<i32>,
}

impl PackedTensor {
    /// The bytes its four tensors take in a safetensors file (headers not included).
    pub fn data_bytes(&self) -> u64 {
        (4 * (self.qweight.len() + self.qzeros.len() + self.g_idx.len()) + 2 * self.scales.len())
            as u64
    }
}

/// Checks that a `rows × columns` (`out × in`) layer of `bits` bits fits the packed format.
pub fn check_packable(bits: u8, rows: usize, columns: usize) -> Result<()> {
    if !matches!(bits, 2 | 3 | 4 | 8) {
        return Err(GptqError::Packing(format!(
            "the GPTQ checkpoint format stores 2, 3, 4 or 8 bits, not {bits}"
        )));
    }
    let per_word = |n: usize| (n * bits as usize).is_multiple_of(32);
    if !per_word(columns) || !per_word(rows) {
        let multiple = 32 / gcd(32, bits as usize);
        return Err(GptqError::Packing(format!(
            "a {rows}×{columns} (out×in) layer cannot be packed at {bits} bits: both dimensions \
             must be multiples of {multiple}"
        )));
    }
    Ok(())
}

/// The bytes of the four checkpoint tensors (`qweight`, `qzeros`, `scales`, `g_idx`) of a packable
/// `rows × columns` layer at `bits` bits with `groups` quantization groups: what
/// [`PackedTensor::data_bytes`] will be once the layer is quantized, known before.
pub fn packed_bytes(bits: u8, rows: usize, columns: usize, groups: usize) -> Result<u64> {
    check_packable(bits, rows, columns)?;
    let (bits, rows, columns, groups) = (bits as u64, rows as u64, columns as u64, groups as u64);
    let qweight = 4 * (columns * bits / 32) * rows;
    let qzeros = 4 * groups * (rows * bits / 32);
    let scales = 2 * groups * rows;
    let g_idx = 4 * columns;
    Ok(qweight + qzeros + scales + g_idx)
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Packs a quantized tensor into the checkpoint layout.
///
/// Fails when the shape cannot be packed (see [`check_packable`]) or a zero point cannot be
/// stored: v1 cannot store a zero point of 0, v2 cannot store `2^bits`.
pub fn pack(tensor: &QuantizedTensor, format: CheckpointFormat) -> Result<PackedTensor> {
    let bits = tensor.bits();
    let (rows, columns) = (tensor.rows(), tensor.columns());
    check_packable(bits, rows, columns)?;
    let words_in = columns * bits as usize / 32;
    let mut qweight = Array2::zeros((words_in, rows));
    for (r, codes) in tensor.codes().rows().into_iter().enumerate() {
        let words = pack_stream(codes.iter().map(|&c| u32::from(c)), bits, words_in);
        qweight.column_mut(r).assign(&ArrayView1::from(&words[..]));
    }
    let max_stored = (1i32 << bits) - 1;
    let groups = tensor.groups();
    let words_out = rows * bits as usize / 32;
    let mut qzeros = Array2::zeros((groups, words_out));
    for (g, zeros) in tensor.zeros().rows().into_iter().enumerate() {
        let mut stored = Vec::with_capacity(rows);
        for (r, &z) in zeros.iter().enumerate() {
            let value = i32::from(z) + format.zero_offset();
            if !(0..=max_stored).contains(&value) {
                return Err(unstorable_zero(z, g, r, bits, format));
            }
            stored.push(value as u32);
        }
        let words = pack_stream(stored.into_iter(), bits, words_out);
        qzeros.row_mut(g).assign(&ArrayView1::from(&words[..]));
    }
    let scales = tensor.scales().mapv(f16::from_f32);
    if let Some(((g, r), s)) = scales.indexed_iter().find(|(_, s)| !s.is_finite()) {
        return Err(GptqError::Packing(format!(
            "scale {} of group {g}, row {r} overflows f16 ({s}); the layer's weights are too \
             large for the GPTQ format",
            tensor.scales()[[g, r]]
        )));
    }
    Ok(PackedTensor {
        bits,
        format,
        qweight,
        qzeros,
        scales,
        g_idx: tensor.g_idx().iter().map(|&g| g as i32).collect(),
    })
}

fn unstorable_zero(
    zero: u16,
    group: usize,
    row: usize,
    bits: u8,
    format: CheckpointFormat,
) -> GptqError {
    let hint = match format {
        CheckpointFormat::Gptq => {
            "checkpoint_format gptq (v1) stores zero - 1: write gptq_v2, or quantize with zero \
             points clamped to at least 1"
        }
        CheckpointFormat::GptqV2 => "gptq_v2 stores zero points up to 2^bits - 1",
    };
    GptqError::Packing(format!(
        "zero point {zero} of group {group}, row {row} cannot be stored at {bits} bits: {hint}"
    ))
}

/// Unpacks a checkpoint layer into codes, scales (the stored f16 values as f32), zero points and
/// `g_idx`.
///
/// Every shape and value is checked: malformed input gives an error, never a panic.
pub fn unpack(packed: &PackedTensor) -> Result<QuantizedTensor> {
    let bits = packed.bits;
    let columns = packed.g_idx.len();
    let (groups, rows) = packed.scales.dim();
    check_packable(bits, rows, columns)?;
    let expect = |what: &'static str, actual: (usize, usize), expected: (usize, usize)| {
        if actual == expected {
            Ok(())
        } else {
            Err(GptqError::ShapeMismatch {
                what,
                expected: shape_string(&[expected.0, expected.1]),
                actual: shape_string(&[actual.0, actual.1]),
            })
        }
    };
    let words_in = columns * bits as usize / 32;
    let words_out = rows * bits as usize / 32;
    expect("qweight", packed.qweight.dim(), (words_in, rows))?;
    expect("qzeros", packed.qzeros.dim(), (groups, words_out))?;
    let g_idx = packed
        .g_idx
        .iter()
        .enumerate()
        .map(|(c, &g)| {
            u32::try_from(g)
                .ok()
                .filter(|&g| (g as usize) < groups)
                .ok_or_else(|| {
                    GptqError::Packing(format!("g_idx[{c}] = {g} is outside 0..{groups}"))
                })
        })
        .collect::<Result<Vec<u32>>>()?;

    let mut codes = Array2::zeros((rows, columns));
    for (r, words) in packed.qweight.columns().into_iter().enumerate() {
        let words: Vec<u32> = words.iter().map(|&w| w as u32).collect();
        for (c, value) in unpack_stream(&words, bits, columns).enumerate() {
            codes[[r, c]] = value as u8;
        }
    }
    let mut zeros = Array2::zeros((groups, rows));
    for (g, words) in packed.qzeros.rows().into_iter().enumerate() {
        let words: Vec<u32> = words.iter().map(|&w| w as u32).collect();
        for (r, value) in unpack_stream(&words, bits, rows).enumerate() {
            zeros[[g, r]] = (value as i32 - packed.format.zero_offset()) as u16;
        }
    }
    let scales = packed.scales.mapv(f16::to_f32);
    QuantizedTensor::new(bits, codes, scales, zeros, g_idx, None)
}

/// Packs `values` (each below `2^bits`) into `words` little-endian 32-bit words.
fn pack_stream(values: impl Iterator<Item = u32>, bits: u8, words: usize) -> Vec<i32> {
    let mut out = vec![0u32; words];
    for (j, v) in values.enumerate() {
        let bit = j * bits as usize;
        let (word, shift) = (bit / 32, bit % 32);
        out[word] |= v << shift;
        if shift + bits as usize > 32 {
            out[word + 1] |= v >> (32 - shift);
        }
    }
    out.into_iter().map(|w| w as i32).collect()
}

/// The first `count` `bits`-wide values of a little-endian word stream.
fn unpack_stream(words: &[u32], bits: u8, count: usize) -> impl Iterator<Item = u32> + '_ {
    let mask = (1u32 << bits) - 1;
    (0..count).map(move |j| {
        let bit = j * bits as usize;
        let (word, shift) = (bit / 32, bit % 32);
        let mut v = words[word] >> shift;
        if shift + bits as usize > 32 {
            v |= words[word + 1] << (32 - shift);
        }
        v & mask
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::needless_range_loop)] // written like the reference's loops, on purpose
    fn three_bit_stream_matches_the_reference_word_layout() {
        // The reference packs value 10 across words 0 and 1, value 21 across words 1 and 2.
        let values: Vec<u32> = (0..32).map(|j| (j * 5 + 3) % 8).collect();
        let words: Vec<u32> = pack_stream(values.iter().copied(), 3, 3)
            .into_iter()
            .map(|w| w as u32)
            .collect();
        let mut expected = [0u32; 3];
        for j in 0..10 {
            expected[0] |= values[j] << (3 * j);
        }
        expected[0] |= values[10] << 30;
        expected[1] |= (values[10] >> 2) & 1;
        for j in 0..10 {
            expected[1] |= values[11 + j] << (3 * j + 1);
        }
        expected[1] |= values[21] << 31;
        expected[2] |= (values[21] >> 1) & 3;
        for j in 0..10 {
            expected[2] |= values[22 + j] << (3 * j + 2);
        }
        assert_eq!(words, expected);
        assert_eq!(unpack_stream(&words, 3, 32).collect::<Vec<_>>(), values);
    }

    #[test]
    fn shapes_that_cannot_be_packed_are_refused() {
        assert!(check_packable(4, 64, 64).is_ok());
        let err = check_packable(3, 64, 48).unwrap_err().to_string();
        assert!(err.contains("multiples of 32"), "{err}");
        assert!(check_packable(4, 12, 64).is_err());
        assert!(check_packable(5, 64, 64).is_err());
    }

    #[test]
    fn v1_refuses_a_zero_point_of_zero() {
        let t = QuantizedTensor::new(
            4,
            Array2::zeros((8, 8)),
            Array2::ones((1, 8)),
            Array2::zeros((1, 8)),
            vec![0; 8],
            None,
        )
        .unwrap();
        assert!(pack(&t, CheckpointFormat::GptqV2).is_ok());
        let err = pack(&t, CheckpointFormat::Gptq).unwrap_err().to_string();
        assert!(err.contains("gptq_v2"), "{err}");
    }
}
