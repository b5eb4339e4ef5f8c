//! The dimension-faithful synthetic models (gptq_model::synthetic): a tiny one of each family is
//! written sharded, quantized, written back sharded, and read again; the published shapes'
//! configs read as the dimensions their models have.

use gptq_core::{GroupSize, QuantConfig};
use gptq_model::synthetic::{
    SHAPES, SyntheticOptions, calibration_windows, shape, write_synthetic,
};
use gptq_model::testing::TempDir;
use gptq_model::{Checkpoint, ModelConfig, Par, PerplexityOptions, perplexity};
use gptq_pipeline::{PipelineOptions, Silent, WriteOptions, quantize_model, write_checkpoint};
use gptq_solver::CpuBackend;

#[test]
fn published_shapes_have_their_models_dimensions() {
    // (name, layers, hidden, MLP, heads, kv heads, vocab, tied, q/k/v biases)
    let expected = [
        ("llama-3.2-1b", 16, 2048, 8192, 32, 8, 128256, true, false),
        ("qwen2.5-1.5b", 28, 1536, 8960, 12, 2, 151936, true, true),
        ("llama-3.1-8b", 32, 4096, 14336, 32, 8, 128256, false, false),
    ];
    for (name, layers, hidden, mlp, heads, kv, vocab, tied, bias) in expected {
        let config = ModelConfig::from_json(shape(name).unwrap().config).unwrap();
        assert_eq!(
            (
                config.num_hidden_layers,
                config.hidden_size,
                config.intermediate_size,
                config.num_attention_heads,
                config.num_key_value_heads,
                config.vocab_size,
                config.tie_word_embeddings,
                config.attention_bias,
            ),
            (layers, hidden, mlp, heads, kv, vocab, tied, bias),
            "{name}"
        );
    }
    let llama = ModelConfig::from_json(shape("llama-3.2-1b").unwrap().config).unwrap();
    assert!(
        llama
            .rope_scaling
            .to_string()
            .starts_with("llama3 scaling (factor 32")
    );
    for name in SHAPES {
        ModelConfig::from_json(shape(name).unwrap().config).unwrap();
    }
}

#[test]
fn a_tiny_model_of_each_family_quantizes_sharded_and_reads_back() {
    for name in ["tiny-llama", "tiny-qwen2", "tiny-qwen3"] {
        let shape = shape(name).unwrap();
        let dir = TempDir::new(name);
        let source = dir.path().join("model");
        let options = SyntheticOptions {
            seed: 3,
            max_shard_bytes: 200_000, // several shards and an index, as a large model has
            ..SyntheticOptions::default()
        };
        let written = write_synthetic(&shape, &source, &options).unwrap();
        assert!(written.files.len() > 2, "{name}: {:?}", written.files);
        assert_eq!(
            written.files.last().unwrap(),
            "model.safetensors.index.json"
        );
        let checkpoint = Checkpoint::open(&source).unwrap();
        let windows = calibration_windows(shape.vocab_size(), 4, 32, 3);
        let samples: Vec<Vec<u32>> = windows["windows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| {
                w.as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t.as_u64().unwrap() as u32)
                    .collect()
            })
            .collect();
        let config = QuantConfig::builder()
            .bits(4)
            .group_size(GroupSize::Columns(64))
            .build()
            .unwrap();
        let mut pipeline = PipelineOptions::new(config);
        pipeline.threads = 1;
        let model = quantize_model(
            &checkpoint,
            &samples,
            &CpuBackend::with_threads(1),
            gptq_model::Compute::new(Par::Seq),
            &pipeline,
            &mut Silent,
        )
        .unwrap();
        // Hessians of correlated inputs: the solve has errors to spread, so losses are not 0.
        assert!(
            model.modules.iter().all(|m| m.loss.unwrap_or(0.0) > 0.0),
            "{name}"
        );
        let out = dir.path().join("q");
        let write = WriteOptions {
            max_shard_bytes: 100_000,
            ..WriteOptions::default()
        };
        let files = write_checkpoint(&checkpoint, &model, &pipeline, &out, &write).unwrap();
        assert!(files.len() > 3, "{name}: {files:?}");
        let quantized = Checkpoint::open(&out).unwrap().load_model().unwrap();
        let tokens: Vec<u32> = samples.concat();
        let eval = PerplexityOptions {
            seqlen: 32,
            max_windows: Some(2),
            batch_windows: 2,
            par: Par::Seq,
        };
        let report = perplexity(&quantized, &tokens, &eval, |_, _| {}).unwrap();
        assert!(report.perplexity.is_finite(), "{name}");
    }
}
