//! Property-testing support for packing (feature `testing`): strategies for packable tensors,
//! the pack→unpack identity check, and a decoder from arbitrary bytes for fuzzers.

use gptq_core::QuantizedTensor;
use half::f16;
use ndarray::Array2;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use crate::pack::{CheckpointFormat, PackedTensor, pack, unpack};

/// A random quantized tensor of `bits` bits whose shape the packed format accepts: rows and
/// columns multiples of 32, groups of 32 or per-channel, shuffled or natural `g_idx`.
pub fn packable_tensors(bits: u8) -> impl Strategy<Value = QuantizedTensor> {
    let max = (1u16 << bits) - 1;
    (
        1usize..=3,
        1usize..=3,
        any::<bool>(),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(
            move |(row_blocks, column_blocks, per_channel, shuffled, seed)| {
                let (rows, columns) = (32 * row_blocks, 32 * column_blocks);
                let groups = if per_channel { 1 } else { column_blocks };
                let mut next = lcg(seed);
                let codes =
                    Array2::from_shape_fn((rows, columns), |_| (next() % (max as u64 + 1)) as u8);
                // v1 stores zero - 1, so keep zeros in 1..=max to be storable in both formats.
                let zeros =
                    Array2::from_shape_fn((groups, rows), |_| 1 + (next() % max as u64) as u16);
                let scales = Array2::from_shape_fn((groups, rows), |_| {
                    f16::from_f32((next() % 1000 + 1) as f32 * 1e-4).to_f32()
                });
                let mut g_idx: Vec<u32> = (0..columns).map(|c| (c / 32 % groups) as u32).collect();
                if shuffled {
                    for i in (1..columns).rev() {
                        g_idx.swap(i, (next() % (i as u64 + 1)) as usize);
                    }
                }
                QuantizedTensor::new(bits, codes, scales, zeros, g_idx, None)
                    .expect("the strategy builds valid tensors")
            },
        )
}

fn lcg(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed;
    move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        state >> 33
    }
}

/// `unpack(pack(t)) == t` in both formats, and the packed tensors take the bytes that
/// [`packed_bytes`](crate::packed_bytes) predicts from the shape alone.
pub fn check_pack_round_trip(tensor: &QuantizedTensor) -> Result<(), TestCaseError> {
    for format in [CheckpointFormat::Gptq, CheckpointFormat::GptqV2] {
        let packed = pack(tensor, format).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let predicted = crate::packed_bytes(
            tensor.bits(),
            tensor.rows(),
            tensor.columns(),
            tensor.groups(),
        )
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(packed.data_bytes(), predicted, "format {}", format);
        let back = unpack(&packed).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&back, tensor, "format {}", format);
    }
    Ok(())
}

/// Builds a small packed tensor from fuzzer bytes: a 6-byte header picks bits, format and a
/// consistent shape, then perturbs one dimension or the `g_idx` range in about half the inputs,
/// so that both the valid and the malformed paths are exercised; the rest fills the arrays.
pub fn packed_from_bytes(data: &[u8]) -> Option<PackedTensor> {
    let (header, body) = data.split_first_chunk::<6>()?;
    let bits = [2u8, 3, 4, 8, header[0] / 5 % 10][usize::from(header[0] % 5)];
    let format = if header[1] & 1 == 0 {
        CheckpointFormat::Gptq
    } else {
        CheckpointFormat::GptqV2
    };
    let mut rows = 32 * (1 + usize::from(header[2] % 3));
    let columns = 32 * (1 + usize::from(header[3] % 3));
    let groups = 1 + usize::from(header[4] % 4);
    let mut words_in = columns * usize::from(bits) / 32;
    let mut words_out = rows * usize::from(bits) / 32;
    let mut g_idx_len = columns;
    let mut g_idx_range = groups as i32;
    match header[5] % 12 {
        1 => words_in += 1,
        2 => words_out = words_out.saturating_sub(1),
        3 => rows += 1,
        4 => g_idx_len -= 1,
        5 => g_idx_range += 2,
        _ => {}
    }
    let mut bytes = body.iter().copied().chain(std::iter::repeat(0));
    let mut word = move || {
        let b: Vec<u8> = bytes.by_ref().take(4).collect();
        i32::from_le_bytes([b[0], b[1], b[2], b[3]])
    };
    let qweight = Array2::from_shape_fn((words_in, rows), |_| word());
    let qzeros = Array2::from_shape_fn((groups, words_out), |_| word());
    let scales = Array2::from_shape_fn((groups, rows), |_| f16::from_bits(word() as u16));
    let g_idx = (0..g_idx_len)
        .map(|_| word().rem_euclid(g_idx_range + 1) - i32::from(header[5] % 12 == 5))
        .collect();
    Some(PackedTensor {
        bits,
        format,
        qweight,
        qzeros,
        scales,
        g_idx,
    })
}

/// The fuzz property: unpacking arbitrary data never panics, and whatever unpacks dequantizes to
/// finite values and packs back to the same words.
pub fn check_unpack_arbitrary(data: &[u8]) {
    let Some(packed) = packed_from_bytes(data) else {
        return;
    };
    let Ok(tensor) = unpack(&packed) else { return };
    assert!(tensor.dequantize().iter().all(|x| x.is_finite()));
    let repacked = pack(&tensor, packed.format).expect("an unpacked tensor packs again");
    // Every bit of a packable stream belongs to some value, so the words come back unchanged.
    assert_eq!(repacked.qweight, packed.qweight);
    assert_eq!(repacked.qzeros, packed.qzeros);
    assert_eq!(
        repacked.scales.mapv(f16::to_bits),
        packed.scales.mapv(f16::to_bits)
    );
}
