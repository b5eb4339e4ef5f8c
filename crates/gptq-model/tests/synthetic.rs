//! Tests on tiny random checkpoints written in the test: loading, errors, and the forward pass
//! against a naive f64 reference.

use gptq_model::testing as common;

use common::{TempDir, Tiny, max_diff, write_config, write_raw, write_safetensors};
use gptq_core::testing::PlainProducts;
use gptq_core::{GptqError, QuantizedTensor};
use gptq_model::calib::SplitMix64;
use gptq_model::{
    Checkpoint, Compute, DecoderLayer, LayerShape, LinearId, ModelConfig, ModelError, Par,
    RopeScaling, attention_core, forward_layer, forward_layer_observed, mlp_inner, rms_norm,
};
use ndarray::{Array2, s};
use safetensors::Dtype;

fn random_input(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
    let mut rng = SplitMix64::new(seed);
    Array2::from_shape_vec(
        (rows, cols),
        common::random(&mut rng, rows * cols, 1.0, 0.0),
    )
    .unwrap()
}

/// Rotary frequency `i` of a head, in f64, from the definitions: plain `theta^(-2i/d)`; linear
/// scaling divides it; Llama 3's blends `f / factor` and `f` by where the wavelength lies
/// between `context / low_freq_factor` (all scaled) and `context / high_freq_factor` (none).
fn frequency(sh: LayerShape, i: usize) -> f64 {
    let f = 1.0 / sh.rope_theta.powf(2.0 * i as f64 / sh.head_dim as f64);
    match sh.rope_scaling {
        RopeScaling::None => f,
        RopeScaling::Linear { factor } => f / factor,
        RopeScaling::Llama3 {
            factor,
            low_freq_factor: low,
            high_freq_factor: high,
            original_max_position_embeddings: context,
        } => {
            let wavelengths_in_context = context * f / std::f64::consts::TAU;
            let kept = ((wavelengths_in_context - low) / (high - low)).clamp(0.0, 1.0);
            (1.0 - kept) * f / factor + kept * f
        }
    }
}

/// The decoder layer written out loop by loop in f64, for one sequence.
fn reference_layer(layer: &DecoderLayer, x: &Array2<f32>) -> Array2<f64> {
    let sh = layer.shape;
    let t = x.nrows();
    let d = sh.head_dim;
    let x: Array2<f64> = x.mapv(f64::from);
    // RMSNorm of every `w.len()`-wide piece of every row: whole rows, or heads.
    let norm = |x: &Array2<f64>, w: &ndarray::Array1<f32>| {
        let mut y = x.clone();
        for mut row in y.rows_mut() {
            for piece in row.as_slice_mut().unwrap().chunks_mut(w.len()) {
                let ms = piece.iter().map(|v| v * v).sum::<f64>() / w.len() as f64;
                let inv = 1.0 / (ms + sh.rms_norm_eps as f64).sqrt();
                for (v, &g) in piece.iter_mut().zip(w) {
                    *v *= inv * g as f64;
                }
            }
        }
        y
    };
    let lin = |x: &Array2<f64>, id: LinearId| {
        let l = layer.linear(id);
        let mut y = x.dot(&l.weight.mapv(f64::from).t());
        if let Some(b) = &l.bias {
            y += &b.mapv(f64::from);
        }
        y
    };
    let rope = |m: &mut Array2<f64>, heads: usize| {
        for p in 0..t {
            for hh in 0..heads {
                for i in 0..d / 2 {
                    let f = frequency(sh, i);
                    let (c, s) = ((p as f64 * f).cos(), (p as f64 * f).sin());
                    let (a, b) = (m[[p, hh * d + i]], m[[p, hh * d + i + d / 2]]);
                    m[[p, hh * d + i]] = a * c - b * s;
                    m[[p, hh * d + i + d / 2]] = b * c + a * s;
                }
            }
        }
    };
    let n1 = norm(&x, &layer.input_layernorm);
    let mut q = lin(&n1, LinearId::Q);
    let mut k = lin(&n1, LinearId::K);
    let v = lin(&n1, LinearId::V);
    if let Some(n) = &layer.head_norms {
        q = norm(&q, &n.q);
        k = norm(&k, &n.k);
    }
    if sh.rotary {
        rope(&mut q, sh.num_heads);
        rope(&mut k, sh.num_kv_heads);
    }
    let group = sh.num_heads / sh.num_kv_heads;
    let mut attn = Array2::<f64>::zeros((t, sh.num_heads * d));
    for hh in 0..sh.num_heads {
        let g = hh / group;
        for i in 0..t {
            let lo = sh.sliding_window.map_or(0, |w| (i + 1).saturating_sub(w));
            let sc: Vec<f64> = (lo..=i)
                .map(|j| {
                    (0..d)
                        .map(|e| q[[i, hh * d + e]] * k[[j, g * d + e]])
                        .sum::<f64>()
                        / (d as f64).sqrt()
                })
                .collect();
            let m = sc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = sc.iter().map(|s| (s - m).exp()).sum();
            for (jj, s) in sc.iter().enumerate() {
                let p = (s - m).exp() / z;
                for e in 0..d {
                    attn[[i, hh * d + e]] += p * v[[lo + jj, g * d + e]];
                }
            }
        }
    }
    let hres = &x + &lin(&attn, LinearId::O);
    let n2 = norm(&hres, &layer.post_attention_layernorm);
    let gate = lin(&n2, LinearId::Gate);
    let up = lin(&n2, LinearId::Up);
    let inner = ndarray::Zip::from(&gate)
        .and(&up)
        .map_collect(|&g, &u| g / (1.0 + (-g).exp()) * u);
    &hres + &lin(&inner, LinearId::Down)
}

