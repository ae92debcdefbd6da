//! Training and evaluation loops, with a progress bar and per-epoch metrics.
//!
//! [`fit`] checks everything it can before the first batch (settings, data shapes, labels
//! against the model's classes, finite data and weights), then stops at the first sign of
//! trouble: a non-finite loss or parameter, or a loss that grew far beyond where it started
//! ([`Divergence`]).

use crate::augment::{augment_batch, Transform};
use crate::callbacks::Control;
use crate::data::{shuffled, Data};
use crate::distributed::{self, shard, Shard, Solo, Team};
use crate::error::{NnError, Result};
use crate::loss::{softmax_cross_entropy, SoftTargets};
use crate::optim::Optimizer;
use crate::schedule::{Progress, Schedule};
use std::sync::Arc;
use crate::sequential::{argmax_rows, Sequential};
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::Ix2;
use std::collections::VecDeque;
use std::time::Instant;

/// When training counts as diverged (besides a NaN or infinite loss): the mean loss of the
/// last `window` batches exceeds `max(factor · L₀, L₀ + margin)`, where `L₀` is the loss of
/// the first batch of the [`fit`] call. With the defaults (10 batches, 10x, +10) a fresh
/// classifier (`L₀ ≈ ln classes`) stops above about 23 for 10 classes, a resumed one (small
/// `L₀`) above `L₀ + 10`: far beyond any loss a working run sees, far below the 1e11 of a
/// learning rate that is much too large.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Divergence {
    /// Batches averaged.
    pub window: usize,
    /// Relative growth that counts as divergence.
    pub factor: f32,
    /// Absolute growth that counts as divergence (for a small `L₀`).
    pub margin: f32,
}

impl Default for Divergence {
    fn default() -> Self {
        Divergence { window: 10, factor: 10.0, margin: 10.0 }
    }
}

impl Divergence {
    /// Why training has diverged, given the first batch's loss `l0` and the losses of the
    /// latest batches (oldest first; only the last `window` count); `None` while it has not.
    ///
    /// ```
    /// use cnn_nn::train::Divergence;
    /// let rule = Divergence { window: 2, ..Divergence::default() };
    /// assert!(rule.check(2.3, &[2.0, 1.9]).is_none());
    /// assert!(rule.check(2.3, &[30.0]).is_none(), "one batch is not a trend");
    /// assert!(rule.check(2.3, &[1.0, 30.0, 50.0]).is_some(), "mean 40 > 23");
    /// assert!(rule.check(2.3, &[2.0, f32::NAN]).is_some());
    /// ```
    pub fn check(&self, l0: f32, recent: &[f32]) -> Option<String> {
        if let Some(loss) = recent.last().filter(|l| !l.is_finite()) {
            return Some(format!("the loss is {loss}"));
        }
        let window = &recent[recent.len().saturating_sub(self.window)..];
        let mean = window.iter().sum::<f32>() / window.len().max(1) as f32;
        let limit = (self.factor * l0).max(l0 + self.margin);
        (window.len() == self.window && mean > limit).then(|| {
            format!(
                "the mean loss of the last {} batches, {mean:.4e}, exceeds max({} x {l0:.4}, {l0:.4} + {}) = {limit:.4}, from the first batch's {l0:.4}",
                self.window, self.factor, self.margin
            )
        })
    }
}

/// How to train.
#[derive(Clone, Debug)]
pub struct FitConfig {
    /// Epochs to run (the last epoch is `start_epoch + epochs`).
    pub epochs: usize,
    /// First epoch number minus one: 0 for a new run, the checkpoint's epoch when resuming.
    pub start_epoch: usize,
    /// Samples per mini-batch.
    pub batch_size: usize,
    /// Seed of the shuffling (epoch `e` shuffles with `seed + e`).
    pub seed: u64,
    /// Learning-rate schedule, asked before every step; `None` keeps the optimiser's rate.
    pub schedule: Option<Arc<dyn Schedule>>,
    /// Show a progress bar (on a terminal).
    pub progress: bool,
    /// The divergence rule.
    pub divergence: Divergence,
    /// Augmentation applied to every training batch, each sample seeded by (`seed`, epoch,
    /// its index): the same at any thread count.
    pub augment: Option<Arc<dyn Transform>>,
    /// Learn from a teacher network's soft targets too (knowledge distillation).
    pub distill: Option<Distillation>,
}

