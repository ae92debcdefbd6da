//! `cargo xtask <task>`: the project's commands, with the set-up they need.
//!
//! - `cargo xtask test`: installs what is missing, then runs the whole test suite.
//! - `cargo xtask bench [--quick]`: criterion benchmarks, HTML report and a summary table.
//! - `cargo xtask train [...]`: trains the reference network, writes weights, metrics, pictures.
//! - `cargo xtask lowrank [...]`: the low-rank speed/accuracy trade-off table.
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
  train [options]    train the reference network on Fashion-MNIST (release build); options:
                     --data DIR --epochs N --batch N --lr X --optimizer adam|sgd --seed N --out DIR
                     --resume FILE --val FRACTION|N --limit N --lr-step N --lr-gamma X  (see `cargo xtask train --help`)
  zoo [options]      build LeNet-5 … Xception: parameters, multiply-adds, activations, forward times
                     (--rounds N --only NAME --out FILE)
  info               threads, the OpenBLAS kernels cnn-nn selected, and a GEMM's GFLOP/s
  lowrank [options]  factorise the trained network's convolutions by truncated SVD at several ranks:
                     ranks, FLOPs, measured speed-up, accuracy before/after one epoch of fine-tuning;
                     --model FILE (else trains one first) --data DIR --out DIR (see --help)";

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
            let mut args = vec!["test", "--workspace"];
            args.extend(&rest);
            cargo(&args)
        }
        "bench" => {
            setup::ensure_packages(&[setup::OPENBLAS])?;
            bench::run(&rest)
        }
        "train" => {
            setup::ensure_packages(&[setup::OPENBLAS, setup::FASHION_MNIST, setup::FONT])?;
            let mut args = vec!["run", "--release", "--quiet", "-p", "cnn-cli", "--bin", "cnn-train", "--"];
            args.extend(&rest);
            cargo(&args)
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

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}