fn max_diff64(a: &Array2<f32>, b: &Array2<f64>) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn forward_layer_matches_naive_reference() {
    for (tiny, par) in [
        (Tiny::default(), Par::Seq),
        (
            Tiny {
                kv_heads: 4,
                ..Tiny::default()
            },
            Par::rayon(2),
        ),
        (
            Tiny {
                kv_heads: 1,
                model_type: "qwen2",
                ..Tiny::default()
            },
            Par::rayon(2),
        ),
        (
            Tiny {
                model_type: "qwen3",
                ..Tiny::default()
            },
            Par::rayon(2),
        ),
        // Layer 1, the one checked, has no rotary embedding.
        (
            Tiny {
                model_type: "smollm3",
                ..Tiny::default()
            },
            Par::rayon(2),
        ),
    ] {
        let dir = tiny.write(11);
        check_layer_against_reference(dir.path(), par);
    }
    // Rescaled rotary frequencies; with head_dim 8 and an original context of 64 tokens, the
    // four wavelengths (6.3, 63, 628, 6283) fall short of, inside and past Llama 3's blend.
    for scaling in [
        serde_json::json!({"rope_type": "linear", "factor": 4.0}),
        serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    ] {
        let tiny = Tiny::default();
        let dir = tiny.write(11);
        let mut cfg = tiny.config();
        cfg["rope_scaling"] = scaling;
        write_config(dir.path(), &cfg);
        check_layer_against_reference(dir.path(), Par::rayon(2));
    }
}

/// Layer 1 of the checkpoint in `dir` on 150 tokens (more than two attention query blocks,
/// the last one partial) against [`reference_layer`].
fn check_layer_against_reference(dir: &std::path::Path, par: Par) {
    let ckpt = Checkpoint::open(dir).unwrap();
    let layer = ckpt.load_layer(1).unwrap();
    let x = random_input(150, layer.shape.hidden_size, 5);
    let got = forward_layer(&layer, x.view(), &[150], par).unwrap();
    let want = reference_layer(&layer, &x);
    let err = max_diff64(&got, &want);
    assert!(err < 1e-4, "{:?}: max error {err}", layer.shape);
}

#[test]
fn a_backend_computes_every_linear_product_when_given() {
    // Qwen2: biases, so both the products that start from the bias and those that add onto the
    // residual stream go through the backend.
    let tiny = Tiny {
        model_type: "qwen2",
        ..Tiny::default()
    };
    let dir = tiny.write(21);
    let layer = Checkpoint::open(dir.path()).unwrap().load_layer(1).unwrap();
    let lens = [90, 60];
    let x = random_input(150, tiny.hidden, 6);
    let on_cpu = forward_layer(&layer, x.view(), &lens, Par::rayon(2)).unwrap();

    let products = PlainProducts::new();
    let compute = Compute::new(Par::rayon(2)).with_products(&products);
    let on_backend = forward_layer(&layer, x.view(), &lens, compute).unwrap();
    assert_eq!(
        products.calls(),
        7,
        "one product per linear: q, k, v, o, gate, up, down"
    );
    assert!(max_diff(&on_backend, &on_cpu) < 1e-5);
    let seq = x.slice(s![..90, ..]).to_owned();
    let err = max_diff64(
        &on_backend.slice(s![..90, ..]).to_owned(),
        &reference_layer(&layer, &seq),
    );
    assert!(err < 1e-4, "max error {err}");

    // A product that fails (a device out of memory) is an error of the pass, whichever it is.
    for call in 0..7 {
        let failing = PlainProducts::failing_at(call);
        let compute = Compute::new(Par::Seq).with_products(&failing);
        let err = forward_layer(&layer, x.view(), &lens, compute).unwrap_err();
        assert!(
            matches!(err, ModelError::Products(GptqError::Backend { .. })),
            "{err:?}"
        );
        assert!(
            err.to_string().contains(&format!("product {call} failed")),
            "{err}"
        );
        assert_eq!(failing.calls(), call + 1, "the pass stops at the failure");
    }
}

#[test]
fn a_backend_computes_attention_when_it_says_so() {
    // Grouped-query heads (4 heads on 2 key/value heads), three sequences of uneven lengths, with
    // and without a sliding window: every (sequence, head) must reach the backend with its own
    // rows and columns.
    let tiny = Tiny::default();
    let dir = tiny.write(22);
    let mut layer = Checkpoint::open(dir.path()).unwrap().load_layer(0).unwrap();
    let lens = [70, 13, 67];
    let x = random_input(150, tiny.hidden, 9);
    for window in [None, Some(20)] {
        layer.shape.sliding_window = window;
        let on_cpu = forward_layer(&layer, x.view(), &lens, Par::rayon(2)).unwrap();
        let products = PlainProducts::new().with_attention();
        let compute = Compute::new(Par::rayon(2)).with_products(&products);
        let on_backend = forward_layer(&layer, x.view(), &lens, compute).unwrap();
        assert_eq!(products.calls(), 7 + lens.len() * tiny.heads);
        let err = max_diff(&on_backend, &on_cpu);
        assert!(err < 1e-5, "window {window:?}: max difference {err}");
    }
    // An attention call that fails is an error of the pass (calls 0-2 are q, k and v).
    let failing = PlainProducts::failing_at(3).with_attention();
    let compute = Compute::new(Par::Seq).with_products(&failing);
    let err = forward_layer(&layer, x.view(), &lens, compute).unwrap_err();
    assert!(
        matches!(err, ModelError::Products(GptqError::Backend { .. })),
        "{err:?}"
    );
}

