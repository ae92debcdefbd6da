//! Trains the reference network on Fashion-MNIST (or any MNIST-format directory) and writes
//! the weights, the metrics, and pictures of what it learned. Run it with `cargo xtask train`.

use clap::{Parser, ValueEnum};

// Every batch allocates megabytes of activations; glibc's malloc maps and unmaps them each
// time (page faults and TLB shootdowns cost ~40% of a step here), mimalloc keeps them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use cnn_nn::data::{Dataset, FASHION_MNIST_DIR};
use cnn_nn::models::reference_cnn;
use cnn_nn::optim::{Adam, Optimizer, Sgd, StepDecay};
use cnn_nn::train::{evaluate, fit, EpochMetrics, FitConfig};
use cnn_nn::{checkpoint, plots, NnError, Result};
use ndarray::{s, Ix4};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum OptimizerKind {
    Adam,
    Sgd,
}

/// Train the course material's reference CNN.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Directory with the four MNIST-format IDX files (plain or .gz).
    #[arg(long, default_value = FASHION_MNIST_DIR)]
    data: PathBuf,
    /// Epochs to train (more epochs on top of a --resume checkpoint).
    #[arg(long, default_value_t = 5)]
    epochs: usize,
    /// Mini-batch size.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f32,
    /// Optimiser: adam, or sgd (momentum 0.9, weight decay 5e-4).
    #[arg(long, value_enum, default_value_t = OptimizerKind::Adam)]
    optimizer: OptimizerKind,
    /// Multiply the learning rate by --lr-gamma every N epochs (0: constant).
    #[arg(long, default_value_t = 0)]
    lr_step: usize,
    /// Step-decay factor.
    #[arg(long, default_value_t = 0.5)]
    lr_gamma: f32,
    /// Seed of the weights and the shuffling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Training images held out for validation.
    #[arg(long, default_value_t = 5000)]
    val: usize,
    /// Use only the first N training images (0: all), for quick tries.
    #[arg(long, default_value_t = 0)]
    limit: usize,
    /// Output directory.
    #[arg(long, default_value = "out/train")]
    out: PathBuf,
    /// Continue from this checkpoint (written by an earlier run).
    #[arg(long)]
    resume: Option<PathBuf>,
}

fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(|e| NnError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| NnError::io(path, e))
}

fn metrics_csv(history: &[EpochMetrics]) -> String {
    let pct = |a: Option<f32>| a.map(|a| format!("{:.4}", a)).unwrap_or_default();
    let mut csv = String::from("epoch,lr,train_loss,train_acc,val_acc,test_acc,seconds,images_per_sec\n");
    for m in history {
        csv += &format!(
            "{},{},{:.5},{:.4},{},{},{:.2},{:.0}\n",
            m.epoch, m.lr, m.train_loss, m.train_acc, pct(m.val_acc), pct(m.test_acc), m.seconds, m.images_per_sec
        );
    }
    csv
}

