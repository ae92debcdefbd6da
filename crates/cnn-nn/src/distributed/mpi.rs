//! The [`Team`] of MPI processes (Open MPI through the `mpi` crate, rsmpi).

use super::{Shard, Team};
use crate::error::{NnError, Result};
use crate::{Layer, Sequential};
use mpi::collective::SystemOperation;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use std::cell::Cell;
use std::time::{Duration, Instant};

/// The processes of an MPI job (`mpirun -n N program`), as a [`Team`]; run without `mpirun`,
/// a team of one.
///
/// Gradients are summed in **buckets** as the backward pass produces them: once the layers
/// at the end of the network have their gradients, a non-blocking `MPI_Iallreduce` of those
/// starts while the backward pass goes on through the earlier layers (the design of
/// `DistributedDataParallel`). [`Mpi::flat`] is the simple reference: one all-reduce of every
/// gradient after the backward pass.
///
/// Holds MPI for the process: `MPI_Finalize` runs when it is dropped.
pub struct Mpi {
    world: SimpleCommunicator,
    /// Gradient values per bucket; `usize::MAX` for one flat all-reduce.
    bucket_values: usize,
    /// Time spent waiting for the gradients' all-reduce after the backward pass.
    waiting: Cell<Duration>,
    steps: Cell<usize>,
    // dropped last: finalises MPI
    _universe: mpi::environment::Universe,
}

/// How many rayon threads each of `local_processes` processes on one machine gets:
/// `RAYON_NUM_THREADS` when it is set, else the machine's cores shared out evenly (at least
/// one each), so the processes do not oversubscribe the cores. OpenBLAS stays single-threaded
/// inside rayon's tasks (see [`cnn_core::threads`]).
pub fn threads_per_process(local_processes: usize) -> usize {
    if let Some(n) = std::env::var("RAYON_NUM_THREADS").ok().and_then(|v| v.parse::<usize>().ok()).filter(|&n| n > 0) {
        return n;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / local_processes.max(1)).max(1)
}

impl Mpi {
    /// The default bucket: 65,536 gradient values (256 KiB), a few buckets for ResNet-20's
    /// 269,434 parameters (28x28x1 input).
    pub const BUCKET_VALUES: usize = 1 << 16;

    /// Initialises MPI (thread level *funneled*: only this thread calls MPI, rayon's threads
    /// never do) and sizes rayon's global pool by [`threads_per_process`] for the processes
    /// of this job that share this machine. Call it first thing in `main`, before anything
    /// uses rayon.
    ///
    /// # Errors
    /// [`NnError::Team`]: MPI already initialised in this process.
    pub fn init() -> Result<Mpi> {
        let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Funneled).ok_or_else(|| NnError::Team("MPI is already initialised in this process".into()))?;
        let world = universe.world();
        let local = world.split_shared(world.rank()).size() as usize;
        if std::env::var_os("RAYON_NUM_THREADS").is_none() {
            let threads = threads_per_process(local);
            if rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().is_err() && rayon::current_num_threads() != threads {
                eprintln!("warning: rayon's pool was started before MPI: {} threads, not {threads}", rayon::current_num_threads());
            }
        }
        Ok(Mpi { world, bucket_values: Mpi::BUCKET_VALUES, waiting: Cell::new(Duration::ZERO), steps: Cell::new(0), _universe: universe })
    }

    /// Sums gradients in buckets of about `values` values (at least one layer's gradients
    /// each), started as the backward pass produces them.
    pub fn with_bucket_values(mut self, values: usize) -> Mpi {
        self.bucket_values = values.max(1);
        self
    }

    /// One flat all-reduce of every gradient once the backward pass is done: the reference.
    pub fn flat(mut self) -> Mpi {
        self.bucket_values = usize::MAX;
        self
    }

    /// Mean time per training step spent waiting for the gradients' sum after the backward
    /// pass (the communication the overlap did not hide), and the steps counted.
    pub fn allreduce_wait(&self) -> (Duration, usize) {
        let steps = self.steps.get();
        (self.waiting.get() / steps.max(1) as u32, steps)
    }

    /// Ends every process of the job with `code` (`MPI_Abort`): what a rank does on an
    /// error, so that the others do not wait for it forever.
    pub fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}

