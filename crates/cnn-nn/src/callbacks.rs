//! What runs after every epoch of [`crate::train::fit`]: the closure it is given returns
//! whether to go on ([`Control`]), and [`EarlyStopping`] decides that from the validation
//! metrics, remembering the best epoch's weights to put back.

use crate::sequential::Sequential;
use crate::train::EpochMetrics;
use ndarray::ArrayD;

/// Whether training goes on after an epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Train the next epoch.
    Continue,
    /// Stop here; `fit` returns the history so far.
    Stop,
}

/// `Ok(())` from an epoch closure means "go on".
impl From<()> for Control {
    fn from(_: ()) -> Control {
        Control::Continue
    }
}

/// The validation metric early stopping watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Monitor {
    /// Lower is better.
    ValLoss,
    /// Higher is better.
    ValAccuracy,
}

impl Monitor {
    /// The metric of an epoch, as a value where lower is better (`None` without validation).
    fn score(self, m: &EpochMetrics) -> Option<f32> {
        match self {
            Monitor::ValLoss => m.val_loss,
            Monitor::ValAccuracy => m.val_acc.map(|a| -a),
        }
    }
}

/// The weights and buffers of a model, by name.
type Snapshot = (Vec<(String, ArrayD<f32>)>, Vec<(String, ArrayD<f32>)>);

/// Stops training when the monitored validation metric has not improved by more than
/// `min_delta` for `patience` epochs (Keras' `EarlyStopping`), and can keep the best epoch's
/// weights to restore them.
///
/// ```
/// use cnn_nn::callbacks::{Control, EarlyStopping, Monitor};
/// let mut early = EarlyStopping::new(Monitor::ValLoss, 2);
/// # let _ = &mut early;
/// // in fit's closure: `|m, model, _| Ok(early.update(m, model))`, then `early.restore(&mut model)`
/// ```
#[derive(Debug)]
pub struct EarlyStopping {
    monitor: Monitor,
    patience: usize,
    min_delta: f32,
    keep_best: bool,
    /// The best score and its epoch.
    best: Option<(f32, usize)>,
    best_weights: Option<Snapshot>,
    /// Epochs since the best.
    waited: usize,
    improved: bool,
}

impl EarlyStopping {
    /// Watching `monitor`, stopping after `patience` epochs without improvement.
    pub fn new(monitor: Monitor, patience: usize) -> Self {
        EarlyStopping { monitor, patience, min_delta: 0.0, keep_best: false, best: None, best_weights: None, waited: 0, improved: false }
    }

    /// An improvement must beat the best by more than this.
    pub fn min_delta(self, min_delta: f32) -> Self {
        EarlyStopping { min_delta, ..self }
    }

    /// Keep a copy of the best epoch's weights and buffers for [`EarlyStopping::restore`].
    pub fn keep_best_weights(self) -> Self {
        EarlyStopping { keep_best: true, ..self }
    }

    /// Records an epoch and says whether to go on. An epoch without the monitored metric (no
    /// validation set) never counts as an improvement.
    pub fn update(&mut self, m: &EpochMetrics, model: &Sequential) -> Control {
        let score = self.monitor.score(m).filter(|s| s.is_finite());
        self.improved = match (score, self.best) {
            (Some(s), Some((best, _))) => s < best - self.min_delta,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if self.improved {
            self.best = score.map(|s| (s, m.epoch));
            self.waited = 0;
            if self.keep_best {
                let params = model.named_params().into_iter().map(|(n, p)| (n, p.value.clone())).collect();
                let buffers = model.named_buffers().into_iter().map(|(n, b)| (n, b.clone())).collect();
                self.best_weights = Some((params, buffers));
            }
        } else {
            self.waited += 1;
        }
        if self.waited >= self.patience.max(1) {
            Control::Stop
        } else {
            Control::Continue
        }
    }

    /// The last epoch recorded was the best so far (time to save a "best" checkpoint).
    pub fn improved(&self) -> bool {
        self.improved
    }

    /// The best epoch so far.
    pub fn best_epoch(&self) -> Option<usize> {
        self.best.map(|(_, epoch)| epoch)
    }

    /// Puts the best epoch's weights and buffers back into `model` (kept with
    /// [`EarlyStopping::keep_best_weights`]); returns that epoch, or `None` if nothing was kept.
    pub fn restore(&self, model: &mut Sequential) -> Option<usize> {
        let (params, buffers) = self.best_weights.as_ref()?;
        for ((_, p), (_, v)) in model.named_params_mut().into_iter().zip(params) {
            p.value.assign(v);
        }
        for ((_, b), (_, v)) in model.named_buffers_mut().into_iter().zip(buffers) {
            b.assign(v);
        }
        self.best_epoch()
    }
}