/// Knowledge distillation: the loss becomes [`crate::loss::distillation_loss`] against the
/// `teacher`'s logits (in evaluation mode) on the same (augmented) batch.
#[derive(Clone)]
pub struct Distillation {
    /// The network learned from (a full-size one, for a compressed student).
    pub teacher: Arc<Sequential>,
    /// The softening temperature `T` (a positive number; 2 to 5 is usual).
    pub temperature: f32,
    /// The weight `α` of the soft term, in `[0, 1]`.
    pub alpha: f32,
}

impl std::fmt::Debug for Distillation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Distillation").field("teacher", &format_args!("{} parameters", self.teacher.num_params())).field("temperature", &self.temperature).field("alpha", &self.alpha).finish()
    }
}

impl Default for FitConfig {
    fn default() -> Self {
        FitConfig { epochs: 5, start_epoch: 0, batch_size: 64, seed: 0, schedule: None, progress: true, divergence: Divergence::default(), augment: None, distill: None }
    }
}

/// What one epoch measured.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochMetrics {
    /// Epoch number, from 1.
    pub epoch: usize,
    /// Learning rate used.
    pub lr: f32,
    /// Mean training loss over the epoch.
    pub train_loss: f32,
    /// Training accuracy over the epoch (while the weights moved).
    pub train_acc: f32,
    /// Validation loss after the epoch.
    pub val_loss: Option<f32>,
    /// Validation accuracy after the epoch.
    pub val_acc: Option<f32>,
    /// Test accuracy after the epoch.
    pub test_acc: Option<f32>,
    /// Seconds of training (without evaluation).
    pub seconds: f32,
    /// Training throughput.
    pub images_per_sec: f32,
}

impl EpochMetrics {
    /// The header of [`EpochMetrics::csv_row`]'s table.
    pub const CSV_HEADER: &'static str = "epoch,lr,train_loss,train_acc,val_loss,val_acc,test_acc,seconds,images_per_sec";

    /// One CSV row (an absent value is an empty field).
    pub fn csv_row(&self) -> String {
        let opt = |v: Option<f32>| v.map(|v| v.to_string()).unwrap_or_default();
        format!(
            "{},{},{},{},{},{},{},{},{}",
            self.epoch, self.lr, self.train_loss, self.train_acc, opt(self.val_loss), opt(self.val_acc), opt(self.test_acc), self.seconds, self.images_per_sec
        )
    }

    /// Parses a row written by [`EpochMetrics::csv_row`].
    ///
    /// # Errors
    /// A row with another number of fields, or a field that is not a number.
    pub fn from_csv_row(row: &str) -> std::result::Result<EpochMetrics, String> {
        let fields: Vec<&str> = row.trim().split(',').collect();
        if fields.len() != 9 {
            return Err(format!("expected 9 fields, got {} in `{row}`", fields.len()));
        }
        let num = |i: usize| fields[i].parse::<f32>().map_err(|e| format!("field {i} `{}`: {e}", fields[i]));
        let opt = |i: usize| if fields[i].is_empty() { Ok(None) } else { num(i).map(Some) };
        Ok(EpochMetrics {
            epoch: fields[0].parse().map_err(|e| format!("epoch `{}`: {e}", fields[0]))?,
            lr: num(1)?,
            train_loss: num(2)?,
            train_acc: num(3)?,
            val_loss: opt(4)?,
            val_acc: opt(5)?,
            test_acc: opt(6)?,
            seconds: num(7)?,
            images_per_sec: num(8)?,
        })
    }
}

/// A history as a CSV table with a header.
pub fn history_csv(history: &[EpochMetrics]) -> String {
    let mut csv = format!("{}\n", EpochMetrics::CSV_HEADER);
    for m in history {
        csv += &m.csv_row();
        csv.push('\n');
    }
    csv
}

/// Parses a table written by [`history_csv`].
///
/// # Errors
/// Another header, or a row that does not parse (naming its line).
pub fn parse_history_csv(csv: &str) -> std::result::Result<Vec<EpochMetrics>, String> {
    let mut lines = csv.lines();
    if lines.next() != Some(EpochMetrics::CSV_HEADER) {
        return Err(format!("the first line is not `{}`", EpochMetrics::CSV_HEADER));
    }
    lines.enumerate().map(|(i, row)| EpochMetrics::from_csv_row(row).map_err(|e| format!("line {}: {e}", i + 2))).collect()
}

