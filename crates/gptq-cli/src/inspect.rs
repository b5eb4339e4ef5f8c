//! `gptq inspect`: what a model or GPTQ checkpoint directory holds.

use std::collections::BTreeMap;
use std::path::PathBuf;

use gptq_model::{Checkpoint, LinearId, gptq};
use safetensors::Dtype;

use crate::CliResult;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model or checkpoint directory.
    dir: PathBuf,
    /// Unpack every quantized layer to check it (slower).
    #[arg(long)]
    verify: bool,
}

pub fn run(args: Args) -> CliResult {
    let checkpoint = crate::open_checkpoint(&args.dir)?;
    let config = checkpoint.config();
    let weights = checkpoint.weights();
    let names = weights.names();
    let mut dtypes: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    let mut bytes = 0u64;
    for name in &names {
        let raw = weights.raw(name).map_err(|e| e.to_string())?;
        let entry = dtypes.entry(format!("{:?}", raw.dtype)).or_default();
        entry.0 += 1;
        entry.1 += raw.data.len() as u64;
        bytes += raw.data.len() as u64;
    }
    println!("{}", args.dir.display());
    println!(
        "  architecture {}: {} layers, hidden {}, MLP {}, {} heads ({} key/value), head dim {}{}, vocab {}{}",
        config.architecture.model_type(),
        config.num_hidden_layers,
        config.hidden_size,
        config.intermediate_size,
        config.num_attention_heads,
        config.num_key_value_heads,
        config.head_dim,
        if config.architecture.normalizes_heads() {
            " (query and key heads RMS-normed)"
        } else {
            ""
        },
        config.vocab_size,
        if config.tie_word_embeddings {
            ", tied embeddings"
        } else {
            ""
        }
    );
    let without_rotary: Vec<String> = (0..config.num_hidden_layers)
        .filter(|&i| !config.is_rotary(i))
        .map(|i| i.to_string())
        .collect();
    println!(
        "  rotary embeddings: base {}, {}{}{}",
        config.rope_theta,
        config.rope_scaling,
        if without_rotary.is_empty() {
            String::new()
        } else {
            format!(" (none in layers {})", without_rotary.join(", "))
        },
        match config.sliding_window {
            Some(w) => format!("; attention window {w} tokens"),
            None => String::new(),
        }
    );
    println!(
        "  {} tensors in {} file(s), {:.1} MiB",
        names.len(),
        weights.files().len(),
        bytes as f64 / (1 << 20) as f64
    );
    for (dtype, (count, size)) in &dtypes {
        println!(
            "    {dtype:>5}: {count} tensors, {:.1} MiB",
            *size as f64 / (1 << 20) as f64
        );
    }
    let shape = config.layer_shape(0); // every layer has the same dimensions
    let linears: Vec<(usize, LinearId)> = (0..config.num_hidden_layers)
        .flat_map(|layer| LinearId::ALL.into_iter().map(move |id| (layer, id)))
        .collect();
    let packed = linears
        .iter()
        .filter(|(l, id)| gptq::is_packed(weights, &id.tensor_prefix(*l)))
        .count();
    if args.verify {
        verify_plain_tensors(&checkpoint, packed == 0)?;
    }
    match &config.quantization {
        None => {
            println!("  full precision ({packed} packed linears)");
            if packed > 0 {
                return Err(
                    "packed GPTQ tensors found but config.json has no quantization_config".into(),
                );
            }
            if args.verify {
                println!("  every tensor a loader reads has its shape and finite values");
            }
        }
        Some(q) => {
            let tool = config.raw["quantization_config"]["meta"]["quantizer"]
                .as_array()
                .and_then(|a| a.first())
                .and_then(|t| t.as_str())
                .unwrap_or("unknown tool");
            println!(
                "  GPTQ {}-bit, group size {}, {}, desc_act {}, checkpoint_format {} (written by {tool})",
                q.bits,
                q.group_size,
                if q.sym { "symmetric" } else { "asymmetric" },
                q.desc_act,
                q.format
            );
            println!("  {packed} of {} linears packed", linears.len());
            if args.verify {
                for (layer, id) in &linears {
                    let prefix = id.tensor_prefix(*layer);
                    if gptq::is_packed(weights, &prefix) {
                        gptq::load_packed(weights, &prefix, q, id.dims(&shape))
                            .map_err(|e| e.to_string())?;
                    }
                }
                println!(
                    "  every packed linear unpacks to its shape and agrees with \
                     quantization_config; every other tensor is finite"
                );
            }
        }
    }
    Ok(())
}

/// What `--verify` checks besides the packed linears: the tensors outside the layers (shapes
/// and values), every floating-point tensor's values, and in a full-precision model (`plain`)
/// every layer's tensors and shapes.
fn verify_plain_tensors(checkpoint: &Checkpoint, plain: bool) -> CliResult {
    checkpoint
        .check_outer_tensors()
        .map_err(|e| e.to_string())?;
    if plain {
        checkpoint
            .check_layer_tensors()
            .map_err(|e| e.to_string())?;
    }
    let weights = checkpoint.weights();
    for name in weights.names() {
        let raw = weights.raw(name).map_err(|e| e.to_string())?;
        if matches!(raw.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
            weights
                .check_finite(name, None)
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}
