//! The CUDA backend's benchmark, in one run: a 4096×4096 layer (Hessian from 16,384 tokens,
//! 4-bit asymmetric, groups of 128) and a Llama-7B decoder layer's seven linears (q/k/v/o 4096×4096,
//! gate/up 11008×4096, down 4096×11008), each timed with its split (Hessian with the activations'
//! upload, inverse factor, weight upload, column loop, block updates, download, loss) against
//! `scripts/torch_gptq.py` (the same algorithm in PyTorch) run by this command on the same
//! device; the block updates' rate against cuBLAS SGEMM on the same shapes and on a square
//! product, measured in the same run; and, with `--agreement`, CPU against CUDA on 4096×4096 and
//! 11008×4096 for 2/3/4/8 bits with groups, act-order and static groups (codes equal, loss ratio).
//!
//! ```text
//! cargo run --release -p gptq-cuda --example gpu_bench -- [--backend cuda|cpu] [--small]
//!     [--repeats N] [--python PATH | --no-torch] [--agreement]
//! ```
//! `--backend cpu` runs everything on the CPU backend instead (PyTorch on the CPU too), and
//! `--small` shrinks the shapes (hidden 256, intermediate 688, 2048 tokens): together they check
//! this program on a machine without a GPU. Medians of `--repeats` runs (default 3) after one
//! warm-up run, as the PyTorch side does. Both sides solve the same layers (the inputs and
//! weights are written to a temporary folder for `torch_gptq.py --data`, and each token counts
//! as a sample in the Hessian, PyTorch's `2/tokens` scale), so their `tr(D H Dᵀ)` losses compare:
//! in parity mode they agree to 1e-4 (`--backend cpu --small`: ratios 1.0000 and 1.0001).

use std::io::Write;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use gptq_core::testing::seeded_matrix;
use gptq_core::{ActivationBatch, Backend, GroupSize, HessianAccumulator, QuantConfig};
use gptq_cuda::CudaBackend;
use gptq_solver::testing::compare;
use gptq_solver::{CpuBackend, Gptq, LayerTimings, SolveOptions};
use ndarray::{Array2, s};

const BLOCK: usize = 128;
const GROUP: usize = 128;
const BITS: u8 = 4;

/// The CUDA backend's benchmark against PyTorch and cuBLAS, and CPU/CUDA agreement.
#[derive(clap::Parser)]
#[command(name = "gpu_bench", args_override_self = true)]
struct Cli {
    /// The backend to measure (`cpu` runs everything on the CPU backend, PyTorch too).
    #[arg(long, value_enum, default_value_t = Choice::Cuda)]
    backend: Choice,
    /// Small shapes (hidden 256, intermediate 688, 2048 tokens) instead of Llama-7B's.
    #[arg(long)]
    small: bool,
    /// Timed runs after one warm-up run, of which the median is printed (at least 1).
    #[arg(long, value_name = "N", default_value_t = 3)]
    repeats: usize,
    /// The Python that runs `scripts/torch_gptq.py`.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "python3",
        overrides_with = "no_torch"
    )]
    python: String,
    /// Skip the comparison with PyTorch.
    #[arg(long, overrides_with = "python")]
    no_torch: bool,
    /// Also compare CPU against this backend on 2/3/4/8 bits (codes equal, loss ratio).
    #[arg(long)]
    agreement: bool,
}

/// A value of `--backend`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Choice {
    Cuda,
    Cpu,
}

struct Args {
    cuda: bool,
    small: bool,
    repeats: usize,
    python: Option<String>,
    agreement: bool,
}

fn parse_args() -> Args {
    let cli = <Cli as clap::Parser>::parse();
    Args {
        cuda: cli.backend == Choice::Cuda,
        small: cli.small,
        repeats: cli.repeats.max(1),
        python: (!cli.no_torch).then_some(cli.python),
        agreement: cli.agreement,
    }
}

