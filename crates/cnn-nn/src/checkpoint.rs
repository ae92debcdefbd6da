//! Checkpoints in the safetensors format: written atomically and byte-for-byte reproducibly,
//! checked completely before anything is loaded.
//!
//! A file holds every parameter and buffer (BatchNorm's running statistics) under its model
//! path (`3.weight`, `2.block.0.bias`, `1.running_mean`), the optimiser's buffers when one is
//! saved (`optimizer.m.3.weight`, `optimizer.velocity.0.bias`),
//! and string metadata (`optimizer`, `optimizer.steps`, and whatever the caller adds: the
//! epoch, the seed, the metrics so far).

use crate::error::{NnError, Result};
use crate::optim::{Optimizer, OptimizerState};
use crate::sequential::Sequential;
use ndarray::ArrayD;
use safetensors::tensor::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

/// String metadata of a checkpoint, in a fixed (sorted) order.
pub type Metadata = BTreeMap<String, String>;

/// Prefix of the optimiser's tensors.
const OPTIMIZER: &str = "optimizer";

fn ckpt_error(path: &Path, reason: String) -> NnError {
    NnError::Checkpoint { path: path.to_path_buf(), reason }
}

/// The temporary file a save writes before renaming it over `path`.
pub fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Saves the model's parameters, the optimiser's state if given, and `metadata`.
///
/// The bytes depend only on what is saved (tensors in model order, metadata sorted), so two
/// runs with the same seed write identical files. The file is written to
/// [`temporary_path`], flushed, then renamed over `path`: an interrupted save never leaves a
/// broken checkpoint.
///
/// # Errors
/// Duplicate tensor names, an I/O failure (naming the file).
pub fn save(path: &Path, model: &Sequential, optimizer: Option<&dyn Optimizer>, metadata: &Metadata) -> Result<()> {
    let mut tensors: Vec<(String, &ArrayD<f32>)> = model.named_params().into_iter().map(|(n, p)| (n, &p.value)).collect();
    let params = tensors.len();
    tensors.extend(model.named_buffers());
    let mut metadata = metadata.clone();
    let state = optimizer.map(|o| o.state());
    if let Some(state) = &state {
        metadata.insert(OPTIMIZER.into(), state.kind.clone());
        metadata.insert(format!("{OPTIMIZER}.steps"), state.steps.to_string());
        let names: Vec<String> = tensors[..params].iter().map(|(n, _)| n.clone()).collect();
        for (buffer, values) in &state.buffers {
            tensors.extend(names.iter().zip(values).map(|(n, v)| (format!("{OPTIMIZER}.{buffer}.{n}"), v)));
        }
    }
    let mut seen = HashSet::new();
    if let Some((name, _)) = tensors.iter().find(|(n, _)| !seen.insert(n.as_str())) {
        return Err(NnError::DuplicateName { name: name.clone() });
    }
    let bytes = encode(&tensors, &metadata);

    let tmp = temporary_path(path);
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()
    };
    write().map_err(|e| NnError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| NnError::io(path, e))
}

/// The safetensors layout: an 8-byte little-endian header length, a JSON header (metadata,
/// then each tensor's dtype, shape and byte range, in the given order, padded with spaces to
/// a multiple of 8), then the tensors' little-endian bytes.
fn encode(tensors: &[(String, &ArrayD<f32>)], metadata: &Metadata) -> Vec<u8> {
    let json = |s: &str| serde_json::to_string(s).expect("a string serialises");
    let mut entries = vec![];
    if !metadata.is_empty() {
        let pairs: Vec<String> = metadata.iter().map(|(k, v)| format!("{}:{}", json(k), json(v))).collect();
        entries.push(format!("\"__metadata__\":{{{}}}", pairs.join(",")));
    }
    let mut offset = 0;
    for (name, value) in tensors {
        let end = offset + 4 * value.len();
        let shape: Vec<String> = value.shape().iter().map(usize::to_string).collect();
        entries.push(format!("{}:{{\"dtype\":\"F32\",\"shape\":[{}],\"data_offsets\":[{offset},{end}]}}", json(name), shape.join(",")));
        offset = end;
    }
    let mut header = format!("{{{}}}", entries.join(",")).into_bytes();
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut bytes = Vec::with_capacity(8 + header.len() + offset);
    bytes.extend((header.len() as u64).to_le_bytes());
    bytes.extend(header);
    for (_, value) in tensors {
        bytes.extend(value.iter().flat_map(|v| v.to_le_bytes()));
    }
    bytes
}

