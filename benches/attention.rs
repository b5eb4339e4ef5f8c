//! One head's causal attention (512 tokens, head_dim 64: a SmolLM2-135M head on one calibration
//! sequence), on one thread as the forward pass runs it per (sequence, head) task, in one run:
//! the f32 attention (`gptq_linalg::attention::head_attention_f32`, faer's f32 products on views
//! of the operands), the AVX512-BF16 kernels of `gptq_linalg::bf16::head_attention`, and the same
//! blocked attention on rounded operands and faer's f32 products (`head_attention_portable`, as
//! CPUs without the kernels run it; its rounded copies make it slower than plain f32).
//!
//! `cargo bench -p gptq-benches --bench attention`. Throughput is in flops of the causal
//! triangle (`2 · 2 · head_dim · len(len + 1)/2`: scores and weighted values); the softmax (the
//! same for all three) is included.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gptq::HeadAttention;
use gptq::linalg::attention::head_attention_f32;
use gptq::linalg::bf16;
use gptq::testing::core::seeded_matrix;
use ndarray::Array2;

const LEN: usize = 512;
const HEAD_DIM: usize = 64;

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("attention");
    group.sample_size(30);
    println!("bf16 kernels available: {}", bf16::kernels_available());
    let scale = 1.0 / (HEAD_DIM as f32).sqrt();
    let q = seeded_matrix(LEN, HEAD_DIM, 1, scale);
    let k = seeded_matrix(LEN, HEAD_DIM, 2, 1.0);
    let v = seeded_matrix(LEN, HEAD_DIM, 3, 1.0);
    let head = HeadAttention {
        q: q.view(),
        k: k.view(),
        v: v.view(),
        window: None,
    };
    let mut out = Array2::<f32>::zeros((LEN, HEAD_DIM));
    let flops = 2 * 2 * HEAD_DIM * LEN * (LEN + 1) / 2;
    group.throughput(Throughput::Elements(flops as u64));
    group.bench_function("512x64 head, f32 products", |bench| {
        bench.iter(|| head_attention_f32(head, out.view_mut()).unwrap())
    });
    group.bench_function("512x64 head, rounded f32 products", |bench| {
        bench.iter(|| bf16::head_attention_portable(head, out.view_mut()).unwrap())
    });
    group.bench_function("512x64 head, bf16 kernels", |bench| {
        bench.iter(|| bf16::head_attention(head, out.view_mut()).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
