//! Trains the reference network on Fashion-MNIST (or any MNIST-format directory) and writes
//! the weights, the metrics, and pictures of what it learned. Run it with `cargo xtask train`.

use clap::{Parser, ValueEnum};
use cnn_cli::{check_lr, main_with, peak_memory_mib, validation_size, write_atomic};
use cnn_nn::checkpoint::{self, Metadata};
use cnn_nn::data::{Dataset, FASHION_MNIST_DIR};
use cnn_nn::models::reference_cnn;
use cnn_nn::ndarray::{s, Ix4};
use cnn_nn::optim::{Adam, Optimizer, Sgd};
use cnn_nn::schedule::{Schedule, StepDecay};
use std::sync::Arc;
use cnn_nn::train::{evaluate, fit, history_csv, parse_history_csv, EpochMetrics, FitConfig};
use cnn_nn::{plots, NnError, Result};
use std::path::PathBuf;

// Every batch allocates megabytes of activations; glibc's malloc maps and unmaps them each
// time (page faults and TLB shootdowns cost ~40% of a step here), mimalloc keeps them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum OptimizerKind {
    Adam,
    Sgd,
}

/// Train the course material's reference CNN.
#[derive(Parser, Debug)]
#[command(version, about, allow_negative_numbers = true)]
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
    /// Training images held out for validation: a fraction in (0, 1), or a number of images.
    #[arg(long, default_value_t = 1.0 / 12.0)]
    val: f64,
    /// Use only the first N training images (0: all), for quick tries.
    #[arg(long, default_value_t = 0)]
    limit: usize,
    /// Output directory.
    #[arg(long, default_value = "out/train")]
    out: PathBuf,
    /// Continue from this checkpoint (written by an earlier run): weights, optimiser state,
    /// epoch count and the metrics so far.
    #[arg(long)]
    resume: Option<PathBuf>,
}

/// The reference network classifies into 10 classes.
const CLASSES: usize = 10;

/// Every setting refused before any data is read or any batch trained.
fn check_args(args: &Args) -> Result<()> {
    if args.epochs == 0 {
        return Err(NnError::Config("--epochs must be at least 1".into()));
    }
    if args.batch == 0 {
        return Err(NnError::Config("--batch must be at least 1".into()));
    }
    check_lr("--lr", args.lr)?;
    if !(args.lr_gamma.is_finite() && args.lr_gamma > 0.0) {
        return Err(NnError::Config(format!("--lr-gamma must be a positive number, got {}", args.lr_gamma)));
    }
    Ok(())
}

fn run(args: Args) -> Result<()> {
    check_args(&args)?;
    std::fs::create_dir_all(&args.out).map_err(|e| NnError::io(&args.out, e))?;
    for stale in checkpoint::remove_stale_temporaries(&args.out)? {
        println!("removed {} left by an interrupted run", stale.display());
    }
    println!("cnn-core: rayon threads {}, OpenBLAS core {}", cnn_nn::cnn_core::threads::rayon_threads(), cnn_nn::cnn_core::threads::blas_core());

    let mut model = reference_cnn(args.seed);
    let mut optimizer: Box<dyn Optimizer> = match args.optimizer {
        OptimizerKind::Adam => Box::new(Adam::new(args.lr)),
        OptimizerKind::Sgd => Box::new(Sgd::new(args.lr, 0.9, 5e-4)),
    };
    let mut earlier: Vec<EpochMetrics> = vec![];
    if let Some(resume) = &args.resume {
        let meta = checkpoint::load(resume, &mut model, Some(optimizer.as_mut()))?;
        let bad = |key: &str, why: String| NnError::Checkpoint { path: resume.clone(), reason: format!("metadata `{key}`: {why}") };
        let epoch = meta.get("epoch").ok_or_else(|| bad("epoch", "missing".into()))?;
        let epoch: usize = epoch.parse().map_err(|e| bad("epoch", format!("`{epoch}`: {e}")))?;
        earlier = parse_history_csv(meta.get("history").ok_or_else(|| bad("history", "missing".into()))?).map_err(|e| bad("history", e))?;
        if earlier.len() != epoch {
            return Err(bad("history", format!("{} rows for {epoch} epochs", earlier.len())));
        }
        if epoch.checked_add(args.epochs).is_none() {
            return Err(NnError::Config(format!("--epochs {} after the checkpoint's epoch {epoch} overflows the epoch counter", args.epochs)));
        }
        println!("resumed from {} after epoch {epoch}, with its {} optimizer state", resume.display(), optimizer.state().kind);
    }
    let start_epoch = earlier.len();

    let (train, test) = Dataset::load_mnist_dir(&args.data, CLASSES)?;
    let train = if args.limit > 0 { train.take(args.limit) } else { train };
    let (train, val) = train.split_off(validation_size(args.val, train.len())?);
    println!("data: {} — train {}, validation {}, test {}", args.data.display(), train.len(), val.len(), test.len());
    println!("\n{}", model.summary());

    let config = FitConfig {
        epochs: args.epochs,
        start_epoch,
        batch_size: args.batch,
        seed: args.seed,
        schedule: (args.lr_step > 0).then(|| Arc::new(StepDecay { initial: args.lr, every: args.lr_step, gamma: args.lr_gamma }) as Arc<dyn Schedule>),
        ..FitConfig::default()
    };

    let ckpt_path = args.out.join("model.safetensors");
    println!("epoch  lr        train loss  train acc  val loss  val acc  test acc  seconds  images/s");
    let mut history = earlier.clone();
    for m in &earlier {
        print_epoch(m);
    }
    let out = args.out.clone();
    fit(&mut model, optimizer.as_mut(), &train, Some(&val), Some(&test), &config, |m, model, optimizer| {
        print_epoch(m);
        history.push(m.clone());
        let csv = history_csv(&history);
        let meta = Metadata::from([
            ("model".to_string(), "reference".to_string()),
            ("epoch".to_string(), m.epoch.to_string()),
            ("seed".to_string(), args.seed.to_string()),
            ("history".to_string(), csv.clone()),
        ]);
        checkpoint::save(&ckpt_path, model, Some(optimizer), &meta)?;
        write_atomic(&out.join("metrics.csv"), &csv)?;
        plots::training_curves(&history, &out.join("curves.png"))
    })?;

    let eval = evaluate(&model, &test, 256)?;
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

fn print_epoch(m: &EpochMetrics) {
    let pct = |a: Option<f32>| a.map_or("-".into(), |a| format!("{:.2}%", 100.0 * a));
    let loss = |l: Option<f32>| l.map_or("-".into(), |l| format!("{l:.4}"));
    println!(
        "{:>5}  {:<8}  {:>10.4}  {:>8.2}%  {:>8}  {:>7}  {:>8}  {:>7.1}  {:>8.0}",
        m.epoch, m.lr, m.train_loss, 100.0 * m.train_acc, loss(m.val_loss), pct(m.val_acc), pct(m.test_acc), m.seconds, m.images_per_sec
    );
}

fn main() -> std::process::ExitCode {
    main_with(Args::parse(), run)
}
