//! How each model of the zoo is trained by default: the optimiser, the rate and its schedule,
//! the batch, the epochs, the augmentation. `cargo xtask train --model NAME` starts from these
//! and lets every flag override them.

use crate::augment::{Compose, HorizontalFlip, RandomCrop, Transform};
use crate::optim::{Adam, Optimizer, Sgd};
use crate::schedule::{Constant, Cosine, Schedule, StepDecay, Warmup};
use crate::{NnError, Result};
use std::sync::Arc;

/// The optimiser of a recipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptimizerKind {
    /// Adam with the usual betas.
    Adam,
    /// SGD with momentum.
    Sgd,
}

/// How the rate changes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ScheduleKind {
    /// The same rate throughout.
    Constant,
    /// Multiplied by `gamma` every `every` epochs.
    Step {
        /// Epochs between decays.
        every: usize,
        /// The factor.
        gamma: f32,
    },
    /// Cosine decay to 0 over the run, at every step.
    Cosine,
}

/// A training recipe.
#[derive(Clone, Debug, PartialEq)]
pub struct Recipe {
    /// The optimiser.
    pub optimizer: OptimizerKind,
    /// The (initial) learning rate.
    pub lr: f32,
    /// SGD's momentum.
    pub momentum: f32,
    /// SGD with Nesterov's momentum.
    pub nesterov: bool,
    /// L2 weight decay (SGD).
    pub weight_decay: f32,
    /// Decay biases and BatchNorm's γ and β too.
    pub decay_vectors: bool,
    /// The rate's schedule.
    pub schedule: ScheduleKind,
    /// Steps of linear warm-up (0: none).
    pub warmup: usize,
    /// Samples per batch.
    pub batch: usize,
    /// Epochs.
    pub epochs: usize,
    /// Random crop from the image padded by 2 (28 → 32) and horizontal flips.
    pub crop_flip: bool,
}

impl Recipe {
    /// The documented default of a model of [`super::NAMES`]:
    ///
    /// - `reference`, `lenet5`, `vgg-fashion`: Adam 1e-3, batch 64, 5 epochs, constant rate, no augmentation;
    /// - `resnet20`: the classic CIFAR recipe — SGD with Nesterov momentum 0.9, weight decay
    ///   5e-4 except on biases and BatchNorm, batch 128, rate 0.1 with cosine decay per step,
    ///   15 epochs, random 28x28 crops of the image padded to 32x32 and horizontal flips.
    ///
    /// # Errors
    /// An unknown model.
    pub fn for_model(name: &str) -> Result<Recipe> {
        let adam = Recipe {
            optimizer: OptimizerKind::Adam,
            lr: 1e-3,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
            decay_vectors: true,
            schedule: ScheduleKind::Constant,
            warmup: 0,
            batch: 64,
            epochs: 5,
            crop_flip: false,
        };
        match name {
            "reference" | "lenet5" | "vgg-fashion" => Ok(adam),
            "resnet20" => Ok(Recipe {
                optimizer: OptimizerKind::Sgd,
                lr: 0.1,
                nesterov: true,
                weight_decay: 5e-4,
                decay_vectors: false,
                schedule: ScheduleKind::Cosine,
                batch: 128,
                epochs: 15,
                crop_flip: true,
                ..adam
            }),
            other if super::ALL_NAMES.contains(&other) => Err(NnError::Config(format!(
                "`{other}` is not made for 28x28 grey images; the models for them are {}",
                super::NAMES.join(", ")
            ))),
            other => Err(NnError::Config(format!("unknown model `{other}`; the models for 28x28 grey images are {}", super::NAMES.join(", ")))),
        }
    }

    /// The optimiser, at the recipe's rate.
    pub fn optimizer(&self) -> Box<dyn Optimizer> {
        match self.optimizer {
            OptimizerKind::Adam => Box::new(Adam::new(self.lr)),
            OptimizerKind::Sgd => {
                let mut sgd = Sgd::new(self.lr, self.momentum, self.weight_decay);
                sgd.nesterov = self.nesterov;
                sgd.decay_vectors = self.decay_vectors;
                Box::new(sgd)
            }
        }
    }

    /// The schedule, warm-up included.
    pub fn schedule(&self) -> Arc<dyn Schedule> {
        fn warm<S: Schedule + 'static>(steps: usize, s: S) -> Arc<dyn Schedule> {
            if steps > 0 {
                Arc::new(Warmup { steps, then: s })
            } else {
                Arc::new(s)
            }
        }
        match self.schedule {
            ScheduleKind::Constant => warm(self.warmup, Constant(self.lr)),
            ScheduleKind::Step { every, gamma } => warm(self.warmup, StepDecay { initial: self.lr, every, gamma }),
            ScheduleKind::Cosine => warm(self.warmup, Cosine::per_step(self.lr)),
        }
    }

    /// The augmentation, if any.
    pub fn augment(&self) -> Option<Arc<dyn Transform>> {
        self.crop_flip.then(|| Arc::new(Compose(vec![Box::new(RandomCrop { padding: 2 }), Box::new(HorizontalFlip { probability: 0.5 })])) as Arc<dyn Transform>)
    }
}
