//! Throughput of the decoder-layer forward pass against faer's plain GEMM rate.
//!
//! ```text
//! cargo run --release -p gptq-model --example layer_bench -- [--model DIR] [--layer 0]
//!     [--seqs 8] [--seqlen 512] [--threads 0] [--reps 3]
//! ```
//! Without `--model`, a random layer with SmolLM2-135M's dimensions is used.

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat};
use gptq_model::calib::SplitMix64;
use gptq_model::ndarray::{Array1, Array2};
use gptq_model::{
    Checkpoint, DecoderLayer, LayerShape, Linear, LinearId, Par, RopeScaling, attention_core,
    forward_layer, mlp_inner, rms_norm,
};

/// Throughput of the decoder-layer forward pass against faer's plain GEMM rate.
#[derive(Parser)]
#[command(name = "layer_bench", args_override_self = true)]
struct Args {
    /// A Hugging Face checkpoint folder; without it, a random layer with SmolLM2-135M's dimensions.
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// The checkpoint's decoder layer to load.
    #[arg(long, value_name = "N", default_value_t = 0)]
    layer: usize,
    /// Sequences per forward pass.
    #[arg(long, value_name = "N", default_value_t = 8)]
    seqs: usize,
    /// Tokens per sequence.
    #[arg(long, value_name = "N", default_value_t = 512)]
    seqlen: usize,
    /// Worker threads (0: rayon's default, all cores).
    #[arg(long, value_name = "N", default_value_t = 0)]
    threads: usize,
    /// Timed repetitions of each measurement, of which the fastest is printed.
    #[arg(long, value_name = "N", default_value_t = 3)]
    reps: usize,
}

fn random(rng: &mut SplitMix64, rows: usize, cols: usize, scale: f32) -> Array2<f32> {
    Array2::from_shape_fn((rows, cols), |_| {
        scale * ((rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0)
    })
}

fn smollm2_like() -> DecoderLayer {
    let shape = LayerShape {
        hidden_size: 576,
        intermediate_size: 1536,
        num_heads: 9,
        num_kv_heads: 3,
        head_dim: 64,
        rms_norm_eps: 1e-5,
        rope_theta: 1e5,
        rope_scaling: RopeScaling::None,
        sliding_window: None,
        rotary: true,
    };
    let mut rng = SplitMix64::new(1);
    let lin = |rng: &mut SplitMix64, id: LinearId| {
        let (o, i) = id.dims(&shape);
        Linear::new(random(rng, o, i, 1.0 / (i as f32).sqrt()), None).unwrap()
    };
    DecoderLayer {
        index: 0,
        shape,
        input_layernorm: Array1::ones(576),
        q_proj: lin(&mut rng, LinearId::Q),
        k_proj: lin(&mut rng, LinearId::K),
        v_proj: lin(&mut rng, LinearId::V),
        head_norms: None,
        o_proj: lin(&mut rng, LinearId::O),
        post_attention_layernorm: Array1::ones(576),
        gate_proj: lin(&mut rng, LinearId::Gate),
        up_proj: lin(&mut rng, LinearId::Up),
        down_proj: lin(&mut rng, LinearId::Down),
    }
}

fn best_of<T>(reps: usize, mut f: impl FnMut() -> T) -> f64 {
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Args {
        model,
        layer: layer_i,
        seqs,
        seqlen,
        threads,
        reps,
    } = Args::parse();
    let layer = match model {
        Some(dir) => Checkpoint::open(dir)?.load_layer(layer_i)?,
        None => smollm2_like(),
    };
    let par = Par::rayon(threads);
    let s = layer.shape;
    let n = seqs * seqlen;
    let lens = vec![seqlen; seqs];
    let x = random(&mut SplitMix64::new(2), n, s.hidden_size, 1.0);

    let linear_flop: f64 = LinearId::ALL
        .iter()
        .map(|id| {
            let (o, i) = id.dims(&s);
            2.0 * (n * o * i) as f64
        })
        .sum();
    // Useful attention work: QKᵀ and PV over the causal triangle.
    let attn_flop =
        (seqs * 2 * 2 * s.num_heads * s.head_dim) as f64 * (seqlen * (seqlen + 1) / 2) as f64;
    let flop = linear_flop + attn_flop;

    forward_layer(&layer, x.view(), &lens, par)?; // warm-up
    let t_layer = best_of(reps, || {
        forward_layer(&layer, x.view(), &lens, par).unwrap()
    });
    let normed = rms_norm(x.view(), layer.input_layernorm.view(), s.rms_norm_eps)?;
    let t_attn = best_of(reps, || {
        attention_core(&layer, normed.view(), &lens, par).unwrap()
    });
    let t_mlp = best_of(reps, || mlp_inner(&layer, normed.view(), par).unwrap());
    let inner = mlp_inner(&layer, normed.view(), par)?;
    let t_down = best_of(reps, || layer.down_proj.forward(inner.view(), par).unwrap());

    // faer's rate on the layer's largest product shape, plain column-major operands.
    let (m, k, nn) = (n, s.hidden_size, s.intermediate_size);
    let a = Mat::<f32>::from_fn(m, k, |i, j| ((i * 7 + j * 3) % 13) as f32 * 0.1);
    let b = Mat::<f32>::from_fn(k, nn, |i, j| ((i * 5 + j) % 11) as f32 * 0.1);
    let mut c = Mat::<f32>::zeros(m, nn);
    let t_gemm = best_of(reps, || {
        matmul(
            c.as_mut(),
            Accum::Replace,
            a.as_ref(),
            b.as_ref(),
            1.0f32,
            par,
        )
    });

    let g = |f: f64, t: f64| f / t / 1e9;
    println!(
        "{seqs} x {seqlen} tokens, hidden {}, inter {}, {} heads / {} kv, threads {}",
        s.hidden_size,
        s.intermediate_size,
        s.num_heads,
        s.num_kv_heads,
        if threads == 0 {
            rayon::current_num_threads()
        } else {
            threads
        }
    );
    println!(
        "forward_layer   {:8.1} ms  {:6.1} GFLOP/s ({:.2} GFLOP: linears {:.2}, causal attention {:.2})",
        t_layer * 1e3,
        g(flop, t_layer),
        flop / 1e9,
        linear_flop / 1e9,
        attn_flop / 1e9
    );
    let qkv_flop = 2.0 * (n * s.hidden_size * (s.q_width() + 2 * s.kv_width())) as f64;
    println!(
        "attention_core  {:8.1} ms  {:6.1} GFLOP/s (q/k/v + attention)",
        t_attn * 1e3,
        g(qkv_flop + attn_flop, t_attn)
    );
    let mlp_flop = 4.0 * (n * s.hidden_size * s.intermediate_size) as f64;
    println!(
        "mlp_inner       {:8.1} ms  {:6.1} GFLOP/s",
        t_mlp * 1e3,
        g(mlp_flop, t_mlp)
    );
    println!(
        "down_proj       {:8.1} ms  {:6.1} GFLOP/s",
        t_down * 1e3,
        g(mlp_flop / 2.0, t_down)
    );
    println!(
        "faer GEMM {m}x{k}x{nn} {:8.1} ms  {:6.1} GFLOP/s",
        t_gemm * 1e3,
        g(2.0 * (m * k * nn) as f64, t_gemm)
    );
    Ok(())
}