/// Result of [`evaluate`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Evaluation {
    /// Mean loss.
    pub loss: f32,
    /// Fraction correct.
    pub accuracy: f32,
    /// Inference throughput.
    pub images_per_sec: f32,
}

fn bar(len: usize, progress: bool, prefix: String) -> ProgressBar {
    if !progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64).with_prefix(prefix);
    let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
        .expect("valid template")
        .progress_chars("=> ");
    bar.set_style(style);
    bar
}

/// The number of classes of a classifier: its output must be `[classes]` per sample.
fn classes(model: &Sequential) -> Result<usize> {
    match model.output_shape() {
        [classes] => Ok(*classes),
        other => Err(NnError::Config(format!("training and evaluation need a model whose output is [classes] per sample, this one gives {other:?}"))),
    }
}

/// Checks a data set against the model before any work: sample shape, labels in `0..classes`,
/// finite values. `what` names the set in errors.
pub fn check_data<D: Data + ?Sized>(model: &Sequential, data: &D, what: &str) -> Result<()> {
    data.check().map_err(|reason| NnError::Config(format!("the {what} set: {reason}")))?;
    if data.is_empty() {
        return Err(NnError::Config(format!("the {what} set is empty")));
    }
    let sample = data.sample_shape();
    if sample != model.input_shape() {
        return Err(NnError::Shape { what: format!("{what} samples"), expected: model.input_shape().to_vec(), got: sample });
    }
    let classes = classes(model)?;
    if let Some((index, label)) = (0..data.len()).map(|i| (i, data.label(i))).find(|&(_, l)| l >= classes) {
        return Err(NnError::Label { label, index, classes });
    }
    // a pass over the data in chunks, to find NaN or infinities before they are trained on
    let indices: Vec<usize> = (0..data.len()).collect();
    for chunk in indices.chunks(1024) {
        let samples = data.samples(chunk);
        let per_sample = samples.len() / chunk.len();
        if let Some((flat, &value)) = samples.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(NnError::NonFinite { what: format!("{what} sample {}", chunk[flat / per_sample]), value, context: String::new() });
        }
    }
    Ok(())
}

/// The first parameter holding NaN or an infinity, with that value.
fn non_finite_param(model: &Sequential) -> Option<(String, f32)> {
    model.named_params().into_iter().find_map(|(name, p)| p.value.iter().find(|v| !v.is_finite()).map(|&v| (name, v)))
}

/// Loss and accuracy of `model` on `data`, in evaluation mode.
///
/// # Errors
/// Data that does not fit the model, a batch size of 0.
pub fn evaluate<D: Data + ?Sized>(model: &Sequential, data: &D, batch_size: usize) -> Result<Evaluation> {
    evaluate_on(&Solo, model, data, batch_size)
}

/// [`evaluate`] shared out over a [`Team`]: every rank evaluates its [`shard`] of the data
/// set, the sums are added up, and every rank gets the result.
///
/// # Errors
/// As [`evaluate`].
pub fn evaluate_on<D: Data + ?Sized>(team: &dyn Team, model: &Sequential, data: &D, batch_size: usize) -> Result<Evaluation> {
    if batch_size == 0 {
        return Err(NnError::Config("evaluate needs a batch size of at least 1".into()));
    }
    check_data(model, data, "evaluation")?;
    evaluate_checked(team, model, data, batch_size)
}

/// [`evaluate_on`] on data already checked ([`fit`] checks its sets once, not every epoch).
fn evaluate_checked<D: Data + ?Sized>(team: &dyn Team, model: &Sequential, data: &D, batch_size: usize) -> Result<Evaluation> {
    let start = Instant::now();
    let (mut loss, mut correct) = (0.0f64, 0usize);
    let indices: Vec<usize> = shard(data.len(), team.rank(), team.size()).collect();
    for chunk in indices.chunks(batch_size) {
        let (x, labels) = data.batch(chunk);
        let logits = model.forward(x)?.into_dimensionality::<Ix2>().map_err(|_| NnError::Config("model output is not [n, classes]".into()))?;
        let (l, _) = softmax_cross_entropy(logits.view(), &labels)?;
        loss += l as f64 * chunk.len() as f64;
        correct += argmax_rows(logits.view()).iter().zip(&labels).filter(|(p, l)| p == l).count();
    }
    let mut sums = [loss, correct as f64];
    team.sum(&mut sums);
    let n = data.len() as f64;
    Ok(Evaluation {
        loss: (sums[0] / n) as f32,
        accuracy: (sums[1] / n) as f32,
        images_per_sec: (n / start.elapsed().as_secs_f64()) as f32,
    })
}

