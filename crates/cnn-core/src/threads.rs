//! Thread policy and BLAS kernels: rayon owns the cores, BLAS runs single-threaded inside each
//! task, on the best kernels the CPU supports.
//!
//! Convolution and pooling split the batch over rayon's pool, and each task calls a
//! single-threaded GEMM on a lowered matrix small enough to stay in cache. Letting OpenBLAS
//! start its own threads inside rayon's tasks would put `rayon threads x BLAS threads` on the
//! cores (the classic oversubscription trap), so the first cnn-core call sets OpenBLAS to one
//! thread. Cap the total the usual way, with `RAYON_NUM_THREADS`.
//!
//! OpenBLAS picks its kernels when it is loaded, by CPU model. Debian 12's OpenBLAS 0.3.21
//! does not know recent CPUs: it runs its generic SSE3 "Prescott" kernels on Sapphire Rapids
//! (about 5x slower) and its AVX2 "Haswell" kernels on AVX-512 AMD Zen 5 (half the speed of
//! its "SkylakeX" ones, measured with a 1024 product on one core: 124 vs 229 GFLOP/s). So
//! [`init`], which every entry point calls before its first matrix product, selects the
//! kernels again in-process: when the CPU's flags allow a better family than the one OpenBLAS
//! chose, and the user has not chosen one with `OPENBLAS_CORETYPE`, it re-runs OpenBLAS's
//! own selection (`gotoblas_dynamic_quit` / `gotoblas_dynamic_init`, exported by builds with
//! run-time CPU dispatch such as Debian's) with that family named. A library user gets full
//! speed without setting anything; the warning remains for an OpenBLAS without those entry
//! points.

use std::ffi::{c_char, c_int, CStr};
use std::sync::Once;

extern "C" {
    fn openblas_set_num_threads(num_threads: c_int);
    fn openblas_get_num_threads() -> c_int;
    fn openblas_get_corename() -> *const c_char;
}

static INIT: Once = Once::new();

/// Applies the policy once: the best BLAS kernels for this CPU, OpenBLAS on one thread.
/// Every parallel entry point and every layer that multiplies matrices calls it first.
pub fn init() {
    INIT.call_once(|| {
        select_kernels();
        set_blas_threads(1);
        if let Some(advice) = weak_kernels_advice() {
            eprintln!("cnn-core: warning: {advice}");
        }
    });
}

/// The kernel family OpenBLAS selected for this CPU (`SkylakeX`, `Haswell`, `Prescott`, ...).
pub fn blas_core() -> String {
    // SAFETY: OpenBLAS returns a pointer to a static NUL-terminated string.
    unsafe { CStr::from_ptr(openblas_get_corename()) }.to_string_lossy().into_owned()
}

/// The best OpenBLAS kernel family for this CPU, from its instruction-set flags.
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

/// How wide a family's vector kernels are: 2 for AVX-512, 1 for AVX2 + FMA, 0 for the rest.
fn tier(core: &str) -> u8 {
    match core.to_ascii_lowercase().as_str() {
        "skylakex" | "cooperlake" | "sapphirerapids" => 2,
        "haswell" | "zen" => 1,
        _ => 0,
    }
}

/// Re-runs OpenBLAS's kernel selection with the suggested family when it chose a weaker one
/// and the user did not choose. Must run before the first matrix product.
fn select_kernels() {
    if std::env::var_os("OPENBLAS_CORETYPE").is_some() {
        return;
    }
    let Some(wanted) = suggested_coretype() else { return };
    if tier(&blas_core()) < tier(wanted) {
        reselect(wanted);
    }
}

/// Makes OpenBLAS select its kernels again as if started with `OPENBLAS_CORETYPE=family`.
/// False when this OpenBLAS has no run-time selection to re-run.
fn reselect(family: &str) -> bool {
    let (Some(quit), Some(init)) = (symbol(c"gotoblas_dynamic_quit"), symbol(c"gotoblas_dynamic_init")) else {
        return false;
    };
    let user = std::env::var_os("OPENBLAS_CORETYPE");
    // OpenBLAS reads the family from the environment; set it for the call only. (Another
    // thread reading the environment from C at this very moment is the one hazard, as with
    // any setenv; this runs once, before cnn-core's first product.)
    std::env::set_var("OPENBLAS_CORETYPE", family);
    // SAFETY: both take no arguments; `quit` forgets the kernel table and `init` selects it
    // again, reading OPENBLAS_CORETYPE, as OpenBLAS does when it is loaded.
    unsafe {
        quit();
        init();
    }
    match user {
        Some(value) => std::env::set_var("OPENBLAS_CORETYPE", value),
        None => std::env::remove_var("OPENBLAS_CORETYPE"),
    }
    true
}