/// `w` rounded to 4 bits with one scale and zero point per row (one group).
fn round_to_nearest(w: &Array2<f32>) -> QuantizedTensor {
    let (rows, columns) = w.dim();
    let mut codes = Array2::zeros((rows, columns));
    let (mut scales, mut zeros) = (Array2::zeros((1, rows)), Array2::zeros((1, rows)));
    for (r, row) in w.rows().into_iter().enumerate() {
        let (lo, hi) = row
            .iter()
            .fold((0.0f32, 0.0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let scale = ((hi - lo) / 15.0).max(1e-6);
        let zero = (-lo / scale).round().clamp(0.0, 15.0);
        for (c, &v) in row.iter().enumerate() {
            codes[[r, c]] = ((v / scale).round() + zero).clamp(0.0, 15.0) as u8;
        }
        (scales[[0, r]], zeros[[0, r]]) = (scale, zero as u16);
    }
    QuantizedTensor::new(4, codes, scales, zeros, vec![0; columns], None).unwrap()
}

#[test]
fn quantized_linears_reach_products_that_multiply_codes() {
    let tiny = Tiny::default();
    let dir = tiny.write(23);
    let mut layer = Checkpoint::open(dir.path()).unwrap().load_layer(0).unwrap();
    for id in [LinearId::Q, LinearId::Down] {
        let quantized = round_to_nearest(&layer.linear(id).weight);
        layer.linear_mut(id).set_quantized(quantized).unwrap();
    }
    let (lens, x) = ([40, 25], random_input(65, tiny.hidden, 10));
    let run = |layer: &DecoderLayer, products: &PlainProducts| {
        let compute = Compute::new(Par::Seq).with_products(products);
        forward_layer(layer, x.view(), &lens, compute).unwrap()
    };
    // The plain products multiply the dequantized weights either way: the same numbers.
    let expected = run(&layer, &PlainProducts::new());
    let products = PlainProducts::new().with_quantized();
    assert_eq!(run(&layer, &products), expected);
    assert_eq!((products.quantized_calls(), products.calls()), (2, 7));
    // Products that do not multiply codes get the dequantized weights.
    let plain = PlainProducts::new();
    run(&layer, &plain);
    assert_eq!((plain.quantized_calls(), plain.calls()), (0, 7));
    // A new weight drops the codes.
    let weight = layer.linear(LinearId::Q).weight.clone();
    layer.linear_mut(LinearId::Q).set_weight(weight).unwrap();
    assert!(layer.linear(LinearId::Q).quantized().is_none());
    let products = PlainProducts::new().with_quantized();
    run(&layer, &products);
    assert_eq!(products.quantized_calls(), 1);
}

#[test]
fn sliding_window_matches_reference() {
    let tiny = Tiny {
        model_type: "mistral",
        ..Tiny::default()
    };
    let dir = TempDir::new("mistral");
    let mut cfg = tiny.config();
    cfg["sliding_window"] = serde_json::json!(37);
    write_config(dir.path(), &cfg);
    write_safetensors(
        &dir.path().join("model.safetensors"),
        &tiny.tensors(3),
        Dtype::F32,
    );
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(ckpt.config().sliding_window, Some(37));
    let layer = ckpt.load_layer(0).unwrap();
    let x = random_input(140, tiny.hidden, 8);
    let got = forward_layer(&layer, x.view(), &[140], Par::Seq).unwrap();
    let err = max_diff64(&got, &reference_layer(&layer, &x));
    assert!(err < 1e-4, "max error {err}");
}

#[test]
fn staged_forward_equals_forward_layer() {
    let tiny = Tiny::default();
    let dir = tiny.write(1);
    let layer = Checkpoint::open(dir.path()).unwrap().load_layer(0).unwrap();
    let lens = [70, 30];
    let x = random_input(100, tiny.hidden, 2);
    let par = Par::rayon(2);
    let eps = layer.shape.rms_norm_eps;

    let normed = rms_norm(x.view(), layer.input_layernorm.view(), eps).unwrap();
    let attn = attention_core(&layer, normed.view(), &lens, par).unwrap();
    let h = &x + &layer.o_proj.forward(attn.view(), par).unwrap();
    let normed2 = rms_norm(h.view(), layer.post_attention_layernorm.view(), eps).unwrap();
    let inner = mlp_inner(&layer, normed2.view(), par).unwrap();
    let staged = &h + &layer.down_proj.forward(inner.view(), par).unwrap();

    let mut seen = Vec::new();
    let whole = forward_layer_observed(&layer, x.view(), &lens, par, |inp| {
        let want = match inp.ids[0] {
            LinearId::Q => &normed,
            LinearId::O => &attn,
            LinearId::Gate => &normed2,
            LinearId::Down => &inner,
            other => panic!("unexpected group {other}"),
        };
        assert!(max_diff(&inp.input.to_owned(), want) < 1e-5);
        seen.push(inp.ids);
        Ok(())
    })
    .unwrap();
    assert!(max_diff(&whole, &staged) < 1e-5);
    assert_eq!(seen.len(), 4);
    assert_eq!(seen[0], &[LinearId::Q, LinearId::K, LinearId::V]);
}

#[test]
fn batched_sequences_equal_separate_runs() {
    let tiny = Tiny::default();
    let dir = tiny.write(4);
    let layer = Checkpoint::open(dir.path()).unwrap().load_layer(1).unwrap();
    let lens = [64, 1, 100, 7];
    let x = random_input(172, tiny.hidden, 9);
    let batched = forward_layer(&layer, x.view(), &lens, Par::rayon(2)).unwrap();
    let mut at = 0;
    for &n in &lens {
        let alone = forward_layer(&layer, x.slice(s![at..at + n, ..]), &[n], Par::Seq).unwrap();
        let err = max_diff(&alone, &batched.slice(s![at..at + n, ..]).to_owned());
        assert!(err < 1e-5, "sequence of {n}: {err}");
        at += n;
    }
}

#[test]
fn gqa_equals_mha_with_repeated_kv_heads() {
    let tiny = Tiny {
        heads: 4,
        kv_heads: 2,
        ..Tiny::default()
    };
    let dir = tiny.write(21);
    let gqa = Checkpoint::open(dir.path()).unwrap().load_layer(0).unwrap();
    // The MHA layer gives every query head its own copy of its group's k/v rows.
    let mut mha = gqa.clone();
    let d = tiny.head_dim();
    let repeat = |w: &Array2<f32>| {
        let mut out = Array2::<f32>::zeros((tiny.heads * d, tiny.hidden));
        for h in 0..tiny.heads {
            let g = h / (tiny.heads / tiny.kv_heads);
            out.slice_mut(s![h * d..(h + 1) * d, ..])
                .assign(&w.slice(s![g * d..(g + 1) * d, ..]));
        }
        out
    };
    mha.k_proj.weight = repeat(&gqa.k_proj.weight);
    mha.v_proj.weight = repeat(&gqa.v_proj.weight);
    mha.shape.num_kv_heads = tiny.heads;
    let x = random_input(90, tiny.hidden, 3);
    let a = attention_core(&gqa, x.view(), &[90], Par::Seq).unwrap();
    let b = attention_core(&mha, x.view(), &[90], Par::Seq).unwrap();
    assert!(max_diff(&a, &b) < 1e-6);
}

#[test]
fn causal_mask_hides_the_future() {
    let tiny = Tiny::default();
    let dir = tiny.write(6);
    let model = Checkpoint::open(dir.path()).unwrap().load_model().unwrap();
    let mut tokens: Vec<u32> = (0..120).map(|i| (i * 7 % 64) as u32).collect();
    let before = model.logits(&tokens, &[120], Par::Seq).unwrap();
    for t in tokens[80..].iter_mut() {
        *t = (*t + 13) % 64;
    }
    let after = model.logits(&tokens, &[120], Par::Seq).unwrap();
    let past = max_diff(
        &before.slice(s![..80, ..]).to_owned(),
        &after.slice(s![..80, ..]).to_owned(),
    );
    assert!(past < 1e-6, "positions before the change moved by {past}");
    let future = max_diff(
        &before.slice(s![80.., ..]).to_owned(),
        &after.slice(s![80.., ..]).to_owned(),
    );
    assert!(future > 1e-3, "positions after the change did not move");
}

#[test]
fn nll_matches_logits_and_untied_head() {
    for tied in [true, false] {
        let tiny = Tiny {
            tied,
            ..Tiny::default()
        };
        let dir = tiny.write(8);
        let model = Checkpoint::open(dir.path()).unwrap().load_model().unwrap();
        assert_eq!(model.lm_head.is_none(), tied);
        let tokens: Vec<u32> = (0..300).map(|i| ((i * i + 3) % 64) as u32).collect();
        let lens = [200, 100];
        let logits = model.logits(&tokens, &lens, Par::Seq).unwrap();
        let sums = model.nll(&tokens, &lens, Par::rayon(2)).unwrap();
        let mut at = 0;
        for (&n, got) in lens.iter().zip(&sums) {
            let mut want = 0f64;
            for t in 0..n - 1 {
                let row = logits.row(at + t);
                let m = row.iter().copied().fold(f32::MIN, f32::max) as f64;
                let lse = m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
                want += lse - row[tokens[at + t + 1] as usize] as f64;
            }
            assert_eq!(got.count, n - 1);
            assert!(
                (got.sum - want).abs() < 1e-3 * n as f64 * 1e-2,
                "{} vs {want}",
                got.sum
            );
            at += n;
        }
    }
}

#[test]
fn half_precision_weights_convert() {
    let tiny = Tiny::default();
    let tensors = tiny.tensors(2);
    let name = "model.layers.0.mlp.up_proj.weight";
    for dtype in [Dtype::F16, Dtype::BF16] {
        let dir = TempDir::new("half");
        write_config(dir.path(), &tiny.config());
        write_safetensors(&dir.path().join("model.safetensors"), &tensors, dtype);
        let ckpt = Checkpoint::open(dir.path()).unwrap();
        assert_eq!(ckpt.weights().meta(name).unwrap().dtype, dtype);
        let layer = ckpt.load_layer(0).unwrap();
        let tol = if dtype == Dtype::F16 { 1e-3 } else { 1e-2 };
        for (a, b) in layer.up_proj.weight.iter().zip(&tensors[name].1) {
            assert!(
                (a - b).abs() <= tol * b.abs().max(1e-3),
                "{dtype:?}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn sharded_checkpoint_loads_like_single_file() {
    let tiny = Tiny {
        tied: false,
        ..Tiny::default()
    };
    let single = tiny.write(13);
    let tensors = tiny.tensors(13);
    let sharded = TempDir::new("sharded");
    write_config(sharded.path(), &tiny.config());
    let (a, b): (Vec<_>, Vec<_>) = tensors.iter().enumerate().partition(|(i, _)| i % 2 == 0);
    let mut weight_map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", a),
        ("model-00002-of-00002.safetensors", b),
    ] {
        let part: std::collections::BTreeMap<_, _> = part
            .into_iter()
            .map(|(_, (k, v))| (k.clone(), v.clone()))
            .collect();
        for k in part.keys() {
            weight_map.insert(k.clone(), file.into());
        }
        write_safetensors(&sharded.path().join(file), &part, Dtype::F32);
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        sharded.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();

    let one = Checkpoint::open(single.path())
        .unwrap()
        .load_model()
        .unwrap();
    let two = Checkpoint::open(sharded.path()).unwrap();
    assert_eq!(two.weights().files().len(), 2);
    let two = two.load_model().unwrap();
    assert_eq!(one.layers, two.layers);
    assert_eq!(one.lm_head, two.lm_head);
    assert_eq!(one.embed_tokens, two.embed_tokens);
}

fn open_err(dir: &std::path::Path) -> String {
    Checkpoint::open(dir).unwrap_err().to_string()
}

#[test]
fn missing_files_are_named() {
    let dir = TempDir::new("empty");
    let msg = open_err(dir.path());
    assert!(
        msg.contains("config.json not found in") && msg.contains("Hugging Face model directory"),
        "{msg}"
    );

    write_config(dir.path(), &Tiny::default().config());
    let msg = open_err(dir.path());
    assert!(
        msg.contains("model.safetensors") && msg.contains("safetensors format"),
        "{msg}"
    );

    let tiny = Tiny::default();
    let dir = tiny.write(1);
    let err = Checkpoint::open(dir.path())
        .unwrap()
        .load_tokenizer()
        .unwrap_err();
    assert!(matches!(err, ModelError::TokenizerNotFound { .. }), "{err}");

    // A shard the index lists but the directory lacks.
    let dir = TempDir::new("noshard");
    write_config(dir.path(), &tiny.config());
    let index = serde_json::json!({"weight_map": {"model.norm.weight": "model-00001-of-00001.safetensors"}});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let msg = open_err(dir.path());
    assert!(
        msg.contains("model-00001-of-00001.safetensors") && msg.contains("missing"),
        "{msg}"
    );
}

#[test]
fn config_errors_name_the_fix() {
    let dir = TempDir::new("gpt2");
    let mut cfg = Tiny::default().config();
    cfg["model_type"] = "gpt2".into();
    write_config(dir.path(), &cfg);
    assert_eq!(
        open_err(dir.path()),
        "unsupported architecture `gpt2`: supported are llama, mistral, qwen2, qwen3, smollm3"
    );

    let mut cfg = Tiny::default().config();
    cfg.as_object_mut().unwrap().remove("hidden_size");
    write_config(dir.path(), &cfg);
    assert_eq!(
        open_err(dir.path()),
        "config.json field `hidden_size` is missing"
    );

    // Rotary settings: `rope_scaling` (transformers 4) or `rope_parameters` (transformers 5).
    let llama3 = serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
    for (field, value, expected) in [
        (
            "rope_scaling",
            serde_json::json!({"rope_type": "yarn", "factor": 4.0}),
            "implemented are the rope_types default, linear and llama3",
        ),
        (
            "rope_parameters",
            serde_json::json!({"type": "dynamic", "factor": 2.0}),
            "implemented are the rope_types default, linear and llama3",
        ),
        (
            "rope_scaling",
            serde_json::json!({"rope_type": "llama3", "factor": 8.0}),
            "`low_freq_factor` must be a positive number",
        ),
        (
            "rope_parameters",
            serde_json::json!({"rope_type": "linear", "factor": 0}),
            "`factor` must be a positive number",
        ),
        (
            "rope_scaling",
            serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
            "high_freq_factor must be larger than low_freq_factor",
        ),
        (
            "rope_parameters",
            serde_json::json!({"full_attention": {"rope_type": "default", "rope_theta": 1e4}}),
            "it names no rope_type",
        ),
        (
            "rope_parameters",
            serde_json::json!({"rope_type": "default", "rope_theta": 5e5}),
            "`rope_theta` is 10000, but rope_parameters.rope_theta is 500000",
        ),
    ] {
        let mut cfg = Tiny::default().config();
        cfg[field] = value;
        write_config(dir.path(), &cfg);
        let msg = open_err(dir.path());
        assert!(msg.contains(field) && msg.contains(expected), "{msg}");
    }
    let mut cfg = Tiny::default().config();
    cfg["rope_scaling"] = llama3;
    cfg["rope_parameters"] = serde_json::json!({"rope_type": "default"});
    write_config(dir.path(), &cfg);
    let msg = open_err(dir.path());
    assert!(
        msg.contains("describe different rotary embeddings"),
        "{msg}"
    );
    // One attention kind for all layers is implemented; transformers 5 lists them per layer.
    for (model_type, kinds, expected) in [
        (
            "llama",
            ["full_attention", "sliding_attention"],
            "layer_types holds \"sliding",
        ),
        (
            "mistral",
            ["full_attention", "full_attention"],
            "computes sliding_attention",
        ),
    ] {
        let mut cfg = Tiny::default().config();
        cfg["model_type"] = model_type.into();
        cfg["sliding_window"] = 16.into();
        cfg["layer_types"] = serde_json::json!(kinds);
        write_config(dir.path(), &cfg);
        let msg = open_err(dir.path());
        assert!(msg.contains(expected), "{msg}");
    }

    for (field, value, expected) in [
        ("head_dim", serde_json::json!(0), "`head_dim` is 0"),
        // Divides hidden_size when head_dim is absent: refused before it is used.
        (
            "num_attention_heads",
            serde_json::json!(0),
            "`num_attention_heads` is 0",
        ),
        (
            "intermediate_size",
            serde_json::json!(1u64 << 40),
            "larger than any model's",
        ),
        (
            "rms_norm_eps",
            serde_json::json!(-1.0),
            "`rms_norm_eps` is -1",
        ),
        ("rope_theta", serde_json::json!(0.0), "`rope_theta` is 0"),
    ] {
        let mut cfg = Tiny::default().config();
        cfg[field] = value;
        write_config(dir.path(), &cfg);
        let msg = open_err(dir.path());
        assert!(msg.contains(expected), "{msg}");
    }

    std::fs::write(dir.path().join("config.json"), "{not json").unwrap();
    assert!(open_err(dir.path()).contains("config.json is not valid"));
}

/// A field of the wrong type is refused, named by its path, never read as its default.
#[test]
fn mistyped_config_fields_are_named() {
    let dir = TempDir::new("mistyped");
    let gptq = |fields: serde_json::Value| {
        let mut q = serde_json::json!({"quant_method": "gptq", "bits": 4, "group_size": 128,
            "desc_act": false, "sym": true, "checkpoint_format": "gptq"});
        for (k, v) in fields.as_object().unwrap() {
            q[k] = v.clone();
        }
        q
    };
    for (field, value, expected) in [
        (
            "hidden_size",
            serde_json::json!("64"),
            "`hidden_size` has invalid type: string \"64\"",
        ),
        (
            "tie_word_embeddings",
            serde_json::json!(1),
            "`tie_word_embeddings` has invalid type: integer `1`, expected a boolean",
        ),
        (
            "rope_scaling",
            serde_json::json!({"rope_type": "linear", "factor": "2"}),
            "`rope_scaling.factor` has invalid type: string \"2\"",
        ),
        (
            "quantization_config",
            gptq(serde_json::json!({"group_size": "128"})),
            "`quantization_config.group_size` has invalid type: string \"128\"",
        ),
        (
            "quantization_config",
            gptq(serde_json::json!({"checkpoint_format": 7})),
            "`quantization_config.checkpoint_format` has invalid type: integer `7`",
        ),
        (
            "quantization_config",
            gptq(serde_json::json!({"bits": 5})),
            "`quantization_config.bits` is 5, expected 2, 3, 4 or 8",
        ),
        (
            "quantization_config",
            serde_json::json!([4, 128]),
            "`quantization_config` must be a JSON object",
        ),
    ] {
        let mut cfg = Tiny::default().config();
        cfg[field] = value;
        write_config(dir.path(), &cfg);
        let msg = open_err(dir.path());
        assert!(msg.contains(expected), "{msg}");
    }
    let array = serde_json::json!(["llama", 64]);
    write_config(dir.path(), &array);
    assert!(open_err(dir.path()).contains("`(top level)` must be a JSON object"));
}

#[test]
fn configs_written_by_transformers_5_are_read() {
    let tiny = Tiny::default();
    let theta = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut cfg = tiny.config();
        edit(&mut cfg);
        ModelConfig::from_json(cfg).unwrap().rope_theta
    };
    assert_eq!(theta(&|_| {}), 10000.0);
    let v5 = |cfg: &mut serde_json::Value| {
        cfg.as_object_mut().unwrap().remove("rope_theta");
        cfg["rope_parameters"] = serde_json::json!({"rope_type": "default", "rope_theta": 1e6});
        cfg["layer_types"] = serde_json::json!(["full_attention", "full_attention"]);
    };
    assert_eq!(theta(&v5), 1e6);
    // Llama 3.1's scaling, as transformers 4 and 5 write it.
    let llama3 = serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192, "rope_theta": 5e5});
    let expected = RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192.0,
    };
    for field in ["rope_scaling", "rope_parameters"] {
        let mut cfg = tiny.config();
        cfg["rope_theta"] = 5e5.into();
        cfg[field] = llama3.clone();
        let config = ModelConfig::from_json(cfg).unwrap();
        assert_eq!((config.rope_theta, config.rope_scaling), (5e5, expected));
    }
    // The same value in both places, and a `rope_scaling` that says "default", are plain.
    assert_eq!(
        theta(&|cfg| {
            cfg["rope_theta"] = 1e6.into();
            cfg["rope_parameters"] = serde_json::json!({"rope_type": "default", "rope_theta": 1e6});
            cfg["rope_scaling"] = serde_json::json!({"type": "default"});
        }),
        1e6
    );
}

#[test]
fn windows_past_the_trained_context_are_warned_about() {
    let mut cfg = Tiny::default().config();
    let config = gptq_model::ModelConfig::from_json(cfg.clone()).unwrap();
    assert_eq!(config.context_warning(1 << 20), None, "no limit given");
    cfg["max_position_embeddings"] = 8192.into();
    let config = gptq_model::ModelConfig::from_json(cfg.clone()).unwrap();
    assert_eq!(config.context_warning(8192), None);
    let warning = config.context_warning(8193).unwrap();
    assert!(
        warning.contains("max_position_embeddings 8192"),
        "{warning}"
    );
    // The field only informs warnings: a malformed one does not refuse the model.
    cfg["max_position_embeddings"] = "long".into();
    assert!(gptq_model::ModelConfig::from_json(cfg).is_ok());
}

#[test]
fn tensor_errors_name_the_tensor() {
    let tiny = Tiny::default();
    let name = "model.layers.1.mlp.up_proj.weight";

    let mut t = tiny.tensors(1);
    t.remove(name);
    let dir = TempDir::new("missing");
    write_config(dir.path(), &tiny.config());
    write_safetensors(&dir.path().join("model.safetensors"), &t, Dtype::F32);
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    ckpt.load_layer(0).unwrap();
    assert_eq!(
        ckpt.load_layer(1).unwrap_err().to_string(),
        format!("tensor {name} missing from model.safetensors")
    );
    assert!(
        ckpt.load_layer(2)
            .unwrap_err()
            .to_string()
            .contains("the model has 2 layers")
    );

    let mut t = tiny.tensors(1);
    t.insert(
        name.into(),
        (
            vec![tiny.hidden, tiny.inter],
            vec![0.0; tiny.hidden * tiny.inter],
        ),
    );
    write_safetensors(&dir.path().join("model.safetensors"), &t, Dtype::F32);
    let msg = Checkpoint::open(dir.path())
        .unwrap()
        .load_layer(1)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains(name) && msg.contains("[32, 48]") && msg.contains("[48, 32]"),
        "{msg}"
    );

    let mut t = tiny.tensors(1);
    t.get_mut(name).unwrap().1[5] = f32::NAN;
    write_safetensors(&dir.path().join("model.safetensors"), &t, Dtype::F32);
    let err = Checkpoint::open(dir.path())
        .unwrap()
        .load_layer(1)
        .unwrap_err();
    assert!(
        matches!(err, ModelError::NonFiniteWeight { index: 5, .. }),
        "{err}"
    );

    // An integer tensor where a float weight belongs.
    let raw = vec![(
        "model.norm.weight".to_string(),
        vec![tiny.hidden],
        vec![0u8; 4 * tiny.hidden],
    )];
    write_raw(&dir.path().join("model.safetensors"), &raw, Dtype::I32);
    let msg = Checkpoint::open(dir.path())
        .unwrap()
        .load_final_norm()
        .unwrap_err()
        .to_string();
    assert!(msg.contains("model.norm.weight has dtype I32"), "{msg}");

    std::fs::write(dir.path().join("model.safetensors"), b"garbage").unwrap();
    assert!(open_err(dir.path()).contains("is not a valid safetensors file"));
}

