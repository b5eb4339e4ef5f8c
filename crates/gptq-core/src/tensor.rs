//! The result of quantizing one weight matrix.

use ndarray::{Array2, ArrayView2};

use crate::error::{GptqError, Result, shape2};
use crate::grid::{GroupParams, dequantize_code};

/// A quantized weight matrix in the reference's layout: `W[r, c] ≈ scales[g, r] · (codes[r, c] -
/// zeros[g, r])` with `g = g_idx[c]`.
///
/// The matrix keeps the `nn.Linear` layout `[rows = out features, columns = in features]`, and
/// the columns in their original order whatever order they were quantized in.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedTensor {
    bits: u8,
    codes: Array2<u8>,
    scales: Array2<f32>,
    zeros: Array2<u16>,
    g_idx: Vec<u32>,
    permutation: Option<Vec<u32>>,
}

impl QuantizedTensor {
    /// Checks every invariant and builds the tensor.
    ///
    /// `codes`: `[rows, columns]`, each at most `2^bits - 1`; `scales`, `zeros`: `[groups, rows]`,
    /// scales finite, zeros at most `2^bits` (the v1 checkpoint format can store `2^bits`);
    /// `g_idx`: a group below `groups` for each column; `permutation`: the order the columns were
    /// quantized in, if not the natural one.
    pub fn new(
        bits: u8,
        codes: Array2<u8>,
        scales: Array2<f32>,
        zeros: Array2<u16>,
        g_idx: Vec<u32>,
        permutation: Option<Vec<u32>>,
    ) -> Result<Self> {
        if !(2..=8).contains(&bits) {
            return Err(GptqError::InvalidConfig(format!(
                "bits must be between 2 and 8, got {bits}"
            )));
        }
        let (rows, columns) = codes.dim();
        let groups = scales.nrows();
        if scales.ncols() != rows {
            return Err(GptqError::ShapeMismatch {
                what: "scales",
                expected: shape2(groups, rows),
                actual: shape2(scales.nrows(), scales.ncols()),
            });
        }
        if zeros.dim() != scales.dim() {
            return Err(GptqError::ShapeMismatch {
                what: "zeros",
                expected: shape2(groups, rows),
                actual: shape2(zeros.nrows(), zeros.ncols()),
            });
        }
        if g_idx.len() != columns {
            return Err(GptqError::ShapeMismatch {
                what: "g_idx",
                expected: format!("[{columns}]"),
                actual: format!("[{}]", g_idx.len()),
            });
        }
        if let Some(bad) = g_idx.iter().position(|&g| g as usize >= groups) {
            return Err(GptqError::Packing(format!(
                "g_idx[{bad}] = {} but there are only {groups} groups",
                g_idx[bad]
            )));
        }
        let max_code = (1u16 << bits) - 1;
        if let Some(((r, c), &code)) = codes.indexed_iter().find(|(_, q)| **q as u16 > max_code) {
            return Err(GptqError::Packing(format!(
                "code {code} at [{r}, {c}] exceeds the {bits}-bit maximum {max_code}"
            )));
        }
        if let Some(((g, r), &z)) = zeros.indexed_iter().find(|(_, z)| **z > max_code + 1) {
            return Err(GptqError::Packing(format!(
                "zero point {z} at [{g}, {r}] exceeds {} for {bits} bits",
                max_code + 1
            )));
        }
        crate::validate::check_finite("scales", scales.view())?;
        if let Some(perm) = &permutation {
            check_permutation(perm, columns)?;
        }
        Ok(QuantizedTensor {
            bits,
            codes,
            scales,
            zeros,
            g_idx,
            permutation,
        })
    }

