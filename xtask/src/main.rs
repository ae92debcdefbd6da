//! `cargo xtask <task>`: the project's commands, with the set-up they need.
//!
//! - `cargo xtask test`: installs what is missing, then runs the whole test suite.
//! - `cargo xtask bench [--quick]`: criterion benchmarks, HTML report and a summary table.
//! - `cargo xtask train [...]`: trains a model of the zoo, writes weights, metrics, pictures;
//!   `--procs N` trains data-parallel in N MPI processes.
//! - `cargo xtask lowrank [...]`: the low-rank speed/accuracy trade-off table of any saved model.
//! - `cargo xtask zoo [...]`: the architecture table, built and measured.
//! - `cargo xtask info`: what cnn-nn makes of this machine (threads, BLAS kernels, GFLOP/s).

mod bench;
mod setup;

use std::process::{Command, ExitCode};

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  test               install missing system packages, then run every test
  bench [--quick]    run the criterion benchmarks; HTML report in target/criterion/report/index.html,
                     summary in target/criterion/summary.md
  train [options]    train a model of the zoo on Fashion-MNIST (release build); options:
                     --model NAME --data DIR --epochs N --batch N --lr X --optimizer adam|sgd --seed N
                     --out DIR --resume FILE --val FRACTION|N --limit N ...  (see `cargo xtask train --help`);
                     --procs N: data-parallel in N MPI processes (mpirun; installs Open MPI),
                     --hosts FILE: an Open MPI hostfile, for processes on several machines
  zoo [options]      build LeNet-5 … Xception: parameters, multiply-adds, activations, forward times
                     (--rounds N --only NAME --out FILE)
  info               threads, the OpenBLAS kernels cnn-nn selected, and a GEMM's GFLOP/s
  lowrank [options]  factorise a trained model's convolutions by truncated SVD (channel or spatial
                     decomposition, any depth): FLOPs, measured layer and whole-network speed-ups,
                     accuracy before/after fine-tuning beside the control (the original fine-tuned
                     as long); --model FILE, else --arch NAME is trained first; --target 2.0 (ranks
                     chosen under a speed budget), --distill T, --ft-epochs N (see --help)";

/// Runs `cargo` with `args`, failing if it fails.
pub fn cargo(args: &[&str]) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command.args(args);
    eprintln!("xtask: cargo {}", args.join(" "));
    let status = command.status().map_err(|e| format!("could not run cargo: {e}"))?;
    status.success().then_some(()).ok_or_else(|| format!("`cargo {}` failed ({status})", args.join(" ")))
}

fn run(args: &[String]) -> Result<(), String> {
    let (task, rest) = args.split_first().ok_or_else(|| USAGE.to_string())?;
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    match task.as_str() {
        "test" => {
            setup::ensure_packages(&[setup::OPENBLAS, setup::FASHION_MNIST, setup::FONT])?;
            setup::ensure_packages(&setup::MPI)?;
            let mut args = vec!["test", "--workspace"];
            args.extend(&rest);
            cargo(&args)?;
            // data-parallel training: two MPI processes on loopback (the tests start mpirun)
            cargo(&["test", "-p", "cnn-nn", "-p", "cnn-cli", "--features", "cnn-cli/mpi", "--test", "distributed"])
        }
        "bench" => {
            setup::ensure_packages(&[setup::OPENBLAS])?;
            bench::run(&rest)
        }
        "train" => {
            setup::ensure_packages(&[setup::OPENBLAS, setup::FASHION_MNIST, setup::FONT])?;
            let (procs, hosts, rest) = mpi_options(&rest)?;
            match procs {
                Some(procs) => mpi_train(procs, hosts, &rest),
                None => {
                    let mut args = vec!["run", "--release", "--quiet", "-p", "cnn-cli", "--bin", "cnn-train", "--"];
                    args.extend(&rest);
                    cargo(&args)
                }
            }
        }
        "lowrank" => {
            setup::ensure_packages(&[setup::OPENBLAS, setup::FASHION_MNIST, setup::FONT])?;
            let mut args = vec!["run", "--release", "--quiet", "-p", "cnn-cli", "--bin", "cnn-lowrank", "--"];
            args.extend(&rest);
            cargo(&args)
        }
        "zoo" => {
            setup::ensure_packages(&[setup::OPENBLAS])?;
            let mut args = vec!["run", "--release", "--quiet", "-p", "cnn-cli", "--bin", "cnn-zoo", "--"];
            args.extend(&rest);
            cargo(&args)
        }
        "info" => {
            setup::ensure_packages(&[setup::OPENBLAS])?;
            cargo(&["run", "--release", "--quiet", "-p", "cnn-cli", "--bin", "cnn-info"])
        }
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown task `{other}`\n\n{USAGE}")),
    }
}