#[test]
fn qwen2_loads_qkv_biases() {
    let tiny = Tiny {
        model_type: "qwen2",
        ..Tiny::default()
    };
    let dir = tiny.write(3);
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    assert!(ckpt.config().attention_bias);
    let layer = ckpt.load_layer(0).unwrap();
    for id in [LinearId::Q, LinearId::K, LinearId::V] {
        assert!(layer.linear(id).bias.is_some(), "{id}");
    }
    assert!(layer.o_proj.bias.is_none());
}

#[test]
fn qwen3_loads_head_norms() {
    let tiny = Tiny {
        model_type: "qwen3",
        ..Tiny::default()
    };
    let dir = tiny.write(3);
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    assert!(!ckpt.config().attention_bias);
    let layer = ckpt.load_layer(0).unwrap();
    let norms = layer
        .head_norms
        .as_ref()
        .expect("qwen3 layers have head norms");
    assert_eq!((norms.q.len(), norms.k.len()), (8, 8));
    assert!(
        LinearId::ALL
            .iter()
            .all(|&id| layer.linear(id).bias.is_none())
    );
    ckpt.check_layer_tensors().unwrap();

    // As in transformers: head_dim defaults to 128 for qwen3, and attention_bias covers o_proj.
    let mut cfg = tiny.config();
    cfg.as_object_mut().unwrap().remove("head_dim");
    assert_eq!(ModelConfig::from_json(cfg).unwrap().head_dim, 128);
    let mut cfg = tiny.config();
    cfg["attention_bias"] = true.into();
    let mut tensors = tiny.tensors(3);
    for l in 0..tiny.layers {
        for (n, w) in [("q", 32), ("k", 16), ("v", 16), ("o", 32)] {
            let values = vec![0.1; w];
            tensors.insert(
                format!("model.layers.{l}.self_attn.{n}_proj.bias"),
                (vec![w], values),
            );
        }
    }
    write_config(dir.path(), &cfg);
    write_safetensors(&dir.path().join("model.safetensors"), &tensors, Dtype::F32);
    let layer = Checkpoint::open(dir.path()).unwrap().load_layer(1).unwrap();
    assert!(
        LinearId::ALL[..4]
            .iter()
            .all(|&id| layer.linear(id).bias.is_some())
    );

    let mut cfg = tiny.config();
    cfg["use_sliding_window"] = true.into();
    write_config(dir.path(), &cfg);
    assert!(open_err(dir.path()).contains("qwen3 with use_sliding_window true"));

    // A checkpoint without the head norms is refused from its headers, naming the tensor.
    write_config(dir.path(), &tiny.config());
    let mut tensors = tiny.tensors(3);
    tensors.remove("model.layers.1.self_attn.k_norm.weight");
    write_safetensors(&dir.path().join("model.safetensors"), &tensors, Dtype::F32);
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    let err = ckpt.check_layer_tensors().unwrap_err().to_string();
    assert!(
        err.contains("model.layers.1.self_attn.k_norm.weight"),
        "{err}"
    );
    let err = ckpt.load_layer(1).unwrap_err().to_string();
    assert!(
        err.contains("model.layers.1.self_attn.k_norm.weight"),
        "{err}"
    );
}

