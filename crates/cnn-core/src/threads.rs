//! Thread policy: rayon owns the cores, BLAS runs single-threaded inside each task.
//!
//! Convolution and pooling split the batch over rayon's pool, and each task calls a
//! single-threaded GEMM on a lowered matrix small enough to stay in cache. Letting OpenBLAS
//! start its own threads inside rayon's tasks would put `rayon threads x BLAS threads` on the
//! cores (the classic oversubscription trap), so the first cnn-core call sets OpenBLAS to one
//! thread. Cap the total the usual way, with `RAYON_NUM_THREADS`.
//!
//! OpenBLAS picks its kernels when it is loaded, by CPU model. Debian 12's OpenBLAS 0.3.21
//! does not know recent CPUs (Sapphire Rapids, for one) and falls back to its generic SSE3
//! "Prescott" kernels, about 5x slower. The environment variable `OPENBLAS_CORETYPE`
//! (`SkylakeX` for AVX-512, `Haswell` for AVX2) overrides the choice; it must be set before
//! the program starts. `cargo xtask` sets it from the CPU's flags, and [`init`] warns once when
//! it finds the generic kernels on a CPU that has AVX2.

use std::os::raw::c_int;
use std::sync::Once;

extern "C" {
    fn openblas_set_num_threads(num_threads: c_int);
    fn openblas_get_num_threads() -> c_int;
    fn openblas_get_corename() -> *const std::os::raw::c_char;
}

static SINGLE_THREADED_BLAS: Once = Once::new();

/// Applies the policy once: OpenBLAS to one thread. Every parallel entry point calls it.
pub fn init() {
    SINGLE_THREADED_BLAS.call_once(|| {
        set_blas_threads(1);
        if let Some(advice) = generic_kernels_advice() {
            eprintln!("cnn-core: warning: {advice}");
        }
    });
}

/// The kernel family OpenBLAS selected for this CPU (`SkylakeX`, `Haswell`, `Prescott`, ...).
pub fn blas_core() -> String {
    // SAFETY: OpenBLAS returns a pointer to a static NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(openblas_get_corename()) }.to_string_lossy().into_owned()
}

/// The value of `OPENBLAS_CORETYPE` that suits this CPU, from its instruction-set flags.
pub fn suggested_coretype() -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl") {
            return Some("SkylakeX");
        }
        if has!("avx2") && has!("fma") {
            return Some("Haswell");
        }
    }
    None
}

/// A warning when OpenBLAS runs its generic kernels on a CPU that could do much better.
fn generic_kernels_advice() -> Option<String> {
    let core = blas_core();
    let generic = ["Prescott", "Core2", "Penryn", "Dunnington", "Nehalem", "Atom", "Katmai"];
    let suggested = suggested_coretype()?;
    generic.contains(&core.as_str()).then(|| {
        format!(
            "OpenBLAS selected its generic `{core}` kernels on a CPU that supports {suggested}'s; \
             matrix products run several times slower. Start the program with \
             OPENBLAS_CORETYPE={suggested} (cargo xtask does this for you)."
        )
    })
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

/// A zero-filled array, written by all of rayon's threads (a fresh multi-megabyte buffer
/// is otherwise zeroed by one core while the other waits).
pub fn par_zeros<D: ndarray::Dimension>(shape: D) -> ndarray::Array<f32, D> {
    use rayon::prelude::*;
    let mut data = Vec::with_capacity(shape.size());
    data.par_extend(rayon::iter::repeat_n(0.0f32, shape.size()));
    ndarray::Array::from_shape_vec(shape, data).expect("the vector has the shape's size")
}
