//! How much memory a run needs, known before it starts, and how much the machine has.
//!
//! A run that does not fit is killed by the system, possibly hours in; the estimate lets the
//! caller refuse or warn in the first second. It counts the buffers the pipeline allocates
//! (see `quantize.rs`, and `damped_inverse_factor` for the solver), not the memory-mapped
//! model, whose pages the system can drop and read again.

use gptq_model::{DEFAULT_BUFFER_POOL_BYTES, LayerShape, LinearId, ModelConfig};
use serde::Serialize;

use crate::error::{PipelineError, Result};
use crate::options::PipelineOptions;

/// The program, tokenizer, calibration ids, small buffers and the allocator's slack (per-thread
/// arenas): what SmolLM2-135M's run holds beyond the buffers counted here, 40–90 MiB in
/// three measured runs, rounded up.
const BASE_BYTES: u64 = 96 << 20;
/// f32.
const F32: u64 = 4;

/// Bytes a run holds at its widest point, by what they hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MemoryEstimate {
    /// Calibration activations held between stages: the residual stream (four times without
    /// true-sequential, which keeps the layer's input for the second pass) and the widest
    /// stage's output (the MLP's inner activations in Llama models).
    pub activations: u64,
    /// One batch's temporaries while the forward pass runs (q, k, v and the attention output,
    /// or gate and up), with one batch of the stage's input.
    pub temporaries: u64,
    /// One decoder layer's weights in f32, and the dequantized replacement of its largest.
    pub weights: u64,
    /// The widest Hessian in f64 and, per concurrent solve, its factorization and the weights
    /// being solved; meanwhile the temporaries shrink to what the buffer pool keeps.
    pub solver: u64,
    /// The packed linears, kept until the checkpoint is written (and copied once then).
    pub packed: u64,
    /// The embedding table in f32 beside the layer-0 inputs, at the start of the run.
    pub embedding: u64,
    /// The most held at once: the larger of the start, any layer, and the writing.
    pub peak: u64,
}

impl MemoryEstimate {
    /// The estimate for quantizing a model of `config` on calibration sequences of
    /// `sample_lens` tokens with `options`.
    pub fn new(
        config: &ModelConfig,
        sample_lens: &[usize],
        options: &PipelineOptions,
    ) -> Result<Self> {
        let shape = config.layer_shape(0); // every layer has the same dimensions
        let tokens: u64 = sample_lens.iter().map(|&n| n as u64).sum();
        let batch_tokens = sample_lens
            .chunks(options.batch_sequences.max(1))
            .map(|c| c.iter().map(|&n| n as u64).sum::<u64>())
            .max()
            .unwrap_or(0);
        let hidden = shape.hidden_size as u64;
        // Without true-sequential the layer's input is kept for the second pass beside the
        // first pass's residual stream; the allocator was also measured to hold about two more
        // hidden-width activations there (freed batch by batch between the passes, but not
        // returned: 1213 MiB for SmolLM2 on 128 × 512 tokens, where two copies predict 953).
        let residual_copies = if options.true_sequential { 1 } else { 4 };
        let widest = widest_stage(&shape);
        let activations = F32 * tokens * (residual_copies * hidden + widest);
        let temporaries = F32 * batch_tokens * (batch_temporaries(&shape) + widest);

        let sizes: Vec<u64> = LinearId::ALL
            .iter()
            .map(|id| {
                let (rows, columns) = id.dims(&shape);
                (rows * columns) as u64
            })
            .collect();
        let weights = F32 * (sizes.iter().sum::<u64>() + sizes.iter().max().unwrap_or(&0));

        let concurrency = options.threads.max(1) as u64;
        let solver = LinearId::ALL
            .iter()
            .map(|&id| solver_bytes(&shape, id, concurrency))
            .max()
            .unwrap_or(0);
        // While a linear is solved, the forward temporaries are freed, up to what the pool
        // keeps for the next pass.
        let pooled = temporaries.min(DEFAULT_BUFFER_POOL_BYTES as u64);

        let mut packed_layer = 0u64;
        for id in LinearId::ALL {
            packed_layer += options.packed_linear_bytes(id, &shape, 0)?;
        }
        let packed = packed_layer * config.num_hidden_layers as u64;

        let embedding = F32 * (config.vocab_size as u64 * hidden + tokens * hidden);
        let layer = activations + weights + packed + temporaries.max(pooled + solver);
        let peak = BASE_BYTES + embedding.max(layer).max(2 * packed);
        Ok(MemoryEstimate {
            activations,
            temporaries,
            weights,
            solver,
            packed,
            embedding,
            peak,
        })
    }
}

/// Columns of the widest activation a stage outputs for every calibration token: the q/k/v
/// input (hidden), the attention output, or the MLP's inner activations.
fn widest_stage(s: &LayerShape) -> u64 {
    s.hidden_size.max(s.q_width()).max(s.intermediate_size) as u64
}

/// Columns of the temporaries of one batch: q, k, v and the attention output, or gate and up.
fn batch_temporaries(s: &LayerShape) -> u64 {
    let attention = 2 * s.q_width() + 2 * s.kv_width();
    let mlp = 2 * s.intermediate_size;
    attention.max(mlp) as u64
}

