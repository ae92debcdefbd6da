//! Trains a model of the zoo (the course's reference network by default) on Fashion-MNIST (or
//! any MNIST-format directory) and writes the weights, the metrics, and pictures of what it
//! learned. Run it with `cargo xtask train [--model NAME]`.
//!
//! Built with the `mpi` feature it trains data-parallel when started by `mpirun -n N` (what
//! `cargo xtask train --procs N` does): rank 0 prints, evaluates its share and writes every
//! file; an error on any rank ends every rank (`MPI_Abort`).

use clap::{Parser, ValueEnum};
use cnn_cli::{check_lr, main_with, peak_memory_mib, validation_size, write_atomic};
use cnn_nn::data::Data;
use cnn_nn::checkpoint::{self, Metadata};
use cnn_nn::data::{Dataset, FASHION_MNIST_DIR};
use cnn_nn::callbacks::{Control, EarlyStopping, Monitor};
use cnn_nn::models::{by_name, OptimizerKind, Recipe, ScheduleKind};
use cnn_nn::ndarray::{s, Ix4};

use cnn_nn::distributed::{broadcast_model, Team};
use cnn_nn::train::{evaluate_on, fit_on, history_csv, parse_history_csv, EpochMetrics, FitConfig};
use cnn_nn::{plots, NnError, Result};
use std::path::PathBuf;

