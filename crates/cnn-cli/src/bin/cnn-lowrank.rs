//! Low-rank compression of any saved model: for several settings — one decomposition for every
//! convolution but the first, the heaviest layer alone, and per-layer ranks chosen under a
//! speed budget — the ranks, the FLOPs, the **measured** speed-up of the factorised layers and
//! of the whole network, and the test accuracy before and after fine-tuning, beside the
//! **control** (the original fine-tuned for as long). Run it with `cargo xtask lowrank`.

use clap::Parser;
use cnn_cli::{check_lr, main_with, write_atomic};
use cnn_nn::compress::{choose_under_budget, conv_sites, factorise, factorised_layer_for, plan_string, Candidate, Choice, ConvSite, Decision, Decomposition};
use cnn_nn::data::{Data, Dataset, FASHION_MNIST_DIR};
use cnn_nn::models::{by_name, Recipe};
use cnn_nn::ndarray::ArrayD;
use cnn_nn::plots::{lowrank_tradeoff, TradeoffPoint};
use cnn_nn::train::{evaluate, fit, Distillation, FitConfig};
use cnn_nn::{checkpoint, Layer, NnError, RankPolicy, Result, Sequential};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

// Activations are megabytes per batch; glibc's malloc would map and unmap them every time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Factorise a trained model's convolutions and measure the speed/accuracy trade-off.
#[derive(Parser, Debug)]
#[command(version, about, allow_negative_numbers = true)]
struct Args {
    /// A trained checkpoint of any zoo model (it says what it holds); else --arch is trained first.
    #[arg(long)]
    model: Option<PathBuf>,
    /// The model to train first, with its recipe, when no --model is given.
    #[arg(long, default_value = "reference")]
    arch: String,
    /// Epochs of that training [the recipe's].
    #[arg(long)]
    train_epochs: Option<usize>,
    /// Directory with the four MNIST-format IDX files.
    #[arg(long, default_value = FASHION_MNIST_DIR)]
    data: PathBuf,
    /// Epochs of fine-tuning, for every setting and for the control.
    #[arg(long, default_value_t = 1)]
    ft_epochs: usize,
    /// Fine-tuning uses the model's recipe at this fraction of its learning rate.
    #[arg(long, default_value_t = 0.1)]
    ft_lr_scale: f32,
    /// Fine-tune with knowledge distillation from the original network at this temperature.
    #[arg(long)]
    distill: Option<f32>,
    /// The weight of the distillation's soft term.
    #[arg(long, default_value_t = 0.5)]
    alpha: f32,
    /// FLOP reductions of the fixed settings (each decomposition, on the heaviest layer and on
    /// all but the first).
    #[arg(long, value_delimiter = ',', default_value = "2,3")]
    flops: Vec<f64>,
    /// Whole-network speed-ups to reach with per-layer ranks chosen under a budget.
    #[arg(long, value_delimiter = ',', default_value = "2.0")]
    target: Vec<f64>,
    /// Batch of the timings.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Timing rounds (interleaved full / factorised; the median is kept).
    #[arg(long, default_value_t = 21)]
    rounds: usize,
    /// Run only the settings whose name contains this.
    #[arg(long)]
    only: Option<String>,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory.
    #[arg(long, default_value = "out/lowrank")]
    out: PathBuf,
}

