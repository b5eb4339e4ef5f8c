//! Unpacking and dequantizing arbitrary bytes and shapes never panics; whatever unpacks packs
//! back to the same words.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    gptq_quant::testing::check_unpack_arbitrary(data);
});
