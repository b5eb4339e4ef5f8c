//! Saving a run after each decoder layer, and resuming it.
//!
//! On a CPU a 7B model takes hours; a run killed at layer 20 of 32 would otherwise start over.
//! With [`PipelineOptions::resume_dir`] set, after each layer the run saves in that directory
//! the layer's packed linears (`layer-00007.safetensors`), the calibration activations that
//! enter the next layer (`activations-00008.safetensors`, f32 as computed) and `state.json`
//! (the next layer, the module reports and stage times so far, and a fingerprint of the model,
//! the calibration tokens, the settings and the backend). A later run with the same directory
//! and the same fingerprint continues after the last saved layer and ends with the checkpoint an
//! uninterrupted run writes, bit for bit: everything a layer depends on is saved exactly.
//!
//! Each file is written under a temporary name and renamed; `state.json` is renamed last, and
//! the activations file is named by the layer it enters (the state's next layer picks it), the
//! previous one deleted only after, so a kill at any moment leaves the previous consistent
//! state (or the new one) to resume from.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use gptq_model::gptq::read_packed;
use gptq_model::{Checkpoint, GptqQuantization, LinearId, ModelConfig, ModelError, WeightStore};
use ndarray::Array2;
use safetensors::Dtype;
use safetensors::tensor::View;
use serde::{Deserialize, Serialize};

use crate::error::{PipelineError, Result};
use crate::options::PipelineOptions;
use crate::quantized::{Batch, QuantizedLinear};
use crate::report::{ModuleReport, StageTimes};
use crate::writer::{HEADER_BYTES_PER_TENSOR, Tensor, packed_tensors, quantization_config};

const STATE_FILE: &str = "state.json";

/// Where `gptq quantize --resume` keeps the state of a run writing to `out`: `.NAME.resume`
/// beside it.
pub fn default_resume_dir(out: &Path) -> PathBuf {
    let out = std::path::absolute(out).unwrap_or_else(|_| out.to_path_buf());
    let name = out.file_name().unwrap_or_default().to_string_lossy();
    out.with_file_name(format!(".{name}.resume"))
}

/// Removes a saved run state from `dir` — the files a run saves, nothing else — and then `dir`
/// itself if that leaves it empty. A directory that does not exist is not an error.
pub fn remove_saved_run(dir: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        other => other?,
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let saved = name.starts_with(STATE_FILE)
            || (name.starts_with("layer-") || name.starts_with("activations-"))
                && name.contains(".safetensors");
        if saved {
            std::fs::remove_file(entry.path())?;
        }
    }
    match std::fs::remove_dir(dir) {
        // Something else lives there too: leave it.
        Err(_) if std::fs::read_dir(dir)?.next().is_some() => Ok(()),
        other => other,
    }
}

/// An upper bound of the disk a saved run state takes at its largest, for a run of
/// `checkpoint` on sequences `lens` tokens long: the packed linears of every layer, two
/// layers' activations (the next is written before the previous is deleted) and `state.json`.
pub fn saved_run_bytes(
    checkpoint: &Checkpoint,
    lens: &[usize],
    options: &PipelineOptions,
) -> Result<u64> {
    let config = checkpoint.config();
    let mut total = 0;
    for layer in 0..config.num_hidden_layers {
        let shape = config.layer_shape(layer);
        for id in LinearId::ALL {
            let name = id.tensor_prefix(layer).len() as u64 + ".qweight".len() as u64;
            total += options.packed_linear_bytes(id, &shape, layer)?
                + 4 * (HEADER_BYTES_PER_TENSOR + 2 * name);
        }
        // Its seven module reports in state.json, pretty-printed (about 250 bytes each).
        total += 7 * 512;
    }
    let tokens: usize = lens.iter().sum();
    let batches = lens.len().div_ceil(options.batch_sequences.max(1));
    let per_batch = 2 * HEADER_BYTES_PER_TENSOR + 8 * options.batch_sequences as u64;
    let activations = 4 * (tokens * config.hidden_size) as u64 + batches as u64 * per_batch;
    Ok(total + 2 * activations + 4096)
}

/// The bytes the files in `dir` take (0 when it does not exist): what a saved run state there
/// occupies already.
pub fn saved_run_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// The lock file of a resume directory: the id of the process that uses it.
const LOCK_FILE: &str = "lock";