#[test]
fn smollm3_reads_its_layers_without_rotary_embeddings() {
    let tiny = Tiny {
        model_type: "smollm3",
        layers: 2,
        ..Tiny::default()
    };
    let rotary = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut cfg = tiny.config();
        edit(&mut cfg);
        let config = ModelConfig::from_json(cfg).map_err(|e| e.to_string())?;
        Ok::<_, String>(
            (0..2)
                .map(|i| config.layer_shape(i).rotary)
                .collect::<Vec<_>>(),
        )
    };
    assert_eq!(rotary(&|_| {}), Ok(vec![true, false]));
    // As transformers derives them: every no_rope_layer_interval-th layer (4 by default).
    let no_list = |cfg: &mut serde_json::Value| {
        cfg.as_object_mut().unwrap().remove("no_rope_layers");
    };
    assert_eq!(rotary(&no_list), Ok(vec![true, true]));
    assert_eq!(
        rotary(&|cfg| {
            no_list(cfg);
            cfg["no_rope_layer_interval"] = 2.into();
        }),
        Ok(vec![true, false])
    );
    for (value, expected) in [
        (
            serde_json::json!([1]),
            "expected a list of 2 zeros and ones",
        ),
        (
            serde_json::json!([1, 2]),
            "holds 2, expected 0 (no rotary) or 1",
        ),
    ] {
        let err = rotary(&|cfg| cfg["no_rope_layers"] = value.clone()).unwrap_err();
        assert!(err.contains(expected), "{err}");
    }
    // transformers' defaults for SmolLM3: tied embeddings, rotary base 2e6.
    let mut cfg = tiny.config();
    for field in ["tie_word_embeddings", "rope_theta"] {
        cfg.as_object_mut().unwrap().remove(field);
    }
    let config = ModelConfig::from_json(cfg).unwrap();
    assert!(config.tie_word_embeddings);
    assert_eq!(config.rope_theta, 2e6);
    // Other architectures ignore the field, as transformers does.
    let mut cfg = Tiny::default().config();
    cfg["no_rope_layers"] = serde_json::json!([0, 0]);
    assert!(ModelConfig::from_json(cfg).unwrap().layer_shape(1).rotary);
}