/// Everything [`fit`] refuses before it trains a single batch.
fn check_fit<D: Data + ?Sized>(model: &Sequential, optimizer: &dyn Optimizer, train: &D, others: &[(&str, Option<&D>)], config: &FitConfig) -> Result<()> {
    if config.batch_size == 0 {
        return Err(NnError::Config("the batch size must be at least 1".into()));
    }
    if config.epochs == 0 {
        return Err(NnError::Config("the number of epochs must be at least 1".into()));
    }
    if config.start_epoch.checked_add(config.epochs).is_none() {
        return Err(NnError::Config(format!("{} epochs after epoch {} overflow the epoch counter", config.epochs, config.start_epoch)));
    }
    match &config.schedule {
        Some(schedule) => schedule.check().map_err(NnError::Config)?,
        None => {
            let lr = optimizer.lr();
            if !(lr.is_finite() && lr > 0.0) {
                return Err(NnError::Config(format!("the learning rate must be a positive number, got {lr}")));
            }
        }
    }
    if let Some(d) = &config.distill {
        if d.teacher.input_shape() != model.input_shape() || d.teacher.output_shape() != model.output_shape() {
            return Err(NnError::Config(format!(
                "the teacher takes {:?} and gives {:?}; the model takes {:?} and gives {:?}: they must agree to distil",
                d.teacher.input_shape(), d.teacher.output_shape(), model.input_shape(), model.output_shape()
            )));
        }
        if !(d.temperature.is_finite() && d.temperature > 0.0 && (0.0..=1.0).contains(&d.alpha)) {
            return Err(NnError::Config(format!("distillation needs a positive temperature and alpha in [0, 1], got {} and {}", d.temperature, d.alpha)));
        }
    }
    let d = config.divergence;
    if d.window == 0 || !(d.factor >= 1.0 && d.margin >= 0.0) {
        return Err(NnError::Config(format!("divergence rule needs a window >= 1, factor >= 1 and margin >= 0, got {d:?}")));
    }
    check_data(model, train, "training")?;
    if config.augment.is_some() && train.sample_shape().len() != 3 {
        return Err(NnError::Config(format!("augmentation transforms images ([c, h, w]); the training samples are {:?}", train.sample_shape())));
    }
    for (what, data) in others {
        if let Some(data) = data {
            check_data(model, *data, what)?;
        }
    }
    if let Some((name, value)) = non_finite_param(model) {
        return Err(NnError::NonFinite {
            what: format!("parameter `{name}`"),
            value,
            context: " before training: the model's weights (a loaded checkpoint?) are broken; training cannot repair them".into(),
        });
    }
    Ok(())
}

/// Trains `model` on `train` with mini-batches, evaluating on `val` and `test` after each
/// epoch, and calling `after_epoch` (to print, save a checkpoint, ...), which says whether to
/// go on: `Ok(())` or `Ok(Control::Continue)` to train the next epoch, `Ok(Control::Stop)` to
/// end here (see [`crate::callbacks::EarlyStopping`]). The history of the epochs run is
/// returned either way.
///
/// Before the first batch it checks the settings, the data (shapes, labels in `0..classes`,
/// finite values) and the weights (finite). While training it stops with
/// [`NnError::Diverged`] at the first non-finite loss or parameter, or when the loss breaks
/// the [`Divergence`] rule; a non-finite loss on the very first batch, before any update, is
/// reported as [`NnError::NonFinite`] instead: the learning rate cannot be the cause.
///
/// # Errors
/// As above, and an error from `after_epoch`.
pub fn fit<D: Data + ?Sized, C: Into<Control>>(
    model: &mut Sequential,
    optimizer: &mut dyn Optimizer,
    train: &D,
    val: Option<&D>,
    test: Option<&D>,
    config: &FitConfig,
    after_epoch: impl FnMut(&EpochMetrics, &Sequential, &dyn Optimizer) -> Result<C>,
) -> Result<Vec<EpochMetrics>> {
    fit_on(&Solo, model, optimizer, train, val, test, config, after_epoch)
}

