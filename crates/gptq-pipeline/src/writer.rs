//! Writing the quantized model as a GPTQ checkpoint directory.
//!
//! Everything is written to a hidden sibling directory first and renamed into place at the end,
//! so an interrupted or failed run never leaves a half-written checkpoint behind.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use gptq_model::{Checkpoint, LinearId};
use gptq_quant::PackedTensor;
use safetensors::Dtype;
use safetensors::tensor::View;
use serde_json::{Value, json};

use crate::error::{PipelineError, Result};
use crate::options::PipelineOptions;
use crate::quantized::QuantizedModel;

/// The tool written into `quantization_config.meta.quantizer`.
pub const TOOL: &str = concat!("gptq-rs:", env!("CARGO_PKG_VERSION"));

/// How to write.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// Largest safetensors file; more data is split into `model-0000k-of-0000n.safetensors`
    /// shards with an index.
    pub max_shard_bytes: u64,
    /// Replace an existing output directory.
    pub overwrite: bool,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            max_shard_bytes: 4 << 30,
            overwrite: false,
        }
    }
}

/// A tensor to write: borrowed from the source's memory map, or made here.
pub(crate) enum Tensor<'a> {
    Borrowed {
        dtype: Dtype,
        shape: Vec<usize>,
        data: &'a [u8],
    },
    Owned {
        dtype: Dtype,
        shape: Vec<usize>,
        data: Vec<u8>,
    },
}

impl View for &Tensor<'_> {
    fn dtype(&self) -> Dtype {
        match self {
            Tensor::Borrowed { dtype, .. } | Tensor::Owned { dtype, .. } => *dtype,
        }
    }
    fn shape(&self) -> &[usize] {
        match self {
            Tensor::Borrowed { shape, .. } | Tensor::Owned { shape, .. } => shape,
        }
    }
    fn data(&self) -> Cow<'_, [u8]> {
        match self {
            Tensor::Borrowed { data, .. } => Cow::Borrowed(data),
            Tensor::Owned { data, .. } => Cow::Borrowed(data),
        }
    }
    fn data_len(&self) -> usize {
        match self {
            Tensor::Borrowed { data, .. } => data.len(),
            Tensor::Owned { data, .. } => data.len(),
        }
    }
}

fn int_tensor(values: impl Iterator<Item = i32>, shape: Vec<usize>) -> Tensor<'static> {
    Tensor::Owned {
        dtype: Dtype::I32,
        shape,
        data: values.flat_map(i32::to_le_bytes).collect(),
    }
}

pub(crate) fn packed_tensors(
    prefix: &str,
    packed: &PackedTensor,
) -> Vec<(String, Tensor<'static>)> {
    let dims = |a: (usize, usize)| vec![a.0, a.1];
    vec![
        (
            format!("{prefix}.qweight"),
            int_tensor(packed.qweight.iter().copied(), dims(packed.qweight.dim())),
        ),
        (
            format!("{prefix}.qzeros"),
            int_tensor(packed.qzeros.iter().copied(), dims(packed.qzeros.dim())),
        ),
        (
            format!("{prefix}.scales"),
            Tensor::Owned {
                dtype: Dtype::F16,
                shape: dims(packed.scales.dim()),
                data: packed.scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
            },
        ),
        (
            format!("{prefix}.g_idx"),
            int_tensor(packed.g_idx.iter().copied(), vec![packed.g_idx.len()]),
        ),
    ]
}

/// The `quantization_config` of a run (also the report's `quantization`).
pub fn quantization_config(options: &PipelineOptions) -> Value {
    let c = &options.config;
    json!({
        "quant_method": "gptq",
        "bits": c.bits(),
        "group_size": c.group_size().as_reference_int(),
        "desc_act": c.act_order(),
        "sym": c.symmetric(),
        "static_groups": c.static_groups(),
        "damp_percent": c.damp_percent(),
        "true_sequential": options.true_sequential,
        "checkpoint_format": options.checkpoint_format().as_str(),
        "pack_dtype": "int32",
        "lm_head": false,
        "meta": {
            "quantizer": [TOOL],
            "parity": options.solve.parity,
            "range_search": options.solve.effective_search().is_some(),
        },
    })
}