/// A resume directory held by this process for the length of a run, so that a second run on
/// the same `--out` cannot take the first one's live state for an interrupted run's. The lock
/// is a file holding the owner's process id; one whose process is gone is stale and taken
/// over. Dropping the lock removes the file, and the directory if nothing else is left.
#[derive(Debug)]
pub struct ResumeLock {
    dir: PathBuf,
}

impl ResumeLock {
    /// Locks `dir` (creating it), or says which live process holds it.
    pub fn acquire(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(PipelineError::write(dir))?;
        let path = dir.join(LOCK_FILE);
        let me = std::process::id();
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut file) => {
                    use std::io::Write;
                    write!(file, "{me}").map_err(PipelineError::write(&path))?;
                    return Ok(ResumeLock {
                        dir: dir.to_path_buf(),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let owner = std::fs::read_to_string(&path)
                        .ok()
                        .and_then(|t| t.trim().parse::<u32>().ok());
                    if let Some(pid) = owner.filter(|&p| p != me && crate::writer::process_alive(p))
                    {
                        return Err(PipelineError::Invalid(format!(
                            "the run state {} is in use by another run (process {pid}): wait \
                             for it to finish, or give this run another --out",
                            dir.display()
                        )));
                    }
                    // Its owner is gone (or it is ours): stale, taken over.
                    std::fs::remove_file(&path).map_err(PipelineError::write(&path))?;
                }
                Err(e) => return Err(PipelineError::write(&path)(e)),
            }
        }
        Err(PipelineError::Invalid(format!(
            "the run state {} was locked by another run while this one started: wait for it \
             to finish, or give this run another --out",
            dir.display()
        )))
    }
}

impl Drop for ResumeLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.dir.join(LOCK_FILE));
        // Only when empty: a saved state of an unfinished run stays.
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Whether `dir` holds a saved run state.
pub fn holds_saved_run(dir: &Path) -> bool {
    dir.join(STATE_FILE).is_file()
}
/// Bumped whenever what is saved changes meaning.
const STATE_VERSION: u32 = 1;

/// `state.json`.
#[derive(Debug, Serialize, Deserialize)]
struct State {
    version: u32,
    fingerprint: String,
    /// Layers done: the next one to quantize.
    next_layer: usize,
    modules: Vec<ModuleReport>,
    times: StageTimes,
}

/// A run as saved after its last finished layer.
pub(crate) struct Saved {
    /// The first layer still to quantize.
    pub next_layer: usize,
    /// The calibration activations entering `next_layer` (none once every layer is done).
    pub batches: Vec<Batch>,
    /// Every linear of the layers before `next_layer`, in the order the run produced them.
    pub linears: Vec<QuantizedLinear>,
    /// Their reports, in the same order.
    pub modules: Vec<ModuleReport>,
    /// Time spent so far.
    pub times: StageTimes,
}

/// What a resume directory holds for a run.
pub(crate) enum Found {
    /// Nothing saved.
    Nothing,
    /// A state of a run with another model, calibration, settings or backend: it was cleared.
    OtherRun,
    /// This run's state.
    Saved(Saved),
}

/// The resume directory of one run.
pub(crate) struct ResumeDir {
    dir: PathBuf,
    fingerprint: String,
}

