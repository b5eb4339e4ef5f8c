//! Checks the solver against a folder of reference fixtures, one line per case.
//!
//! ```text
//! cargo run --release -p gptq-solver --example reference_parity -- ../shared/fixtures/gptq-reference
//! cargo run --release -p gptq-solver --example reference_parity -- DIR --backend cpu --threads 1
//! ```
//! Exits with status 1 if any case fails, 2 on bad arguments or unreadable fixtures.

use std::path::PathBuf;
use std::process::ExitCode;

use gptq_solver::CpuBackend;
use gptq_solver::parity::{ReferenceCase, Thresholds, check_case, list_cases};

struct Args {
    dir: PathBuf,
    threads: Option<usize>,
}

fn parse_args() -> Result<Args, String> {
    let mut dir = None;
    let mut threads = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--backend" => match args.next().as_deref() {
                Some("cpu") => {}
                Some(other) => {
                    return Err(format!(
                        "backend {other:?} is not available in this build: use --backend cpu \
                         (the CUDA backend comes with the gptq-cuda crate)"
                    ));
                }
                None => return Err("--backend needs a value: cpu".into()),
            },
            "--threads" => {
                let value = args.next().ok_or("--threads needs a number")?;
                threads = Some(
                    value
                        .parse()
                        .map_err(|_| format!("--threads {value:?} is not a number"))?,
                );
            }
            "-h" | "--help" => return Err(String::new()),
            _ if dir.is_none() && !arg.starts_with('-') => dir = Some(PathBuf::from(arg)),
            _ => return Err(format!("unexpected argument {arg:?}")),
        }
    }
    Ok(Args {
        dir: dir.ok_or("missing the fixture folder")?,
        threads,
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("error: {message}");
            }
            eprintln!("usage: reference_parity DIR [--backend cpu] [--threads N]");
            return ExitCode::from(2);
        }
    };
    let backend = args
        .threads
        .map_or_else(CpuBackend::new, CpuBackend::with_threads);
    let cases = match list_cases(&args.dir) {
        Ok(cases) if !cases.is_empty() => cases,
        Ok(_) => {
            eprintln!(
                "error: no NAME.json + NAME.safetensors fixtures in {}",
                args.dir.display()
            );
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let thresholds = Thresholds::default();
    let mut failed = 0;
    for path in &cases {
        let outcome =
            ReferenceCase::load(path).and_then(|case| check_case(&backend, &case, &thresholds));
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
    println!(
        "{} of {} cases passed (backend cpu, {} threads)",
        cases.len() - failed,
        cases.len(),
        backend.threads()
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