    /// Bits per code.
    pub fn bits(&self) -> u8 {
        self.bits
    }
    /// Output features.
    pub fn rows(&self) -> usize {
        self.codes.nrows()
    }
    /// Input features.
    pub fn columns(&self) -> usize {
        self.codes.ncols()
    }
    /// Number of groups (rows of `scales`).
    pub fn groups(&self) -> usize {
        self.scales.nrows()
    }
    /// Integer codes, `[rows, columns]`.
    pub fn codes(&self) -> ArrayView2<'_, u8> {
        self.codes.view()
    }
    /// Scales, `[groups, rows]`.
    pub fn scales(&self) -> ArrayView2<'_, f32> {
        self.scales.view()
    }
    /// Zero points, `[groups, rows]`.
    pub fn zeros(&self) -> ArrayView2<'_, u16> {
        self.zeros.view()
    }
    /// Group of each input column.
    pub fn g_idx(&self) -> &[u32] {
        &self.g_idx
    }
    /// The order in which columns were quantized (act-order), if not the natural one.
    pub fn permutation(&self) -> Option<&[u32]> {
        self.permutation.as_deref()
    }

    /// The grid parameters of `row` in `group`.
    pub fn params(&self, group: usize, row: usize) -> GroupParams {
        GroupParams {
            scale: self.scales[[group, row]],
            zero: self.zeros[[group, row]],
        }
    }

    /// The dequantized ("fake-quantized") weights, `[rows, columns]`, computed in f32 as the
    /// reference does.
    pub fn dequantize(&self) -> Array2<f32> {
        let mut out = Array2::zeros(self.codes.dim());
        for (r, (mut out_row, codes)) in out
            .rows_mut()
            .into_iter()
            .zip(self.codes.rows())
            .enumerate()
        {
            let scales = self.scales.column(r);
            let zeros = self.zeros.column(r);
            for ((value, &code), &g) in out_row.iter_mut().zip(codes).zip(&self.g_idx) {
                let params = GroupParams {
                    scale: scales[g as usize],
                    zero: zeros[g as usize],
                };
                *value = dequantize_code(code, params);
            }
        }
        out
    }
}

fn check_permutation(perm: &[u32], columns: usize) -> Result<()> {
    if perm.len() != columns {
        return Err(GptqError::ShapeMismatch {
            what: "permutation",
            expected: format!("[{columns}]"),
            actual: format!("[{}]", perm.len()),
        });
    }
    let mut seen = vec![false; columns];
    for &p in perm {
        let slot = seen.get_mut(p as usize).filter(|s| !**s).ok_or_else(|| {
            GptqError::Packing(format!(
                "permutation is not a permutation of 0..{columns} (entry {p})"
            ))
        })?;
        *slot = true;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn small() -> QuantizedTensor {
        QuantizedTensor::new(
            2,
            array![[0, 1, 2, 3], [3, 2, 1, 0]],
            array![[1.0, 0.5], [2.0, 0.25]],
            array![[1, 2], [0, 3]],
            vec![0, 0, 1, 1],
            None,
        )
        .unwrap()
    }

    #[test]
    fn dequantize_uses_the_group_of_each_column() {
        let q = small();
        assert_eq!(
            q.dequantize(),
            array![[-1.0, 0.0, 4.0, 6.0], [0.5, 0.0, -0.5, -0.75]]
        );
    }

    #[test]
    fn rejects_inconsistent_parts() {
        let q = small();
        let codes = q.codes.clone();
        let scales = q.scales.clone();
        let zeros = q.zeros.clone();
        let cases = [
            QuantizedTensor::new(
                2,
                codes.clone(),
                scales.clone(),
                zeros.clone(),
                vec![0, 0, 2, 1],
                None,
            ),
            QuantizedTensor::new(
                2,
                codes.clone(),
                scales.clone(),
                zeros.clone(),
                vec![0, 0],
                None,
            ),
            QuantizedTensor::new(
                1,
                codes.clone(),
                scales.clone(),
                zeros.clone(),
                vec![0; 4],
                None,
            ),
            QuantizedTensor::new(
                2,
                codes.clone(),
                array![[f32::NAN, 1.0], [1.0, 1.0]],
                zeros.clone(),
                vec![0; 4],
                None,
            ),
            QuantizedTensor::new(
                2,
                array![[4, 0, 0, 0], [0, 0, 0, 0]],
                scales.clone(),
                zeros.clone(),
                vec![0; 4],
                None,
            ),
            QuantizedTensor::new(
                2,
                codes.clone(),
                scales.clone(),
                zeros.clone(),
                vec![0; 4],
                Some(vec![0, 1, 1, 3]),
            ),
            QuantizedTensor::new(
                2,
                codes,
                scales.clone(),
                array![[5, 0], [0, 0]],
                vec![0; 4],
                None,
            ),
        ];
        for case in cases {
            assert!(case.is_err());
        }
    }
}
