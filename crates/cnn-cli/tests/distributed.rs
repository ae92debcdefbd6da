//! `cnn-train` under `mpirun` (`--features mpi`): two processes train as one, rank 0 alone
//! prints and writes, and a failure on one rank ends the job instead of hanging it.
#![cfg(feature = "mpi")]

mod common;

use cnn_nn::train::parse_history_csv;
use common::data_dir;
use std::path::Path;
use std::process::{Command, Output};

/// `cnn-train` in `procs` MPI processes on this machine, or alone (`procs` = 0); the job is
/// killed after 5 minutes, so a hang fails the test instead of blocking it.
fn train(procs: usize, data: &Path, out: &Path) -> Output {
    let train = env!("CARGO_BIN_EXE_cnn-train");
    let mut command = if procs == 0 {
        Command::new(train)
    } else {
        let mut mpirun = Command::new("mpirun");
        mpirun.args(["-n", &procs.to_string(), "--oversubscribe", "--bind-to", "none", "--timeout", "300", train]);
        mpirun.env("OMPI_ALLOW_RUN_AS_ROOT", "1").env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
        mpirun
    };
    command.arg("--data").arg(data).arg("--out").arg(out).args(["--batch", "32", "--seed", "3", "--epochs", "2", "--val", "40"]);
    command.output().expect("mpirun runs (Debian: openmpi-bin, installed by `cargo xtask test`)")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn two_processes_train_as_one_and_rank_0_writes() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_dir(dir.path(), 400, 100, None);
    let (alone, together) = (dir.path().join("alone"), dir.path().join("together"));
    let (a, t) = (train(0, &data, &alone), train(2, &data, &together));
    assert!(a.status.success() && t.status.success(), "alone: {}\ntogether: {}", text(&a.stderr), text(&t.stderr));
    let stdout = text(&t.stdout);
    assert!(stdout.contains("2 process(es) x 1 rayon threads"), "{stdout}");
    assert_eq!(stdout.matches("epoch  lr").count(), 1, "one header, from rank 0: {stdout}");
    assert_eq!(stdout.matches("\n    2  ").count(), 1, "one line per epoch: {stdout}");
    assert!(stdout.contains("gradient all-reduce:"), "{stdout}");
    let history = |out: &Path| parse_history_csv(&std::fs::read_to_string(out.join("metrics.csv")).unwrap()).unwrap();
    let (ha, ht) = (history(&alone), history(&together));
    assert_eq!(ht.len(), 2);
    for (ma, mt) in ha.iter().zip(&ht) {
        let gap = (ma.train_loss - mt.train_loss).abs() / ma.train_loss;
        assert!(gap < 1e-3, "epoch {}: loss {} alone, {} together", ma.epoch, ma.train_loss, mt.train_loss);
        assert!((ma.test_acc.unwrap() - mt.test_acc.unwrap()).abs() <= 0.003, "epoch {}: test accuracy {:?} / {:?}", ma.epoch, ma.test_acc, mt.test_acc);
    }
    let (model, _) = cnn_nn::checkpoint::load_model(&together.join("model.safetensors")).unwrap();
    assert_eq!(model.num_params(), 101_578);
    // no rank but 0 wrote anything: no leftovers of concurrent writes
    let files: Vec<String> = std::fs::read_dir(&together).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(files.iter().all(|f| !f.ends_with(".tmp")), "{files:?}");
}

#[test]
fn a_failure_on_one_rank_ends_every_rank() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_dir(dir.path(), 200, 40, None);
    let out = dir.path().join("out");
    // rank 0 alone writes the checkpoint: a directory in its way fails it after epoch 1
    std::fs::create_dir_all(out.join("model.safetensors")).unwrap();
    let started = std::time::Instant::now();
    let o = train(2, &data, &out);
    let stderr = text(&o.stderr);
    assert!(!o.status.success(), "the job succeeded: {}", text(&o.stdout));
    assert!(stderr.contains("error (rank 0 of 2)") && stderr.contains("model.safetensors"), "{stderr}");
    assert!(started.elapsed().as_secs() < 200, "the job ended by the time limit, not by the error");
}