/// Checks that `out` can receive the checkpoint of `source`, before any work is done: it does
/// not exist (unless `write.overwrite`), it lies neither inside nor around the source model, and
/// its nearest existing ancestor is a directory this process can create entries in.
///
/// [`write_checkpoint`] checks again at the end; calling this first turns a mistake in `--out`
/// into an error in the first second instead of after the whole quantization run.
pub fn check_output(source: &Checkpoint, out: &Path, write: &WriteOptions) -> Result<()> {
    if let Ok(metadata) = std::fs::symlink_metadata(out) {
        if !write.overwrite {
            return Err(PipelineError::Invalid(format!(
                "{} already exists: choose another --out, or pass --overwrite to replace it",
                out.display()
            )));
        }
        if !metadata.is_dir() {
            return Err(PipelineError::Invalid(format!(
                "--out {} exists and is not a directory: nothing was touched; choose another \
                 --out",
                out.display()
            )));
        }
        check_replaceable(out)?;
    }
    if let Some(pid) = live_writer(out) {
        return Err(PipelineError::Invalid(format!(
            "another run (process {pid}) is writing {}: wait for it to finish or choose \
             another --out",
            out.display()
        )));
    }
    let (source_dir, out_abs) = (absolute(source.dir()), absolute(out));
    if out_abs.starts_with(&source_dir) || source_dir.starts_with(&out_abs) {
        return Err(PipelineError::Invalid(format!(
            "the output {} would overwrite the source model {}: choose another --out",
            out.display(),
            source.dir().display()
        )));
    }
    let name = out.file_name().ok_or_else(|| {
        PipelineError::Invalid(format!("{} is not a directory name", out.display()))
    })?;
    let ancestor = out_abs
        .ancestors()
        .skip(1)
        .find(|a| a.exists())
        .unwrap_or(Path::new("."));
    if !ancestor.is_dir() {
        return Err(PipelineError::Invalid(format!(
            "{} is not a directory, so {} cannot be created in it: choose another --out",
            ancestor.display(),
            out.display()
        )));
    }
    // Creating and removing an empty directory is the only portable way to learn whether the
    // checkpoint's staging directory can be made there (unless this run made it already).
    if staging_dir(out).is_dir() {
        return Ok(());
    }
    let probe = ancestor.join(format!(
        ".{}.probe-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    std::fs::create_dir(&probe).map_err(PipelineError::write(ancestor))?;
    std::fs::remove_dir(&probe).map_err(PipelineError::write(&probe))
}

/// Refuses to let `--overwrite` delete `out` (an existing directory) unless it is empty or
/// recognisably a checkpoint that a GPTQ tool wrote: files only, and a `config.json` with a
/// GPTQ `quantization_config` or AutoGPTQ's `quantize_config.json`.
fn check_replaceable(out: &Path) -> Result<()> {
    let refuse = |why: String| {
        PipelineError::Invalid(format!(
            "--out {} is not a GPTQ checkpoint ({why}): --overwrite replaces only a checkpoint \
             that a GPTQ tool wrote; delete it yourself or choose another --out",
            out.display()
        ))
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(out).map_err(PipelineError::write(out))? {
        let entry = entry.map_err(PipelineError::write(out))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let kind = entry.file_type().map_err(PipelineError::write(out))?;
        if !kind.is_file() {
            return Err(refuse(format!(
                "it holds {name}, which is not a plain file"
            )));
        }
        names.push(name);
    }
    if names.is_empty() || names.iter().any(|n| n == "quantize_config.json") {
        return Ok(());
    }
    let config = std::fs::read_to_string(out.join("config.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<Value>(&text).ok());
    let Some(config) = config else {
        return Err(refuse("it has no readable config.json".into()));
    };
    let method = &config["quantization_config"]["quant_method"];
    if method.as_str() == Some("gptq") {
        Ok(())
    } else {
        Err(refuse(
            "its config.json has no GPTQ quantization_config".into(),
        ))
    }
}

/// The process id of another live run that is writing `out` (its `.NAME.partial-PID`).
fn live_writer(out: &Path) -> Option<u32> {
    let out = absolute(out);
    let (parent, name) = (out.parent()?, out.file_name()?);
    let prefix = format!(".{}{PARTIAL}", name.to_string_lossy());
    std::fs::read_dir(parent)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            file.strip_prefix(&prefix)?.parse::<u32>().ok()
        })
        .find(|&pid| pid != std::process::id() && process_alive(pid))
}

/// The staging directory `.NAME.partial-PID` that this process writes `out` into.
fn staging_dir(out: &Path) -> PathBuf {
    let out = absolute(out);
    let name = out
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let parent = out
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    parent.join(format!(".{name}{PARTIAL}{}", std::process::id()))
}

/// `out` reserved for this run, from its start: its (empty) staging directory exists, so that
/// a second run on the same `--out` is refused at once ([`check_output`]) instead of after its
/// whole work. Dropping the reservation removes the staging directory if the checkpoint was
/// not written into place.
#[derive(Debug)]
pub struct OutputReservation {
    staging: PathBuf,
}

impl OutputReservation {
    /// Checks `out` ([`check_output`]) and reserves it.
    pub fn new(source: &Checkpoint, out: &Path, write: &WriteOptions) -> Result<Self> {
        check_output(source, out, write)?;
        let staging = staging_dir(out);
        if let Some(parent) = staging.parent() {
            std::fs::create_dir_all(parent).map_err(PipelineError::write(parent))?;
        }
        match std::fs::create_dir(&staging) {
            Ok(()) => Ok(OutputReservation { staging }),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Ok(OutputReservation { staging })
            }
            Err(e) => Err(PipelineError::write(&staging)(e)),
        }
    }
}

impl Drop for OutputReservation {
    fn drop(&mut self) {
        // Only an empty reservation is ours to remove here: a staging directory with files
        // is write_checkpoint's, which removes it on failure itself.
        let _ = std::fs::remove_dir(&self.staging);
    }
}

/// Writes the checkpoint of `model` (quantized from `source`) to `out`; returns the files
/// written. What interrupted runs left beside `out` is cleared first
/// ([`clean_interrupted_runs`]).
pub fn write_checkpoint(
    source: &Checkpoint,
    model: &QuantizedModel,
    options: &PipelineOptions,
    out: &Path,
    write: &WriteOptions,
) -> Result<Vec<PathBuf>> {
    clean_interrupted_runs(out);
    check_output(source, out, write)?;
    check_free_space(out, checkpoint_bytes(source, options)?)?;
    let out_abs = absolute(out);
    let parent = out_abs
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&parent).map_err(PipelineError::write(&parent))?;
    let staging = staging_dir(out);
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(PipelineError::write(&staging))?;
    }
    std::fs::create_dir(&staging).map_err(PipelineError::write(&staging))?;
    let written = write_into(source, model, options, &staging, write).and_then(|files| {
        replace_dir(&staging, &out_abs, write.overwrite)?;
        Ok(files.into_iter().map(|f| out_abs.join(f)).collect())
    });
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    written
}

