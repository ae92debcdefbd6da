//! Low-rank compression of the reference network: for several rank settings, the ranks, the
//! FLOPs, the **measured** speed-up of the factorised conv layers, and the test accuracy
//! before and after one epoch of fine-tuning. Run it with `cargo xtask lowrank`.

use clap::Parser;
use cnn_cli::{check_lr, main_with, write_atomic};
use cnn_nn::data::Data;
use cnn_nn::compress::{conv_layers, factorise, Decision};
use cnn_nn::data::{Dataset, FASHION_MNIST_DIR};
use cnn_nn::layers::{Conv2d, LowRankConv2d};
use cnn_nn::models::reference_cnn;
use cnn_nn::optim::Adam;
use cnn_nn::plots::{lowrank_tradeoff, TradeoffPoint};
use cnn_nn::train::{evaluate, fit, FitConfig};
use cnn_nn::ndarray::ArrayD;
use cnn_nn::{checkpoint, NnError, RankPolicy, Result, Sequential};
use std::path::{Path, PathBuf};
use std::time::Instant;

// Activations are megabytes per batch; glibc's malloc would map and unmap them every time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Factorise the reference CNN's convolutions and measure the speed/accuracy trade-off.
#[derive(Parser, Debug)]
#[command(version, about, allow_negative_numbers = true)]
struct Args {
    /// A trained reference-network checkpoint (from `cargo xtask train`); trained first if absent.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Directory with the four MNIST-format IDX files.
    #[arg(long, default_value = FASHION_MNIST_DIR)]
    data: PathBuf,
    /// Epochs to train the reference network when no --model is given.
    #[arg(long, default_value_t = 5)]
    train_epochs: usize,
    /// Learning rate of the training and of the one fine-tuning epoch (Adam).
    #[arg(long, default_value_t = 1e-3)]
    lr: f32,
    /// Mini-batch size (also the batch of the timing).
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Timing rounds per layer (interleaved full / low rank; the median is kept).
    #[arg(long, default_value_t = 61)]
    rounds: usize,
    /// Output directory.
    #[arg(long, default_value = "out/lowrank")]
    out: PathBuf,
}

/// A named plan: which conv layers, under which policy.
struct Setting {
    name: String,
    plan: Vec<(usize, RankPolicy)>,
}

