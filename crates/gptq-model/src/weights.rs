//! Memory-mapped safetensors weights, single-file or sharded.
//!
//! Nothing is copied when a checkpoint is opened: the files are memory-mapped and only their
//! headers parsed. A tensor is converted to owned `f32` when it is asked for, so that running a
//! model layer by layer holds one layer in `f32` at a time.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use half::slice::HalfFloatSliceExt;
use memmap2::Mmap;
use ndarray::{Array1, Array2};
use safetensors::{Dtype, SafeTensors, tensor::Metadata};

use crate::error::{ModelError, Result};

/// Name of the single-file checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";
/// Name of the shard index of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

struct Shard {
    path: PathBuf,
    mmap: Mmap,
    /// Byte offset of the data section (8-byte length + JSON header).
    data_start: usize,
    metadata: Metadata,
}

/// Where one tensor lives and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorMeta {
    /// Element type as stored.
    pub dtype: Dtype,
    /// Shape as stored (row-major).
    pub shape: Vec<usize>,
}

/// A borrowed, still-encoded tensor straight from the memory map.
#[derive(Debug, Clone, Copy)]
pub struct RawTensor<'a> {
    /// Element type as stored.
    pub dtype: Dtype,
    /// Shape as stored (row-major).
    pub shape: &'a [usize],
    /// The little-endian bytes.
    pub data: &'a [u8],
}

/// All safetensors files of one checkpoint, memory-mapped.
pub struct WeightStore {
    shards: Vec<Shard>,
    /// Tensor name → shard index.
    index: HashMap<String, usize>,
    /// How to name the source in "missing tensor" messages.
    source_name: String,
}

impl std::fmt::Debug for WeightStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightStore")
            .field(
                "shards",
                &self.shards.iter().map(|s| &s.path).collect::<Vec<_>>(),
            )
            .field("tensors", &self.index.len())
            .finish()
    }
}

impl WeightStore {
    /// Opens `DIR/model.safetensors`, or every shard listed in `DIR/model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let single = dir.join(SINGLE_FILE);
        let index_path = dir.join(INDEX_FILE);
        if single.is_file() {
            return Self::open_files(&[single]);
        }
        if !index_path.is_file() {
            return Err(ModelError::WeightsNotFound {
                dir: dir.to_path_buf(),
            });
        }
        let text =
            std::fs::read_to_string(&index_path).map_err(|e| ModelError::io(&index_path, e))?;
        let bad = |reason: String| ModelError::InvalidJson {
            path: index_path.clone(),
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let map = value
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| bad("no `weight_map` object".into()))?;
        // BTreeMap: shard order (and error order) does not depend on hashing.
        let mut by_file: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, file) in map {
            let file = file
                .as_str()
                .ok_or_else(|| bad(format!("weight_map entry {name} is not a file name")))?;
            by_file
                .entry(file.to_string())
                .or_default()
                .push(name.clone());
        }
        let mut shards = Vec::with_capacity(by_file.len());
        let mut index = HashMap::with_capacity(map.len());
        for (file, names) in by_file {
            let path = dir.join(&file);
            if !path.is_file() {
                return Err(ModelError::io(
                    &path,
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("shard listed in {INDEX_FILE} is missing"),
                    ),
                ));
            }
            let shard = open_shard(&path)?;
            let id = shards.len();
            for name in names {
                // The index may claim a tensor the shard lacks; report it by name on use.
                if shard.metadata.info(&name).is_some() {
                    index.insert(name, id);
                }
            }
            shards.push(shard);
        }
        Ok(Self {
            shards,
            index,
            source_name: INDEX_FILE.to_string(),
        })
    }

    /// Opens safetensors files as one store holding every tensor of each (a name in two files
    /// is taken from the later one). Missing tensors are reported against the first file.
    pub fn open_files(files: &[impl AsRef<Path>]) -> Result<Self> {
        let mut shards = Vec::with_capacity(files.len());
        let mut index = HashMap::new();
        for (id, path) in files.iter().enumerate() {
            let shard = open_shard(path.as_ref())?;
            index.extend(shard.metadata.tensors().into_keys().map(|k| (k, id)));
            shards.push(shard);
        }
        let source_name = files.first().map_or_else(String::new, |f| {
            let name = f.as_ref().file_name().unwrap_or_default();
            name.to_string_lossy().into_owned()
        });
        Ok(Self {
            shards,
            index,
            source_name,
        })
    }

    /// Whether the checkpoint holds `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.index.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// The files backing this store.
    pub fn files(&self) -> Vec<&Path> {
        self.shards.iter().map(|s| s.path.as_path()).collect()
    }

    /// dtype and shape of `name`.
    pub fn meta(&self, name: &str) -> Result<TensorMeta> {
        let raw = self.raw(name)?;
        Ok(TensorMeta {
            dtype: raw.dtype,
            shape: raw.shape.to_vec(),
        })
    }

    /// The encoded bytes of `name`, borrowed from the memory map.
    pub fn raw(&self, name: &str) -> Result<RawTensor<'_>> {
        let &shard_id = self
            .index
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.to_string(),
                file: self.source_name.clone(),
            })?;
        let shard = &self.shards[shard_id];
        let info = shard
            .metadata
            .info(name)
            .expect("index only lists tensors present in their shard");
        let (begin, end) = info.data_offsets;
        Ok(RawTensor {
            dtype: info.dtype,
            shape: &info.shape,
            data: &shard.mmap[shard.data_start + begin..shard.data_start + end],
        })
    }

    /// Lets the system drop the pages of `name` from this process's resident memory (Linux
    /// `MADV_DONTNEED`; a no-op elsewhere). The file stays mapped and a later read pages it in
    /// again: a caller that has converted a tensor to its own copy calls this so that the
    /// mapped checkpoint does not stay resident layer after layer (an 8B model's 16 GB).
    pub fn release(&self, name: &str) {
        let Some(&shard_id) = self.index.get(name) else {
            return;
        };
        let shard = &self.shards[shard_id];
        let Some(info) = shard.metadata.info(name) else {
            return;
        };
        let (begin, end) = info.data_offsets;
        release_range(
            &shard.mmap,
            shard.data_start + begin,
            shard.data_start + end,
        );
    }

    /// `name` converted to `f32`, checked to have shape `expected` and only finite values.
    pub fn load_f32(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        let raw = self.raw(name)?;
        if raw.shape != expected {
            return Err(ModelError::TensorShape {
                name: name.to_string(),
                expected: expected.to_vec(),
                actual: raw.shape.to_vec(),
            });
        }
        let out = decode_f32(name, raw.dtype, raw.data)?;
        // The owned copy is what the caller keeps; the mapped pages need not stay resident.
        self.release(name);
        if let Some((index, &value)) = out.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(ModelError::NonFiniteWeight {
                name: name.to_string(),
                index,
                value,
            });
        }
        Ok(out)
    }

    /// Checks that `name` has shape `expected` (any shape when `None`) and only finite values,
    /// decoding it a chunk at a time: a whole embedding is never converted at once.
    pub fn check_finite(&self, name: &str, expected: Option<&[usize]>) -> Result<()> {
        let raw = self.raw(name)?;
        if let Some(expected) = expected
            && raw.shape != expected
        {
            return Err(ModelError::TensorShape {
                name: name.to_string(),
                expected: expected.to_vec(),
                actual: raw.shape.to_vec(),
            });
        }
        const CHUNK: usize = 1 << 20;
        let element = raw.dtype.bitsize() / 8;
        for (c, bytes) in raw.data.chunks(CHUNK * element.max(1)).enumerate() {
            let values = decode_f32(name, raw.dtype, bytes)?;
            if let Some((i, &value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(ModelError::NonFiniteWeight {
                    name: name.to_string(),
                    index: c * CHUNK + i,
                    value,
                });
            }
        }
        self.release(name);
        Ok(())
    }

    /// A 2-D tensor `[rows, cols]` as owned `f32`.
    pub fn load_matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Array2<f32>> {
        let v = self.load_f32(name, &[rows, cols])?;
        Ok(Array2::from_shape_vec((rows, cols), v).expect("length checked against shape"))
    }

    /// A 1-D tensor `[len]` as owned `f32`.
    pub fn load_vector(&self, name: &str, len: usize) -> Result<Array1<f32>> {
        Ok(Array1::from_vec(self.load_f32(name, &[len])?))
    }
}