/// Between the name and the writing process's id in a staging directory's name
/// (`.NAME.partial-PID`).
const PARTIAL: &str = ".partial-";
/// The same for a checkpoint being replaced under `--overwrite` (`.NAME.old-PID`).
const REPLACED: &str = ".old-";

/// Clears what runs that were killed left beside `out`, and says what it did, a line each.
///
/// A run writes into `.NAME.partial-PID` and renames it to `NAME` when done; with `--overwrite`
/// it first moves the previous `NAME` to `.NAME.old-PID` and deletes that last. A run killed
/// while writing leaves its staging directory (as large as the checkpoint, and incomplete by
/// definition): it is removed. A run killed between its two renames leaves the previous
/// checkpoint in `.NAME.old-PID` and no `NAME`: it is moved back. Directories whose process is
/// still running are left alone (where that cannot be told, as off Unix, all are). Failures
/// are reported in the lines, not returned: clearing is a courtesy that never stops a run.
pub fn clean_interrupted_runs(out: &Path) -> Vec<String> {
    let out = absolute(out);
    let (Some(parent), Some(name)) = (out.parent(), out.file_name()) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    let name = name.to_string_lossy();
    let (partial, replaced) = (format!(".{name}{PARTIAL}"), format!(".{name}{REPLACED}"));
    let dead = |file: &str, prefix: &str| {
        file.strip_prefix(prefix)
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| pid != std::process::id() && !process_alive(pid))
    };
    let mut said = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let file = entry.file_name().to_string_lossy().into_owned();
        let outcome = if dead(&file, &partial) {
            std::fs::remove_dir_all(&path).map(|()| {
                format!(
                    "removed {}, the unfinished output of an interrupted run",
                    path.display()
                )
            })
        } else if dead(&file, &replaced) && !out.exists() {
            std::fs::rename(&path, &out).map(|()| {
                format!(
                    "restored {} from {}, where an interrupted run had moved it",
                    out.display(),
                    path.display()
                )
            })
        } else if dead(&file, &replaced) {
            std::fs::remove_dir_all(&path).map(|()| {
                format!(
                    "removed {}, a checkpoint an interrupted run had already replaced",
                    path.display()
                )
            })
        } else {
            continue;
        };
        said.push(outcome.unwrap_or_else(|e| {
            format!(
                "could not clear {} (left by an interrupted run): {e}",
                path.display()
            )
        }));
    }
    said
}