/// [`fit`], data-parallel over a [`Team`] of processes (see [`crate::distributed`]): every
/// rank calls it with the same model, optimiser, data and settings. The ranks start from
/// rank 0's weights; each global batch of `config.batch_size` is cut into one [`shard`] per
/// rank, and the gradients are summed over the team, so the training equals one process's
/// up to the order of floating-point sums (BatchNorm aside: each rank normalises its shard).
/// The evaluation is shared out too. Only rank 0 shows the progress bar and calls
/// `after_epoch` (to print and write files); its answer (continue, stop, or an error) ends
/// the epoch on every rank. Every rank returns the same history.
///
/// The weights of every rank are checked to be bit for bit rank 0's after every epoch (and
/// every 100 steps in debug builds).
///
/// # Errors
/// As [`fit`], on every rank; when rank 0's `after_epoch` fails, the other ranks return an
/// error saying so.
#[allow(clippy::too_many_arguments)]
pub fn fit_on<D: Data + ?Sized, C: Into<Control>>(
    team: &dyn Team,
    model: &mut Sequential,
    optimizer: &mut dyn Optimizer,
    train: &D,
    val: Option<&D>,
    test: Option<&D>,
    config: &FitConfig,
    mut after_epoch: impl FnMut(&EpochMetrics, &Sequential, &dyn Optimizer) -> Result<C>,
) -> Result<Vec<EpochMetrics>> {
    // every rank checks; if one refuses, all stop (none waits for it in the first step)
    distributed::agree(team, check_fit(model, optimizer, train, &[("validation", val), ("test", test)], config), "the checks before training")?;
    distributed::broadcast_model(team, model);
    let root = team.rank() == 0;
    let rule = config.divergence;
    let mut first_loss: Option<f32> = None;
    let mut recent: VecDeque<f32> = VecDeque::with_capacity(rule.window);
    let mut history = vec![];
    let steps_per_epoch = train.len().div_ceil(config.batch_size);
    let total_steps = (config.start_epoch + config.epochs).saturating_mul(steps_per_epoch);
    for epoch in config.start_epoch + 1..=config.start_epoch + config.epochs {
        let order = shuffled(train.len(), config.seed.wrapping_add(epoch as u64));
        let batches = order.len().div_ceil(config.batch_size);
        let bar = bar(batches, config.progress && root, format!("epoch {epoch}"));
        let start = Instant::now();
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
        for (b, chunk) in order.chunks(config.batch_size).enumerate() {
            if let Some(schedule) = &config.schedule {
                optimizer.set_lr(schedule.lr(Progress { step: (epoch - 1) * steps_per_epoch + b, steps_per_epoch, total_steps }));
            }
            let (loss, right) = batch_gradients(team, model, train, chunk, config, epoch)?;
            let diverged = |reason: String| {
                bar.abandon();
                NnError::Diverged { loss, epoch, batch: b, reason }
            };
            let l0 = match first_loss {
                None if !loss.is_finite() => {
                    bar.abandon();
                    let context = " on the first batch, before any update: the weights or the data make the loss overflow; the learning rate is not the cause".into();
                    return Err(NnError::NonFinite { what: "the loss".into(), value: loss, context });
                }
                Some(l0) => l0,
                None => *first_loss.insert(loss),
            };
            if recent.len() == rule.window {
                recent.pop_front();
            }
            recent.push_back(loss);
            if let Some(reason) = rule.check(l0, recent.make_contiguous()) {
                return Err(diverged(reason));
            }
            optimizer.step(&mut model.params_mut());
            if let Some((name, value)) = non_finite_param(model) {
                return Err(diverged(format!("parameter `{name}` became {value} in the update")));
            }
            if cfg!(debug_assertions) && b % 100 == 99 {
                distributed::check_same_weights(team, model)?;
            }
            loss_sum += loss as f64 * chunk.len() as f64;
            correct += right;
            seen += chunk.len();
            bar.inc(1);
            if b % 20 == 0 || b + 1 == batches {
                let rate = seen as f64 / start.elapsed().as_secs_f64();
                bar.set_message(format!("loss {:.4} acc {:.2}% {:.0} img/s", loss_sum / seen as f64, 100.0 * correct as f64 / seen as f64, rate));
            }
        }
        let seconds = start.elapsed().as_secs_f32();
        bar.finish_and_clear();
        distributed::average_buffers(team, model);
        distributed::check_same_weights(team, model)?;
        let val_eval = val.map(|d| evaluate_checked(team, model, d, 256)).transpose()?;
        let metrics = EpochMetrics {
            epoch,
            lr: optimizer.lr(),
            train_loss: (loss_sum / seen as f64) as f32,
            train_acc: (correct as f64 / seen as f64) as f32,
            val_loss: val_eval.map(|e| e.loss),
            val_acc: val_eval.map(|e| e.accuracy),
            test_acc: test.map(|d| evaluate_checked(team, model, d, 256).map(|e| e.accuracy)).transpose()?,
            seconds,
            images_per_sec: seen as f32 / seconds,
        };
        let control = epoch_end(team, root.then(|| after_epoch(&metrics, model, optimizer).map(Into::into)), epoch)?;
        history.push(metrics);
        if control == Control::Stop {
            break;
        }
    }
    Ok(history)
}

