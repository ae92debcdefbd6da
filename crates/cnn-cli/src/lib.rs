//! What the workspace's programs share: their `main`, atomic text output, settings checks.
//!
//! The programs themselves are in `src/bin/` (`cnn-train`, `cnn-lowrank`, `cnn-zoo`,
//! `cnn-info`); run them with `cargo xtask train`, `lowrank`, `zoo` and `info`.

use cnn_nn::{NnError, Result};
use std::path::Path;
use std::process::ExitCode;

/// Runs a program's body and turns its error into a message and a failing exit code.
pub fn main_with<A>(args: A, run: impl FnOnce(A) -> Result<()>) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes `text` to `<path>.tmp`, then renames it over `path`: never a half-written file.
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = cnn_nn::checkpoint::temporary_path(path);
    std::fs::write(&tmp, text).map_err(|e| NnError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| NnError::io(path, e))
}

/// Peak resident memory of this process (Linux `VmHWM`), in MiB.
pub fn peak_memory_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Fails unless the learning rate given with `flag` is a positive finite number.
pub fn check_lr(flag: &str, lr: f32) -> Result<()> {
    if lr.is_finite() && lr > 0.0 {
        Ok(())
    } else {
        Err(NnError::Config(format!("{flag} must be a positive number, got {lr}")))
    }
}

/// How many of `n` training images `--val` holds out: a fraction in `(0, 1)` or a count in
/// `1..n`.
pub fn validation_size(val: f64, n: usize) -> Result<usize> {
    let size = if val > 0.0 && val < 1.0 {
        (val * n as f64).round() as usize
    } else if val >= 1.0 && val.fract() == 0.0 {
        val as usize
    } else {
        return Err(NnError::Config(format!("--val must be a fraction in (0, 1) or a whole number of images of at least 1, got {val}")));
    };
    if size == 0 || size >= n {
        return Err(NnError::Config(format!("--val {val} holds out {size} of the {n} training images: it must leave both sets non-empty")));
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_size_is_a_fraction_or_a_count() {
        assert_eq!(validation_size(1.0 / 12.0, 8_000).unwrap(), 667);
        assert_eq!(validation_size(5000.0, 60_000).unwrap(), 5000);
        for bad in [0.0, -1.0, 1.5, f64::NAN, 8000.0, 0.00001] {
            assert!(validation_size(bad, 8_000).is_err(), "{bad}");
        }
        assert_eq!(check_lr("--lr", -1.0).unwrap_err().to_string(), "invalid configuration: --lr must be a positive number, got -1");
        assert!(check_lr("--lr", 0.0).is_err());
    }
}