/// The solver's memory for the linears that read `id`'s input: the f64 Hessian, and per
/// concurrent solve the factorization — an f64 Cholesky factor and its inverse, of which only
/// the lower triangles are written (untouched zeroed pages take no memory), and the f32
/// factor — and three f32 copies of the weight (working, result, dequantized).
fn solver_bytes(s: &LayerShape, id: LinearId, threads: u64) -> u64 {
    let group = id.input_group();
    let columns = id.dims(s).1 as u64;
    let rows = group.iter().map(|g| g.dims(s).0 as u64).max().unwrap_or(0);
    let concurrent = threads.min(group.len() as u64);
    let square = columns * columns;
    8 * square + concurrent * ((4 + 4 + 4) * square + 3 * F32 * rows * columns)
}

/// What the machine can give this process, from `/proc/meminfo` and the cgroup limit (Linux).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SystemMemory {
    /// Memory and swap in all (or the cgroup's limit, if lower).
    pub total: u64,
    /// What can be had now without swapping others out: available memory and free swap (or
    /// what the cgroup's limit leaves, if lower; the cgroup counts its page cache as used, so
    /// inside a container this errs low, which only matters for the warning).
    pub available: u64,
}

impl SystemMemory {
    /// The current figures, where the system tells them.
    pub fn read() -> Option<Self> {
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let field = |name: &str| -> Option<u64> {
            let line = meminfo.lines().find(|l| l.starts_with(name))?;
            let kib: u64 = line[name.len()..]
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()?;
            Some(kib << 10)
        };
        let swap_total = field("SwapTotal:").unwrap_or(0);
        let swap_free = field("SwapFree:").unwrap_or(0);
        let mut memory = SystemMemory {
            total: field("MemTotal:")? + swap_total,
            available: field("MemAvailable:")? + swap_free,
        };
        if let Some((limit, used)) = cgroup_limit() {
            memory.total = memory.total.min(limit);
            memory.available = memory.available.min(limit.saturating_sub(used));
        }
        Some(memory)
    }

    /// `Err` when `estimate` exceeds everything the machine has; `Ok(Some(warning))` when it
    /// exceeds what is available now.
    pub fn check(&self, estimate: &MemoryEstimate, tokens: usize) -> Result<Option<String>> {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        let need = format!(
            "this run needs about {:.1} GiB of memory ({:.1} GiB of it the activations of {tokens} \
             calibration tokens)",
            gib(estimate.peak),
            gib(estimate.activations)
        );
        if estimate.peak > self.total {
            return Err(PipelineError::Invalid(format!(
                "{need} but this machine has {:.1} GiB with swap: lower --nsamples or --seqlen \
                 (or pass --no-memory-check to try anyway)",
                gib(self.total)
            )));
        }
        Ok((estimate.peak > self.available).then(|| {
            format!(
                "{need} but only {:.1} GiB are available now: it may be slow or be killed; \
                 lower --nsamples or --seqlen, or free memory",
                gib(self.available)
            )
        }))
    }
}

/// The tightest memory limit of the cgroups this process is in (v2 `memory.max`, v1
/// `memory.limit_in_bytes`) and the use counted against it, if any is set: in a container,
/// `/proc/meminfo` shows the host's memory.
fn cgroup_limit() -> Option<(u64, u64)> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let read =
        |file: &str| -> Option<u64> { std::fs::read_to_string(file).ok()?.trim().parse().ok() };
    // "max" (v2) does not parse: no limit. v1 writes a huge number instead, which never wins.
    cgroup_files(&own)
        .iter()
        .filter_map(|(limit, used)| Some((read(limit)?, read(used).unwrap_or(0))))
        .min_by_key(|&(limit, used)| limit.saturating_sub(used))
}

/// The (limit, usage) files of the memory cgroups named in `/proc/self/cgroup`'s text.
fn cgroup_files(own: &str) -> Vec<(String, String)> {
    let mut files = Vec::new();
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let path = path.trim_end_matches('/');
        // The path as seen from the host, or from this container's own cgroup namespace.
        for path in [path, ""] {
            if controllers.is_empty() {
                for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
                    files.push((
                        format!("{root}{path}/memory.max"),
                        format!("{root}{path}/memory.current"),
                    ));
                }
            } else if controllers.split(',').any(|c| c == "memory") {
                let dir = format!("/sys/fs/cgroup/memory{path}");
                files.push((
                    format!("{dir}/memory.limit_in_bytes"),
                    format!("{dir}/memory.usage_in_bytes"),
                ));
            }
        }
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_limits_are_looked_up_for_both_versions() {
        let files = cgroup_files("12:memory:/docker/abc\n0::/user.slice/x\nnot a cgroup line\n");
        let limits: Vec<&str> = files.iter().map(|(limit, _)| limit.as_str()).collect();
        for expected in [
            "/sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/user.slice/x/memory.max",
            "/sys/fs/cgroup/unified/user.slice/x/memory.max",
            "/sys/fs/cgroup/memory.max",
        ] {
            assert!(limits.contains(&expected), "{expected} not in {limits:?}");
        }
        assert!(cgroup_files("3:cpuset:/a\n").is_empty());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn linux_reports_its_memory() {
        let memory = SystemMemory::read().expect("/proc/meminfo is readable on Linux");
        assert!(
            memory.available > 0 && memory.available <= memory.total,
            "{memory:?}"
        );
    }
}