/// The gradients of one training batch, the samples `batch` of `data` (augmented by
/// `config.augment`, seeded by `config.seed`, `epoch` and each sample's index), over a team:
/// each rank computes its [`shard`] of the batch, and afterwards every rank's model holds the
/// gradient of the whole batch's mean loss (the parameters' gradients are zeroed first).
/// Returns the whole batch's mean loss and its number of correct predictions. The step
/// [`fit_on`] takes before each optimiser update; with [`Solo`], one process's
/// [`Sequential::loss_and_gradients`].
///
/// # Errors
/// As [`Sequential::loss_and_gradients`].
pub fn batch_gradients<D: Data + ?Sized>(team: &dyn Team, model: &mut Sequential, data: &D, batch: &[usize], config: &FitConfig, epoch: usize) -> Result<(f32, usize)> {
    // this rank's part of the batch (all of it for one process), augmented sample by sample
    let part = &batch[shard(batch.len(), team.rank(), team.size())];
    let (x, labels) = if part.is_empty() { (None, vec![]) } else {
        let (x, labels) = data.batch(part);
        (Some(x), labels)
    };
    let x = match (&config.augment, x) {
        (Some(transform), Some(x)) => {
            let got = x.shape().to_vec();
            let shape_error = |_| NnError::Shape { what: "an augmented batch".into(), expected: vec![0, 0, 0, 0], got };
            let mut x = x.into_dimensionality::<ndarray::Ix4>().map_err(shape_error)?;
            augment_batch(transform.as_ref(), &mut x, part, config.seed, epoch);
            Some(x.into_dyn())
        }
        (_, x) => x,
    };
    let shard = match x {
        Some(x) => {
            let soft = match &config.distill {
                Some(d) => {
                    let logits = d.teacher.forward(x.clone())?.into_dimensionality::<Ix2>().map_err(|_| NnError::Config("the teacher's output is not [n, classes]".into()))?;
                    Some(SoftTargets { logits, temperature: d.temperature, alpha: d.alpha })
                }
                None => None,
            };
            Some(Shard { x, labels: &labels, soft })
        }
        None => None,
    };
    model.zero_grad();
    let weight = part.len() as f32 / batch.len() as f32;
    let (loss, right) = team.gradients(model, shard, weight)?;
    // the whole batch's mean loss and correct predictions
    let mut sums = [loss as f64 * part.len() as f64, right as f64];
    team.sum(&mut sums);
    Ok(((sums[0] / batch.len() as f64) as f32, sums[1] as usize))
}

/// Every rank's answer to the end of an epoch: rank 0's `answer` (it alone calls
/// `after_epoch`), sent to the others.
fn epoch_end(team: &dyn Team, answer: Option<Result<Control>>, epoch: usize) -> Result<Control> {
    if team.size() == 1 {
        return answer.expect("rank 0 answers");
    }
    const CONTINUE: f32 = 0.0;
    const STOP: f32 = 1.0;
    const FAILED: f32 = 2.0;
    let mut code = [match &answer {
        Some(Ok(Control::Continue)) | None => CONTINUE,
        Some(Ok(Control::Stop)) => STOP,
        Some(Err(_)) => FAILED,
    }];
    team.broadcast(&mut code);
    match answer {
        Some(answer) => answer,
        None if code[0] == CONTINUE => Ok(Control::Continue),
        None if code[0] == STOP => Ok(Control::Stop),
        None => Err(NnError::Team(format!("rank 0 failed at the end of epoch {epoch} (see its error)"))),
    }
}