// Every batch allocates megabytes of activations; glibc's malloc maps and unmaps them each
// time (page faults and TLB shootdowns cost ~40% of a step here), mimalloc keeps them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum OptimizerArg {
    Adam,
    Sgd,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ScheduleArg {
    Constant,
    Step,
    Cosine,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum AugmentArg {
    None,
    CropFlip,
}

/// Train a model of the zoo on Fashion-MNIST (or any MNIST-format directory). Every training
/// setting starts from the model's recipe (see `cnn_nn::models::Recipe`) and can be overridden.
#[derive(Parser, Debug)]
#[command(version, about, allow_negative_numbers = true)]
struct Args {
    /// The model: reference (the course's network), lenet5, resnet20, vgg-fashion.
    #[arg(long, default_value = "reference")]
    model: String,
    /// Directory with the four MNIST-format IDX files (plain or .gz).
    #[arg(long, default_value = FASHION_MNIST_DIR)]
    data: PathBuf,
    /// Epochs to train (more epochs on top of a --resume checkpoint) [recipe].
    #[arg(long)]
    epochs: Option<usize>,
    /// Mini-batch size [recipe].
    #[arg(long)]
    batch: Option<usize>,
    /// (Initial) learning rate [recipe].
    #[arg(long)]
    lr: Option<f32>,
    /// Optimiser [recipe].
    #[arg(long, value_enum)]
    optimizer: Option<OptimizerArg>,
    /// SGD's momentum [recipe].
    #[arg(long)]
    momentum: Option<f32>,
    /// SGD with Nesterov's momentum (true/false) [recipe].
    #[arg(long)]
    nesterov: Option<bool>,
    /// L2 weight decay (SGD) [recipe].
    #[arg(long)]
    weight_decay: Option<f32>,
    /// Learning-rate schedule [recipe].
    #[arg(long, value_enum)]
    schedule: Option<ScheduleArg>,
    /// With --schedule step: multiply the rate by --lr-gamma every N epochs.
    #[arg(long, default_value_t = 1)]
    lr_step: usize,
    /// With --schedule step: the decay factor.
    #[arg(long, default_value_t = 0.5)]
    lr_gamma: f32,
    /// Steps of linear warm-up [recipe].
    #[arg(long)]
    warmup: Option<usize>,
    /// Augmentation [recipe].
    #[arg(long, value_enum)]
    augment: Option<AugmentArg>,
    /// Stop when the validation loss has not improved for N epochs (0: never), keep
    /// `best.safetensors`, and end with the best epoch's weights.
    #[arg(long, default_value_t = 0)]
    patience: usize,
    /// Seed of the weights, the shuffling and the augmentation.
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
    /// Data-parallel training: gradient values per all-reduce bucket, started as the backward
    /// pass produces them (0: one flat all-reduce after the backward pass).
    #[cfg(feature = "mpi")]
    #[arg(long, default_value_t = cnn_nn::distributed::Mpi::BUCKET_VALUES)]
    bucket: usize,
}

/// `println!` on rank 0 only.
macro_rules! say {
    ($team:expr, $($arg:tt)*) => {
        if $team.rank() == 0 {
            println!($($arg)*);
        }
    };
}

/// The models classify into 10 classes.
const CLASSES: usize = 10;

/// The model's recipe with the flags applied, every setting checked before any data is read
/// or any batch trained.
fn recipe(args: &Args) -> Result<Recipe> {
    let mut r = Recipe::for_model(&args.model)?;
    r.epochs = args.epochs.unwrap_or(r.epochs);
    r.batch = args.batch.unwrap_or(r.batch);
    r.lr = args.lr.unwrap_or(r.lr);
    r.momentum = args.momentum.unwrap_or(r.momentum);
    r.nesterov = args.nesterov.unwrap_or(r.nesterov);
    r.weight_decay = args.weight_decay.unwrap_or(r.weight_decay);
    r.warmup = args.warmup.unwrap_or(r.warmup);
    if let Some(o) = args.optimizer {
        r.optimizer = match o {
            OptimizerArg::Adam => OptimizerKind::Adam,
            OptimizerArg::Sgd => OptimizerKind::Sgd,
        };
    }
    if let Some(s) = args.schedule {
        r.schedule = match s {
            ScheduleArg::Constant => ScheduleKind::Constant,
            ScheduleArg::Step => ScheduleKind::Step { every: args.lr_step, gamma: args.lr_gamma },
            ScheduleArg::Cosine => ScheduleKind::Cosine,
        };
    }
    if let Some(a) = args.augment {
        r.crop_flip = matches!(a, AugmentArg::CropFlip);
    }
    if r.epochs == 0 {
        return Err(NnError::Config("--epochs must be at least 1".into()));
    }
    if r.batch == 0 {
        return Err(NnError::Config("--batch must be at least 1".into()));
    }
    check_lr("--lr", r.lr)?;
    if !(r.momentum.is_finite() && (0.0..1.0).contains(&r.momentum)) {
        return Err(NnError::Config(format!("--momentum must be in [0, 1), got {}", r.momentum)));
    }
    if !(r.weight_decay.is_finite() && r.weight_decay >= 0.0) {
        return Err(NnError::Config(format!("--weight-decay must be a number >= 0, got {}", r.weight_decay)));
    }
    r.schedule().check().map_err(|e| NnError::Config(format!("--schedule: {e}")))?;
    Ok(r)
}

fn run(args: Args, team: &dyn Team) -> Result<()> {
    let recipe = recipe(&args)?;
    let root = team.rank() == 0;
    if root {
        std::fs::create_dir_all(&args.out).map_err(|e| NnError::io(&args.out, e))?;
        for stale in checkpoint::remove_stale_temporaries(&args.out)? {
            println!("removed {} left by an interrupted run", stale.display());
        }
    }
    let threads = cnn_nn::cnn_core::threads::rayon_threads();
    say!(team, "cnn-core: {} process(es) x {threads} rayon threads, OpenBLAS core {}", team.size(), cnn_nn::cnn_core::threads::blas_core());

    let mut model = by_name(&args.model, args.seed)?;
    let mut optimizer = recipe.optimizer();
    say!(team, "model {}: {recipe:?}", args.model);
    let mut earlier: Vec<EpochMetrics> = vec![];
    if let Some(resume) = &args.resume {
        // the architecture first: a file of another model is refused by name
        if let Some(other) = checkpoint::read_metadata(resume)?.get(checkpoint::MODEL).filter(|m| **m != args.model) {
            return Err(NnError::Config(format!("{} holds a `{other}` model, not --model {}", resume.display(), args.model)));
        }
        let meta = checkpoint::load(resume, &mut model, Some(optimizer.as_mut()))?;
        let bad = |key: &str, why: String| NnError::Checkpoint { path: resume.clone(), reason: format!("metadata `{key}`: {why}") };
        let epoch = meta.get("epoch").ok_or_else(|| bad("epoch", "missing".into()))?;
        let epoch: usize = epoch.parse().map_err(|e| bad("epoch", format!("`{epoch}`: {e}")))?;
        earlier = parse_history_csv(meta.get("history").ok_or_else(|| bad("history", "missing".into()))?).map_err(|e| bad("history", e))?;
        if earlier.len() != epoch {
            return Err(bad("history", format!("{} rows for {epoch} epochs", earlier.len())));
        }
        if epoch.checked_add(recipe.epochs).is_none() {
            return Err(NnError::Config(format!("--epochs {} after the checkpoint's epoch {epoch} overflows the epoch counter", recipe.epochs)));
        }

        say!(team, "resumed from {} after epoch {epoch}, with its {} optimizer state", resume.display(), optimizer.state().kind);
    }
    let start_epoch = earlier.len();

    let (train, test) = Dataset::load_mnist_dir(&args.data, CLASSES)?;
    let train = if args.limit > 0 { train.take(args.limit) } else { train };
    let (train, val) = train.split_off(validation_size(args.val, train.len())?);
    say!(team, "data: {} — train {}, validation {}, test {}", args.data.display(), train.len(), val.len(), test.len());
    say!(team, "\n{}", model.summary());

    let config = FitConfig {
        epochs: recipe.epochs,
        start_epoch,
        batch_size: recipe.batch,
        seed: args.seed,
        schedule: Some(recipe.schedule()),
        augment: recipe.augment(),
        ..FitConfig::default()
    };

    let ckpt_path = args.out.join("model.safetensors");
    say!(team, "epoch  lr        train loss  train acc  val loss  val acc  test acc  seconds  images/s");
    let mut history = earlier.clone();
    if root {
        earlier.iter().for_each(print_epoch);
    }
    let out = args.out.clone();
    let mut early = (args.patience > 0).then(|| EarlyStopping::new(Monitor::ValLoss, args.patience).keep_best_weights());
    // rank 0 alone runs this after every epoch
    fit_on(team, &mut model, optimizer.as_mut(), &train, Some(&val), Some(&test), &config, |m, model, optimizer| {
        print_epoch(m);
        history.push(m.clone());
        let csv = history_csv(&history);
        let meta = Metadata::from([
            (checkpoint::MODEL.to_string(), args.model.clone()),
            ("epoch".to_string(), m.epoch.to_string()),
            ("seed".to_string(), args.seed.to_string()),
            ("history".to_string(), csv.clone()),
        ]);
        checkpoint::save(&ckpt_path, model, Some(optimizer), &meta)?;
        write_atomic(&out.join("metrics.csv"), &csv)?;
        plots::training_curves(&history, &out.join("curves.png"))?;
        let Some(early) = early.as_mut() else { return Ok(Control::Continue) };
        let control = early.update(m, model);
        if early.improved() {
            checkpoint::save(&out.join("best.safetensors"), model, None, &meta)?;
        }
        if control == Control::Stop {
            println!("no better validation loss for {} epochs: stopping", args.patience);
        }
        Ok(control)
    })?;
    if let Some(epoch) = early.as_ref().and_then(|e| e.restore(&mut model)) {
        println!("restored the weights of epoch {epoch}, the best validation loss");
    }
    broadcast_model(team, &mut model); // rank 0's restored weights to every rank

    let eval = evaluate_on(team, &model, &test, 256)?;
    if !root {
        return Ok(());
    }
    let last = history.last().expect("at least one epoch");
    println!(
        "\ntest accuracy {:.2}% (loss {:.4}); training {:.0} images/s, inference {:.0} images/s",
        100.0 * eval.accuracy, eval.loss, last.images_per_sec, eval.images_per_sec
    );

    // Pictures: the first convolution's filters, and the feature maps of the first layers whose
    // output is an image, for one test image.
    if let Some((_, w)) = model.named_params().into_iter().find(|(_, p)| p.value.ndim() == 4) {
        let weight = w.value.clone().into_dimensionality::<Ix4>().expect("4-D");
        plots::filters(weight.view(), &out.join("filters_conv1.png"))?;
    }
    let (image, labels) = test.batch(&[0]);
    let outputs = model.activations(image.clone())?;
    let first = image.into_dimensionality::<Ix4>().expect("images are 4-D");
    plots::feature_maps(first.slice(s![0, .., .., ..]), &out.join("input.png"))?;
    let maps = outputs.iter().enumerate().filter(|(_, a)| a.ndim() == 4).take(4);
    for (i, a) in maps {
        let a = a.view().into_dimensionality::<Ix4>().expect("4-D");
        plots::feature_maps(a.slice(s![0, .., .., ..]), &out.join(format!("features_{i}.png")))?;
    }
    println!("feature maps of test image 0 (label {}) and the first filters written", labels[0]);
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

#[cfg(not(feature = "mpi"))]
fn main() -> std::process::ExitCode {
    main_with(Args::parse(), |args| run(args, &cnn_nn::distributed::Solo))
}

#[cfg(feature = "mpi")]
fn main() -> std::process::ExitCode {
    use cnn_nn::distributed::Mpi;
    let args = Args::parse();
    let mpi = match Mpi::init() {
        Ok(mpi) => mpi,
        Err(e) => return main_with(args, |_| Err(e)),
    };
    let mpi = if args.bucket == 0 { mpi.flat() } else { mpi.with_bucket_values(args.bucket) };
    match run(args, &mpi) {
        Ok(()) => {
            let (wait, steps) = mpi.allreduce_wait();
            if mpi.size() > 1 && mpi.rank() == 0 {
                println!("gradient all-reduce: {:.2} ms per step waited for after the backward pass ({steps} steps, rank 0)", wait.as_secs_f64() * 1e3);
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) if mpi.size() > 1 => {
            // one write for the whole line: the ranks share stderr, and eprintln! writes its
            // pieces one by one (two ranks' messages came out interleaved mid-line)
            let line = format!("error (rank {} of {}): {e}\n", mpi.rank(), mpi.size());
            let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
            mpi.abort(1) // the other ranks may be waiting for this one
        }
        Err(e) => main_with((), |_| Err(e)),
    }
}
