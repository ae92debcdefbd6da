//! Optimisers: SGD with momentum (Nesterov's too) and weight decay, Adam; their state for
//! checkpoints. Learning-rate schedules are in [`crate::schedule`].

use crate::error::{NnError, Result};
use crate::layer::Param;
use ndarray::{ArrayD, Zip};

/// Updates parameters from their gradients.
pub trait Optimizer {
    /// One update of every parameter (the slice is in the model's fixed order).
    fn step(&mut self, params: &mut [&mut Param]);
    /// The current learning rate.
    fn lr(&self) -> f32;
    /// Sets the learning rate (schedules call this between epochs).
    fn set_lr(&mut self, lr: f32);
    /// Everything a later run needs to continue exactly where this one stopped (saved in
    /// checkpoints, so that resuming equals training on).
    fn state(&self) -> OptimizerState;
    /// Restores a state from [`Optimizer::state`].
    ///
    /// # Errors
    /// A state of another optimiser, or with other buffers.
    fn load_state(&mut self, state: OptimizerState) -> Result<()>;
}

/// An optimiser's state: its kind, the number of steps taken, and its buffers (velocity,
/// moments), each with one tensor per parameter in the model's order (none before the first
/// step).
#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerState {
    /// `sgd` or `adam`.
    pub kind: String,
    /// Steps taken.
    pub steps: u64,
    /// Named buffers, one tensor per parameter each.
    pub buffers: Vec<(String, Vec<ArrayD<f32>>)>,
}

impl OptimizerState {
    /// Takes buffer `names` out of `self` after checking the kind.
    fn into_buffers(self, kind: &str, names: &[&str]) -> Result<(u64, Vec<Vec<ArrayD<f32>>>)> {
        if self.kind != kind {
            return Err(NnError::Config(format!("optimizer state is {}'s, this optimizer is {kind}", self.kind)));
        }
        let mut out = vec![];
        for name in names {
            let (_, tensors) = self.buffers.iter().find(|(n, _)| n == name).ok_or_else(|| {
                NnError::Config(format!("{kind} optimizer state has no `{name}` buffer"))
            })?;
            out.push(tensors.clone());
        }
        if let Some((extra, _)) = self.buffers.iter().find(|(n, _)| !names.contains(&n.as_str())) {
            return Err(NnError::Config(format!("{kind} optimizer state has an unknown buffer `{extra}`")));
        }
        Ok((self.steps, out))
    }
}

/// Velocity or moment buffers, one per parameter, created on first use.
fn buffers(state: &mut Vec<ArrayD<f32>>, params: &[&mut Param]) {
    let fits = state.len() == params.len() && state.iter().zip(params).all(|(s, p)| s.shape() == p.value.shape());
    if !fits {
        *state = params.iter().map(|p| ArrayD::zeros(p.value.raw_dim())).collect();
    }
}

/// Stochastic gradient descent with momentum and (L2) weight decay, as PyTorch defines it:
///
/// ```text
/// g = grad + weight_decay · w
/// v = momentum · v + g
/// w = w − lr · v                  (Nesterov: w = w − lr · (g + momentum · v))
/// ```
pub struct Sgd {
    /// Learning rate.
    pub lr: f32,
    /// Momentum (0 for plain SGD).
    pub momentum: f32,
    /// L2 weight decay.
    pub weight_decay: f32,
    /// Nesterov's momentum: the step looks ahead along the velocity.
    pub nesterov: bool,
    /// Decay one-dimensional parameters too (biases, BatchNorm's γ and β), as PyTorch does
    /// by default; many recipes leave them out.
    pub decay_vectors: bool,
    velocity: Vec<ArrayD<f32>>,
    steps: u64,
}

impl Sgd {
    /// SGD with the given learning rate, momentum and weight decay (on every parameter).
    pub fn new(lr: f32, momentum: f32, weight_decay: f32) -> Self {
        Sgd { lr, momentum, weight_decay, nesterov: false, decay_vectors: true, velocity: vec![], steps: 0 }
    }

    /// With Nesterov's momentum.
    pub fn nesterov(self) -> Self {
        Sgd { nesterov: true, ..self }
    }