impl ResumeDir {
    /// The directory `dir` for a run of `checkpoint` on `samples` with `options` on the backend
    /// named `backend`.
    pub fn new(
        dir: &Path,
        checkpoint: &Checkpoint,
        samples: &[Vec<u32>],
        options: &PipelineOptions,
        backend: &str,
    ) -> Self {
        Self {
            dir: dir.to_path_buf(),
            fingerprint: fingerprint(checkpoint, samples, options, backend),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Reads what is saved for a run of a model with `config` under `options`. A state of
    /// another run is removed, so that its layers can never mix with this run's; a damaged
    /// state is an error naming the directory to delete.
    pub fn load(&self, config: &ModelConfig, options: &PipelineOptions) -> Result<Found> {
        let state_path = self.dir.join(STATE_FILE);
        if !state_path.is_file() {
            return Ok(Found::Nothing);
        }
        let text = std::fs::read_to_string(&state_path).map_err(self.damaged())?;
        let state: State = serde_json::from_str(&text).map_err(self.damaged())?;
        if state.version != STATE_VERSION || state.fingerprint != self.fingerprint {
            self.clear()?;
            return Ok(Found::OtherRun);
        }
        // Every saved file, memory-mapped as one store: the same reader as for checkpoints.
        let activations = self.dir.join(activations_file(state.next_layer));
        let files: Vec<PathBuf> = (0..state.next_layer)
            .map(|layer| self.dir.join(layer_file(layer)))
            .chain(activations.is_file().then_some(activations))
            .collect();
        let saved = WeightStore::open_files(&files).map_err(self.damaged())?;
        let quantization = GptqQuantization {
            bits: options.config.bits(),
            group_size: options.config.group_size().as_reference_int(),
            desc_act: options.config.act_order(),
            sym: options.config.symmetric(),
            format: options.checkpoint_format(),
        };
        let mut linears = Vec::with_capacity(state.modules.len());
        for module in &state.modules {
            let id = LinearId::from_hf_name(&module.module)
                .ok_or_else(|| self.damaged()(format!("unknown module {}", module.module)))?;
            let prefix = id.tensor_prefix(module.layer);
            let (_, in_features) = id.dims(&config.layer_shape(module.layer));
            let packed =
                read_packed(&saved, &prefix, &quantization, in_features).map_err(self.damaged())?;
            linears.push(QuantizedLinear {
                layer: module.layer,
                id,
                packed,
            });
        }
        Ok(Found::Saved(Saved {
            next_layer: state.next_layer,
            batches: read_batches(&saved).map_err(self.damaged())?,
            linears,
            modules: state.modules,
            times: state.times,
        }))
    }

    /// Saves the run after layer `layer`: its linears `done`, the activations entering the next
    /// layer (`None` after the last), and the reports and times of every layer so far.
    pub fn save(
        &self,
        layer: usize,
        done: &[QuantizedLinear],
        next_input: Option<&[Batch]>,
        modules: &[ModuleReport],
        times: &StageTimes,
    ) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(PipelineError::write(&self.dir))?;
        let linears: Vec<(String, Tensor<'static>)> = done
            .iter()
            .flat_map(|l| packed_tensors(&l.prefix(), &l.packed))
            .collect();
        self.write_atomically(
            &layer_file(layer),
            linears.iter().map(|(n, t)| (n.clone(), t)),
        )?;
        if let Some(batches) = next_input {
            let tensors: Vec<(String, Tensor<'_>)> = batches
                .iter()
                .enumerate()
                .flat_map(|(i, b)| {
                    [
                        (format!("batch.{i}.hidden"), hidden_tensor(&b.hidden)),
                        (format!("batch.{i}.lens"), lens_tensor(&b.lens)),
                    ]
                })
                .collect();
            let views = tensors.iter().map(|(n, t)| (n.clone(), t));
            self.write_atomically(&activations_file(layer + 1), views)?;
        }
        let state = State {
            version: STATE_VERSION,
            fingerprint: self.fingerprint.clone(),
            next_layer: layer + 1,
            modules: modules.to_vec(),
            times: *times,
        };
        let text = serde_json::to_string_pretty(&state).expect("the state serializes");
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        std::fs::write(&tmp, text).map_err(PipelineError::write(&tmp))?;
        let state_path = self.dir.join(STATE_FILE);
        std::fs::rename(&tmp, &state_path).map_err(PipelineError::write(&state_path))?;
        // The activations entering this layer are no longer needed by any saved state.
        let _ = std::fs::remove_file(self.dir.join(activations_file(layer)));
        Ok(())
    }

    /// Removes the saved state (when it belongs to another run).
    pub fn clear(&self) -> Result<()> {
        remove_saved_run(&self.dir).map_err(PipelineError::write(&self.dir))
    }

    fn write_atomically<V: View>(
        &self,
        name: &str,
        tensors: impl Iterator<Item = (String, V)>,
    ) -> Result<()> {
        let tmp = self.dir.join(format!("{name}.tmp"));
        safetensors::serialize_to_file(tensors, None, &tmp)
            .map_err(|e| PipelineError::write(&tmp)(std::io::Error::other(e.to_string())))?;
        let path = self.dir.join(name);
        std::fs::rename(&tmp, &path).map_err(PipelineError::write(&path))
    }

    /// The error for a state that cannot be read back.
    fn damaged<E: std::fmt::Display>(&self) -> impl Fn(E) -> PipelineError + '_ {
        move |e| {
            PipelineError::Invalid(format!(
                "the run state saved in {} cannot be read ({e}): delete that directory to \
                 start the run over",
                self.dir.display()
            ))
        }
    }
}

fn layer_file(layer: usize) -> String {
    format!("layer-{layer:05}.safetensors")
}

fn activations_file(layer: usize) -> String {
    format!("activations-{layer:05}.safetensors")
}

/// FNV-1a over everything a run's result depends on: `config.json`, the weight files (name,
/// size, modification time), the calibration tokens, the settings and the backend. Not a
/// cryptographic hash: it tells runs apart, it does not defend against forgeries.
fn fingerprint(
    checkpoint: &Checkpoint,
    samples: &[Vec<u32>],
    options: &PipelineOptions,
    backend: &str,
) -> String {
    let mut hash = Fnv::default();
    hash.add(checkpoint.config().raw.to_string().as_bytes());
    for file in checkpoint.weights().files() {
        hash.add(file.as_os_str().as_encoded_bytes());
        if let Ok(meta) = std::fs::metadata(file) {
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
            hash.add(&meta.len().to_le_bytes());
            hash.add(&modified.map_or(0, |d| d.as_nanos()).to_le_bytes());
        }
    }
    hash.add(&samples.len().to_le_bytes());
    for sample in samples {
        hash.add(&sample.len().to_le_bytes());
        for token in sample {
            hash.add(&token.to_le_bytes());
        }
    }
    hash.add(quantization_config(options).to_string().as_bytes());
    hash.add(format!("{:?}", options.solve).as_bytes());
    hash.add(&options.batch_sequences.to_le_bytes());
    hash.add(backend.as_bytes());
    format!("{:016x}", hash.0)
}

/// 64-bit FNV-1a.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn add(&mut self, bytes: &[u8]) {
        // A length prefix keeps ("ab", "c") and ("a", "bc") apart.
        for &b in (bytes.len() as u64).to_le_bytes().iter().chain(bytes) {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// A batch's activations as a tensor to write, borrowed where the machine is little-endian.
fn hidden_tensor(hidden: &Array2<f32>) -> Tensor<'_> {
    let shape = hidden.shape().to_vec();
    match f32_bytes(hidden.as_slice().expect("activations are contiguous")) {
        Cow::Borrowed(data) => Tensor::Borrowed {
            dtype: Dtype::F32,
            shape,
            data,
        },
        Cow::Owned(data) => Tensor::Owned {
            dtype: Dtype::F32,
            shape,
            data,
        },
    }
}

/// A batch's sequence lengths as a tensor to write.
fn lens_tensor(lens: &[usize]) -> Tensor<'static> {
    Tensor::Owned {
        dtype: Dtype::U64,
        shape: vec![lens.len()],
        data: lens
            .iter()
            .flat_map(|&n| (n as u64).to_le_bytes())
            .collect(),
    }
}

/// Little-endian bytes of `values`: borrowed where the machine is little-endian (no copy of
/// activations that may take gigabytes), converted elsewhere.
fn f32_bytes(values: &[f32]) -> Cow<'_, [u8]> {
    if cfg!(target_endian = "little") {
        // SAFETY: every bit pattern is a valid u8, the length covers exactly the same bytes,
        // and u8 has no alignment requirement.
        Cow::Borrowed(unsafe {
            std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), std::mem::size_of_val(values))
        })
    } else {
        Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
}

/// The calibration batches saved in `saved` (none when it holds no activations).
fn read_batches(saved: &WeightStore) -> gptq_model::Result<Vec<Batch>> {
    let mut batches = Vec::new();
    for i in 0.. {
        let name = format!("batch.{i}.hidden");
        if !saved.contains(&name) {
            break;
        }
        let shape = saved.meta(&name)?.shape;
        let [rows, columns] = shape[..] else {
            return Err(ModelError::InvalidArgument(format!("{name} is not 2-D")));
        };
        let hidden = saved.load_matrix(&name, rows, columns)?;
        let lens = saved.raw(&format!("batch.{i}.lens"))?;
        if lens.dtype != Dtype::U64 {
            return Err(ModelError::InvalidArgument(format!(
                "batch {i}: its sequence lengths are {:?}, not U64",
                lens.dtype
            )));
        }
        let lens: Vec<usize> = lens
            .data
            .chunks_exact(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
            .collect();
        if lens.iter().sum::<usize>() != rows {
            return Err(ModelError::InvalidArgument(format!(
                "batch {i}: its sequence lengths do not add up to its {rows} rows"
            )));
        }
        batches.push(Batch { hidden, lens });
    }
    Ok(batches)
}
