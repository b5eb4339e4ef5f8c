//! The whole solve (inverse factor + blocked loop) against its own inverse-factor step plus one
//! `n³` GEMM, in one run. `cargo bench -p gptq-benches --bench solve`.

use criterion::{Criterion, criterion_group, criterion_main};
use gptq::{
    Backend, CpuBackend, DampingPolicy, FactorRequest, Gptq, GroupSize, QuantConfig, SolveOptions,
};
use gptq_benches::{LLAMA_ATTENTION, SMOLLM_DOWN, gemm, gemm_operands, hessian, weight};

fn bench(c: &mut Criterion) {
    let backend = CpuBackend::new();
    let par = faer::Par::rayon(backend.threads());
    let config = QuantConfig::builder()
        .bits(4)
        .group_size(GroupSize::Columns(128))
        .build()
        .unwrap();
    let mut group = c.benchmark_group("solve");
    group.sample_size(10);
    let (a, b, mut out) = gemm_operands(LLAMA_ATTENTION.columns);
    group.bench_function("faer f32 gemm 4096^3", |bench| {
        bench.iter(|| gemm(&a, &b, &mut out, par))
    });
    for shape in [LLAMA_ATTENTION, SMOLLM_DOWN] {
        let h = hessian(&backend, shape, Default::default());
        let w = weight(shape);
        let request = FactorRequest {
            dead_columns: &[],
            permutation: None,
            damping: DampingPolicy::default(),
        };
        group.bench_function(format!("{} inverse factor", shape.name), |bench| {
            bench.iter(|| backend.inverse_factor(&h, &request).unwrap())
        });
        for (label, options) in [
            (
                "default (range search)",
                SolveOptions {
                    compute_loss: false,
                    ..SolveOptions::default()
                },
            ),
            (
                "parity",
                SolveOptions {
                    compute_loss: false,
                    ..SolveOptions::parity()
                },
            ),
            ("default + loss", SolveOptions::default()),
        ] {
            let gptq = Gptq::new(&backend, config.clone()).with_options(options);
            group.bench_function(
                format!("{} solve 4-bit g128 {label}", shape.name),
                |bench| bench.iter(|| gptq.quantize(w.view(), &h).unwrap()),
            );
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
