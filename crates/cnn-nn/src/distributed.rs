//! Data-parallel training: several processes train one model together.
//!
//! Synchronous data parallelism, the design of Horovod and of PyTorch's
//! `DistributedDataParallel`: every process (a *rank* of the [`Team`]) holds the same model;
//! each global batch is cut into one contiguous [`shard`] per rank; every rank computes the
//! gradients of its shard, the gradients are summed over the team (weighted by each shard's
//! share of the batch, so the sum is the gradient of the whole batch's mean loss), and every
//! rank applies the same optimiser step to the same gradients, so the weights stay identical
//! without ever being sent. [`crate::train::fit_on`] is [`crate::train::fit`] on a team;
//! `fit` itself is `fit_on(&Solo, ..)`.
//!
//! What makes the result independent of the number of ranks:
//! - the shuffling and the batches are those of one process (same seed, same order);
//! - augmentation is seeded per sample (seed, epoch, sample index), not per rank;
//! - the gradient of a batch is the weighted sum of its shards' gradients: equal to one
//!   process's up to the order of the floating-point sums (the ranks' shards are summed, not
//!   the samples one after the other).
//!
//! **BatchNorm** normalises each shard with the shard's own batch statistics, as
//! `DistributedDataParallel` does by default (no synchronised batch norm): a model with
//! BatchNorm trains like one process with a batch the size of a shard, not of the global
//! batch. The running statistics each rank accumulates are averaged over the team at the end
//! of every epoch, before evaluation and checkpoints. Models without BatchNorm (the reference
//! network) train exactly as one process does.
//!
//! The MPI implementation, [`Mpi`], is behind the `mpi` cargo feature (Open MPI through the
//! `mpi` crate); without it, the library builds and trains as before, with [`Solo`].

use crate::error::{NnError, Result};
use crate::loss::SoftTargets;
use crate::Sequential;
use ndarray::ArrayD;
use std::ops::Range;

#[cfg(feature = "mpi")]
mod mpi;
#[cfg(feature = "mpi")]
pub use self::mpi::{threads_per_process, Mpi};

/// A group of processes training one model together, each knowing its rank.
///
/// Every method is collective: all ranks call it, in the same order, with buffers of the same
/// length.
pub trait Team {
    /// This process's number, `0..size`; rank 0 prints, evaluates its share and writes files.
    fn rank(&self) -> usize;

    /// The number of processes.
    fn size(&self) -> usize;

    /// Sums `values` over the team, in place: afterwards every rank holds the sums.
    fn sum(&self, values: &mut [f64]);

    /// Replaces `values` by rank 0's on every rank.
    fn broadcast(&self, values: &mut [f32]);

    /// One rank's share of a training step: the forward and backward pass of its `shard`
    /// (`None` for an empty shard: a batch smaller than the team) into the model's (zeroed)
    /// gradients, which afterwards hold the sum over the team of every rank's gradients
    /// times its `weight` (its shard's share of the global batch). Returns this shard's mean
    /// loss and number of correct predictions (0 and 0 for an empty shard).
    ///
    /// # Errors
    /// As [`Sequential::loss_and_gradients_observed`].
    fn gradients(&self, model: &mut Sequential, shard: Option<Shard<'_>>, weight: f32) -> Result<(f32, usize)>;
}

/// One rank's samples of a batch: the inputs, their labels, and a teacher's soft targets
/// when distilling.
pub struct Shard<'a> {
    /// The inputs, `[n, ...]`.
    pub x: ArrayD<f32>,
    /// Their labels.
    pub labels: &'a [usize],
    /// A teacher's logits for them (see [`crate::loss::distillation_loss`]).
    pub soft: Option<SoftTargets>,
}

/// The team of one process: nothing to sum, nothing to send.
#[derive(Clone, Copy, Debug, Default)]
pub struct Solo;

impl Team for Solo {
    fn rank(&self) -> usize {
        0
    }

    fn size(&self) -> usize {
        1
    }

    fn sum(&self, _values: &mut [f64]) {}

    fn broadcast(&self, _values: &mut [f32]) {}

    fn gradients(&self, model: &mut Sequential, shard: Option<Shard<'_>>, _weight: f32) -> Result<(f32, usize)> {
        match shard {
            Some(s) => model.loss_and_gradients_observed(s.x, s.labels, s.soft.as_ref(), &mut |_, _| {}),
            None => Ok((0.0, 0)),
        }
    }
}

