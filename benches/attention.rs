//! One head's causal attention (512 tokens, head_dim 64: a SmolLM2-135M head on one calibration
//! sequence), on one thread as the forward pass runs it per (sequence, head) task: the
//! AVX512-BF16 kernels of `gptq_linalg::bf16::head_attention` against the same blocked attention
//! on faer's f32 products (`head_attention_portable`: operands rounded to bf16, then f32
//! products, as CPUs without the kernels run it; its rounded copies make it slower than the
//! model's plain f32 attention), in one run.
//!
//! `cargo bench -p gptq-benches --bench attention`. Throughput is in flops of the causal
//! triangle (`2 · 2 · head_dim · len(len + 1)/2`: scores and weighted values). The softmax is
//! left out (an identity in its place), so that the two ways of computing the products are
//! compared, not the caller's exponentials.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gptq::HeadAttention;
use gptq::linalg::bf16;
use gptq::testing::core::seeded_matrix;
use ndarray::Array2;

const LEN: usize = 512;
const HEAD_DIM: usize = 64;

/// In place of the softmax: the bench times attention's products, conversions and masking, not
/// the caller's exponentials (the same for both sides).
fn no_softmax(_: &mut [f32]) {}

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
    group.bench_function("512x64 head, rounded f32 products", |bench| {
        bench.iter(|| bf16::head_attention_portable(head, &no_softmax, out.view_mut()).unwrap())
    });
    group.bench_function("512x64 head, bf16 kernels", |bench| {
        bench.iter(|| bf16::head_attention(head, &no_softmax, out.view_mut()).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
