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

use gptq_core::Backend;
use gptq_solver::CpuBackend;
use gptq_solver::parity::{ReferenceCase, Thresholds, check_case, list_cases};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Choice {
    Cpu,
    Cuda,
}

struct Args {
    dir: PathBuf,
    backend: Choice,
    threads: Option<usize>,
    device: usize,
}

fn number(flag: &str, value: Option<String>) -> Result<usize, String> {
    let value = value.ok_or(format!("{flag} needs a number"))?;
    value
        .parse()
        .map_err(|_| format!("{flag} {value:?} is not a number"))
}

fn parse_args() -> Result<Args, String> {
    let mut dir = None;
    let mut backend = Choice::Cpu;
    let mut threads = None;
    let mut device = 0;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--backend" => {
                backend = match args.next().as_deref() {
                    Some("cpu") => Choice::Cpu,
                    Some("cuda") if cfg!(feature = "cuda") => Choice::Cuda,
                    Some("cuda") => {
                        return Err("this build has no CUDA backend: rebuild with \
                                    `--features cuda` (-p gptq-solver)"
                            .into());
                    }
                    Some(other) => {
                        return Err(format!("unknown backend {other:?}: use cpu or cuda"));
                    }
                    None => return Err("--backend needs a value: cpu or cuda".into()),
                }
            }
            "--threads" => threads = Some(number("--threads", args.next())?),
            "--device" => device = number("--device", args.next())?,
            "-h" | "--help" => return Err(String::new()),
            _ if dir.is_none() && !arg.starts_with('-') => dir = Some(PathBuf::from(arg)),
            _ => return Err(format!("unexpected argument {arg:?}")),
        }
    }
    if backend == Choice::Cuda && threads.is_some() {
        return Err("--threads is for the cpu backend".into());
    }
    Ok(Args {
        dir: dir.ok_or("missing the fixture folder")?,
        backend,
        threads,
        device,
    })
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
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("error: {message}");
            }
            eprintln!(
                "usage: reference_parity DIR [--backend cpu|cuda] [--threads N] [--device N]"
            );
            return ExitCode::from(2);
        }
    };
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