/// `--procs N` and `--hosts FILE` taken out of `train`'s arguments (the rest go to cnn-train).
fn mpi_options<'a>(args: &[&'a str]) -> Result<(Option<usize>, Option<&'a str>, Vec<&'a str>), String> {
    let (mut procs, mut hosts, mut rest) = (None, None, vec![]);
    let mut args = args.iter().copied();
    while let Some(arg) = args.next() {
        let (flag, inline) = arg.split_once('=').map_or((arg, None), |(f, v)| (f, Some(v)));
        match flag {
            "--procs" | "--hosts" => {
                let value = inline.or_else(|| args.next()).ok_or_else(|| format!("{flag} needs a value"))?;
                if flag == "--hosts" {
                    hosts = Some(value);
                } else {
                    procs = Some(value.parse::<usize>().ok().filter(|&n| n >= 1).ok_or_else(|| format!("--procs must be a number of processes >= 1, got `{value}`"))?);
                }
            }
            _ => rest.push(arg),
        }
    }
    if hosts.is_some() && procs.is_none() {
        return Err("--hosts FILE needs --procs N".into());
    }
    Ok((procs, hosts, rest))
}

/// Data-parallel training: cnn-train built with MPI, started by `mpirun` in `procs` processes
/// (on this machine, or on the machines of an Open MPI `hosts` file).
fn mpi_train(procs: usize, hosts: Option<&str>, rest: &[&str]) -> Result<(), String> {
    setup::ensure_packages(&setup::MPI)?;
    if let Some(hosts) = hosts.filter(|h| !std::path::Path::new(h).is_file()) {
        return Err(format!("--hosts {hosts}: no such file"));
    }
    cargo(&["build", "--release", "--quiet", "-p", "cnn-cli", "--bin", "cnn-train", "--features", "mpi"])?;
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is in the workspace");
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace.join("target"), std::path::PathBuf::from);
    let mut mpirun = Command::new("mpirun");
    // processes share the machine's cores by their thread count (cnn-nn sizes their pools), so
    // no binding to one core each
    mpirun.args(["-n", &procs.to_string(), "--bind-to", "none", "-x", KEEP_FREED_MEMORY.0]);
    match hosts {
        Some(hosts) => mpirun.args(["--hostfile", hosts]),
        None => mpirun.arg("--oversubscribe"),
    };
    // Open MPI refuses to run as root unless told; containers and CI machines run as root
    mpirun.env("OMPI_ALLOW_RUN_AS_ROOT", "1").env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    mpirun.arg(target.join("release").join("cnn-train")).args(rest);
    eprintln!("xtask: mpirun -n {procs} cnn-train {}", rest.join(" "));
    let status = mpirun.status().map_err(|e| format!("could not run mpirun: {e}"))?;
    status.success().then_some(()).ok_or_else(|| format!("mpirun failed ({status})"))
}

/// The programs run here allocate with mimalloc, which gives the pages of large freed blocks
/// back to the kernel after a delay; a training step frees and reallocates megabytes of
/// activations, so the kernel zeroed fresh pages for 6–8% of a ResNet-20 step. Told never to
/// (`MIMALLOC_PURGE_DELAY=-1`, read by mimalloc when a program starts; a value the user set
/// wins), the step measured 108–117 ms against 118–126 ms, side by side. Programs keep their
/// peak footprint instead of shrinking between steps.
const KEEP_FREED_MEMORY: (&str, &str) = ("MIMALLOC_PURGE_DELAY", "-1");

fn main() -> ExitCode {
    let (variable, value) = KEEP_FREED_MEMORY;
    if std::env::var_os(variable).is_none() {
        // before any thread or child process: every program started below inherits it
        std::env::set_var(variable, value);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}