/// Gradients summed together: the top-level layers `first_layer..` (down from the last one
/// not in an earlier bucket), `len` values.
struct Bucket {
    first_layer: usize,
    len: usize,
}

/// The buckets of `model`'s gradients in the order the backward pass finishes them (last
/// layer first), each closed once it holds `bucket_values` values or at the first layer.
fn buckets(model: &Sequential, bucket_values: usize) -> Vec<Bucket> {
    let mut buckets = vec![];
    let mut len = 0;
    for (i, layer) in model.layers().iter().enumerate().rev() {
        len += layer.params().iter().map(|(_, p)| p.grad.len()).sum::<usize>();
        if len >= bucket_values || (i == 0 && len > 0) {
            buckets.push(Bucket { first_layer: i, len });
            len = 0;
        }
    }
    buckets
}

/// `buffer` cut into one slice per bucket.
fn split<'a>(mut buffer: &'a mut [f32], buckets: &[Bucket]) -> Vec<Option<&'a mut [f32]>> {
    buckets
        .iter()
        .map(|b| {
            let (head, tail) = std::mem::take(&mut buffer).split_at_mut(b.len);
            buffer = tail;
            Some(head)
        })
        .collect()
}

impl Team for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    fn sum(&self, values: &mut [f64]) {
        let send = values.to_vec();
        self.world.all_reduce_into(&send[..], values, SystemOperation::sum());
    }

    fn broadcast(&self, values: &mut [f32]) {
        self.world.process_at_rank(0).broadcast_into(values);
    }

    fn gradients(&self, model: &mut Sequential, shard: Option<Shard<'_>>, weight: f32) -> Result<(f32, usize)> {
        let plan = buckets(model, self.bucket_values);
        let total = plan.iter().map(|b| b.len).sum();
        // the weighted gradients, bucket after bucket, last layer first; and their sums
        let (mut send, mut summed) = (vec![0.0f32; total], vec![0.0f32; total]);
        let result = mpi::request::scope(|scope| {
            let (mut sends, mut sums) = (split(&mut send, &plan), split(&mut summed, &plan));
            let (mut pending, mut next, mut offset) = (vec![], 0, 0);
            let mut done = |index: usize, layer: &dyn Layer| {
                if next == plan.len() {
                    return; // only layers without parameters are left
                }
                let bucket = sends[next].as_mut().expect("an open bucket");
                for (_, p) in layer.params() {
                    let into = &mut bucket[offset..offset + p.grad.len()];
                    into.iter_mut().zip(p.grad.iter()).for_each(|(s, &g)| *s = weight * g);
                    offset += p.grad.len();
                }
                if plan[next].first_layer == index {
                    let (send, sum) = (sends[next].take().expect("open"), sums[next].take().expect("open"));
                    pending.push(self.world.immediate_all_reduce_into(scope, &*send, sum, SystemOperation::sum()));
                    (next, offset) = (next + 1, 0);
                }
                // let MPI move the buckets already started along
                pending = std::mem::take(&mut pending).into_iter().filter_map(|r| r.test().err()).collect();
            };
            let result = match shard {
                Some(s) => model.loss_and_gradients_observed(s.x, s.labels, s.soft.as_ref(), &mut done),
                None => {
                    model.layers().iter().enumerate().rev().for_each(|(i, layer)| done(i, layer.as_ref()));
                    Ok((0.0, 0))
                }
            };
            let waiting = Instant::now();
            pending.into_iter().for_each(|r| {
                r.wait();
            });
            self.waiting.set(self.waiting.get() + waiting.elapsed());
            result
        });
        self.steps.set(self.steps.get() + 1);
        // the sums back into the gradients, in the same order
        let mut values = summed.into_iter();
        for layer in model.layers_mut().iter_mut().rev() {
            for (_, p) in layer.params_mut() {
                p.grad.iter_mut().zip(values.by_ref()).for_each(|(g, s)| *g = s);
            }
        }
        result
    }
}
