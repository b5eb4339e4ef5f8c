//! GPTQ checkpoints as other tools write them: read back exactly, and read safely when their
//! bytes are damaged (the same property `fuzz/` runs as the `checkpoint` target).

use gptq_model::testing::{Tiny, TinyGptq, check_reading_checkpoint, corrupt};
use gptq_model::{Checkpoint, LinearId};
use gptq_quant::CheckpointFormat;
use proptest::prelude::*;

#[test]
fn packed_linears_of_every_layout_read_back_exactly() {
    // 3-bit needs both dimensions of every linear to be multiples of 32.
    let tiny = Tiny {
        hidden: 64,
        inter: 64,
        ..Tiny::default()
    };
    for bits in [2, 3, 4, 8] {
        for format in [CheckpointFormat::Gptq, CheckpointFormat::GptqV2] {
            for act_order in [false, true] {
                let q = TinyGptq {
                    bits,
                    group_size: 16,
                    format,
                    act_order,
                };
                let (dir, linears) = tiny.write_gptq(u64::from(bits), q);
                let checkpoint = Checkpoint::open(dir.path()).unwrap();
                for layer in 0..tiny.layers {
                    let loaded = checkpoint.load_layer(layer).unwrap();
                    for id in LinearId::ALL {
                        let expected = linears[&id.tensor_prefix(layer)].dequantize();
                        assert_eq!(
                            loaded.linear(id).weight,
                            expected,
                            "{q:?}, layer {layer}, {id:?}"
                        );
                    }
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn damaged_checkpoints_are_refused_or_read_never_panic(
        act_order in any::<bool>(),
        edits in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let q = TinyGptq { act_order, ..TinyGptq::default() };
        let (dir, _) = Tiny::default().write_gptq(9, q);
        let original = std::fs::read(dir.path().join("model.safetensors")).unwrap();
        check_reading_checkpoint(dir.path(), &corrupt(&original, &edits));
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
    /// The `gptq_config` fuzz target's property on a few dozen inputs, so that CI runs it.
    #[test]
    fn any_gptq_config_is_read_safely_and_consistently(
        data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..24)
    ) {
        use gptq_model::testing::{Tiny, TinyGptq, check_gptq_config, fuzzed_config};
        let (dir, _) = Tiny::default().write_gptq(9, TinyGptq::default());
        let text = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
        let model_config: serde_json::Value = serde_json::from_str(&text).unwrap();
        let valid = &model_config["quantization_config"];
        check_gptq_config(dir.path(), &model_config, &fuzzed_config(valid, &data));
    }
}