/// A function exported by the loaded libraries, if there is one of that name.
fn symbol(name: &CStr) -> Option<unsafe extern "C" fn()> {
    // SAFETY: dlsym with RTLD_DEFAULT only looks the name up.
    let address = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    // SAFETY: the names asked for are OpenBLAS functions of type `void (void)`.
    (!address.is_null()).then(|| unsafe { std::mem::transmute::<*mut libc::c_void, unsafe extern "C" fn()>(address) })
}

/// A warning when OpenBLAS runs kernels narrower than the CPU supports: the user asked for
/// them with `OPENBLAS_CORETYPE`, or this OpenBLAS cannot switch at run time.
fn weak_kernels_advice() -> Option<String> {
    let core = blas_core();
    let suggested = suggested_coretype()?;
    if tier(&core) >= tier(suggested) {
        return None;
    }
    Some(match std::env::var("OPENBLAS_CORETYPE") {
        Ok(user) => format!(
            "OPENBLAS_CORETYPE={user} makes OpenBLAS run its `{core}` kernels on a CPU that supports {suggested}'s; \
             matrix products run up to several times slower. Unset it to let cnn-core choose."
        ),
        Err(_) => format!(
            "OpenBLAS runs its `{core}` kernels on a CPU that supports {suggested}'s, and this OpenBLAS \
             cannot switch at run time; matrix products run several times slower. Start the \
             program with OPENBLAS_CORETYPE={suggested}."
        ),
    })
}

/// Sets the number of OpenBLAS threads (for experiments such as one big multi-threaded GEMM;
/// cnn-core's own kernels expect 1).
pub fn set_blas_threads(n: usize) {
    let n = c_int::try_from(n.max(1)).unwrap_or(c_int::MAX);
    // SAFETY: plain setter of OpenBLAS's global thread count, callable at any time.
    unsafe { openblas_set_num_threads(n) }
}

/// The number of threads OpenBLAS runs each product on (1 once [`init`] has run, unless
/// [`set_blas_threads`] changed it).
pub fn blas_threads() -> usize {
    // SAFETY: plain getter of OpenBLAS's global thread count.
    usize::try_from(unsafe { openblas_get_num_threads() }).unwrap_or(1)
}

/// The number of threads rayon spreads the batch over (`RAYON_NUM_THREADS` caps it).
pub fn rayon_threads() -> usize {
    rayon::current_num_threads()
}

/// A zero-filled array, written by all of rayon's threads (a fresh multi-megabyte buffer
/// is otherwise zeroed by one core while the other waits).
pub(crate) fn par_zeros<D: ndarray::Dimension>(shape: D) -> ndarray::Array<f32, D> {
    use rayon::prelude::*;
    let mut data = Vec::with_capacity(shape.size());
    data.par_extend(rayon::iter::repeat_n(0.0f32, shape.size()));
    ndarray::Array::from_shape_vec(shape, data).expect("the vector has the shape's size")
}

/// Zero-bordered buffers a thread keeps (at most this many).
const BORDERED: usize = 8;

thread_local! {
    /// Buffers of zeros around values written at the same places every time, each with the
    /// layout that writes it.
    static ZERO_BORDERED: std::cell::RefCell<Vec<(Layout, Vec<f32>)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// What decides where a buffer's writer puts values: the numbers it computes the places from.
pub(crate) type Layout = [usize; 12];

/// A buffer whose writer puts values at the same places every time it is used with one
/// `layout` and leaves zeros everywhere else (Winograd's padded strips: images inside their
/// padding): taken from this thread's pool by that layout and given back to it when
/// dropped, so only a buffer new to the layout is zeroed. (A zeroed buffer for every rayon
/// job was a memset of about 0.5% of a ResNet-20 step.)
pub(crate) struct ZeroBordered {
    layout: Layout,
    data: Vec<f32>,
}

impl ZeroBordered {
    /// `len` values: the pool's buffer of this layout and length, else zeros.
    pub(crate) fn new(layout: Layout, len: usize) -> ZeroBordered {
        let kept = ZERO_BORDERED.with_borrow_mut(|pool| pool.iter().position(|(l, data)| *l == layout && data.len() == len).map(|i| pool.swap_remove(i).1));
        ZeroBordered { layout, data: kept.unwrap_or_else(|| vec![0.0; len]) }
    }
}

impl std::ops::Deref for ZeroBordered {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.data
    }
}