/// Peak resident memory of this process (Linux `VmHWM`), in MiB.
fn peak_memory_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn run(args: Args) -> Result<()> {
    if args.epochs == 0 || args.batch == 0 {
        return Err(NnError::Config("--epochs and --batch must be at least 1".into()));
    }
    std::fs::create_dir_all(&args.out).map_err(|e| NnError::io(&args.out, e))?;
    println!("cnn-core: rayon threads {}, OpenBLAS core {}", cnn_core::threads::rayon_threads(), cnn_core::threads::blas_core());

    let (train, test) = Dataset::load_mnist_dir(&args.data)?;
    let train = if args.limit > 0 { train.take(args.limit) } else { train };
    if args.val >= train.len() {
        return Err(NnError::Config(format!("--val {} leaves no training images out of {}", args.val, train.len())));
    }
    let (train, val) = train.split_off(args.val);
    println!("data: {} — train {}, validation {}, test {}", args.data.display(), train.len(), val.len(), test.len());

    let mut model = reference_cnn(args.seed);
    println!("\n{}", model.summary());

    let ckpt_path = args.out.join("model.safetensors");
    let mut start_epoch = 0;
    if let Some(resume) = &args.resume {
        let meta = checkpoint::load(&mut model, resume)?;
        start_epoch = meta.get("epoch").and_then(|e| e.parse().ok()).unwrap_or(0);
        println!("resumed from {} (after epoch {start_epoch}; optimiser state starts fresh)", resume.display());
    }
    let mut optimizer: Box<dyn Optimizer> = match args.optimizer {
        OptimizerKind::Adam => Box::new(Adam::new(args.lr)),
        OptimizerKind::Sgd => Box::new(Sgd::new(args.lr, 0.9, 5e-4)),
    };
    let config = FitConfig {
        epochs: args.epochs,
        start_epoch,
        batch_size: args.batch,
        seed: args.seed,
        schedule: (args.lr_step > 0).then_some(StepDecay { initial: args.lr, every: args.lr_step, gamma: args.lr_gamma }),
        progress: true,
    };

    println!("epoch  lr        train loss  train acc  val acc  test acc  seconds  images/s");
    let mut history: Vec<EpochMetrics> = vec![];
    let out = args.out.clone();
    let seed = args.seed;
    let history = fit(&mut model, optimizer.as_mut(), &train, Some(&val), Some(&test), &config, |m, model| {
        let pct = |a: Option<f32>| a.map_or("-".into(), |a| format!("{:.2}%", 100.0 * a));
        println!(
            "{:>5}  {:<8}  {:>10.4}  {:>8.2}%  {:>7}  {:>8}  {:>7.1}  {:>8.0}",
            m.epoch, m.lr, m.train_loss, 100.0 * m.train_acc, pct(m.val_acc), pct(m.test_acc), m.seconds, m.images_per_sec
        );
        history.push(m.clone());
        let meta = HashMap::from([("epoch".to_string(), m.epoch.to_string()), ("seed".to_string(), seed.to_string())]);
        checkpoint::save(model, &ckpt_path, Some(meta))?;
        write_atomic(&out.join("metrics.csv"), &metrics_csv(&history))?;
        plots::training_curves(&history, &out.join("curves.png"))
    })?;

    let eval = evaluate(&mut model, &test, 256)?;
    let last = history.last().expect("at least one epoch");
    println!(
        "\ntest accuracy {:.2}% (loss {:.4}); training {:.0} images/s, inference {:.0} images/s",
        100.0 * eval.accuracy, eval.loss, last.images_per_sec, eval.images_per_sec
    );

    // Pictures: the first layer's filters, and the first layers' feature maps for one test image.
    let weight = model.named_params()[0].1.value.clone().into_dimensionality::<Ix4>().expect("conv1 weight is 4-D");
    plots::filters(weight.view(), &out.join("filters_conv1.png"))?;
    let (image, labels) = test.batch(&[0]);
    let outputs = model.activations(image.clone())?;
    let first = image.into_dimensionality::<Ix4>().expect("images are 4-D");
    plots::feature_maps(first.slice(s![0, .., .., ..]), &out.join("input.png"))?;
    for (i, name) in [(0, "conv1"), (2, "pool1"), (3, "conv2"), (5, "pool2")] {
        let maps = outputs[i].view().into_dimensionality::<Ix4>().expect("conv and pool outputs are 4-D");
        plots::feature_maps(maps.slice(s![0, .., .., ..]), &out.join(format!("features_{i}_{name}.png")))?;
    }
    println!("feature maps of test image 0 (label {}) and conv1 filters written", labels[0]);
    println!("wrote {}: model.safetensors, metrics.csv, curves.png, filters_conv1.png, input.png, features_*.png", out.display());
    if let Some(mib) = peak_memory_mib() {
        println!("peak resident memory: {mib:.0} MiB");
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
