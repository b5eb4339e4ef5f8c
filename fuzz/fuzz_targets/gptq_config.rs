//! Arbitrary GPTQ configuration JSON (config.json's quantization_config, AutoGPTQ's
//! quantize_config.json, or both) over the valid packed tensors of a tiny checkpoint: reading it
//! never panics, and every configuration that is accepted dequantizes the tensors exactly as its
//! canonical form does.
#![no_main]

use std::sync::OnceLock;

use gptq_model::testing::{TempDir, Tiny, TinyGptq, check_gptq_config, fuzzed_config};
use libfuzzer_sys::fuzz_target;

/// The checkpoint every input rewrites the configuration of, and its own config.json.
struct Fixture {
    dir: TempDir,
    config: serde_json::Value,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let (dir, _) = Tiny::default().write_gptq(9, TinyGptq::default());
        let text = std::fs::read_to_string(dir.path().join("config.json")).expect("fixture");
        let config = serde_json::from_str(&text).expect("fixture");
        Fixture { dir, config }
    })
}

fuzz_target!(|data: &[u8]| {
    let fixture = fixture();
    let fuzzed = fuzzed_config(&fixture.config["quantization_config"], data);
    check_gptq_config(fixture.dir.path(), &fixture.config, &fuzzed);
});
