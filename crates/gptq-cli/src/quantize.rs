//! `gptq quantize`: a model directory in, a GPTQ checkpoint out.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::ValueEnum;
use gptq_core::{Backend, GroupSize, HessianPrecision, QuantConfig};
use gptq_model::{Checkpoint, Compute, ProductPrecision};
use gptq_pipeline::{
    CalibrationSource, Event, MemoryEstimate, OutputReservation, PipelineOptions, Progress,
    ResumeLock, RunReport, SystemMemory, Totals, WriteOptions, check_free_space, checkpoint_bytes,
    clean_interrupted_runs, default_resume_dir, holds_saved_run, peak_memory_bytes,
    quantization_config, quantize_model, remove_saved_run, run_name, saved_run_bytes,
    saved_run_size, write_checkpoint,
};
use gptq_quant::CheckpointFormat;
use gptq_solver::{CpuBackend, SolveOptions};

use crate::progress::Bars;
use crate::{CliResult, thread_pool};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Device {
    Cpu,
    Cuda,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Precision {
    /// bf16 where the CPU has AVX512-BF16, f32 otherwise.
    Auto,
    /// f32 products and sums.
    F32,
    /// f64 products and sums.
    F64,
    /// Operands rounded to bf16, products summed in f32 (fast on CPUs with AVX512-BF16).
    Bf16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Products {
    /// int8 where the CPU has AVX512-VNNI and AVX512-BF16, f32 otherwise.
    Auto,
    /// f32 operands and sums.
    F32,
    /// Operands rounded to bf16, sums in f32 (fast on CPUs with AVX512-BF16).
    Bf16,
    /// Quantized linears: their integer codes times activations rounded to 8 bits per block
    /// of 128 inputs, exact integer sums (fast on CPUs with AVX512-VNNI); the rest as bf16.
    Int8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// checkpoint_format "gptq" (zero points stored minus one; what most loaders expect).
    Gptq,
    /// checkpoint_format "gptq_v2" (zero points stored as they are).
    #[value(name = "gptq_v2")]
    GptqV2,
}

// Numeric flags take `allow_negative_numbers` so that `--damp -0.1` is refused for its value,
// not as an unknown flag `-0`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Hugging Face model directory (config.json, model.safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// Calibration data: a text file, a .jsonl of {"text": ...} lines, or a .json of token-id
    /// windows ({"windows": [[...], ...]}).
    #[arg(long)]
    calib: PathBuf,
    /// Output directory (must not exist unless --overwrite).
    #[arg(long)]
    out: PathBuf,
    /// Bits per weight (2, 3, 4 or 8 can be packed).
    #[arg(long, default_value_t = 4, allow_negative_numbers = true)]
    bits: u8,
    /// Input columns per group; -1 for one group per output row.
    #[arg(long, default_value_t = 128, allow_hyphen_values = true)]
    group_size: i64,
    /// Symmetric grid (the default).
    #[arg(long, conflicts_with = "asym")]
    sym: bool,
    /// Asymmetric grid (writes checkpoint_format gptq_v2 unless --format gptq).
    #[arg(long)]
    asym: bool,
    /// Quantize columns in order of decreasing Hessian diagonal (desc_act).
    #[arg(long)]
    act_order: bool,
    /// Fit every group's grid before the solve.
    #[arg(long)]
    static_groups: bool,
    /// Damping, as a fraction in [0, 1) of the mean Hessian diagonal (0.01 is 1%). Raised
    /// tenfold, with a warning, for a linear whose Hessian is singular at this damping.
    #[arg(long, default_value_t = 0.01, allow_negative_numbers = true)]
    damp: f64,
    /// Calibration sequences.
    #[arg(long, default_value_t = 128, allow_negative_numbers = true)]
    nsamples: usize,
    /// Tokens per calibration sequence.
    #[arg(long, default_value_t = 512, allow_negative_numbers = true)]
    seqlen: usize,
    /// Seed of the calibration windows drawn from a text file.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    seed: u64,
    /// Threads (0 = all cores).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    threads: usize,
    /// Quantize every linear of a layer against the full-precision layer's inputs, instead of
    /// q/k/v, then o, then gate/up, then down.
    #[arg(long)]
    no_true_sequential: bool,
    /// Reproduce the reference implementation exactly (no range search, its grid-fitting quirks).
    #[arg(long)]
    parity: bool,
    /// Checkpoint format (default: gptq for --sym, gptq_v2 for --asym).
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Where to compute: Hessians, solves and the linears' products of the calibration forward
    /// passes (attention and norms stay on the CPU).
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    device: Device,
    /// Precision of the Hessian products: f32 (the reference's, twice as fast as f64), f64, or
    /// bf16-rounded activations summed in f32 (twice as fast again on CPUs with AVX512-BF16);
    /// auto takes bf16 where the CPU has its kernels and f32 elsewhere.
    #[arg(long, value_enum, default_value_t = Precision::Auto)]
    hessian: Precision,
    /// Precision of the products in the calibration forward passes (CPU): f32; bf16-rounded
    /// operands summed in f32 for the linears and attention (twice as fast on CPUs with
    /// AVX512-BF16); or int8, which multiplies the quantized linears' codes by activations
    /// rounded to 8 bits per 128 inputs (twice as fast again on CPUs with AVX512-VNNI) and
    /// computes the rest as bf16. auto takes int8 where the CPU has AVX512-VNNI and AVX512-BF16
    /// and f32 elsewhere.
    #[arg(long, value_enum, default_value_t = Products::Auto)]
    products: Products,
    /// Calibration sequences per forward batch.
    #[arg(long, default_value_t = 8, allow_negative_numbers = true)]
    batch: usize,
    /// Largest safetensors shard, as transformers writes it: 5GB (10^9 bytes), 500MB,
    /// 4GiB (2^30)... Larger outputs are sharded with an index.
    #[arg(long, value_name = "SIZE", default_value = "5GB", value_parser = parse_size)]
    max_shard_size: u64,
    /// Largest safetensors shard in MiB (instead of --max-shard-size).
    #[arg(long, conflicts_with = "max_shard_size", allow_negative_numbers = true)]
    max_shard_mib: Option<u64>,
    /// Replace the output directory if it exists.
    #[arg(long)]
    overwrite: bool,
    /// Save the run after each layer in .NAME.resume beside --out, and continue from the state
    /// an interrupted run with the same model, calibration and settings saved there.
    #[arg(long)]
    resume: bool,
    /// Run even when the predicted memory need exceeds all of the machine's memory and swap.
    #[arg(long)]
    no_memory_check: bool,
    /// Write a JSON report (per-module loss, damping, time; totals; peak memory) here.
    #[arg(long)]
    report: Option<PathBuf>,
}

impl Args {
    /// `--hessian` and `--products` with `auto` resolved for the CPU this runs on (a GPU computes
    /// both in f32).
    fn precisions(&self) -> (HessianPrecision, ProductPrecision) {
        let cpu = self.device == Device::Cpu;
        let hessian = match self.hessian {
            Precision::Auto if cpu => gptq_linalg::fastest_hessian(),
            Precision::Auto | Precision::F32 => HessianPrecision::F32,
            Precision::F64 => HessianPrecision::F64,
            Precision::Bf16 => HessianPrecision::Bf16,
        };
        let products = match self.products {
            Products::Auto if cpu => ProductPrecision::fastest(),
            Products::Auto | Products::F32 => ProductPrecision::F32,
            Products::Bf16 => ProductPrecision::Bf16,
            Products::Int8 => ProductPrecision::Int8,
        };
        (hessian, products)
    }

    fn options(&self, threads: usize) -> CliResult<PipelineOptions> {
        for (flag, value) in [
            ("--batch", self.batch as u64),
            ("--max-shard-mib", self.max_shard_mib.unwrap_or(1)),
        ] {
            if value == 0 {
                return Err(format!("{flag} must be at least 1"));
            }
        }
        if self.max_shard_mib.is_some_and(|m| m > 1 << 30) {
            return Err("--max-shard-mib is more than a shard can sensibly hold (1 PiB)".into());
        }
        let group_size =
            GroupSize::from_reference_int(self.group_size).map_err(|e| e.to_string())?;
        let config = QuantConfig::builder()
            .bits(self.bits)
            .group_size(group_size)
            .symmetric(!self.asym)
            .act_order(self.act_order)
            .static_groups(self.static_groups)
            .damp_percent(self.damp)
            .build()
            .map_err(|e| e.to_string())?;
        let mut solve = if self.parity {
            SolveOptions::parity()
        } else {
            SolveOptions::default()
        };
        solve.hessian.precision = self.precisions().0;
        Ok(PipelineOptions {
            config,
            solve,
            true_sequential: !self.no_true_sequential,
            format: self.format.map(|f| match f {
                Format::Gptq => CheckpointFormat::Gptq,
                Format::GptqV2 => CheckpointFormat::GptqV2,
            }),
            batch_sequences: self.batch,
            threads,
            resume_dir: self.resume.then(|| default_resume_dir(&self.out)),
        })
    }
}

pub fn run(args: Args) -> CliResult {
    let (pool, threads) = thread_pool(args.threads)?;
    let options = args.options(threads)?;
    match args.device {
        Device::Cpu => {
            let (hessian, precision) = args.precisions();
            let notes = kernel_notes(&args, hessian, precision);
            let backend = CpuBackend::with_threads(threads);
            let compute = Compute::cpu(precision, options.par());
            pool.install(|| quantize(&args, &options, &backend, compute, &notes))
        }
        Device::Cuda if !matches!(args.products, Products::F32 | Products::Auto) => Err(format!(
            "--products {} is a CPU option: with --device cuda the GPU runs the products in f32",
            args.products
                .to_possible_value()
                .map_or("?".into(), |v| v.get_name().to_string())
        )),
        Device::Cuda => cuda(&args, &options, &pool),
    }
}

#[cfg(feature = "cuda")]
fn cuda(args: &Args, options: &PipelineOptions, pool: &rayon::ThreadPool) -> CliResult {
    let backend = gptq_cuda::CudaBackend::new(0).map_err(|e| e.to_string())?;
    // The linears' products of the calibration forward passes on the GPU too (attention and
    // the element-wise work stay on the CPU).
    let compute = Compute::new(options.par()).with_products(&backend);
    pool.install(|| quantize(args, options, &backend, compute, &[]))
}

#[cfg(not(feature = "cuda"))]
fn cuda(_: &Args, _: &PipelineOptions, _: &rayon::ThreadPool) -> CliResult {
    Err("this gptq was built without CUDA support: rebuild with `cargo build --release -p gptq-cli --features cuda`".into())
}

/// What the CPU computes in, and where it falls back from a missing kernel: printed once the
/// inputs are checked, so that a mistake in them stays a one-line error.
fn kernel_notes(
    args: &Args,
    hessian: HessianPrecision,
    precision: ProductPrecision,
) -> Vec<String> {
    let mut notes = Vec::new();
    let any_bf16 = precision != ProductPrecision::F32 || hessian == HessianPrecision::Bf16;
    if any_bf16 && !gptq_linalg::bf16::kernels_available() {
        notes.push(
            "note: this CPU lacks AVX512-BF16: the bf16 products run as rounded f32 products \
             (the same results, no faster)"
                .to_string(),
        );
    }
    if precision == ProductPrecision::Int8 && !gptq_linalg::int8::kernels_available() {
        notes.push(
            "note: this CPU lacks AVX512-VNNI: the int8 products run as f32 products of the \
             rounded activations (the same results, slower)"
                .to_string(),
        );
    }
    let auto = args.products == Products::Auto || args.hessian == Precision::Auto;
    notes.push(format!(
        "computing forward products in {} and Hessians in {}{}",
        precision.name(),
        hessian_name(hessian),
        if auto {
            " (auto: the fastest kernels this CPU has)"
        } else {
            ""
        }
    ));
    notes
}

fn quantize<B: Backend>(
    args: &Args,
    options: &PipelineOptions,
    backend: &B,
    compute: Compute<'_>,
    notes: &[String],
) -> CliResult {
    let start = Instant::now();
    let mut bars = Bars::new();
    let checkpoint = crate::open_checkpoint(&args.model)?;
    gptq_pipeline::check_model(&checkpoint, options).map_err(|e| e.to_string())?;
    let write = WriteOptions {
        max_shard_bytes: args.max_shard_mib.map_or(args.max_shard_size, |m| m << 20),
        overwrite: args.overwrite,
    };
    for line in clean_interrupted_runs(&args.out) {
        eprintln!("note: {line}");
    }
    let saved_state = default_resume_dir(&args.out);
    if !args.resume && holds_saved_run(&saved_state) {
        eprintln!(
            "note: {} holds the state of an interrupted run: pass --resume to continue it \
             (this run neither reads nor changes it)",
            saved_state.display()
        );
    }
    // Mistakes in where the results go surface now, not after the whole run.
    let _reservation =
        OutputReservation::new(&checkpoint, &args.out, &write).map_err(|e| e.to_string())?;
    // Held until the run ends, so that a second run cannot take this one's state for an
    // interrupted run's.
    let _resume_lock = options
        .resume_dir
        .as_deref()
        .map(ResumeLock::acquire)
        .transpose()
        .map_err(|e| e.to_string())?;
    let size = checkpoint_bytes(&checkpoint, options).map_err(|e| e.to_string())?;
    check_free_space(&args.out, size).map_err(|e| e.to_string())?;
    if let Some(path) = &args.report {
        check_report_path(path)?;
    }

    bars.start("loading calibration data", 1);
    let t = Instant::now();
    let source = CalibrationSource::detect(&args.calib, args.seed);
    let samples = source
        .load(&checkpoint, args.nsamples, args.seqlen)
        .map_err(|e| e.to_string())?;
    let calibration_load = t.elapsed().as_secs_f64();
    bars.set_position(1);
    bars.finish();
    let mut warnings = calibration_warnings(args, &checkpoint, &source, &samples);
    warnings.extend(checkpoint.config().architectures_warning());
    let lens: Vec<usize> = samples.iter().map(Vec::len).collect();
    // The saved state lives beside the output until the checkpoint is complete; what an
    // interrupted run saved already takes its share of the disk.
    let state = match &options.resume_dir {
        Some(dir) => saved_run_bytes(&checkpoint, &lens, options)
            .map_err(|e| e.to_string())?
            .saturating_sub(saved_run_size(dir)),
        None => 0,
    };
    check_free_space(&args.out, size + state).map_err(|e| e.to_string())?;
    for note in notes {
        eprintln!("{note}");
    }
    let memory =
        MemoryEstimate::new(checkpoint.config(), &lens, options).map_err(|e| e.to_string())?;
    let system = SystemMemory::read();
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    eprintln!(
        "needs about {:.2} GiB of memory{} and {:.0} MiB on disk{}",
        gib(memory.peak),
        system.map_or(String::new(), |s| format!(
            " ({:.1} GiB available)",
            gib(s.available)
        )),
        mib(size),
        if state > 0 {
            format!(" (and {:.0} MiB more for the saved run state)", mib(state))
        } else {
            String::new()
        }
    );
    if !args.no_memory_check
        && let Some(system) = system
    {
        let tokens = lens.iter().sum();
        warnings.extend(system.check(&memory, tokens).map_err(|e| e.to_string())?);
    }
    for warning in warnings {
        gptq_pipeline::Progress::event(&mut bars, gptq_pipeline::Event::Warning(warning));
    }

    let mut model = quantize_model(&checkpoint, &samples, backend, compute, options, &mut bars)
        .map_err(|e| e.to_string())?;
    model.times.calibration_load = calibration_load;

    bars.start(
        &format!(
            "writing checkpoint (at most {} MiB)",
            size.div_ceil(1 << 20)
        ),
        1,
    );
    let t = Instant::now();
    let files = write_checkpoint(&checkpoint, &model, options, &args.out, &write)
        .map_err(|e| e.to_string())?;
    model.times.write += t.elapsed().as_secs_f64();
    // The checkpoint is complete: the saved state has served.
    if let Some(dir) = &options.resume_dir
        && let Err(e) = remove_saved_run(dir)
    {
        bars.event(Event::Warning(format!(
            "could not remove the saved run state {}: {e}",
            dir.display()
        )));
    }
    bars.set_position(1);
    bars.finish();

    let seconds = start.elapsed().as_secs_f64();
    let loss: f64 = model.modules.iter().filter_map(|m| m.loss).sum();
    let report = RunReport {
        tool: gptq_pipeline::TOOL.to_string(),
        model: args.model.display().to_string(),
        output: args.out.display().to_string(),
        quantization: quantization_config(options),
        samples: samples.len(),
        tokens: model.tokens,
        backend: run_name(backend, &compute),
        products: compute.precision().to_string(),
        hessian: hessian_name(options.solve.hessian.precision).to_string(),
        totals: Totals {
            modules: model.modules.len(),
            loss,
            seconds,
            stages: model.times,
            layer_seconds: model.layer_seconds.clone(),
            peak_memory_bytes: peak_memory_bytes(),
            predicted_memory: Some(memory),
        },
        modules: model.modules,
        warnings: bars.warnings.clone(),
    };
    let t = &report.totals.stages;
    println!(
        "quantized {} linears of {} ({} samples, {} tokens) into {} ({} files) in {seconds:.1} s",
        report.totals.modules,
        args.model.display(),
        report.samples,
        report.tokens,
        args.out.display(),
        files.len()
    );
    println!(
        "time: calibration load {:.1} s, forward passes {:.1} s, Hessians {:.1} s, solving {:.1} s, packing {:.1} s, writing {:.1} s",
        t.calibration_load, t.calibration_forward, t.hessian, t.solve, t.pack, t.write
    );
    if let Some(before) = model.resumed {
        println!(
            "  (these times include {:.1} s of the interrupted run that finished {} of {} \
             layers before this one, which took {seconds:.1} s)",
            before.times.total(),
            before.layers,
            checkpoint.config().num_hidden_layers
        );
    }
    if let Some(peak) = report.totals.peak_memory_bytes {
        // The peak counts whatever pages of the memory-mapped weights were resident at the
        // time; converted tensors release theirs (WeightStore::release), so they are not
        // part of the prediction.
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        println!(
            "peak memory {:.0} MiB resident (predicted: {:.0} MiB); total loss {loss:.4}",
            mib(peak),
            mib(memory.peak)
        );
    }
    if let Some(path) = &args.report {
        let text = serde_json::to_string_pretty(&report).expect("the report serializes");
        write_whole(path, &(text + "\n"))
            .map_err(|e| format!("cannot write the report {}: {e}", path.display()))?;
    }
    Ok(())
}

/// `"f32"`, `"f64"` or `"bf16"`, as `--hessian` spells it.
fn hessian_name(precision: HessianPrecision) -> &'static str {
    match precision {
        HessianPrecision::F32 => "f32",
        HessianPrecision::F64 => "f64",
        HessianPrecision::Bf16 => "bf16",
    }
}

