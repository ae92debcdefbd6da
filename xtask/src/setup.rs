//! System packages the workspace needs, installed when possible, explained when not.

use std::process::Command;

/// OpenBLAS (BLAS + LAPACK) that `openblas-src` and `ndarray-linalg` link against.
pub const OPENBLAS: &str = "libopenblas-dev";
/// A font for the pictures' labels (curves, trade-off plots; the CLI tests draw them too).
pub const FONT: &str = "fonts-dejavu-core";
/// Fashion-MNIST as IDX files under `/usr/share/datasets/fashion-mnist/`.
pub const FASHION_MNIST: &str = "dataset-fashion-mnist";
/// Open MPI for data-parallel training (`mpirun`, and the library and headers the `mpi`
/// crate binds, with libclang for its bindings' generator).
pub const MPI: [&str; 3] = ["openmpi-bin", "libopenmpi-dev", "libclang-dev"];

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

fn has_apt() -> bool {
    Command::new("apt-get").arg("--version").output().is_ok_and(|o| o.status.success())
}

/// Makes sure the Debian packages are installed: installs them with apt-get when running as
/// root, and otherwise stops with the exact command to run.
pub fn ensure_packages(packages: &[&str]) -> Result<(), String> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !(is_root() && has_apt()) {
        return Err(format!(
            "missing system packages: {list}\nInstall them with:\n    sudo apt-get update && sudo apt-get install -y {list}"
        ));
    }
    eprintln!("xtask: installing missing system packages with apt-get: {list}");
    let run = |args: &[&str]| -> Result<(), String> {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map_err(|e| format!("could not run apt-get: {e}"))?;
        status.success().then_some(()).ok_or_else(|| format!("`apt-get {}` failed ({status})", args.join(" ")))
    };
    run(&["update", "-q"])?;
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend(&missing);
    run(&install)?;
    eprintln!("xtask: installed {list}");
    Ok(())
}