/// A named plan.
struct Setting {
    name: String,
    /// `channel`, `spatial` or `mixed`.
    decomposition: String,
    plan: Vec<Choice>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median times (ms) of `a(x)` and `b(x)`, interleaved round by round so that the machine's
/// drift hits both alike.
fn time_pair(a: &dyn Fn(ArrayD<f32>), b: &dyn Fn(ArrayD<f32>), x: &ArrayD<f32>, rounds: usize) -> (f64, f64) {
    let (mut ta, mut tb) = (vec![], vec![]);
    for _ in 0..rounds {
        for (f, times) in [(a, &mut ta), (b, &mut tb)] {
            let x = x.clone();
            let start = Instant::now();
            f(x);
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    (median(ta), median(tb))
}

/// A batch for timing the layer at `site`: its input shape, values in [-1, 1).
fn site_input(site: &ConvSite, batch: usize) -> ArrayD<f32> {
    let mut shape = vec![batch];
    shape.extend(&site.input);
    let mut k = 0usize;
    ArrayD::from_shape_simple_fn(shape, || {
        k += 1;
        ((k * 7919) % 1000) as f32 / 500.0 - 1.0
    })
}

/// Median times (ms) of the layers `full` and `low` at `site` on a batch of `batch`.
fn layer_times(full: &dyn Layer, low: &dyn Layer, site: &ConvSite, batch: usize, rounds: usize) -> (f64, f64) {
    let x = site_input(site, batch);
    time_pair(&|x| drop(std::hint::black_box(full.forward(x))), &|x| drop(std::hint::black_box(low.forward(x))), &x, rounds)
}

fn settings(base: &Sequential, sites: &[ConvSite], net_ms: f64, args: &Args) -> Result<Vec<Setting>> {
    let mut out = vec![];
    let heaviest = sites.iter().max_by_key(|s| s.macs(Decomposition::Channel, None)).expect("a model with convolutions");
    for d in Decomposition::ALL {
        for &factor in &args.flops {
            let policy = RankPolicy::FlopReduction(factor);
            out.push(Setting { name: format!("{} {d} flops/{factor}", heaviest.path), decomposition: d.to_string(), plan: vec![Choice { path: heaviest.path.clone(), decomposition: d, policy }] });
        }
        // every convolution but the first: it sees the image's few channels, its factors
        // would be thin (rank 1 or 2) and it is cheap (the usual practice since Jaderberg et al.)
        for &factor in &args.flops {
            let plan = sites[1..].iter().map(|s| Choice { path: s.path.clone(), decomposition: d, policy: RankPolicy::FlopReduction(factor) }).collect();
            out.push(Setting { name: format!("all {d} flops/{factor}"), decomposition: d.to_string(), plan });
        }
    }
    let wanted = |t: f64| args.only.as_ref().is_none_or(|o| format!("budget {t}x").contains(o.as_str()));
    if !args.target.iter().any(|&t| wanted(t)) {
        return Ok(out);
    }
    // the candidates of the budget search: every layer, both decompositions, six FLOP cuts
    println!("measuring {} layers x 2 decompositions x 6 ranks for the budget search...", sites.len() - 1);
    let mut candidates = vec![];
    for site in &sites[1..] {
        let full = base.layer_at(&site.path).expect("a site");
        for d in Decomposition::ALL {
            let mut ranks = vec![];
            for factor in [1.5, 2.0, 3.0, 4.0, 6.0, 8.0] {
                let choice = Choice { path: site.path.clone(), decomposition: d, policy: RankPolicy::FlopReduction(factor) };
                let (Some(layer), Decision::Factorised { rank, rel_error, .. }) = factorised_layer_for(base, &choice)? else { continue };
                if ranks.contains(&rank) {
                    continue;
                }
                ranks.push(rank);
                let (t_full, t_low) = layer_times(full, layer.as_ref(), site, args.batch, args.rounds.min(9));
                let choice = Choice { policy: RankPolicy::Fixed(rank), ..choice };
                candidates.push(Candidate { choice, saved_ms: (t_full - t_low).max(0.0), energy_lost: rel_error * rel_error });
            }
        }
    }
    for &target in &args.target {
        let needed = net_ms * (1.0 - 1.0 / target);
        match choose_under_budget(&candidates, needed) {
            Ok(chosen) => {
                let plan: Vec<Choice> = chosen.iter().map(|&i| candidates[i].choice.clone()).collect();
                let first = plan[0].decomposition;
                let decomposition = if plan.iter().all(|c| c.decomposition == first) { first.to_string() } else { "mixed".into() };
                out.push(Setting { name: format!("budget {target}x"), decomposition, plan });
            }
            Err(e) => println!("budget {target}x: {e} (of {net_ms:.2} ms)"),
        }
    }
    Ok(out)
}

/// The model's recipe for fine-tuning: its optimiser, schedule and augmentation at a fraction
/// of its learning rate, for `--ft-epochs`.
fn fine_tune(model: &mut Sequential, recipe: &Recipe, teacher: Option<&Arc<Sequential>>, train: &Dataset, args: &Args) -> Result<()> {
    let mut r = recipe.clone();
    r.lr *= args.ft_lr_scale;
    r.warmup = 0;
    let distill = match (args.distill, teacher) {
        (Some(temperature), Some(teacher)) => Some(Distillation { teacher: teacher.clone(), temperature, alpha: args.alpha }),
        _ => None,
    };
    let config = FitConfig { epochs: args.ft_epochs, batch_size: r.batch, seed: args.seed + 1000, schedule: Some(r.schedule()), augment: r.augment(), distill, ..FitConfig::default() };
    fit(model, r.optimizer().as_mut(), train, None, None, &config, |_, _, _| Ok(()))?;
    Ok(())
}

fn accuracy(model: &Sequential, test: &Dataset) -> Result<f64> {
    Ok(evaluate(model, test, 256)?.accuracy as f64 * 100.0)
}

fn run(args: Args) -> Result<()> {
    check_lr("--ft-lr-scale", args.ft_lr_scale)?;
    if args.batch == 0 || args.rounds == 0 || args.ft_epochs == 0 {
        return Err(NnError::Config("--batch, --rounds and --ft-epochs must be at least 1".into()));
    }
    if let Some(t) = args.distill {
        check_lr("--distill (a temperature)", t)?;
    }
    if args.flops.iter().any(|&f| !(f.is_finite() && f >= 1.0)) {
        return Err(NnError::Config(format!("--flops takes reduction factors of at least 1, got {:?}", args.flops)));
    }
    if args.target.iter().any(|&t| !(t.is_finite() && t > 1.0)) {
        return Err(NnError::Config(format!("--target takes speed-ups above 1, got {:?}", args.target)));
    }
    if !(0.0..=1.0).contains(&args.alpha) {
        return Err(NnError::Config(format!("--alpha must be in [0, 1], got {}", args.alpha)));
    }
    std::fs::create_dir_all(&args.out).map_err(|e| NnError::io(&args.out, e))?;
    for stale in checkpoint::remove_stale_temporaries(&args.out)? {
        println!("removed {} left by an interrupted run", stale.display());
    }
    // the file (or the architecture) is checked before the data is read or anything trained
    let name = match &args.model {
        Some(path) => checkpoint::load_model(path)?.1.get(checkpoint::MODEL).cloned().expect("load_model needs the name"),
        None => by_name(&args.arch, args.seed).map(|_| args.arch.clone())?,
    };
    let recipe = Recipe::for_model(&name)?;
    let (train, test) = Dataset::load_mnist_dir(&args.data, 10)?;
    println!("data: {} — train {}, test {}", args.data.display(), train.len(), test.len());

    let base_path = match &args.model {
        Some(path) => path.clone(),
        None => {
            let epochs = args.train_epochs.unwrap_or(recipe.epochs);
            println!("no --model: training {name} for {epochs} epochs with its recipe first");
            let mut model = by_name(&name, args.seed)?;
            let config = FitConfig { epochs, batch_size: recipe.batch, seed: args.seed, schedule: Some(recipe.schedule()), augment: recipe.augment(), ..FitConfig::default() };
            fit(&mut model, recipe.optimizer().as_mut(), &train, None, None, &config, |m, _, _| {
                println!("  epoch {}: train loss {:.4}, accuracy {:.2}%", m.epoch, m.train_loss, 100.0 * m.train_acc);
                Ok(())
            })?;
            let path = args.out.join("base.safetensors");
            checkpoint::save(&path, &model, None, &checkpoint::Metadata::from([(checkpoint::MODEL.into(), name.clone())]))?;
            path
        }
    };
    let fresh_copy = |path: &Path| checkpoint::load_model(path).map(|(m, _)| m);
    let base = fresh_copy(&base_path)?;
    let sites = conv_sites(&base);
    if sites.len() < 2 {
        return Err(NnError::Config(format!("{}: the `{name}` model has {} full convolution(s); this tool factorises all but the first, so it needs 2", base_path.display(), sites.len())));
    }
    let acc_before = accuracy(&base, &test)?;
    println!("{name}: test accuracy {acc_before:.2}%, {} convolutions", sites.len());
    let teacher = Arc::new(fresh_copy(&base_path)?);

    // the control: the original, fine-tuned for as long with the same recipe
    let mut control = fresh_copy(&base_path)?;
    fine_tune(&mut control, &recipe, None, &train, &args)?;
    let control_acc = accuracy(&control, &test)?;
    println!("control: the original after {} more epoch(s): {control_acc:.2}%\n", args.ft_epochs);

    let (timing_batch, _) = test.batch(&(0..args.batch.min(test.len())).collect::<Vec<_>>());
    fn forward(m: &Sequential) -> impl Fn(ArrayD<f32>) + '_ {
        move |x| drop(std::hint::black_box(m.forward(x).expect("a test batch fits")))
    }
    let (net_ms, _) = time_pair(&forward(&base), &forward(&base), &timing_batch, args.rounds);

    let header = "model,decomposition,setting,ranks,flop_ratio,speedup,net_speedup,full_ms,lowrank_ms,net_full_ms,net_lowrank_ms,acc_before,acc_no_ft,acc_ft,acc_drop_pts,control_acc,drop_vs_control_pts";
    let mut csv = vec![header.to_string()];
    let mut points = vec![];
    println!("{:<28} {:>6} {:>8} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8}", "setting", "FLOPs", "layers", "network", "before", "no ft", "ft", "drop", "vs ctl");
    let full_macs: u64 = sites.iter().map(|s| s.macs(Decomposition::Channel, None)).sum();
    for setting in settings(&base, &sites, net_ms, &args)? {
        if args.only.as_ref().is_some_and(|o| !setting.name.contains(o.as_str())) {
            continue;
        }
        let mut low = fresh_copy(&base_path)?;
        let decisions = factorise(&mut low, &setting.plan)?;
        let (mut ranks, mut full_ms, mut low_ms, mut macs) = (vec![], 0.0, 0.0, full_macs as f64);
        for d in &decisions {
            match d {
                Decision::Factorised { path, decomposition, rank, flop_ratio, .. } => {
                    let site = sites.iter().find(|s| &s.path == path).expect("a site");
                    ranks.push(format!("{path}={}{rank}", if *decomposition == Decomposition::Spatial { "s" } else { "" }));
                    let (f, l) = layer_times(base.layer_at(path).expect("a site"), low.layer_at(path).expect("replaced"), site, args.batch, args.rounds);
                    full_ms += f;
                    low_ms += l;
                    macs -= site.macs(Decomposition::Channel, None) as f64 * (1.0 - flop_ratio);
                }
                Decision::Skipped { path, reason } => println!("  {}: {path} left as it is: {reason}", setting.name),
            }
        }
        if ranks.is_empty() {
            println!("  {}: nothing factorised", setting.name);
            continue;
        }
        let flop_ratio = macs / full_macs as f64;
        let speedup = full_ms / low_ms;
        let (net_full, net_low) = time_pair(&forward(&base), &forward(&low), &timing_batch, args.rounds);
        let net_speedup = net_full / net_low;
        let acc_no_ft = accuracy(&low, &test)?;
        fine_tune(&mut low, &recipe, Some(&teacher), &train, &args)?;
        let acc_ft = accuracy(&low, &test)?;
        let ranks = ranks.join(";");
        println!(
            "{:<28} {:>5.0}% {:>7.2}x {:>8.2}x {:>8.2}% {:>8.2}% {:>8.2}% {:>+8.2} {:>+8.2}   {ranks}",
            setting.name, 100.0 * flop_ratio, speedup, net_speedup, acc_before, acc_no_ft, acc_ft, acc_before - acc_ft, control_acc - acc_ft
        );
        csv.push(format!(
            "{name},{},{},{ranks},{flop_ratio:.4},{speedup:.3},{net_speedup:.3},{full_ms:.3},{low_ms:.3},{net_full:.3},{net_low:.3},{acc_before:.2},{acc_no_ft:.2},{acc_ft:.2},{:.2},{control_acc:.2},{:.2}",
            setting.decomposition,
            setting.name,
            acc_before - acc_ft,
            control_acc - acc_ft
        ));
        points.push(TradeoffPoint { label: setting.name.clone(), speedup: net_speedup, decomposition: setting.decomposition.clone(), accuracy: acc_ft });
        let path = args.out.join(format!("{}.safetensors", setting.name.replace([' ', '/', '+', '.'], "_")));
        let described = [(checkpoint::MODEL.into(), name.clone()), (checkpoint::FACTORISED.into(), plan_string(&decisions))];
        checkpoint::save(&path, &low, None, &checkpoint::Metadata::from(described))?;
    }
    csv.push(format!("{name},none,control: the original fine-tuned,full,1,1,1,,,,,{acc_before:.2},{acc_before:.2},{control_acc:.2},{:.2},{control_acc:.2},0", acc_before - control_acc));

    let csv_path = args.out.join("lowrank.csv");
    write_atomic(&csv_path, &(csv.join("\n") + "\n"))?;
    lowrank_tradeoff(&points, acc_before, control_acc, &args.out.join("lowrank.png"))?;
    println!(
        "\nFLOPs: all convolutions relative to full rank; layers: measured forward time of the factorised layers, full / factorised;\n\
         network: whole-network inference (batch {}, median of {} interleaved rounds), full / factorised; drop: accuracy before\n\
         minus after fine-tuning ({} epoch(s){}); vs ctl: the control ({control_acc:.2}%) minus the fine-tuned accuracy.\nwrote {} and {}",
        args.batch,
        args.rounds,
        args.ft_epochs,
        args.distill.map_or(String::new(), |t| format!(", distilled from the original at T = {t}, alpha = {}", args.alpha)),
        csv_path.display(),
        args.out.join("lowrank.png").display()
    );
    Ok(())
}

fn main() -> std::process::ExitCode {
    main_with(Args::parse(), run)
}