/// What differs from what the flags asked for: fewer samples than `--nsamples`, or token-id
/// windows shorter than `--seqlen` (used as they are; texts are cut to `--seqlen` and a JSONL
/// text shorter than it is expected, so only the token-id file gets this warning); and
/// samples longer than the model was trained for.
fn calibration_warnings(
    args: &Args,
    checkpoint: &Checkpoint,
    source: &CalibrationSource,
    samples: &[Vec<u32>],
) -> Vec<String> {
    let mut warnings = Vec::new();
    if samples.len() < args.nsamples {
        warnings.push(format!(
            "{} holds {} calibration samples, fewer than --nsamples {}",
            args.calib.display(),
            samples.len(),
            args.nsamples
        ));
    }
    let longest = samples.iter().map(Vec::len).max().unwrap_or(0);
    if matches!(source, CalibrationSource::TokenIds { .. }) && longest < args.seqlen {
        warnings.push(format!(
            "the windows of {} hold at most {longest} tokens, fewer than --seqlen {}: they are \
             used as they are",
            args.calib.display(),
            args.seqlen
        ));
    }
    warnings.extend(checkpoint.config().context_warning(longest));
    warnings
}

/// Writes `text` to a hidden sibling of `path` and renames it into place, so that `path` holds
/// either its old contents or all of `text`, never a cut-off file.
fn write_whole(path: &Path, text: &str) -> std::io::Result<()> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let partial = path.with_file_name(format!(".{name}.partial-{}", std::process::id()));
    std::fs::write(&partial, text)
        .and_then(|()| std::fs::rename(&partial, path))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&partial);
        })
}

