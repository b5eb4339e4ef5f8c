//! Hessian accumulation against faer's f32 GEMM, in one run.
//!
//! `cargo bench -p gptq-benches --bench hessian`. Throughput is in flops: `2·n³` for the GEMM and
//! `2·n²·tokens` for the Hessian (the flops of the full product XᵀX; the accumulator computes
//! only its lower triangle, so its useful rate is half the reported one). `bf16` rounds the
//! activations to bf16 and runs the AVX512-BF16 kernels where the CPU has them.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gptq::{
    ActivationBatch, Backend, CpuBackend, HessianAccumulator, HessianOptions, HessianPrecision,
};
use gptq_benches::{LLAMA_ATTENTION, SMOLLM_DOWN, activations, gemm, gemm_operands};

fn bench(c: &mut Criterion) {
    let backend = CpuBackend::new();
    let par = faer::Par::rayon(backend.threads());
    let mut group = c.benchmark_group("hessian");
    group.sample_size(10);
    let n = LLAMA_ATTENTION.columns;
    let (a, b, mut out) = gemm_operands(n);
    group.throughput(Throughput::Elements(2 * (n as u64).pow(3)));
    group.bench_function("faer f32 gemm 4096^3", |bench| {
        bench.iter(|| gemm(&a, &b, &mut out, par))
    });
    for shape in [LLAMA_ATTENTION, SMOLLM_DOWN] {
        let x = activations(shape);
        group.throughput(Throughput::Elements(
            2 * (shape.columns as u64).pow(2) * shape.tokens as u64,
        ));
        for (label, precision) in [
            ("f64", HessianPrecision::F64),
            ("f32", HessianPrecision::F32),
            ("bf16", HessianPrecision::Bf16),
        ] {
            let name = format!(
                "accumulate {} cols x {} tokens {label}",
                shape.columns, shape.tokens
            );
            group.bench_function(name, |bench| {
                bench.iter(|| {
                    let mut acc = backend
                        .accumulator(shape.columns, HessianOptions { precision })
                        .unwrap();
                    acc.add_batch(&ActivationBatch::new(x.view())).unwrap();
                    acc.finish().unwrap()
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