fn settings(convs: &[usize]) -> Vec<Setting> {
    let (conv2, conv3) = (convs[1], convs[2]);
    let all = |p: RankPolicy| convs.iter().map(|&i| (i, p)).collect::<Vec<_>>();
    vec![
        Setting { name: "conv2 r6".into(), plan: vec![(conv2, RankPolicy::Fixed(6))] },
        Setting { name: "conv2 r8".into(), plan: vec![(conv2, RankPolicy::Fixed(8))] },
        Setting { name: "conv2 r16".into(), plan: vec![(conv2, RankPolicy::Fixed(16))] },
        Setting { name: "conv3 r24".into(), plan: vec![(conv3, RankPolicy::Fixed(24))] },
        Setting { name: "conv2+conv3 r12/24".into(), plan: vec![(conv2, RankPolicy::Fixed(12)), (conv3, RankPolicy::Fixed(24))] },
        Setting { name: "all energy 0.90".into(), plan: all(RankPolicy::Energy(0.90)) },
        Setting { name: "all flops/2".into(), plan: all(RankPolicy::FlopReduction(2.0)) },
        Setting { name: "all flops/4".into(), plan: all(RankPolicy::FlopReduction(4.0)) },
    ]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median forward times (ms) of layer `index` in both models on the same input, interleaved
/// round by round so that the machine's drift hits both alike.
fn time_layer(full: &mut Sequential, low: &mut Sequential, index: usize, input: &ArrayD<f32>, rounds: usize) -> (f64, f64) {
    let (mut a, mut b) = (vec![], vec![]);
    for _ in 0..rounds {
        for (model, times) in [(&mut *full, &mut a), (&mut *low, &mut b)] {
            let x = input.clone();
            let start = Instant::now();
            std::hint::black_box(model.layers()[index].forward(x));
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    (median(a), median(b))
}

/// Multiply-adds of all conv layers, full or low rank, from the model's shapes.
fn conv_macs(model: &Sequential) -> f64 {
    let mut macs = 0.0;
    for (layer, shape) in model.layers().iter().zip(model.shapes()) {
        let params: usize = layer.params().iter().filter(|(name, _)| name != "bias").map(|(_, p)| p.value.len()).sum();
        let any = layer.as_ref() as &dyn std::any::Any;
        if any.is::<Conv2d>() || any.is::<LowRankConv2d>() {
            // weights touched once per output position
            macs += (params * shape[1] * shape[2]) as f64;
        }
    }
    macs
}

/// The model of a checkpoint, rebuilt from the file alone; this tool factorises the
/// top-level convolutions of a plain chain, the second and third of them.
fn fresh_copy(path: &Path) -> Result<Sequential> {
    let (model, meta) = checkpoint::load_model(path)?;
    let convs = conv_layers(&model).len();
    if convs < 3 {
        let name = meta.get(checkpoint::MODEL).map_or("?", String::as_str);
        return Err(NnError::Config(format!(
            "{}: this tool factorises the top-level convolutions of a plain chain, and the `{name}` model has {convs} (it needs 3)",
            path.display()
        )));
    }
    Ok(model)
}

fn fine_tune(model: &mut Sequential, train: &Dataset, args: &Args) -> Result<()> {
    let config = FitConfig { epochs: 1, batch_size: args.batch, seed: args.seed + 1000, ..FitConfig::default() };
    fit(model, &mut Adam::new(args.lr), train, None, None, &config, |_, _, _| Ok(()))?;
    Ok(())
}

fn run(args: Args) -> Result<()> {
    check_lr("--lr", args.lr)?;
    if args.batch == 0 || args.rounds == 0 {
        return Err(NnError::Config("--batch and --rounds must be at least 1".into()));
    }
    if args.model.is_none() && args.train_epochs == 0 {
        return Err(NnError::Config("--train-epochs must be at least 1 when no --model is given".into()));
    }
    std::fs::create_dir_all(&args.out).map_err(|e| NnError::io(&args.out, e))?;
    for stale in checkpoint::remove_stale_temporaries(&args.out)? {
        println!("removed {} left by an interrupted run", stale.display());
    }
    if let Some(path) = &args.model {
        // the file is checked before the data is read or anything trained
        fresh_copy(path)?;
    }
    let (train, test) = Dataset::load_mnist_dir(&args.data, 10)?;
    println!("data: {} — train {}, test {}", args.data.display(), train.len(), test.len());

    let base_path = match &args.model {
        Some(path) => path.clone(),
        None => {
            println!("no --model: training the reference network for {} epochs first", args.train_epochs);
            let mut model = reference_cnn(args.seed);
            let config = FitConfig { epochs: args.train_epochs, batch_size: args.batch, seed: args.seed, ..FitConfig::default() };
            fit(&mut model, &mut Adam::new(args.lr), &train, None, None, &config, |m, _, _| {
                println!("  epoch {}: train loss {:.4}, accuracy {:.2}%", m.epoch, m.train_loss, 100.0 * m.train_acc);
                Ok(())
            })?;
            let path = args.out.join("base.safetensors");
            checkpoint::save(&path, &model, None, &checkpoint::Metadata::from([(checkpoint::MODEL.into(), "reference".into())]))?;
            path
        }
    };
    let mut base = fresh_copy(&base_path)?;
    let acc_before = evaluate(&base, &test, 256)?.accuracy as f64 * 100.0;
    let full_macs = conv_macs(&base);
    println!("original model: test accuracy {acc_before:.2}%");

    // the original, fine-tuned for the same extra epoch: extra training is not free accuracy
    let mut tuned = fresh_copy(&base_path)?;
    fine_tune(&mut tuned, &train, &args)?;
    let acc_original_ft = evaluate(&tuned, &test, 256)?.accuracy as f64 * 100.0;
    println!("original model after one more epoch: {acc_original_ft:.2}%\n");

    let (timing_batch, _) = test.batch(&(0..args.batch.min(test.len())).collect::<Vec<_>>());
    let activations = base.activations(timing_batch.clone())?;
    let convs = conv_layers(&base);

    let header = "setting,ranks,flop_ratio,speedup,full_ms,lowrank_ms,acc_before,acc_no_ft,acc_ft,acc_drop_pts";
    let mut csv = vec![header.to_string()];
    let mut points = vec![];
    println!(
        "{:<20} {:<28} {:>6} {:>8} {:>16} {:>9} {:>9} {:>9} {:>7}",
        "setting", "ranks", "FLOPs", "speedup", "conv ms full/low", "before", "no ft", "ft", "drop"
    );
    for setting in settings(&convs) {
        let mut low = fresh_copy(&base_path)?;
        let decisions = factorise(&mut low, &setting.plan)?;
        let mut ranks = vec![];
        let (mut full_ms, mut low_ms) = (0.0, 0.0);
        for d in &decisions {
            match d {
                Decision::Factorised { layer, rank, .. } => {
                    let conv = convs.iter().position(|c| c == layer).map_or(0, |p| p + 1);
                    ranks.push(format!("conv{conv}={rank}"));
                    let input = if *layer == 0 { timing_batch.clone() } else { activations[layer - 1].clone() };
                    let (f, l) = time_layer(&mut base, &mut low, *layer, &input, args.rounds);
                    full_ms += f;
                    low_ms += l;
                }
                Decision::Skipped { layer, reason } => println!("  {}: layer {layer} left as it is: {reason}", setting.name),
            }
        }
        if ranks.is_empty() {
            println!("  {}: nothing factorised", setting.name);
            continue;
        }
        let flop_ratio = conv_macs(&low) / full_macs;
        let speedup = full_ms / low_ms;
        let acc_no_ft = evaluate(&low, &test, 256)?.accuracy as f64 * 100.0;
        fine_tune(&mut low, &train, &args)?;
        let acc_ft = evaluate(&low, &test, 256)?.accuracy as f64 * 100.0;
        let ranks = ranks.join(";");
        println!(
            "{:<20} {:<28} {:>5.0}% {:>7.2}x {:>7.2} / {:<6.2} {:>8.2}% {:>8.2}% {:>8.2}% {:>+7.2}",
            setting.name, ranks, 100.0 * flop_ratio, speedup, full_ms, low_ms, acc_before, acc_no_ft, acc_ft, acc_before - acc_ft
        );
        csv.push(format!(
            "{},{ranks},{flop_ratio:.4},{speedup:.3},{full_ms:.3},{low_ms:.3},{acc_before:.2},{acc_no_ft:.2},{acc_ft:.2},{:.2}",
            setting.name,
            acc_before - acc_ft
        ));
        points.push(TradeoffPoint { label: setting.name.clone(), speedup, accuracy: acc_ft });
        let path = args.out.join(format!("{}.safetensors", setting.name.replace([' ', '/', '+', '.'], "_")));
        let meta = checkpoint::read_metadata(&base_path)?;
        let model_name = meta.get(checkpoint::MODEL).cloned().unwrap_or_else(|| "reference".into());
        let described = [(checkpoint::MODEL.into(), model_name), (checkpoint::FACTORISED.into(), cnn_nn::compress::plan_string(&decisions))];
        checkpoint::save(&path, &low, None, &checkpoint::Metadata::from(described))?;
    }
    csv.push(format!(
        "original fine-tuned 1 epoch,full,1,1,,,{acc_before:.2},{acc_before:.2},{acc_original_ft:.2},{:.2}",
        acc_before - acc_original_ft
    ));

    let csv_path = args.out.join("lowrank.csv");
    write_atomic(&csv_path, &(csv.join("\n") + "\n"))?;
    lowrank_tradeoff(&points, acc_before, &args.out.join("lowrank.png"))?;
    println!(
        "\nFLOPs: all conv layers relative to full rank; speedup: measured forward time of the factorised layers\n\
         (median of {} interleaved rounds, batch {}), full rank / low rank. The original model fine-tuned for the\n\
         same epoch reaches {acc_original_ft:.2}% ({:+.2} points).\nwrote {} and {}",
        args.rounds,
        args.batch,
        acc_original_ft - acc_before,
        csv_path.display(),
        args.out.join("lowrank.png").display()
    );
    Ok(())
}

fn main() -> std::process::ExitCode {
    main_with(Args::parse(), run)
}