/// The report is written last, so its path is checked first: an existing directory, or a
/// parent that does not exist, would otherwise fail after the checkpoint is written.
fn check_report_path(path: &Path) -> CliResult {
    if path.is_dir() {
        return Err(format!(
            "--report {} is a directory: name a file such as run.json",
            path.display()
        ));
    }
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() && !parent.exists() => {
            return Err(format!(
                "--report {}: the directory {} does not exist; create it or choose another path",
                path.display(),
                parent.display()
            ));
        }
        Some(parent) if !parent.as_os_str().is_empty() && !parent.is_dir() => {
            return Err(format!(
                "--report {}: {} is not a directory; choose another path",
                path.display(),
                parent.display()
            ));
        }
        _ => {}
    }
    // Opening for appending neither truncates an existing report nor changes its contents;
    // one created here is removed again.
    let existed = path.exists();
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| format!("--report {} cannot be written: {e}", path.display()))?;
    if !existed {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// A shard size as transformers' `max_shard_size` spells it: a number of bytes with an optional
/// unit, decimal (KB, MB, GB, TB: powers of 1000) or binary (KiB, MiB, GiB, TiB); at least 1 MB
/// and at most 1 PiB.
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KIB" => 1 << 10,
        "MIB" => 1 << 20,
        "GIB" => 1 << 30,
        "TIB" => 1 << 40,
        other => {
            return Err(format!(
                "unknown unit `{other}`: use e.g. 5GB, 500MB or 4GiB"
            ));
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size: use e.g. 5GB, 500MB or 4GiB"))?;
    let bytes = value * scale as f64;
    if !(1e6..=(1u64 << 50) as f64).contains(&bytes) {
        return Err(format!("`{text}` is outside 1MB to 1PiB"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn shard_sizes_read_as_transformers_writes_them() {
        assert_eq!(parse_size("5GB"), Ok(5_000_000_000));
        assert_eq!(parse_size("500MB"), Ok(500_000_000));
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("1.5 gb"), Ok(1_500_000_000));
        assert_eq!(parse_size("2000000"), Ok(2_000_000));
        for bad in ["", "5XB", "GB", "0GB", "10KB", "-1GB", "2PB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