    /// Without weight decay on one-dimensional parameters (biases, BatchNorm's γ and β).
    pub fn no_decay_on_vectors(self) -> Self {
        Sgd { decay_vectors: false, ..self }
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, params: &mut [&mut Param]) {
        buffers(&mut self.velocity, params);
        self.steps += 1;
        let (lr, momentum, nesterov) = (self.lr, self.momentum, self.nesterov);
        for (p, v) in params.iter_mut().zip(&mut self.velocity) {
            let decay = if p.value.ndim() > 1 || self.decay_vectors { self.weight_decay } else { 0.0 };
            Zip::from(&mut p.value).and(&p.grad).and(v).for_each(|w, &g, v| {
                let g = g + decay * *w;
                *v = momentum * *v + g;
                *w -= lr * if nesterov { g + momentum * *v } else { *v };
            });
        }
    }

    fn lr(&self) -> f32 {
        self.lr
    }

    fn set_lr(&mut self, lr: f32) {
        self.lr = lr;
    }

    fn state(&self) -> OptimizerState {
        OptimizerState { kind: "sgd".into(), steps: self.steps, buffers: vec![("velocity".into(), self.velocity.clone())] }
    }

    fn load_state(&mut self, state: OptimizerState) -> Result<()> {
        let (steps, mut buffers) = state.into_buffers("sgd", &["velocity"])?;
        (self.steps, self.velocity) = (steps, buffers.remove(0));
        Ok(())
    }
}

/// Adam (Kingma & Ba), with bias correction:
///
/// ```text
/// m = β1·m + (1−β1)·g        v = β2·v + (1−β2)·g²
/// w = w − lr · (m / (1−β1ᵗ)) / (sqrt(v / (1−β2ᵗ)) + ε)
/// ```
pub struct Adam {
    /// Learning rate.
    pub lr: f32,
    /// Decay of the first moment.
    pub beta1: f32,
    /// Decay of the second moment.
    pub beta2: f32,
    /// Added to the denominator.
    pub eps: f32,
    t: u64,
    m: Vec<ArrayD<f32>>,
    v: Vec<ArrayD<f32>>,
}

impl Adam {
    /// Adam with the usual betas (0.9, 0.999) and ε = 1e-8.
    pub fn new(lr: f32) -> Self {
        Adam { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, t: 0, m: vec![], v: vec![] }
    }
}

impl Optimizer for Adam {
    fn step(&mut self, params: &mut [&mut Param]) {
        buffers(&mut self.m, params);
        buffers(&mut self.v, params);
        self.t += 1;
        let (b1, b2, eps) = (self.beta1, self.beta2, self.eps);
        // bias corrections folded into the step and ε: the same as lr · m̂ / (sqrt(v̂) + ε)
        let t = i32::try_from(self.t).unwrap_or(i32::MAX);
        let correction2 = (1.0 - b2.powi(t)).sqrt();
        let step = self.lr * correction2 / (1.0 - b1.powi(t));
        let eps = eps * correction2;
        for ((p, m), v) in params.iter_mut().zip(&mut self.m).zip(&mut self.v) {
            Zip::from(&mut p.value).and(&p.grad).and(m).and(v).for_each(|w, &g, m, v| {
                *m = b1 * *m + (1.0 - b1) * g;
                *v = b2 * *v + (1.0 - b2) * g * g;
                *w -= step * *m / (v.sqrt() + eps);
            });
        }
    }

    fn lr(&self) -> f32 {
        self.lr
    }

    fn set_lr(&mut self, lr: f32) {
        self.lr = lr;
    }

    fn state(&self) -> OptimizerState {
        OptimizerState { kind: "adam".into(), steps: self.t, buffers: vec![("m".into(), self.m.clone()), ("v".into(), self.v.clone())] }
    }

