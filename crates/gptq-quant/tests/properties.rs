//! Property tests of packing, through the reusable checks of the `testing` feature.
#![cfg(feature = "testing")]

use gptq_quant::testing::{check_pack_round_trip, check_unpack_arbitrary, packable_tensors};
use proptest::prelude::*;

proptest! {
    #[test]
    fn pack_then_unpack_is_the_identity(tensor in (prop_oneof![Just(2u8), Just(3), Just(4), Just(8)])
        .prop_flat_map(packable_tensors))
    {
        check_pack_round_trip(&tensor)?;
    }

    #[test]
    fn unpacking_arbitrary_bytes_never_panics(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        check_unpack_arbitrary(&data);
    }
}

#[test]
fn the_fuzz_decoder_reaches_both_valid_and_malformed_layers() {
    let (mut valid, mut invalid) = (0, 0);
    for seed in 0u32..400 {
        let mut data: Vec<u8> = seed
            .to_le_bytes()
            .iter()
            .chain(&[(seed >> 3) as u8, 0])
            .copied()
            .collect();
        data.extend((0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) ^ seed) as u8 & 0x3f));
        let packed = gptq_quant::testing::packed_from_bytes(&data).unwrap();
        match gptq_quant::unpack(&packed) {
            Ok(_) => valid += 1,
            Err(_) => invalid += 1,
        }
        check_unpack_arbitrary(&data);
    }
    assert!(
        valid > 50 && invalid > 50,
        "valid {valid}, invalid {invalid}"
    );
}