#[test]
fn shape_errors_in_stages() {
    let tiny = Tiny::default();
    let dir = tiny.write(1);
    let mut layer = Checkpoint::open(dir.path()).unwrap().load_layer(0).unwrap();
    let x = random_input(10, tiny.hidden, 1);
    assert!(forward_layer(&layer, x.view(), &[9], Par::Seq).is_err());
    assert!(
        layer
            .linear_mut(LinearId::Up)
            .set_weight(Array2::zeros((3, 3)))
            .is_err()
    );
    let old = layer
        .linear_mut(LinearId::Up)
        .set_weight(Array2::zeros((tiny.inter, tiny.hidden)))
        .unwrap();
    assert_eq!(old.dim(), (tiny.inter, tiny.hidden));
    assert!(model_token_error(&tiny).contains("out of range for a vocabulary of 64"));
}

fn model_token_error(tiny: &Tiny) -> String {
    let dir = tiny.write(1);
    let model = Checkpoint::open(dir.path()).unwrap().load_model().unwrap();
    model.embed(&[1, 64]).unwrap_err().to_string()
}

#[test]
fn calib_json_validation() {
    let dir = TempDir::new("calib");
    let p = dir.path().join("calib.json");
    std::fs::write(&p, r#"{"windows": [[1, 2, 3], [4, 5]]}"#).unwrap();
    assert_eq!(
        gptq_model::calib::load_calib_json(&p, 6).unwrap(),
        vec![vec![1, 2, 3], vec![4, 5]]
    );
    let msg = gptq_model::calib::load_calib_json(&p, 5)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("token id 5 in window 1") && msg.contains("vocabulary of 5"),
        "{msg}"
    );
    std::fs::write(&p, r#"{"samples": []}"#).unwrap();
    let msg = gptq_model::calib::load_calib_json(&p, 5)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("`windows`"), "{msg}");
    std::fs::write(&p, r#"{"windows": []}"#).unwrap();
    assert!(gptq_model::calib::load_calib_json(&p, 5).is_err());
}

#[test]
fn perplexity_protocol_windows() {
    let tokens: Vec<u32> = (0..1000).map(|i| (i % 64) as u32).collect();
    let w = gptq_model::eval_windows(&tokens, 300, None).unwrap();
    assert_eq!(w.len(), 3);
    assert_eq!(w[1][0], 300 % 64);
    assert_eq!(
        gptq_model::eval_windows(&tokens, 300, Some(2))
            .unwrap()
            .len(),
        2
    );
    assert!(gptq_model::eval_windows(&tokens, 1001, None).is_err());

    let tiny = Tiny::default();
    let dir = tiny.write(5);
    let model = Checkpoint::open(dir.path()).unwrap().load_model().unwrap();
    let opts = |batch| gptq_model::PerplexityOptions {
        seqlen: 300,
        max_windows: None,
        batch_windows: batch,
        par: Par::rayon(2),
    };
    let a = gptq_model::perplexity(&model, &tokens, &opts(1), |_, _| {}).unwrap();
    let b = gptq_model::perplexity(&model, &tokens, &opts(2), |_, _| {}).unwrap();
    assert_eq!(a.windows, 3);
    assert_eq!(a.predicted_tokens, 3 * 299);
    assert!((a.perplexity - b.perplexity).abs() < 1e-4 * a.perplexity);
    assert!(
        a.perplexity.is_finite() && a.perplexity > 1.0,
        "{}",
        a.perplexity
    );
    let sums = model.nll(&tokens[..300], &[300], Par::Seq).unwrap();
    assert!((sums[0].sum / 299.0 - a.window_nll[0]).abs() < 1e-4);
}

#[test]
fn a_likelihood_that_overflows_is_an_error_naming_the_window() {
    // With rms_norm_eps 0, an all-zero embedding row normalizes to 0/0: every window that holds
    // that token gets a NaN log-likelihood, the others stay finite.
    let tiny = Tiny::default();
    let dir = TempDir::new("overflow");
    let mut config = tiny.config();
    config["rms_norm_eps"] = 0.0.into();
    write_config(dir.path(), &config);
    let mut tensors = tiny.tensors(3);
    let (_, table) = tensors.get_mut("model.embed_tokens.weight").unwrap();
    let zero_token = 63;
    table[zero_token * tiny.hidden..(zero_token + 1) * tiny.hidden].fill(0.0);
    write_safetensors(&dir.path().join("model.safetensors"), &tensors, Dtype::F32);
    let model = Checkpoint::open(dir.path()).unwrap().load_model().unwrap();

    let mut tokens: Vec<u32> = (0..300).map(|i| (i % 63) as u32).collect();
    tokens[250] = zero_token as u32; // in the third window of 100
    for batch_windows in [1, 2, 4] {
        let opts = gptq_model::PerplexityOptions {
            seqlen: 100,
            max_windows: None,
            batch_windows,
            par: Par::Seq,
        };
        let err = gptq_model::perplexity(&model, &tokens, &opts, |_, _| {}).unwrap_err();
        assert!(
            matches!(err, ModelError::NonFiniteLikelihood { sequence: 2 }),
            "batch {batch_windows}: {err}"
        );
        assert!(err.to_string().contains("overflow"), "{err}");
        // The first two windows alone are fine.
        assert!(gptq_model::perplexity(&model, &tokens[..200], &opts, |_, _| {}).is_ok());
    }
}

#[test]
fn recycled_buffers_do_not_change_results() {
    // qwen2 has q/k/v biases: the bias-first path of `Linear::forward` is covered too.
    for model_type in ["llama", "qwen2"] {
        let tiny = Tiny {
            model_type,
            ..Tiny::default()
        };
        let dir = tiny.write(9);
        let layer = Checkpoint::open(dir.path()).unwrap().load_layer(0).unwrap();
        // Big enough (> 1 MiB per temporary) for the pool to keep the buffers.
        let x = random_input(9000, tiny.hidden, 4);
        let lens = [100; 90];
        let first = forward_layer(&layer, x.view(), &lens, Par::Seq).unwrap();
        let second = forward_layer(&layer, x.view(), &lens, Par::Seq).unwrap();
        assert_eq!(first, second);
        // Temporaries are taken from the pool without zeroing: stale NaNs of every width a
        // layer uses must be overwritten, never read.
        for cols in [
            tiny.hidden,
            tiny.inter,
            tiny.hidden / tiny.heads * tiny.kv_heads,
        ] {
            for _ in 0..4 {
                gptq_model::recycle_buffer(Array2::from_elem((9000, cols), f32::NAN));
            }
        }
        let stale = forward_layer(&layer, x.view(), &lens, Par::Seq).unwrap();
        assert_eq!(
            first, stale,
            "{model_type}: stale pool contents leaked into the output"
        );
        gptq_model::set_buffer_pool_limit(0);
        let third = forward_layer(&layer, x.view(), &lens, Par::Seq).unwrap();
        gptq_model::set_buffer_pool_limit(512 << 20);
        assert_eq!(first, third);
    }
}

/// This process's resident file-backed memory in KiB (Linux's `RssFile`).
#[cfg(target_os = "linux")]
fn resident_file_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("RssFile:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A converted tensor's mapped pages leave the resident set, and read back the same bytes.
#[test]
fn converted_tensors_do_not_stay_resident() {
    let dir = TempDir::new("release");
    let (rows, cols) = (4096, 4096); // 64 MiB of f32
    let values: Vec<f32> = (0..rows * cols).map(|i| (i % 251) as f32 / 251.0).collect();
    let mut tensors = std::collections::BTreeMap::new();
    tensors.insert("big".to_string(), (vec![rows, cols], values));
    write_safetensors(&dir.path().join("model.safetensors"), &tensors, Dtype::F32);
    let store = gptq_model::weights::WeightStore::open(dir.path()).unwrap();
    let raw_sum = |store: &gptq_model::weights::WeightStore| -> u64 {
        store
            .raw("big")
            .unwrap()
            .data
            .iter()
            .map(|&b| u64::from(b))
            .sum()
    };
    let first = raw_sum(&store); // every page read: resident
    #[cfg(target_os = "linux")]
    let before = resident_file_kib();
    let copy = store.load_matrix("big", rows, cols).unwrap();
    #[cfg(target_os = "linux")]
    {
        let after = resident_file_kib();
        assert!(
            after + 60 * 1024 <= before,
            "RssFile {before} KiB before the conversion, {after} KiB after"
        );
    }
    assert_eq!(raw_sum(&store), first, "the same bytes read back");
    assert_eq!(copy, store.load_matrix("big", rows, cols).unwrap());
}
