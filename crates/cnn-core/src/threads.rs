//! Thread policy: rayon owns the cores, BLAS runs single-threaded inside each task.
//!
//! Convolution and pooling split the batch over rayon's pool, and each task calls a
//! single-threaded GEMM on a lowered matrix small enough to stay in cache. Letting OpenBLAS
//! start its own threads inside rayon's tasks would put `rayon threads x BLAS threads` on the
//! cores (the classic oversubscription trap), so the first cnn-core call sets OpenBLAS to one
//! thread. Cap the total the usual way, with `RAYON_NUM_THREADS`.

use std::os::raw::c_int;
use std::sync::Once;

extern "C" {
    fn openblas_set_num_threads(num_threads: c_int);
    fn openblas_get_num_threads() -> c_int;
}

static SINGLE_THREADED_BLAS: Once = Once::new();

/// Applies the policy once: OpenBLAS to one thread. Every parallel entry point calls it.
pub fn init() {
    SINGLE_THREADED_BLAS.call_once(|| set_blas_threads(1));
}

/// Sets the number of OpenBLAS threads (for experiments such as one big multi-threaded GEMM;
/// cnn-core's own kernels expect 1).
pub fn set_blas_threads(n: usize) {
    let n = c_int::try_from(n.max(1)).unwrap_or(c_int::MAX);
    // SAFETY: plain setter of OpenBLAS's global thread count, callable at any time.
    unsafe { openblas_set_num_threads(n) }
}

/// The number of threads OpenBLAS currently uses.
pub fn blas_threads() -> usize {
    // SAFETY: plain getter.
    unsafe { openblas_get_num_threads() as usize }
}

/// The number of threads rayon spreads the batch over (`RAYON_NUM_THREADS` caps it).
pub fn rayon_threads() -> usize {
    rayon::current_num_threads()
}
