//! A program that depends on cnn-nn (here `cnn-info`) runs OpenBLAS's best kernels for the
//! CPU without `OPENBLAS_CORETYPE` in its environment; the variable, when given, still wins.

use std::process::Command;

/// Runs `cnn-info` with `coretype` as OPENBLAS_CORETYPE (or without the variable) and returns
/// the kernel family it reports, its GFLOP/s and what it wrote to stderr.
fn info(coretype: Option<&str>) -> (String, f64, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cnn-info"));
    match coretype {
        Some(core) => command.env("OPENBLAS_CORETYPE", core),
        None => command.env_remove("OPENBLAS_CORETYPE"),
    };
    let out = command.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let field = |prefix: &str| text.lines().find_map(|l| l.strip_prefix(prefix)).unwrap_or_else(|| panic!("no `{prefix}` in {text}")).to_string();
    let core = field("OpenBLAS kernels: ").split_whitespace().next().unwrap().to_string();
    let gflops = field("dense 512x512x512 on one BLAS thread: ").split_whitespace().next().unwrap().parse().unwrap();
    (core, gflops, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn the_library_selects_the_best_kernels_without_the_variable() {
    let Some(best) = cnn_nn::cnn_core::threads::suggested_coretype() else {
        eprintln!("this CPU has no AVX2: OpenBLAS's own choice stands");
        return;
    };
    let (core, gflops, stderr) = info(None);
    assert!(!stderr.contains("warning"), "no warning when the kernels could be chosen: {stderr}");
    // the families as wide as the best one (OpenBLAS may itself pick a newer sibling)
    let as_wide: &[&str] = if best == "SkylakeX" { &["SkylakeX", "Cooperlake", "SapphireRapids"] } else { &["Haswell", "Zen"] };
    assert!(as_wide.contains(&core.as_str()), "selected without OPENBLAS_CORETYPE: {core}, the CPU allows {best}");
    // the user's choice wins, and shows what the selection is worth side by side
    let (generic, generic_gflops, stderr) = info(Some("Prescott"));
    assert_eq!(generic, "Prescott");
    assert!(stderr.contains("OPENBLAS_CORETYPE=Prescott makes OpenBLAS run its `Prescott` kernels"), "{stderr}");
    eprintln!("{core}: {gflops:.1} GFLOP/s, generic Prescott: {generic_gflops:.1} GFLOP/s");
    // 2-5x expected (SSE3 against AVX2/AVX-512 kernels); a generous margin for a noisy machine
    assert!(gflops > 1.3 * generic_gflops, "{core} {gflops:.1} vs Prescott {generic_gflops:.1} GFLOP/s");
}
