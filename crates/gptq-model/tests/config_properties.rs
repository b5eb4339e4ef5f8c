//! `config.json` is user input: whatever it holds, reading it returns a config or an error,
//! never a panic (a zero that divides, a number where an object belongs, a field missing).

use gptq_model::ModelConfig;
use proptest::prelude::*;
use serde_json::{Value, json};

/// A config of each supported architecture, with every field the reader looks at.
fn full_config(model_type: &str) -> Value {
    json!({
        "model_type": model_type,
        "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "vocab_size": 64,
        "tie_word_embeddings": true, "attention_bias": false, "mlp_bias": false,
        "hidden_act": "silu", "sliding_window": 32, "use_sliding_window": false,
        "layer_types": ["full_attention", "full_attention"],
        "no_rope_layers": [1, 0], "no_rope_layer_interval": 4,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
        "rope_parameters": {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64},
        "bos_token_id": 1, "max_position_embeddings": 128,
        "quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 32,
            "desc_act": false, "sym": true, "checkpoint_format": "gptq"}
    })
}

/// Values that break assumptions: zeros, negatives, fractions, huge numbers, wrong types.
fn odd_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        Just(json!(0)),
        Just(json!(-1)),
        Just(json!(1)),
        Just(json!(3)),
        Just(json!(0.5)),
        Just(json!(f64::MAX)),
        Just(json!(u64::MAX)),
        Just(json!(true)),
        Just(json!("default")),
        Just(json!("llama3")),
        Just(json!([])),
        Just(json!(["sliding_attention"])),
        Just(json!({})),
        Just(json!({"rope_type": "linear", "factor": 0.0})),
    ]
}

/// Replaces (or removes, for `None`) fields of `value`, and of the objects inside it.
fn mangle(mut value: Value, edits: &[(usize, Option<Value>)]) -> Value {
    for (pick, replacement) in edits {
        let object = value.as_object_mut().unwrap();
        let keys: Vec<String> = object.keys().cloned().collect();
        let key = &keys[pick % keys.len()];
        match replacement {
            None => {
                object.remove(key);
            }
            Some(v) => match object[key].as_object_mut() {
                // Half the time go one level down (rope settings, quantization_config).
                Some(inner) if pick % 2 == 0 && !inner.is_empty() => {
                    let inner_key = inner.keys().nth(pick / 2 % inner.len()).unwrap().clone();
                    inner[&inner_key] = v.clone();
                }
                _ => object[key] = v.clone(),
            },
        }
    }
    value
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn reading_a_mangled_config_never_panics(
        model_type in prop_oneof![
            Just("llama"),
            Just("mistral"),
            Just("qwen2"),
            Just("qwen3"),
            Just("smollm3")
        ],
        edits in prop::collection::vec((any::<usize>(), prop::option::of(odd_value())), 1..5),
    ) {
        let config = mangle(full_config(model_type), &edits);
        // Ok or a typed error; a panic fails the test.
        let _ = ModelConfig::from_json(config);
    }
}

#[test]
fn the_unmangled_configs_are_valid() {
    for model_type in ["llama", "mistral", "qwen2", "qwen3", "smollm3"] {
        let mut config = full_config(model_type);
        // The sliding window and layer kinds must agree with the architecture.
        if model_type == "mistral" {
            config["layer_types"] = json!(["sliding_attention", "sliding_attention"]);
        }
        ModelConfig::from_json(config).unwrap();
    }
}