/// The model's widths and the calibration tokens.
#[derive(Clone, Copy)]
struct Sizes {
    hidden: usize,
    intermediate: usize,
    tokens: usize,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Correlated activations: 32 latent features mixed into every column plus noise, with column
/// scales that differ (as `torch_gptq.py decoder` makes them).
fn inputs(tokens: usize, columns: usize, seed: u64) -> Array2<f32> {
    let latent = seeded_matrix(tokens, 32, seed, 1.0);
    let mixing = seeded_matrix(32, columns, seed + 1, 1.0);
    let noise = seeded_matrix(tokens, columns, seed + 2, 0.3);
    let scale = Array2::from_shape_fn((1, columns), |(_, c)| 0.2 + (c % 17) as f32 / 8.0);
    (latent.dot(&mixing) + noise) * &scale
}

fn config() -> QuantConfig {
    QuantConfig::builder()
        .bits(BITS)
        .group_size(GroupSize::Columns(GROUP))
        .symmetric(false)
        .block_size(BLOCK)
        .build()
        .expect("a valid configuration")
}

/// One timed run's split, summed over the linears it solved.
#[derive(Default, Clone, Copy)]
struct Split {
    total: Duration,
    hessian: Duration,
    solve: LayerTimings,
    loss: f64,
}

impl Split {
    fn add(&mut self, t: &LayerTimings) {
        let s = &mut self.solve;
        s.prepare += t.prepare;
        s.inverse_factor += t.inverse_factor;
        s.upload += t.upload;
        s.column_loop += t.column_loop;
        s.block_updates += t.block_updates;
        s.download += t.download;
        s.loss += t.loss;
        s.total += t.total;
    }

