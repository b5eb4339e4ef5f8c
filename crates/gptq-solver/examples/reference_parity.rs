//! Checks the solver against a folder of reference fixtures, one line per case.
//!
//! ```text
//! cargo run --release -p gptq-solver --example reference_parity -- ../shared/fixtures/gptq-reference
//! cargo run --release -p gptq-solver --example reference_parity -- DIR --backend cpu --threads 1
//! cargo run --release -p gptq-solver --features cuda --example reference_parity -- DIR --backend cuda --device 0
//! ```
//! Exits with status 1 if any case fails, 2 on bad arguments, unreadable fixtures or a backend
//! that cannot start.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use gptq_core::Backend;
use gptq_solver::CpuBackend;
use gptq_solver::parity::{ReferenceCase, Thresholds, check_case, list_cases};

/// A value of `--backend`.
#[derive(Debug, Clone, Copy, PartialEq, clap::ValueEnum)]
enum Choice {
    Cpu,
    Cuda,
}

/// Checks the solver against a folder of reference fixtures, one line per case.
#[derive(Parser)]
#[command(name = "reference_parity", args_override_self = true)]
struct Args {
    /// The folder of NAME.json + NAME.safetensors fixtures.
    dir: PathBuf,
    /// The backend to check (`cuda` needs a build with `--features cuda`).
    #[arg(long, value_enum, default_value_t = Choice::Cpu)]
    backend: Choice,
    /// Threads of the cpu backend (default: all cores).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// The GPU of the cuda backend.
    #[arg(long, value_name = "N", default_value_t = 0)]
    device: usize,
}

/// The arguments, or clap's error (status 2) for the combinations clap cannot express.
fn parse_args() -> Args {
    let args = Args::parse();
    let invalid = |message: &str| {
        Args::command()
            .error(clap::error::ErrorKind::ArgumentConflict, message)
            .exit()
    };
    if args.backend == Choice::Cuda && !cfg!(feature = "cuda") {
        invalid("this build has no CUDA backend: rebuild with `--features cuda` (-p gptq-solver)");
    }
    if args.backend == Choice::Cuda && args.threads.is_some() {
        invalid("--threads is for the cpu backend");
    }
    args
}

/// Runs every case through `backend`; returns how many failed.
fn run<B: Backend>(backend: &B, cases: &[PathBuf]) -> usize {
    let thresholds = Thresholds::default();
    let mut failed = 0;
    for path in cases {
        let outcome =
            ReferenceCase::load(path).and_then(|case| check_case(backend, &case, &thresholds));
        match outcome {
            Ok(outcome) => {
                println!("{}", outcome.summary());
                failed += usize::from(!outcome.passed());
            }
            Err(e) => {
                println!(
                    "{:<48} FAIL: {e}",
                    path.file_stem().unwrap_or_default().to_string_lossy()
                );
                failed += 1;
            }
        }
    }
    failed
}

fn cases(dir: &Path) -> Result<Vec<PathBuf>, String> {
    match list_cases(dir) {
        Ok(cases) if !cases.is_empty() => Ok(cases),
        Ok(_) => Err(format!(
            "no NAME.json + NAME.safetensors fixtures in {}",
            dir.display()
        )),
        Err(e) => Err(e.to_string()),
    }
}

fn main() -> ExitCode {
    let args = parse_args();
    let cases = match cases(&args.dir) {
        Ok(cases) => cases,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let (failed, label) = match args.backend {
        Choice::Cpu => {
            let backend = args
                .threads
                .map_or_else(CpuBackend::new, CpuBackend::with_threads);
            (
                run(&backend, &cases),
                format!("backend cpu, {} threads", backend.threads()),
            )
        }
        Choice::Cuda => match run_cuda(args.device, &cases) {
            Ok(result) => result,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
    };
    println!(
        "{} of {} cases passed ({label})",
        cases.len() - failed,
        cases.len()
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(feature = "cuda")]
fn run_cuda(device: usize, cases: &[PathBuf]) -> Result<(usize, String), gptq_core::GptqError> {
    let backend = gptq_cuda::CudaBackend::new(device)?;
    let label = format!("backend cuda, GPU {device}: {}", backend.device_name());
    Ok((run(&backend, cases), label))
}

#[cfg(not(feature = "cuda"))]
fn run_cuda(_device: usize, _cases: &[PathBuf]) -> Result<(usize, String), String> {
    Err("this build has no CUDA backend".into())
}
