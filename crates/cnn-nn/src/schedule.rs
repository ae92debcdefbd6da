//! Learning-rate schedules: the rate as a function of how far training has come.
//!
//! [`crate::train::fit`] asks its schedule before every step; a schedule that changes once an
//! epoch ([`StepDecay`], or [`Cosine::per_epoch`]) looks only at the epoch the step is in.
//! Wrap any of them in [`Warmup`] for a linear ramp over the first steps.

/// Where training stands when a rate is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// The step about to be taken, from 0, counted over the whole run (resumed epochs too).
    pub step: usize,
    /// Steps in one epoch.
    pub steps_per_epoch: usize,
    /// Steps of the whole run.
    pub total_steps: usize,
}

impl Progress {
    /// The epoch of this step, from 0.
    pub fn epoch(&self) -> usize {
        self.step / self.steps_per_epoch.max(1)
    }
}

/// A learning-rate schedule.
pub trait Schedule: std::fmt::Debug + Send + Sync {
    /// The learning rate for the step `at`.
    fn lr(&self, at: Progress) -> f32;

    /// Why the schedule's settings cannot work, if they cannot (checked before training).
    fn check(&self) -> Result<(), String>;
}

/// Fails unless `lr` is a positive finite number.
fn positive(what: &str, lr: f32) -> Result<(), String> {
    if lr.is_finite() && lr > 0.0 {
        Ok(())
    } else {
        Err(format!("{what} must be a positive number, got {lr}"))
    }
}

/// The same rate throughout.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Constant(pub f32);

impl Schedule for Constant {
    fn lr(&self, _: Progress) -> f32 {
        self.0
    }

    fn check(&self) -> Result<(), String> {
        positive("the learning rate", self.0)
    }
}

/// Step decay: the rate multiplied by `gamma` every `every` epochs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepDecay {
    /// Initial learning rate.
    pub initial: f32,
    /// Epochs between decays.
    pub every: usize,
    /// Factor applied at each decay.
    pub gamma: f32,
}

impl Schedule for StepDecay {
    fn lr(&self, at: Progress) -> f32 {
        self.initial * self.gamma.powi((at.epoch() / self.every.max(1)) as i32)
    }

    fn check(&self) -> Result<(), String> {
        positive("the learning rate", self.initial)?;
        positive("the decay factor", self.gamma)?;
        (self.every > 0).then_some(()).ok_or_else(|| "a step decay needs a period of at least 1 epoch".to_string())
    }
}

/// Cosine decay from `initial` to `min` over the whole run (Loshchilov & Hutter's SGDR without
/// restarts): `lr = min + (initial − min)·(1 + cos(π·t / T)) / 2`, with `t` the step (or, per
/// epoch, the epoch's first step) and `T` the run's steps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cosine {
    /// The rate at the start.
    pub initial: f32,
    /// The rate it tends to at the end.
    pub min: f32,
    /// Change once an epoch rather than at every step.
    pub per_epoch: bool,
}

impl Cosine {
    /// Decaying to 0 at every step.
    pub fn per_step(initial: f32) -> Self {
        Cosine { initial, min: 0.0, per_epoch: false }
    }

    /// Decaying to 0, changing once an epoch.
    pub fn per_epoch(initial: f32) -> Self {
        Cosine { initial, min: 0.0, per_epoch: true }
    }
}

impl Schedule for Cosine {
    fn lr(&self, at: Progress) -> f32 {
        let t = if self.per_epoch { at.epoch() * at.steps_per_epoch } else { at.step };
        let phase = std::f64::consts::PI * t as f64 / at.total_steps.max(1) as f64;
        (self.min as f64 + (self.initial - self.min) as f64 * (1.0 + phase.cos()) / 2.0) as f32
    }

    fn check(&self) -> Result<(), String> {
        positive("the learning rate", self.initial)?;
        if !(self.min.is_finite() && self.min >= 0.0 && self.min <= self.initial) {
            return Err(format!("the final rate of a cosine decay must be in [0, {}], got {}", self.initial, self.min));
        }
        Ok(())
    }
}

/// A linear warm-up over the first `steps` steps: step `s` gets `(s + 1) / steps` of the
/// wrapped schedule's rate (PyTorch's `LinearLR` from 1/steps), then the schedule itself.
#[derive(Clone, Debug)]
pub struct Warmup<S> {
    /// Steps of the ramp.
    pub steps: usize,
    /// The schedule after it.
    pub then: S,
}

impl<S: Schedule> Schedule for Warmup<S> {
    fn lr(&self, at: Progress) -> f32 {
        let lr = self.then.lr(at);
        if at.step < self.steps {
            lr * (at.step + 1) as f32 / self.steps as f32
        } else {
            lr
        }
    }

    fn check(&self) -> Result<(), String> {
        self.then.check()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(step: usize) -> Progress {
        Progress { step, steps_per_epoch: 10, total_steps: 100 }
    }

    #[test]
    fn step_decay_by_epochs() {
        let s = StepDecay { initial: 1.0, every: 2, gamma: 0.5 };
        // epochs 0 1 2 5 → steps 0, 19, 20, 55
        assert_eq!([s.lr(at(0)), s.lr(at(19)), s.lr(at(20)), s.lr(at(55))], [1.0, 1.0, 0.5, 0.25]);
        assert!(StepDecay { initial: 1.0, every: 0, gamma: 0.5 }.check().is_err());
    }

    #[test]
    fn cosine_from_initial_to_min() {
        let s = Cosine::per_step(0.1);
        // t = 0: 0.1; t = T/2: 0.05; t = T/4: 0.05·(1 + cos π/4) = 0.0853553
        assert_eq!(s.lr(at(0)), 0.1);
        assert!((s.lr(at(50)) - 0.05).abs() < 1e-7);
        assert!((s.lr(at(25)) - 0.085_355_34).abs() < 1e-7);
        assert!(s.lr(at(99)) < 1e-4);
        // per epoch: constant within an epoch, the value of its first step
        let e = Cosine::per_epoch(0.1);
        assert_eq!(e.lr(at(27)), s.lr(at(20)));
        let floor = Cosine { initial: 0.1, min: 0.01, per_epoch: false };
        assert!((floor.lr(at(50)) - 0.055).abs() < 1e-7);
        assert!(Cosine { initial: 0.1, min: 0.2, per_epoch: false }.check().is_err());
    }

    #[test]
    fn warmup_ramps_then_hands_over() {
        let s = Warmup { steps: 4, then: Constant(0.2) };
        let lrs: Vec<f32> = (0..6).map(|i| s.lr(at(i))).collect();
        assert_eq!(lrs, [0.05, 0.1, 0.15, 0.2, 0.2, 0.2]);
        assert!(Warmup { steps: 4, then: Constant(-1.0) }.check().is_err());
    }
}