/// Loads a checkpoint into `model` (and `optimizer`, if given), checking everything first:
/// every name, shape and dtype, and that every value is finite. On any fault nothing is
/// changed and the error names the tensor. Returns the file's metadata.
///
/// Without an optimiser, the file's optimiser tensors are ignored (loading weights to
/// evaluate or compress them); with one, the file must hold the state of the same kind.
///
/// # Errors
/// An unreadable or malformed file, a missing or extra tensor, a wrong shape or dtype, a NaN
/// or infinite value, an optimiser state that is missing or of another kind.
pub fn load(path: &Path, model: &mut Sequential, optimizer: Option<&mut dyn Optimizer>) -> Result<Metadata> {
    let bytes = std::fs::read(path).map_err(|e| NnError::io(path, e))?;
    let metadata = metadata_of(path, &bytes)?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| ckpt_error(path, format!("not a safetensors file: {e}")))?;
    let read = |name: &str, shape: &[usize]| -> Result<ArrayD<f32>> {
        let t = file.tensor(name).map_err(|_| ckpt_error(path, format!("tensor `{name}` is missing (expected shape {shape:?})")))?;
        if t.dtype() != Dtype::F32 {
            return Err(ckpt_error(path, format!("tensor `{name}` is {:?}, expected F32", t.dtype())));
        }
        if t.shape() != shape {
            return Err(ckpt_error(path, format!("tensor `{name}` has shape {:?}, expected {shape:?}", t.shape())));
        }
        let data: Vec<f32> = t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        if let Some((i, v)) = data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(ckpt_error(path, format!("tensor `{name}` holds a non-finite value ({v}) at flat index {i}")));
        }
        Ok(ArrayD::from_shape_vec(shape, data).expect("shape checked"))
    };

    let params: Vec<(String, Vec<usize>)> = model.named_params().into_iter().map(|(n, p)| (n, p.value.shape().to_vec())).collect();
    let buffers: Vec<(String, Vec<usize>)> = model.named_buffers().into_iter().map(|(n, b)| (n, b.shape().to_vec())).collect();
    let values = params.iter().map(|(name, shape)| read(name, shape)).collect::<Result<Vec<_>>>()?;
    let buffer_values = buffers.iter().map(|(name, shape)| read(name, shape)).collect::<Result<Vec<_>>>()?;
    let mut expected: HashSet<String> = params.iter().chain(&buffers).map(|(n, _)| n.clone()).collect();
    let state = match &optimizer {
        Some(opt) => Some(read_state(path, &metadata, &params, opt.state(), &read, &mut expected)?),
        None => None,
    };
    let foreign = |n: &&str| !expected.contains(*n) && (state.is_some() || !n.starts_with(&format!("{OPTIMIZER}.")));
    if let Some(extra) = file.names().into_iter().find(foreign) {
        return Err(ckpt_error(path, format!("tensor `{extra}` does not belong to this model")));
    }

    for ((_, p), value) in model.named_params_mut().into_iter().zip(values) {
        p.value = value;
    }
    for ((_, b), value) in model.named_buffers_mut().into_iter().zip(buffer_values) {
        *b = value;
    }
    if let (Some(opt), Some(state)) = (optimizer, state) {
        opt.load_state(state)?;
    }
    Ok(metadata)
}