    fn load_state(&mut self, state: OptimizerState) -> Result<()> {
        let (steps, mut buffers) = state.into_buffers("adam", &["m", "v"])?;
        self.v = buffers.pop().expect("two buffers");
        self.m = buffers.pop().expect("two buffers");
        self.t = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::arr1;

    fn param(w: f32, g: f32) -> Param {
        Param { name: "weight".into(), value: arr1(&[w]).into_dyn(), grad: arr1(&[g]).into_dyn() }
    }

    #[test]
    fn sgd_momentum_and_decay_by_hand() {
        let mut p = param(1.0, 0.5);
        let mut sgd = Sgd::new(0.1, 0.9, 0.01);
        sgd.step(&mut [&mut p]);
        // v = 0.5 + 0.01 = 0.51; w = 1 - 0.051 = 0.949
        assert!((p.value[[0]] - 0.949).abs() < 1e-6);
        sgd.step(&mut [&mut p]);
        // v = 0.9*0.51 + 0.5 + 0.00949 = 0.96849; w = 0.949 - 0.096849
        assert!((p.value[[0]] - (0.949 - 0.096849)).abs() < 1e-6);
    }

    #[test]
    fn nesterov_looks_ahead_and_vectors_can_skip_the_decay() {
        // Nesterov, first step: g = 0.5 + 0.01 = 0.51, v = 0.51, w = 1 − 0.1·(0.51 + 0.9·0.51)
        let mut p = param(1.0, 0.5);
        Sgd::new(0.1, 0.9, 0.01).nesterov().step(&mut [&mut p]);
        assert!((p.value[[0]] - (1.0 - 0.1 * 0.51 * 1.9)).abs() < 1e-6, "{}", p.value[[0]]);
        // a vector (a bias, BatchNorm's γ) is not decayed: g = 0.5; a matrix is
        let mut bias = param(1.0, 0.5);
        let mut weight = Param::new("weight", ndarray::arr2(&[[1.0f32]]).into_dyn());
        weight.grad.fill(0.5);
        Sgd::new(0.1, 0.0, 0.01).no_decay_on_vectors().step(&mut [&mut bias, &mut weight]);
        assert!((bias.value[[0]] - 0.95).abs() < 1e-6);
        assert!((weight.value[[0, 0]] - 0.949).abs() < 1e-6);
    }

    #[test]
    fn adam_first_step_is_lr_times_sign() {
        // after bias correction, the first step is lr · g / |g| (up to ε)
        let mut p = param(1.0, -3.0);
        Adam::new(0.01).step(&mut [&mut p]);
        assert!((p.value[[0]] - 1.01).abs() < 1e-6, "{}", p.value[[0]]);
    }

    #[test]
    fn restored_state_continues_exactly() {
        // two steps (gradients 0.5 then -2) in one go, against one step, the state carried
        // into a new optimiser, and the second step there
        let makers: [fn() -> Box<dyn Optimizer>; 2] = [|| Box::new(Adam::new(0.01)), || Box::new(Sgd::new(0.1, 0.9, 0.01))];
        for make in makers {
            let two_steps = |opt_for_second: &mut dyn FnMut(&dyn Optimizer) -> Box<dyn Optimizer>| {
                let mut p = param(1.0, 0.5);
                let mut first = make();
                first.step(&mut [&mut p]);
                p.grad[[0]] = -2.0;
                let mut second = opt_for_second(first.as_ref());
                second.step(&mut [&mut p]);
                p.value[[0]]
            };
            let carried = two_steps(&mut |first| {
                let mut next = make();
                next.load_state(first.state()).unwrap();
                next
            });
            let fresh = two_steps(&mut |_| make());
            // by hand: one optimiser taking both steps
            let mut p = param(1.0, 0.5);
            let mut one = make();
            one.step(&mut [&mut p]);
            p.grad[[0]] = -2.0;
            one.step(&mut [&mut p]);
            assert_eq!(carried, p.value[[0]], "{}", one.state().kind);
            assert_ne!(fresh, p.value[[0]], "{}: a fresh optimiser must differ", one.state().kind);
        }
        let e = Sgd::new(0.1, 0.9, 0.0).load_state(Adam::new(0.1).state()).unwrap_err();
        assert_eq!(e.to_string(), "invalid configuration: optimizer state is adam's, this optimizer is sgd");
    }
}