    fn print(&self, name: &str) {
        let t = &self.solve;
        println!(
            "  {name:<22} total {:.3} s = Hessian {:.3} (with the activations' upload) + \
             solve {:.3} [prepare {:.3}, inverse factor {:.3}, upload {:.3}, column loop {:.3}, \
             block updates {:.3}, download {:.3}, loss {:.3}]; loss {:.6e}",
            secs(self.total),
            secs(self.hessian),
            secs(t.total),
            secs(t.prepare),
            secs(t.inverse_factor),
            secs(t.upload),
            secs(t.column_loop),
            secs(t.block_updates),
            secs(t.download),
            secs(t.loss),
            self.loss
        );
    }
}

/// The run with the median total of `repeats` (after one warm-up run).
fn median_run(
    repeats: usize,
    mut once: impl FnMut() -> Result<Split, String>,
) -> Result<Split, String> {
    once()?;
    let mut runs = (0..repeats)
        .map(|_| once())
        .collect::<Result<Vec<_>, _>>()?;
    runs.sort_by_key(|r| r.total);
    Ok(runs[runs.len() / 2])
}

/// Accumulates `x` in batches of 2048 tokens, as a pipeline streams them, each token counted as
/// a sample (`H = (2/tokens) Σ x xᵀ`, the PyTorch side's scale, so that losses compare).
fn hessian<B: Backend>(gptq: &Gptq<&B>, x: &Array2<f32>) -> Result<B::Hessian, String> {
    let mut acc = gptq.accumulator(x.ncols()).map_err(|e| e.to_string())?;
    for start in (0..x.nrows()).step_by(2048) {
        let end = (start + 2048).min(x.nrows());
        acc.add_batch(&ActivationBatch::new(x.slice(s![start..end, ..])).sequences(end - start))
            .map_err(|e| e.to_string())?;
    }
    acc.finish().map_err(|e| e.to_string())
}

/// Hessians of `groups` (one input each) and solves of their weights, timed as one run.
fn decoder_run<B: Backend>(
    backend: &B,
    options: SolveOptions,
    groups: &Groups,
) -> Result<Split, String> {
    let gptq = Gptq::new(backend, config()).with_options(options);
    let mut split = Split::default();
    let start = Instant::now();
    for (x, weights) in groups {
        let t = Instant::now();
        let h = hessian(&gptq, x)?;
        split.hessian += t.elapsed();
        for w in weights {
            let layer = gptq.quantize(w.view(), &h).map_err(|e| e.to_string())?;
            split.add(&layer.report.timings);
            split.loss += layer.report.loss.unwrap_or(f64::NAN);
        }
    }
    split.total = start.elapsed();
    Ok(split)
}

/// What `torch_gptq.py` printed: its median seconds, its `tr(D H Dᵀ)` loss, and the line.
fn torch(args: &Args, command: &[String]) -> Option<(f64, f64, String)> {
    let python = args.python.as_ref()?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/torch_gptq.py");
    let device = if args.cuda { "cuda" } else { "cpu" };
    let repeats = args.repeats.to_string();
    let output = Command::new(python)
        .arg(script)
        .args(command)
        .args(["--device", device, "--repeats", &repeats])
        .output();
    match output {
        Ok(out) if out.status.success() => {
            let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let value: serde_json::Value = match serde_json::from_str(&line) {
                Ok(v) => v,
                Err(e) => {
                    println!("  PyTorch printed no result ({e}): {line}");
                    return None;
                }
            };
            let seconds = value["median_seconds"].as_f64()?;
            let loss = value["quadratic_loss"].as_f64().unwrap_or(f64::NAN);
            Some((seconds, loss, line))
        }
        Ok(out) => {
            println!(
                "  PyTorch failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
            None
        }
        Err(e) => {
            println!("  PyTorch could not start ({python}: {e})");
            None
        }
    }
}

/// The linears' inputs and weights, grouped by shared input.
type Groups = [(Array2<f32>, Vec<Array2<f32>>)];

/// Writes each group's input as `xG.f32` and weights as `wG_J.f32` (raw little-endian f32,
/// row-major) for `torch_gptq.py --data`, so that both sides solve the same layers.
fn write_data(dir: &Path, groups: &Groups) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let write = |name: String, m: &Array2<f32>| -> std::io::Result<()> {
        let mut out = std::io::BufWriter::new(std::fs::File::create(dir.join(name))?);
        for v in m.iter() {
            out.write_all(&v.to_le_bytes())?;
        }
        out.flush()
    };
    for (g, (x, weights)) in groups.iter().enumerate() {
        write(format!("x{g}.f32"), x)?;
        for (j, w) in weights.iter().enumerate() {
            write(format!("w{g}_{j}.f32"), w)?;
        }
    }
    Ok(())
}

fn compare_with_torch(args: &Args, ours: &[(&str, Split)], command: &[String], groups: &Groups) {
    if args.python.is_none() {
        return;
    }
    let dir = match tempfile::Builder::new().prefix("gptq-bench-").tempdir() {
        Ok(dir) => dir,
        Err(e) => {
            println!("  cannot make a temporary folder for PyTorch's layers: {e}");
            return;
        }
    };
    if let Err(e) = write_data(dir.path(), groups) {
        println!(
            "  cannot write the layers for PyTorch to {}: {e}",
            dir.path().display()
        );
        return;
    }
    let command = [
        command,
        &["--data".to_string(), dir.path().display().to_string()],
    ]
    .concat();
    let result = torch(args, &command);
    let _ = dir.close();
    if let Some((seconds, loss, line)) = result {
        println!("  PyTorch: {line}");
        for (name, split) in ours {
            println!(
                "  PyTorch {seconds:.3} s / gptq-rs {name} {:.3} s = {:.2}× faster; loss \
                 tr(DHDᵀ) gptq-rs / PyTorch = {:.4}",
                secs(split.total),
                seconds / secs(split.total),
                split.loss / loss
            );
        }
    }
}

/// The `torch_gptq.py` command line for `sizes`, with this benchmark's grid.
fn torch_command(subcommand: &str, sizes: &[(&str, usize)]) -> Vec<String> {
    let grid = [("--bits", BITS as usize), ("--group-size", GROUP)];
    let mut out = vec![subcommand.to_string()];
    for (flag, value) in sizes.iter().chain(&grid) {
        out.push(flag.to_string());
        out.push(value.to_string());
    }
    out.push("--asym".into());
    out
}

/// `groups` solved in the default mode and in parity mode (the reference's algorithm), each the
/// median of `args.repeats` runs, printed.
fn both_modes<B: Backend>(
    backend: &B,
    args: &Args,
    groups: &Groups,
) -> Result<Vec<(&'static str, Split)>, String> {
    let mut ours = Vec::new();
    for (name, options) in [
        ("default", SolveOptions::default()),
        ("parity", SolveOptions::parity()),
    ] {
        let split = median_run(args.repeats, || decoder_run(backend, options, groups))?;
        split.print(name);
        ours.push((name, split));
    }
    Ok(ours)
}

/// The one-layer benchmark, and the block updates against SGEMM on their shapes.
fn layer<B: Backend>(
    backend: &B,
    cuda: Option<&CudaBackend>,
    args: &Args,
    n: Sizes,
) -> Result<(), String> {
    let (rows, columns) = (n.hidden, n.hidden);
    println!(
        "one layer {rows}×{columns}, Hessian from {} tokens, {BITS}-bit, groups of {GROUP}:",
        n.tokens
    );
    let groups = vec![(
        inputs(n.tokens, columns, 10),
        vec![seeded_matrix(rows, columns, 11, 0.02)],
    )];
    let ours = both_modes(backend, args, &groups)?;
    // The lazy updates: after the block ending at `end`, [rows, 128] · [128, columns - end].
    let shapes: Vec<(usize, usize, usize)> = (BLOCK..columns)
        .step_by(BLOCK)
        .map(|end| (rows, columns - end, BLOCK))
        .collect();
    let flops: f64 = shapes
        .iter()
        .map(|&(m, c, k)| 2.0 * (m * c * k) as f64)
        .sum();
    let updates = ours[0].1.solve.block_updates;
    println!(
        "  block updates: {:.1} GFLOP in {:.4} s = {:.0} GFLOP/s",
        flops / 1e9,
        secs(updates),
        flops / secs(updates) / 1e9
    );
    if let Some(cuda) = cuda {
        let mut same_shapes = Duration::ZERO;
        for &(m, c, k) in &shapes {
            same_shapes += cuda
                .time_sgemm(m, c, k, args.repeats)
                .map_err(|e| e.to_string())?;
        }
        let square = cuda
            .time_sgemm(columns, columns, columns, args.repeats)
            .map_err(|e| e.to_string())?;
        let square_rate = 2.0 * (columns as f64).powi(3) / secs(square) / 1e9;
        println!(
            "  cuBLAS SGEMM, same run: the same {} products alone {:.4} s ({:.0} GFLOP/s): block \
             updates at {:.0}% of it; {columns}³ at {square_rate:.0} GFLOP/s: block updates at \
             {:.0}% of that rate",
            shapes.len(),
            secs(same_shapes),
            flops / secs(same_shapes) / 1e9,
            100.0 * secs(same_shapes) / secs(updates),
            100.0 * flops / secs(updates) / 1e9 / square_rate
        );
    }
    let command = torch_command(
        "layer",
        &[
            ("--rows", rows),
            ("--cols", columns),
            ("--tokens", n.tokens),
        ],
    );
    compare_with_torch(args, &ours, &command, &groups);
    Ok(())
}

/// A Llama decoder layer's seven linears.
fn decoder<B: Backend>(backend: &B, args: &Args, n: Sizes) -> Result<(), String> {
    let (h, i) = (n.hidden, n.intermediate);
    println!(
        "decoder layer (q/k/v/o {h}×{h}, gate/up {i}×{h}, down {h}×{i}), {} tokens, {BITS}-bit, \
         groups of {GROUP}:",
        n.tokens
    );
    let weights = |count: usize, rows: usize, columns: usize, seed: u64| -> Vec<Array2<f32>> {
        (0..count)
            .map(|k| seeded_matrix(rows, columns, seed + k as u64, 0.02))
            .collect()
    };
    let groups = vec![
        (inputs(n.tokens, h, 20), weights(3, h, h, 30)),
        (inputs(n.tokens, h, 21), weights(1, h, h, 40)),
        (inputs(n.tokens, h, 22), weights(2, i, h, 50)),
        (inputs(n.tokens, i, 23), weights(1, h, i, 60)),
    ];
    let ours = both_modes(backend, args, &groups)?;
    let command = torch_command(
        "decoder",
        &[
            ("--hidden", h),
            ("--intermediate", i),
            ("--tokens", n.tokens),
        ],
    );
    compare_with_torch(args, &ours, &command, &groups);
    Ok(())
}

/// CPU against `backend` on the same Hessians: codes equal and loss ratio per configuration.
/// Returns how many configurations missed the bounds (≥ 99.5% codes, loss within 0.1%).
fn agreement<B: Backend>(backend: &B, n: Sizes) -> Result<usize, String> {
    let cpu = CpuBackend::new();
    let mut misses = 0;
    for (rows, columns) in [(n.hidden, n.hidden), (n.intermediate, n.hidden)] {
        println!("agreement, CPU against this backend, {rows}×{columns}:");
        let x = inputs(n.tokens, columns, 70);
        let weight = seeded_matrix(rows, columns, 71, 0.02);
        let on_cpu = hessian(&Gptq::new(&cpu, config()), &x)?;
        let host = cpu.hessian_to_host(&on_cpu).map_err(|e| e.to_string())?;
        let here = backend
            .hessian_from_host(host.view())
            .map_err(|e| e.to_string())?;
        for bits in [2u8, 3, 4, 8] {
            for (mode, act_order, static_groups) in [
                ("g128", false, false),
                ("g128 act-order", true, false),
                ("g128 act-order static", true, true),
            ] {
                let config = QuantConfig::builder()
                    .bits(bits)
                    .group_size(GroupSize::Columns(GROUP))
                    .act_order(act_order)
                    .static_groups(static_groups)
                    .build()
                    .map_err(|e| e.to_string())?;
                let a = Gptq::new(&cpu, config.clone())
                    .quantize(weight.view(), &on_cpu)
                    .map_err(|e| e.to_string())?;
                let b = Gptq::new(backend, config)
                    .quantize(weight.view(), &here)
                    .map_err(|e| e.to_string())?;
                let (same, ratio) = compare(
                    &b.tensor,
                    b.report.loss.unwrap_or(f64::NAN),
                    &a.tensor,
                    a.report.loss.unwrap_or(f64::NAN),
                );
                let ok = same >= 0.995 && (ratio - 1.0).abs() <= 1e-3;
                misses += usize::from(!ok);
                println!(
                    "  {bits}-bit {mode:<22} codes equal {:.3}%, loss ratio {ratio:.6} {}",
                    100.0 * same,
                    if ok { "ok" } else { "OUTSIDE the bounds" }
                );
            }
        }
    }
    Ok(misses)
}

fn bench<B: Backend>(backend: &B, cuda: Option<&CudaBackend>, args: &Args) -> Result<(), String> {
    let sizes = if args.small {
        Sizes {
            hidden: 256,
            intermediate: 688,
            tokens: 2048,
        }
    } else {
        Sizes {
            hidden: 4096,
            intermediate: 11008,
            tokens: 16384,
        }
    };
    layer(backend, cuda, args, sizes)?;
    decoder(backend, args, sizes)?;
    if args.agreement {
        let misses = agreement(backend, sizes)?;
        if misses > 0 {
            return Err(format!(
                "{misses} configurations outside the agreement bounds"
            ));
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = parse_args();
    let result = if args.cuda {
        let cuda = match CudaBackend::new(0) {
            Ok(cuda) => cuda,
            Err(e) => {
                eprintln!("no GPU to measure ({e}); `--backend cpu --small` checks this program");
                return ExitCode::from(2);
            }
        };
        let t = Instant::now();
        if let Err(e) = cuda.warm_up() {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
        println!(
            "{} (compute capability {:?}); kernels compiled in {:.2} s",
            cuda.device_name(),
            cuda.compute_capability(),
            t.elapsed().as_secs_f64()
        );
        bench(&cuda, Some(&cuda), &args)
    } else {
        let cpu = CpuBackend::new();
        println!("CPU backend, {} threads", cpu.threads());
        bench(&cpu, None, &args)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gpu_bench: {e}");
            ExitCode::FAILURE
        }
    }
}