/// The positions of a batch of `len` samples that rank `rank` of `size` takes: contiguous,
/// in rank order, sizes differing by at most one (empty when `len < size` for some ranks).
///
/// ```
/// use cnn_nn::distributed::shard;
/// assert_eq!((shard(10, 0, 3), shard(10, 1, 3), shard(10, 2, 3)), (0..3, 3..6, 6..10));
/// assert_eq!(shard(1, 0, 2), 0..0);
/// ```
pub fn shard(len: usize, rank: usize, size: usize) -> Range<usize> {
    len * rank / size..len * (rank + 1) / size
}

/// `result` on this rank, and an [`NnError::Team`] error on the ranks where it is `Ok` when
/// it failed on another: what every rank of the team does next agrees (naming the `step`).
pub(crate) fn agree<T>(team: &dyn Team, result: Result<T>, step: &str) -> Result<T> {
    if team.size() == 1 {
        return result;
    }
    let mut failed = vec![0.0f64; team.size()];
    failed[team.rank()] = f64::from(u8::from(result.is_err()));
    team.sum(&mut failed);
    let ranks: Vec<usize> = failed.iter().enumerate().filter(|(_, &f)| f > 0.0).map(|(r, _)| r).collect();
    match result {
        Ok(_) if !ranks.is_empty() => Err(NnError::Team(format!("rank(s) {ranks:?} failed {step} (see their errors)"))),
        result => result,
    }
}

/// Gives every rank rank 0's parameters and buffers (BatchNorm's running statistics): the
/// start of data-parallel training, as `DistributedDataParallel` does when it wraps a model,
/// so ranks that built their models differently still train one model.
pub fn broadcast_model(team: &dyn Team, model: &mut Sequential) {
    if team.size() == 1 {
        return;
    }
    for (_, p) in model.named_params_mut() {
        broadcast_array(team, &mut p.value);
    }
    for (_, b) in model.named_buffers_mut() {
        broadcast_array(team, b);
    }
}

fn broadcast_array(team: &dyn Team, a: &mut ArrayD<f32>) {
    match a.as_slice_mut() {
        Some(values) => team.broadcast(values),
        None => {
            let mut values: Vec<f32> = a.iter().copied().collect();
            team.broadcast(&mut values);
            a.iter_mut().zip(values).for_each(|(a, v)| *a = v);
        }
    }
}

/// Averages the buffers (BatchNorm's running statistics) over the team: each rank has
/// accumulated them over its own shards.
pub(crate) fn average_buffers(team: &dyn Team, model: &mut Sequential) {
    if team.size() == 1 {
        return;
    }
    let n = team.size() as f64;
    for (_, b) in model.named_buffers_mut() {
        let mut values: Vec<f64> = b.iter().map(|&v| v as f64).collect();
        team.sum(&mut values);
        b.iter_mut().zip(values).for_each(|(b, v)| *b = (v / n) as f32);
    }
}

/// A hash of the exact bits of every parameter and buffer.
fn fingerprint(model: &Sequential) -> u64 {
    // FNV-1a over the values' bits, in the fixed order of the names
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    let params = model.named_params().into_iter().map(|(_, p)| &p.value);
    for array in params.chain(model.named_buffers().into_iter().map(|(_, b)| b)) {
        for v in array.iter() {
            hash = (hash ^ v.to_bits() as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// Checks that every rank holds bit for bit the same weights as rank 0 (they must: the same
/// start, the same summed gradients, the same optimiser step).
///
/// # Errors
/// [`NnError::Team`] on every rank when one differs.
pub fn check_same_weights(team: &dyn Team, model: &Sequential) -> Result<()> {
    if team.size() == 1 {
        return Ok(());
    }
    let own = fingerprint(model);
    // the hash in four 16-bit pieces: exact in f32
    let pieces = |h: u64| -> [f32; 4] { std::array::from_fn(|i| ((h >> (16 * i)) & 0xffff) as f32) };
    let mut root = pieces(own);
    team.broadcast(&mut root);
    let own = if root == pieces(own) { Ok(()) } else { Err(NnError::Team(format!("the weights of rank {} differ from rank 0's", team.rank()))) };
    agree(team, own, "the check that every rank holds rank 0's weights")
}