/// Reads the optimiser state saved beside `params`, shaped like the model's parameters, for
/// an optimiser whose current state is `current` (its kind and buffer names).
fn read_state(
    path: &Path,
    metadata: &Metadata,
    params: &[(String, Vec<usize>)],
    current: OptimizerState,
    read: &dyn Fn(&str, &[usize]) -> Result<ArrayD<f32>>,
    expected: &mut HashSet<String>,
) -> Result<OptimizerState> {
    let kind = metadata.get(OPTIMIZER).ok_or_else(|| ckpt_error(path, "holds no optimizer state (saved without one)".into()))?;
    if *kind != current.kind {
        return Err(ckpt_error(path, format!("holds the state of a {kind} optimizer, not {}", current.kind)));
    }
    let steps_key = format!("{OPTIMIZER}.steps");
    let steps = metadata.get(&steps_key).and_then(|s| s.parse().ok());
    let steps: u64 = steps.ok_or_else(|| ckpt_error(path, format!("metadata `{steps_key}` is missing or not a number")))?;
    let mut buffers = vec![];
    for (buffer, _) in current.buffers {
        let names: Vec<String> = params.iter().map(|(n, _)| format!("{OPTIMIZER}.{buffer}.{n}")).collect();
        // before the first step there are no buffers
        let tensors = if steps == 0 {
            vec![]
        } else {
            names.iter().zip(params).map(|(name, (_, shape))| read(name, shape)).collect::<Result<Vec<_>>>()?
        };
        expected.extend(names);
        buffers.push((buffer, tensors));
    }
    Ok(OptimizerState { kind: kind.clone(), steps, buffers })
}

/// Metadata key naming the architecture ([`crate::models::by_name`]).
pub const MODEL: &str = "model";
/// Metadata key of the low-rank factorisation applied to it (`path:rank,…`, see
/// [`crate::compress::plan_string`]).
pub const FACTORISED: &str = "factorised";

/// The metadata of a checkpoint, without loading its tensors.
///
/// # Errors
/// An unreadable file, or one that is not safetensors.
pub fn read_metadata(path: &Path) -> Result<Metadata> {
    let bytes = std::fs::read(path).map_err(|e| NnError::io(path, e))?;
    metadata_of(path, &bytes)
}

/// The metadata in the header of a checkpoint's `bytes`, read from `path`.
fn metadata_of(path: &Path, bytes: &[u8]) -> Result<Metadata> {
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| ckpt_error(path, format!("not a safetensors file: {e}")))?;
    Ok(meta.metadata().clone().unwrap_or_default().into_iter().collect())
}

/// Rebuilds the model a checkpoint was saved from — its architecture named under [`MODEL`],
/// factorised as [`FACTORISED`] says — and loads its weights. Returns it with the metadata.
///
/// # Errors
/// A file that is not a checkpoint, one that names no model or an unknown one, a
/// factorisation plan that does not parse or fit, and [`load`]'s errors (the first tensor that
/// does not fit the architecture).
pub fn load_model(path: &Path) -> Result<(Sequential, Metadata)> {
    let metadata = read_metadata(path)?;
    let name = metadata.get(MODEL).ok_or_else(|| ckpt_error(path, format!("metadata names no `{MODEL}`: the file does not say what it holds")))?;
    let mut model = crate::models::by_name(name, 0).map_err(|e| ckpt_error(path, e.to_string()))?;
    if let Some(plan) = metadata.get(FACTORISED) {
        let plan = crate::compress::parse_plan(plan).map_err(|e| ckpt_error(path, format!("metadata `{FACTORISED}`: {e}")))?;
        crate::compress::factorise(&mut model, &plan)?;
    }
    load(path, &mut model, None)?;
    Ok((model, metadata))
}

/// Deletes the temporary files an interrupted run left in `dir` (every output is written to
/// a temporary file, then renamed): `*.tmp`, and `*.tmp.png` for pictures, whose extension
/// chooses their format. Returns the files removed.
///
/// # Errors
/// A directory that cannot be listed, a file that cannot be removed.
pub fn remove_stale_temporaries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = vec![];
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(NnError::io(dir, e)),
    };
    for entry in entries {
        let path = entry.map_err(|e| NnError::io(dir, e))?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if path.is_file() && (name.ends_with(".tmp") || name.ends_with(".tmp.png")) {
            std::fs::remove_file(&path).map_err(|e| NnError::io(&path, e))?;
            removed.push(path);
        }
    }
    Ok(removed)
}