/// Whether process `pid` exists (signal 0 delivers nothing; EPERM means it exists but belongs
/// to another user).
#[cfg(unix)]
pub(crate) fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return true;
    };
    if pid <= 0 {
        return true; // 0 and negatives name process groups, not a process
    }
    // SAFETY: kill with signal 0 only checks that the process exists.
    let found = unsafe { libc::kill(pid, 0) } == 0;
    found || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

#[cfg(not(unix))]
pub(crate) fn process_alive(_pid: u32) -> bool {
    true
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Moves `staging` to `out`, replacing an existing `out` only after the new one is complete.
fn replace_dir(staging: &Path, out: &Path, overwrite: bool) -> Result<()> {
    if overwrite && out.exists() {
        let old = out.with_file_name(format!(
            ".{}{REPLACED}{}",
            out.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        std::fs::rename(out, &old).map_err(PipelineError::write(out))?;
        std::fs::rename(staging, out).map_err(PipelineError::write(out))?;
        std::fs::remove_dir_all(&old).map_err(PipelineError::write(&old))?;
    } else {
        std::fs::rename(staging, out).map_err(PipelineError::write(out))?;
    }
    Ok(())
}

/// Writes every file into `dir`; returns their names.
fn write_into(
    source: &Checkpoint,
    model: &QuantizedModel,
    options: &PipelineOptions,
    dir: &Path,
    write: &WriteOptions,
) -> Result<Vec<String>> {
    let weights = source.weights();
    let replaced: HashSet<String> = model
        .linears
        .iter()
        .map(|l| format!("{}.weight", l.prefix()))
        .collect();
    let mut tensors: BTreeMap<String, Tensor<'_>> = BTreeMap::new();
    for name in weights.names() {
        if replaced.contains(name) {
            continue;
        }
        let raw = weights.raw(name)?;
        tensors.insert(
            name.to_string(),
            Tensor::Borrowed {
                dtype: raw.dtype,
                shape: raw.shape.to_vec(),
                data: raw.data,
            },
        );
    }
    for linear in &model.linears {
        tensors.extend(packed_tensors(&linear.prefix(), &linear.packed));
    }

    let mut files = write_shards(&tensors, dir, write.max_shard_bytes)?;
    let (config, quantize_config) = config_files(source, options);
    write_json(&dir.join("config.json"), &config)?;
    write_json(&dir.join("quantize_config.json"), &quantize_config)?;
    files.extend([
        "config.json".to_string(),
        "quantize_config.json".to_string(),
    ]);
    files.extend(copy_other_files(source.dir(), dir)?);
    Ok(files)
}

/// Splits the tensors (in name order) into shards of at most `max_bytes` and writes them.
fn write_shards(
    tensors: &BTreeMap<String, Tensor<'_>>,
    dir: &Path,
    max_bytes: u64,
) -> Result<Vec<String>> {
    let mut shards: Vec<Vec<(&String, &Tensor<'_>)>> = vec![Vec::new()];
    let mut size = 0u64;
    for (name, tensor) in tensors {
        let bytes = tensor.data_len() as u64;
        if size > 0 && size + bytes > max_bytes {
            shards.push(Vec::new());
            size = 0;
        }
        shards
            .last_mut()
            .expect("one shard at least")
            .push((name, tensor));
        size += bytes;
    }
    let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    let count = shards.len();
    let file_name = |k: usize| {
        if count == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{count:05}.safetensors", k + 1)
        }
    };
    let mut weight_map = BTreeMap::new();
    let mut files = Vec::new();
    for (k, shard) in shards.iter().enumerate() {
        let name = file_name(k);
        let path = dir.join(&name);
        safetensors::serialize_to_file(
            shard.iter().map(|(n, t)| (n.as_str(), *t)),
            metadata.clone(),
            &path,
        )
        .map_err(|e| PipelineError::Write {
            path: path.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        for (tensor, _) in shard {
            weight_map.insert(tensor.to_string(), name.clone());
        }
        files.push(name);
    }
    if count > 1 {
        let total: u64 = tensors.values().map(|t| t.data_len() as u64).sum();
        let index = json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
        write_json(&dir.join("model.safetensors.index.json"), &index)?;
        files.push("model.safetensors.index.json".into());
    }
    Ok(files)
}

/// `config.json` (the source's, with `quantization_config`) and `quantize_config.json`.
fn config_files(source: &Checkpoint, options: &PipelineOptions) -> (Value, Value) {
    let mut config = source.config().raw.clone();
    let quantization = quantization_config(options);
    config["quantization_config"] = quantization.clone();
    let mut quantize_config = quantization;
    quantize_config["model_file_base_name"] = json!("model");
    (config, quantize_config)
}

fn json_text(value: &Value) -> String {
    serde_json::to_string_pretty(value).expect("JSON values serialize") + "\n"
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    std::fs::write(path, json_text(value)).map_err(PipelineError::write(path))
}

/// The source's files that the checkpoint copies: all but weights and configs (tokenizer,
/// generation config, license), with their sizes.
fn other_files(source: &Path) -> Result<Vec<(std::fs::DirEntry, u64)>> {
    let skip = |name: &str| {
        name.ends_with(".safetensors")
            || matches!(
                name,
                "model.safetensors.index.json" | "config.json" | "quantize_config.json"
            )
    };
    let mut files = Vec::new();
    let entries = std::fs::read_dir(source).map_err(PipelineError::write(source))?;
    for entry in entries {
        let entry = entry.map_err(PipelineError::write(source))?;
        let name = entry.file_name().to_string_lossy().to_string();
        let metadata = std::fs::metadata(entry.path()).map_err(PipelineError::write(source))?;
        if !skip(&name) && metadata.is_file() {
            files.push((entry, metadata.len()));
        }
    }
    Ok(files)
}

/// Copies [`other_files`] into `dir`.
fn copy_other_files(source: &Path, dir: &Path) -> Result<Vec<String>> {
    let mut copied = Vec::new();
    for (entry, _) in other_files(source)? {
        let name = entry.file_name().to_string_lossy().to_string();
        std::fs::copy(entry.path(), dir.join(&name))
            .map_err(PipelineError::write(dir.join(&name)))?;
        copied.push(name);
    }
    copied.sort();
    Ok(copied)
}

/// Bytes allowed per tensor for its entry in a safetensors header and in the shard index
/// beside its name: `{"dtype":"I32","shape":[a,b],"data_offsets":[x,y]}` and the shard's file
/// name come to well under this.
pub(crate) const HEADER_BYTES_PER_TENSOR: u64 = 176;

/// An upper bound on the bytes of the checkpoint that quantizing `source` with `options`
/// writes: tensor data, configs and copied files exactly, safetensors headers and the shard
/// index generously (176 bytes and twice the name per tensor). Known before any work, from the
/// tensor headers alone.
pub fn checkpoint_bytes(source: &Checkpoint, options: &PipelineOptions) -> Result<u64> {
    let config = source.config();
    let mut quantized = HashMap::new();
    for layer in 0..config.num_hidden_layers {
        let shape = config.layer_shape(layer);
        for id in LinearId::ALL {
            let bytes = options.packed_linear_bytes(id, &shape, layer)?;
            quantized.insert(format!("{}.weight", id.tensor_prefix(layer)), bytes);
        }
    }
    let weights = source.weights();
    let mut total = 0u64;
    for name in weights.names() {
        // A quantized linear becomes four tensors in place of one.
        let (data, tensors) = match quantized.get(name) {
            Some(&bytes) => (bytes, 4),
            None => (weights.raw(name)?.data.len() as u64, 1),
        };
        total += data + tensors * (HEADER_BYTES_PER_TENSOR + 2 * name.len() as u64);
    }
    let (config_json, quantize_json) = config_files(source, options);
    total += (json_text(&config_json).len() + json_text(&quantize_json).len()) as u64;
    for (_, bytes) in other_files(source.dir())? {
        total += bytes;
    }
    Ok(total)
}

/// Checks that the filesystem that will hold `out` has `bytes` free for this user (where the
/// system says; elsewhere nothing is checked). With `--overwrite` the old checkpoint is
/// removed only after the new one is complete, so it does not count as free.
pub fn check_free_space(out: &Path, bytes: u64) -> Result<()> {
    let out_abs = absolute(out);
    let Some(dir) = out_abs.ancestors().skip(1).find(|a| a.is_dir()) else {
        return Ok(());
    };
    match free_bytes(dir) {
        Some(available) if available < bytes => Err(PipelineError::NoSpace {
            path: dir.to_path_buf(),
            needed: bytes,
            available,
        }),
        _ => Ok(()),
    }
}

/// Bytes an unprivileged user may still write on the filesystem of `dir`.
#[cfg(unix)]
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string and `stat` is valid for one `statvfs`, which
    // the call fills entirely when it returns 0.
    let stat = unsafe {
        if libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) != 0 {
            return None;
        }
        stat.assume_init()
    };
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    Some(stat.f_bavail as u64 * stat.f_frsize as u64)
}

#[cfg(not(unix))]
fn free_bytes(_dir: &Path) -> Option<u64> {
    None
}
