//! Reading a damaged GPTQ checkpoint never panics and never gives a NaN perplexity: each input
//! is a list of byte edits (and perhaps a cut) applied to a valid tiny act-order checkpoint.
#![no_main]

use std::sync::OnceLock;

use gptq_model::testing::{TempDir, Tiny, TinyGptq, check_reading_checkpoint, corrupt};
use libfuzzer_sys::fuzz_target;

/// The valid checkpoint every input edits. Its directory lives as long as the fuzzing process
/// (statics are not dropped, so it stays in the temp dir afterwards).
struct Fixture {
    dir: TempDir,
    original: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let q = TinyGptq {
            act_order: true,
            ..TinyGptq::default()
        };
        let (dir, _) = Tiny::default().write_gptq(9, q);
        let original = std::fs::read(dir.path().join("model.safetensors")).expect("fixture");
        Fixture { dir, original }
    })
}

fuzz_target!(|data: &[u8]| {
    let fixture = fixture();
    check_reading_checkpoint(fixture.dir.path(), &corrupt(&fixture.original, data));
});