/// Advises Linux that bytes `begin..end` of `mmap` are not needed now (whole pages around
/// them). Advice only: a failure changes nothing, so it is ignored.
#[cfg(target_os = "linux")]
fn release_range(mmap: &Mmap, begin: usize, end: usize) {
    const PAGE: usize = 4096;
    let start = begin / PAGE * PAGE;
    let end = end.next_multiple_of(PAGE).min(mmap.len());
    if end > start {
        // SAFETY: the map is a read-only shared mapping of a file (`Mmap::map`): MADV_DONTNEED
        // drops its pages from this process, and any later read of a borrowed slice faults
        // the same bytes back in from the file. Nothing is written through it.
        unsafe {
            let _ =
                mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn release_range(_mmap: &Mmap, _begin: usize, _end: usize) {}

fn open_shard(path: &Path) -> Result<Shard> {
    let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
    // SAFETY: the map is read-only; like every safetensors reader we rely on nobody truncating
    // the checkpoint while it is open (that would be a bug outside this process's control).
    let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
    let (header_len, metadata) =
        SafeTensors::read_metadata(&mmap).map_err(|e| ModelError::InvalidSafetensors {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    Ok(Shard {
        path: path.to_path_buf(),
        mmap,
        data_start: 8 + header_len,
        metadata,
    })
}

/// The values of a little-endian data section. It is not guaranteed to be aligned for `T`, so
/// the bytes are copied out (bytemuck) rather than cast in place; the crate builds only for
/// little-endian targets, where the copy is the value.
pub(crate) fn le_values<T: bytemuck::Pod>(data: &[u8]) -> Vec<T> {
    bytemuck::pod_collect_to_vec(data)
}

/// Decodes little-endian f32/f16/bf16 bytes into f32 (half's vectorized conversions).
fn decode_f32(name: &str, dtype: Dtype, data: &[u8]) -> Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::F32 => le_values::<f32>(data),
        Dtype::F16 => le_values::<half::f16>(data).to_f32_vec(),
        Dtype::BF16 => le_values::<half::bf16>(data).to_f32_vec(),
        other => {
            return Err(ModelError::UnsupportedDtype {
                name: name.to_string(),
                dtype: format!("{other:?}"),
            });
        }
    })
}
