//! Plain loops compiled for the CPU they run on.
//!
//! The crates are built for the baseline x86-64 (SSE2: 4 floats per instruction), so that
//! one binary runs on every machine. The kernels that matter most are written with AVX-512
//! or AVX2 intrinsics and chosen at run time; the rest — BatchNorm's sums and scaling,
//! ReLU, adding a residual block's paths — are plain iterator loops, and
//! [`widest`] lets the compiler vectorise them for the widest instructions the CPU has:
//! it runs the closure inside a function compiled with those instructions enabled, into
//! which the closure (and the iterator code it calls) is inlined.
//!
//! The results are bit for bit those of the baseline build: wider vectors do the same
//! operations in the same order (Rust never reassociates floating-point additions or fuses
//! a product and a sum into one rounding on its own).

/// Runs `f` compiled for AVX-512 where the CPU has it, else for AVX2 + FMA, else as built.
///
/// Keep `f` small and free of calls into rayon or allocation: only code inlined into it is
/// compiled for the wider instructions. Put it inside the parallel loop, around the loop over
/// one chunk; mark it `#[inline(always)]` (and so any closure it calls per chunk) and write
/// its loops as `for` loops: the compiler may leave a closure, or an iterator's `for_each`
/// (a `fold`), out of line, compiled for the baseline — BatchNorm's backward and normalising
/// passes ran on SSE that way, at half the speed.
///
/// ```
/// let (x, mut y) = (vec![1.0f32; 100], vec![0.0f32; 100]);
/// cnn_core::vector::widest(#[inline(always)] || {
///     for (y, &x) in y.iter_mut().zip(&x) {
///         *y = 2.0 * x + 1.0;
///     }
/// });
/// assert!(y.iter().all(|&v| v == 3.0));
/// ```
#[inline(always)]
pub fn widest<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl") {
            // SAFETY: the CPU has these instructions.
            return unsafe { avx512(f) };
        }
        if has!("avx2") && has!("fma") {
            // SAFETY: as above.
            return unsafe { avx2(f) };
        }
    }
    f()
}

/// The sum of `values` in 8 running sums (a vector register's lanes), in a fixed order: the
/// same for any instruction set.
pub(crate) fn sum(values: &[f32]) -> f32 {
    widest(#[inline(always)] || {
        let mut lanes = [0.0f32; 8];
        let mut chunks = values.chunks_exact(8);
        for c in &mut chunks {
            for (l, &v) in lanes.iter_mut().zip(c) {
                *l += v;
            }
        }
        lanes.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(test)]
mod tests {
    use super::widest;

    /// A product and a sum per value, and running sums: what the element-wise layers do.
    fn scale_and_sum(x: &[f32], y: &mut [f32]) -> f64 {
        y.iter_mut().zip(x).for_each(|(y, &x)| *y = 0.37 * (x - 0.11) * 1.7 + 0.5);
        let mut lanes = [0.0f64; 16];
        for c in x.chunks_exact(16) {
            lanes.iter_mut().zip(c).for_each(|(l, &v)| *l += v as f64 * v as f64);
        }
        lanes.iter().sum()
    }

    #[test]
    fn widest_gives_the_baseline_results_bit_for_bit() {
        let x: Vec<f32> = (0..4096).map(|i| ((i * 7919) % 1000) as f32 / 37.0 - 13.0).collect();
        let (mut plain, mut wide) = (vec![0.0; x.len()], vec![0.0; x.len()]);
        let s_plain = scale_and_sum(&x, &mut plain);
        let s_wide = widest(|| scale_and_sum(&x, &mut wide));
        assert_eq!(s_plain.to_bits(), s_wide.to_bits());
        assert!(plain.iter().zip(&wide).all(|(a, b)| a.to_bits() == b.to_bits()));
        assert!(wide.iter().any(|&v| v != 0.5), "the loop ran");
    }

    /// The sum in its eight lanes (value `i` into lane `i mod 8`, then the lanes and the
    /// remainder), for lengths below, at and past a whole number of lanes.
    #[test]
    fn sum_adds_in_eight_lanes() {
        for len in [0, 5, 8, 37] {
            let x: Vec<f32> = (0..len).map(|i| ((i * 7919) % 1000) as f32 / 37.0 - 13.0).collect();
            let mut lanes = [0.0f32; 8];
            let whole = len / 8 * 8;
            for (i, &v) in x[..whole].iter().enumerate() {
                lanes[i % 8] += v;
            }
            let expected = lanes.iter().sum::<f32>() + x[whole..].iter().sum::<f32>();
            assert_eq!(super::sum(&x).to_bits(), expected.to_bits(), "{len} values");
        }
    }
}
