//! `cnn-train` as a user runs it: settings refused before training, resume that keeps its
//! history and equals training on, leftovers of an interrupted run cleaned up.

mod common;

use cnn_nn::checkpoint;
use common::data_dir;
use cnn_nn::models::reference_cnn;
use std::path::Path;
use std::process::{Command, Output};

fn train(data: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cnn-train"));
    command.arg("--data").arg(data).arg("--out").arg(out).args(["--batch", "32", "--seed", "3"]).args(extra);
    command.output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs a setting that must be refused before training and returns its error line.
fn refused(data: &Path, out: &Path, extra: &[&str]) -> String {
    let o = train(data, out, extra);
    assert!(!o.status.success(), "{extra:?} was accepted:\n{}", stdout(&o));
    assert!(!stdout(&o).contains("epoch  lr"), "{extra:?}: training started:\n{}", stdout(&o));
    assert!(!out.join("model.safetensors").exists(), "{extra:?}: a checkpoint was written");
    stderr(&o)
}

#[test]
fn bad_settings_and_data_are_refused_before_the_first_batch() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_dir(dir.path(), 120, 20, None);
    let out = dir.path().join("out");
    assert!(refused(&data, &out, &["--val", "0"]).contains("--val must be a fraction in (0, 1) or a whole number of images"));
    assert!(refused(&data, &out, &["--lr=-1"]).contains("--lr must be a positive number, got -1"));
    assert!(refused(&data, &out, &["--lr", "-1"]).contains("--lr must be a positive number, got -1"));
    assert!(refused(&data, &out, &["--lr", "0"]).contains("--lr must be a positive number, got 0"));
    assert!(refused(&data, &out, &["--val", "120"]).contains("holds out 120 of the 120 training images"));
    let bad = data_dir(&dir.path().join("bad"), 120, 20, Some(200));
    let e = refused(&bad, &out, &[]);
    assert!(e.contains("t10k-labels-idx1-ubyte: label 200 of sample 3 (offset 11) is outside the 10 classes 0..10"), "{e}");
}

#[test]
fn the_default_validation_split_is_a_fraction_and_is_printed() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_dir(dir.path(), 8000, 20, None);
    // an 8,000-image training set keeps 1/12 for validation (it used to keep 5,000)
    let o = train(&data, &dir.path().join("out"), &["--epochs", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("train 7333, validation 667, test 20"), "{}", stdout(&o));
}

