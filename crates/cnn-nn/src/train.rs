//! Training and evaluation loops, with a progress bar and per-epoch metrics.

use crate::data::Dataset;
use crate::error::{NnError, Result};
use crate::optim::{Optimizer, StepDecay};
use crate::sequential::{argmax_rows, Sequential};
use crate::loss::softmax_cross_entropy;
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::Ix2;
use std::time::Instant;

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
    /// Learning-rate schedule; `None` keeps the optimiser's rate.
    pub schedule: Option<StepDecay>,
    /// Show a progress bar (on a terminal).
    pub progress: bool,
}

impl Default for FitConfig {
    fn default() -> Self {
        FitConfig { epochs: 5, start_epoch: 0, batch_size: 64, seed: 0, schedule: None, progress: true }
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
    /// Validation accuracy after the epoch.
    pub val_acc: Option<f32>,
    /// Test accuracy after the epoch.
    pub test_acc: Option<f32>,
    /// Seconds of training (without evaluation).
    pub seconds: f32,
    /// Training throughput.
    pub images_per_sec: f32,
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

/// Loss and accuracy of `model` on `data`, in evaluation mode.
///
/// # Errors
/// Data that does not fit the model.
pub fn evaluate(model: &mut Sequential, data: &Dataset, batch_size: usize) -> Result<Evaluation> {
    if data.is_empty() || batch_size == 0 {
        return Err(NnError::Config("evaluate needs data and a batch size of at least 1".into()));
    }
    let start = Instant::now();
    let (mut loss, mut correct) = (0.0f64, 0usize);
    let indices: Vec<usize> = (0..data.len()).collect();
    for chunk in indices.chunks(batch_size) {
        let (x, labels) = data.batch(chunk);
        let logits = model.logits(x)?.into_dimensionality::<Ix2>().map_err(|_| NnError::Config("model output is not [n, classes]".into()))?;
        let (l, _) = softmax_cross_entropy(logits.view(), &labels)?;
        loss += l as f64 * chunk.len() as f64;
        correct += argmax_rows(logits.view()).iter().zip(&labels).filter(|(p, &l)| **p == l as usize).count();
    }
    let n = data.len() as f64;
    Ok(Evaluation {
        loss: (loss / n) as f32,
        accuracy: (correct as f64 / n) as f32,
        images_per_sec: (n / start.elapsed().as_secs_f64()) as f32,
    })
}

/// Trains `model` on `train` with mini-batches, evaluating on `val` and `test` after each
/// epoch, and calling `after_epoch` (to print, save a checkpoint, ...).
///
/// # Errors
/// A bad configuration, data that does not fit the model, a loss that becomes NaN or
/// infinite ([`NnError::Diverged`]), or an error from `after_epoch`.
pub fn fit(
    model: &mut Sequential,
    optimizer: &mut dyn Optimizer,
    train: &Dataset,
    val: Option<&Dataset>,
    test: Option<&Dataset>,
    config: &FitConfig,
    mut after_epoch: impl FnMut(&EpochMetrics, &Sequential) -> Result<()>,
) -> Result<Vec<EpochMetrics>> {
    if config.batch_size == 0 || train.is_empty() {
        return Err(NnError::Config("fit needs training data and a batch size of at least 1".into()));
    }
    let mut history = vec![];
    for epoch in config.start_epoch + 1..=config.start_epoch + config.epochs {
        if let Some(schedule) = config.schedule {
            optimizer.set_lr(schedule.lr(epoch - 1));
        }
        let order = train.shuffled(config.seed.wrapping_add(epoch as u64));
        let batches = order.len().div_ceil(config.batch_size);
        let bar = bar(batches, config.progress, format!("epoch {epoch}"));
        let start = Instant::now();
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
        for (b, chunk) in order.chunks(config.batch_size).enumerate() {
            let (x, labels) = train.batch(chunk);
            let (loss, right) = model.loss_and_gradients(x, &labels)?;
            if !loss.is_finite() {
                bar.abandon();
                return Err(NnError::Diverged { loss, epoch, batch: b });
            }
            optimizer.step(&mut model.params_mut());
            loss_sum += loss as f64 * chunk.len() as f64;
            correct += right;
            seen += chunk.len();
            bar.inc(1);
            if b % 20 == 0 || b + 1 == batches {
                let rate = seen as f64 / start.elapsed().as_secs_f64();
                bar.set_message(format!(
                    "loss {:.4} acc {:.2}% {:.0} img/s",
                    loss_sum / seen as f64,
                    100.0 * correct as f64 / seen as f64,
                    rate
                ));
            }
        }
        let seconds = start.elapsed().as_secs_f32();
        bar.finish_and_clear();
        let eval = |m: &mut Sequential, d: Option<&Dataset>| -> Result<Option<f32>> {
            d.map(|d| evaluate(m, d, 256).map(|e| e.accuracy)).transpose()
        };
        let metrics = EpochMetrics {
            epoch,
            lr: optimizer.lr(),
            train_loss: (loss_sum / seen as f64) as f32,
            train_acc: (correct as f64 / seen as f64) as f32,
            val_acc: eval(model, val)?,
            test_acc: eval(model, test)?,
            seconds,
            images_per_sec: seen as f32 / seconds,
        };
        after_epoch(&metrics, model)?;
        history.push(metrics);
    }
    Ok(history)
}
