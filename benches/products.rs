//! The forward products of a calibration pass, `x · wᵀ` for SmolLM2-135M's linears on a batch of
//! 8 × 512 tokens: faer's f32 product against the bf16 products of `gptq_linalg::bf16` (the
//! AVX512-BF16 kernels where the CPU has them, rounded f32 products elsewhere) and the int8
//! products of `gptq_linalg::int8` on a 4-bit, group-128 weight (the AVX512-VNNI kernels where
//! the CPU has them), in one run.
//!
//! `cargo bench -p gptq-benches --bench products`. Throughput is in flops (`2·m·k·n`).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use faer::{Accum, Par};
use gptq::QuantizedTensor;
use gptq::linalg::{bf16, int8};
use gptq::testing::core::seeded_matrix;
use ndarray::Array2;

/// (name, input features, output features) of the linears.
const LINEARS: [(&str, usize, usize); 3] = [
    ("q/o 576->576", 576, 576),
    ("gate/up 576->1536", 576, 1536),
    ("down 1536->576", 1536, 576),
];
const TOKENS: usize = 8 * 512;

fn bench(c: &mut Criterion) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let par = Par::rayon(threads);
    let mut group = c.benchmark_group("products");
    group.sample_size(20);
    println!(
        "bf16 kernels available: {}, int8 kernels available: {}",
        bf16::kernels_available(),
        int8::kernels_available()
    );
    for (name, k, n) in LINEARS {
        let x = seeded_matrix(TOKENS, k, 1, 1.0);
        let w = seeded_matrix(n, k, 2, 0.05);
        let mut out = Array2::<f32>::zeros((TOKENS, n));
        group.throughput(Throughput::Elements(2 * (TOKENS * k * n) as u64));
        group.bench_function(format!("{name} f32"), |bench| {
            bench.iter(|| {
                faer::linalg::matmul::matmul(
                    faer_mut(&mut out),
                    Accum::Replace,
                    faer::MatRef::from_row_major_slice(x.as_slice().unwrap(), TOKENS, k),
                    faer::MatRef::from_row_major_slice(w.as_slice().unwrap(), n, k).transpose(),
                    1.0f32,
                    par,
                )
            })
        });
        group.bench_function(format!("{name} bf16"), |bench| {
            bench.iter(|| bf16::x_wt(x.view(), w.view(), out.view_mut(), false, par).unwrap())
        });
        let quantized = four_bit(n, k);
        group.bench_function(format!("{name} int8"), |bench| {
            bench.iter(|| int8::x_qwt(x.view(), &quantized, out.view_mut(), false, par).unwrap())
        });
    }
    group.finish();
}

/// A 4-bit `[n, k]` weight in groups of 128 columns, codes and zero points spread over the grid.
fn four_bit(n: usize, k: usize) -> QuantizedTensor {
    let groups = k.div_ceil(128);
    let codes = Array2::from_shape_fn((n, k), |(r, c)| ((r * 7 + c * 3) % 16) as u8);
    let scales = Array2::from_elem((groups, n), 0.01f32);
    let zeros = Array2::from_shape_fn((groups, n), |(g, r)| ((g + r) % 16) as u16);
    let g_idx = (0..k).map(|c| (c / 128) as u32).collect();
    QuantizedTensor::new(4, codes, scales, zeros, g_idx, None).unwrap()
}

fn faer_mut(out: &mut Array2<f32>) -> faer::MatMut<'_, f32> {
    let (rows, cols) = out.dim();
    faer::MatMut::from_row_major_slice_mut(out.as_slice_mut().unwrap(), rows, cols)
}

criterion_group!(benches, bench);
criterion_main!(benches);