#[test]
fn resume_keeps_the_history_and_equals_training_on() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_dir(dir.path(), 160, 20, None);
    let (once, twice) = (dir.path().join("once"), dir.path().join("twice"));

    let o = train(&data, &twice, &["--epochs", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));

    let o = train(&data, &once, &["--epochs", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // an interrupted save left a temporary file behind: the next run removes it
    std::fs::write(once.join("model.safetensors.tmp"), b"half a checkpoint").unwrap();
    let ckpt = once.join("model.safetensors");
    let o = train(&data, &once, &["--epochs", "1", "--resume", ckpt.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("removed") && !once.join("model.safetensors.tmp").exists(), "{}", stdout(&o));
    assert!(stdout(&o).contains("resumed from") && stdout(&o).contains("after epoch 1, with its adam optimizer state"), "{}", stdout(&o));

    // the metrics keep epoch 1 and add epoch 2
    let csv = std::fs::read_to_string(once.join("metrics.csv")).unwrap();
    let epochs: Vec<&str> = csv.lines().skip(1).map(|l| l.split(',').next().unwrap()).collect();
    assert_eq!(epochs, ["1", "2"], "{csv}");

    // and the weights are those of two epochs in one run (optimiser state restored)
    let (mut a, mut b) = (reference_cnn(0), reference_cnn(0));
    checkpoint::load(&once.join("model.safetensors"), &mut a, None).unwrap();
    checkpoint::load(&twice.join("model.safetensors"), &mut b, None).unwrap();
    assert_eq!(a.named_params(), b.named_params());

    // an epoch count that overflows with the checkpoint's epoch
    let e = refused(&data, &dir.path().join("overflow"), &["--epochs", &usize::MAX.to_string(), "--resume", ckpt.to_str().unwrap()]);
    assert!(e.contains("overflows the epoch counter"), "{e}");
}

#[test]
fn any_zoo_model_for_28x28_trains_with_its_recipe_and_describes_itself() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_dir(dir.path(), 160, 20, None);
    let out = dir.path().join("resnet");
    // the ResNet-20 recipe (SGD, cosine, crop-flip), shortened
    let o = train(&data, &out, &["--model", "resnet20", "--epochs", "1", "--warmup", "2", "--patience", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("optimizer: Sgd") && stdout(&o).contains("crop_flip: true"), "{}", stdout(&o));
    let (model, meta) = checkpoint::load_model(&out.join("model.safetensors")).unwrap();
    assert!(out.join("best.safetensors").exists(), "the first epoch is the best so far");
    assert_eq!((meta["model"].as_str(), model.num_params()), ("resnet20", 269_722 - 2 * 16 * 9));
    assert!(refused(&data, &dir.path().join("x"), &["--model", "vgg99"]).contains("unknown model `vgg99`"));
    assert!(refused(&data, &dir.path().join("x"), &["--model", "resnet20", "--weight-decay", "-1"]).contains("--weight-decay must be a number >= 0"));
    // a checkpoint of one model does not resume another
    let e = refused(&data, &dir.path().join("y"), &["--model", "lenet5", "--resume", out.join("model.safetensors").to_str().unwrap()]);
    assert!(e.contains("holds a `resnet20` model, not --model lenet5"), "{e}");
}

#[test]
fn lowrank_factorises_a_checkpoint_that_describes_itself() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_dir(dir.path(), 120, 40, None);
    let base = dir.path().join("base.safetensors");
    let meta = checkpoint::Metadata::from([(checkpoint::MODEL.into(), "reference".into())]);
    checkpoint::save(&base, &reference_cnn(1), None, &meta).unwrap();
    let out = dir.path().join("low");
    let lowrank = |model: &Path, extra: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_cnn-lowrank")).arg("--model").arg(model).arg("--data").arg(&data).arg("--out").arg(&out).arg("--rounds=1").args(extra).output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    };
    lowrank(&base, &["--batch", "32"]);
    let csv = std::fs::read_to_string(out.join("lowrank.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next().unwrap(), "model,decomposition,setting,ranks,flop_ratio,speedup,net_speedup,full_ms,lowrank_ms,net_full_ms,net_lowrank_ms,acc_before,acc_no_ft,acc_ft,acc_drop_pts,control_acc,drop_vs_control_pts");
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert!(rows.iter().all(|r| r.len() == 17), "{csv}");
    for setting in ["3 channel flops/2", "3 spatial flops/3", "all channel flops/2", "all spatial flops/3"] {
        assert!(rows.iter().any(|r| r[2] == setting), "{setting} missing: {csv}");
    }
    assert!(rows.iter().any(|r| r[1] == "spatial") && rows.iter().any(|r| r[1] == "channel"), "{csv}");
    // the control: the original fine-tuned for as long, in every row
    let control = rows.iter().find(|r| r[2].starts_with("control")).unwrap();
    assert!(rows.iter().all(|r| r[15] == control[13]), "{csv}");
    // every factorised model it wrote is rebuilt from its file alone
    let (model, meta) = checkpoint::load_model(&out.join("3_spatial_flops_2.safetensors")).unwrap();
    assert_eq!(meta[checkpoint::FACTORISED], "3:spatial:32");
    assert!(model.num_params() < reference_cnn(0).num_params());
    assert!(out.join("lowrank.png").exists());
    // a ResNet-20 checkpoint: its convolutions inside the residual blocks are factorised too
    let resnet = dir.path().join("resnet.safetensors");
    checkpoint::save(&resnet, &cnn_nn::models::by_name("resnet20", 0).unwrap(), None, &checkpoint::Metadata::from([(checkpoint::MODEL.into(), "resnet20".into())])).unwrap();
    lowrank(&resnet, &["--batch", "8", "--only", "all spatial flops/2"]);
    let csv = std::fs::read_to_string(out.join("lowrank.csv")).unwrap();
    let row = csv.lines().find(|l| l.starts_with("resnet20,spatial,all spatial flops/2,")).unwrap_or_else(|| panic!("{csv}"));
    assert!(row.contains(".main.0=s") && !row.contains(",0=s") && row.matches(";").count() >= 16, "the 18 convolutions after the stem, most factorised: {row}");
}
