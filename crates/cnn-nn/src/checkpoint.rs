//! Checkpoints in the safetensors format: written atomically, checked on load.

use crate::error::{NnError, Result};
use crate::sequential::Sequential;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

fn ckpt_error(path: &Path, reason: String) -> NnError {
    NnError::Checkpoint { path: path.to_path_buf(), reason }
}

/// Saves every parameter as an f32 tensor named `"{layer}.{weight|bias}"`, plus `metadata`.
///
/// The file is written to `<path>.tmp`, flushed, then renamed over `path`: an interrupted
/// save never leaves a broken checkpoint.
///
/// # Errors
/// An I/O failure (naming the file).
pub fn save(model: &Sequential, path: &Path, metadata: Option<HashMap<String, String>>) -> Result<()> {
    let named = model.named_params();
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = named
        .iter()
        .map(|(name, p)| {
            let data = p.value.as_standard_layout().iter().flat_map(|v| v.to_le_bytes()).collect();
            (name.clone(), data, p.value.shape().to_vec())
        })
        .collect();
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(name, data, shape)| {
            let view = TensorView::new(Dtype::F32, shape.clone(), data).expect("sizes agree");
            (name.clone(), view)
        })
        .collect();
    let encoded = safetensors::serialize(views, metadata).map_err(|e| ckpt_error(path, e.to_string()))?;

    let tmp = path.with_extension("safetensors.tmp");
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&encoded)?;
        file.sync_all()
    };
    write().map_err(|e| NnError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| NnError::io(path, e))
}

/// Loads a checkpoint into `model`, checking every name and shape first: on any mismatch
/// nothing is changed and the error names the tensor. Returns the file's metadata.
///
/// # Errors
/// An unreadable or malformed file, a missing or extra tensor, a wrong shape or dtype.
pub fn load(model: &mut Sequential, path: &Path) -> Result<HashMap<String, String>> {
    let bytes = std::fs::read(path).map_err(|e| NnError::io(path, e))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| ckpt_error(path, format!("not a safetensors file: {e}")))?;
    let tensors = SafeTensors::deserialize(&bytes).map_err(|e| ckpt_error(path, format!("not a safetensors file: {e}")))?;

    let mut values = vec![];
    for (name, p) in model.named_params() {
        let t = tensors.tensor(&name).map_err(|_| ckpt_error(path, format!("tensor `{name}` is missing (model expects shape {:?})", p.value.shape())))?;
        if t.dtype() != Dtype::F32 {
            return Err(ckpt_error(path, format!("tensor `{name}` is {:?}, expected F32", t.dtype())));
        }
        if t.shape() != p.value.shape() {
            return Err(ckpt_error(path, format!("tensor `{name}` has shape {:?}, the model expects {:?}", t.shape(), p.value.shape())));
        }
        let data: Vec<f32> = t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        values.push(data);
    }
    let expected: Vec<String> = model.named_params().into_iter().map(|(n, _)| n).collect();
    if let Some(extra) = tensors.names().into_iter().find(|n| !expected.iter().any(|e| e == *n)) {
        return Err(ckpt_error(path, format!("tensor `{extra}` does not belong to this model")));
    }
    for (p, data) in model.params_mut().into_iter().zip(values) {
        let shape = p.value.raw_dim();
        p.value = ndarray::ArrayD::from_shape_vec(shape, data).expect("shape checked above");
    }
    Ok(meta.metadata().clone().unwrap_or_default())
}