impl std::ops::DerefMut for ZeroBordered {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }
}

impl Drop for ZeroBordered {
    fn drop(&mut self) {
        let data = std::mem::take(&mut self.data);
        ZERO_BORDERED.with_borrow_mut(|pool| {
            if pool.len() == BORDERED {
                pool.remove(0);
            }
            pool.push((self.layout, data));
        });
    }
}

/// Buffers a thread keeps for its next convolution (at most this many).
const POOLED: usize = 8;

thread_local! {
    /// Lowered matrices and their gradients, returned here when a task is done with them.
    static POOL: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A `rows x cols` work matrix taken from this thread's pool and given back to it when
/// dropped. Its values are whatever its last user left (zeros when new): every caller writes
/// the part it reads first (the lowering writes every value, padding included), and clearing
/// megabytes per task would cost as much again. Pooled because a fresh allocation in each
/// task made the kernel map and zero new pages every time (a tenth of a ResNet-20 step,
/// measured). Each of rayon's threads keeps a few (at most `POOLED`, each as large as
/// the largest it served: a band of at most 4 MiB, see `conv`).
pub(crate) struct Scratch {
    data: Vec<f32>,
    dim: (usize, usize),
}

impl Scratch {
    pub(crate) fn matrix(rows: usize, cols: usize) -> Scratch {
        let mut data = POOL.with_borrow_mut(|pool| pool.pop()).unwrap_or_default();
        // grown, never cut: a buffer cut to a small matrix would be zeroed again up to the
        // next large one (a memset in every task, about 1% of a ResNet-20 step)
        if data.len() < rows * cols {
            data.resize(rows * cols, 0.0);
        }
        Scratch { data, dim: (rows, cols) }
    }

    pub(crate) fn view_mut(&mut self) -> ndarray::ArrayViewMut2<'_, f32> {
        let values = self.dim.0 * self.dim.1;
        ndarray::ArrayViewMut2::from_shape(self.dim, &mut self.data[..values]).expect("the buffer has rows x cols values")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let data = std::mem::take(&mut self.data);
        POOL.with_borrow_mut(|pool| {
            if pool.len() < POOLED {
                pool.push(data);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    /// A buffer comes back to the same layout with the values its writer left; another
    /// layout or length gets zeros.
    #[test]
    fn zero_bordered_buffers_are_kept_by_their_layout() {
        let layout = [3; 12];
        ZeroBordered::new(layout, 100)[5] = 7.0;
        assert_eq!(ZeroBordered::new(layout, 100)[5], 7.0);
        assert!(ZeroBordered::new([4; 12], 100).iter().all(|&v| v == 0.0));
        assert!(ZeroBordered::new(layout, 101).iter().all(|&v| v == 0.0));
    }

    // Switching kernels while another thread multiplies would be unsafe: this is the only unit
    // test of the crate's library that multiplies matrices (the others run in their own
    // processes, under tests/), so it runs alone with BLAS.
    #[test]
    fn kernels_can_be_selected_again_in_process() {
        init();
        let chosen = blas_core();
        let a = Array2::from_shape_fn((64, 48), |(i, j)| ((i * 7 + j) % 11) as f32);
        let b = Array2::from_shape_fn((48, 32), |(i, j)| ((i + 3 * j) % 5) as f32);
        let product = a.dot(&b);
        // the generic kernels, then back: the mechanism init relies on
        assert!(reselect("Prescott"), "Debian's OpenBLAS has run-time selection");
        assert_eq!(blas_core(), "Prescott");
        assert_eq!(a.dot(&b), product, "the same product on other kernels (small integers: exact)");
        assert!(reselect(&chosen));
        assert_eq!(blas_core(), chosen);
    }

    /// A pooled buffer serves a smaller matrix without being cut: taken for the large one
    /// again, it still holds what was written (not zeroed a second time).
    #[test]
    fn scratch_buffers_are_grown_never_cut() {
        let mut large = Scratch::matrix(64, 64);
        large.view_mut().fill(1.0);
        drop(large);
        drop(Scratch::matrix(2, 2));
        let mut again = Scratch::matrix(64, 64);
        assert!(again.view_mut().iter().all(|&v| v == 1.0), "the large buffer was zeroed again");
    }

    #[test]
    fn families_rank_by_vector_width() {
        assert!(tier("SkylakeX") > tier("Haswell"));
        assert!(tier("Zen") > tier("Prescott"));
        assert_eq!(tier("Cooperlake"), tier("SkylakeX"));
    }

}
