//! Low-rank convolution: the lowered filter matrix factorised by truncated SVD.
//!
//! After im2col the filters are one matrix `W` (`[c_out, K]`, `K = c_in·kh·kw`). Its SVD
//! `W = U S Vᵀ`, truncated to the `k` largest singular values, gives the best rank-`k`
//! approximation (Eckart–Young) as two thinner factors:
//!
//! ```text
//! W ≈ A · B      A = U_k S_k  [c_out, k]   ("mix": a 1x1 convolution with c_out filters)
//!                B = V_kᵀ     [k, K]       ("basis": a kh x kw convolution with k filters)
//! y = A · (B · cols) + b                   two GEMMs on the same lowered input
//! ```
//!
//! Per output position the cost drops from `c_out·K` to `k·(c_out + K)` multiply-adds, so a
//! rank only pays below `c_out·K / (c_out + K)`.
//!
//! That is the **channel** decomposition. The **spatial** one reshapes the same filters as
//! `[c_in·kh, kw·c_out]` (row `(ci, y)`, column `(x, co)`) and factorises that:
//!
//! ```text
//! W[co, ci, y, x] ≈ Σ_k V[k, ci, y] · H[co, k, x]
//!     V = U_k S_k^½  as k vertical kh x 1 filters over c_in channels
//!     H = S_k^½ V_kᵀ as c_out horizontal 1 x kw filters over the k channels
//! ```
//!
//! a vertical convolution to `k` channels, then a horizontal one: `k·(c_in·kh + c_out·kw)`
//! multiply-adds per position instead of `c_out·c_in·kh·kw`, and each lowering is `kh` or `kw`
//! times smaller than the full one — the cost the channel decomposition leaves as it is.

use crate::conv::{lowered_backward, lowered_forward};
use crate::operands::conv_geometry;
use crate::error::{expect_finite, expect_shape, CnnError, Result};
use crate::window::Window;
use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array1, Array2, Array4, ArrayView1, ArrayView2, ArrayView4, Axis};
use ndarray_linalg::SVD;

/// How to choose the rank of a factorisation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RankPolicy {
    /// Exactly this rank, at least 1 (clamped to the full rank).
    Fixed(usize),
    /// The smallest rank that keeps this fraction (in `(0, 1]`) of the spectrum's energy, the
    /// sum of the squared singular values.
    Energy(f64),
    /// The largest rank whose multiply-adds are at most `1 / factor` of the full layer's
    /// (`factor` finite and at least 1).
    FlopReduction(f64),
}

impl RankPolicy {
    /// Checks the policy's number.
    ///
    /// # Errors
    /// [`CnnError::Invalid`] for `Fixed(0)`, an energy outside `(0, 1]` (NaN included), or a
    /// reduction factor that is not a finite number of at least 1.
    pub fn validate(&self) -> Result<()> {
        let reason = match *self {
            RankPolicy::Fixed(0) => Some("a rank of 0 keeps nothing; use at least 1".to_string()),
            RankPolicy::Energy(e) if !(e > 0.0 && e <= 1.0) => Some(format!("energy fraction must be in (0, 1], got {e}")),
            RankPolicy::FlopReduction(f) if !(f.is_finite() && f >= 1.0) => {
                Some(format!("FLOP reduction factor must be a finite number >= 1, got {f}"))
            }
            _ => None,
        };
        reason.map_or(Ok(()), |reason| Err(CnnError::Invalid { what: "rank policy", reason }))
    }
}

/// Which reshaping of the filter bank `[c_out, c_in, kh, kw]` is factorised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decomposition {
    /// `[c_out, c_in·kh·kw]`: `k` full-size filters, then a 1x1 mix to `c_out` channels.
    Channel,
    /// `[c_in·kh, kw·c_out]`: `k` vertical `kh x 1` filters, then `c_out` horizontal `1 x kw`
    /// ones.
    Spatial,
}

impl Decomposition {
    /// Both, in a fixed order.
    pub const ALL: [Decomposition; 2] = [Decomposition::Channel, Decomposition::Spatial];

    /// The matrix factorised for filters of `shape`: its rows and columns.
    pub fn matrix(self, [c_out, c_in, kh, kw]: [usize; 4]) -> (usize, usize) {
        match self {
            Decomposition::Channel => (c_out, c_in * kh * kw),
            Decomposition::Spatial => (c_in * kh, kw * c_out),
        }
    }

    /// Multiply-adds per output position (counting the intermediate positions as output
    /// positions, exact for stride 1): full rank `c_out·c_in·kh·kw`; rank `k`:
    /// `k·(c_out + c_in·kh·kw)` for the channel decomposition, `k·(c_in·kh + c_out·kw)` for
    /// the spatial one.
    pub fn macs_per_position(self, shape: [usize; 4], rank: Option<usize>) -> usize {
        let (rows, cols) = self.matrix(shape);
        match (self, rank) {
            (_, None) => rows * cols,
            (Decomposition::Channel, Some(k)) => k * (rows + cols),
            (Decomposition::Spatial, Some(k)) => {
                let [c_out, _, _, kw] = shape;
                k * (rows + c_out * kw)
            }
        }
    }

    /// The largest rank that still does fewer multiply-adds than the full layer; 0 when none
    /// does.
    pub fn max_useful_rank(self, shape: [usize; 4]) -> usize {
        let full = self.macs_per_position(shape, None);
        let per_rank = self.macs_per_position(shape, Some(1));
        full.saturating_sub(1) / per_rank.max(1)
    }
}

/// `channel` or `spatial`.
impl std::fmt::Display for Decomposition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Decomposition::Channel => "channel",
            Decomposition::Spatial => "spatial",
        })
    }
}

impl std::str::FromStr for Decomposition {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "channel" => Ok(Decomposition::Channel),
            "spatial" => Ok(Decomposition::Spatial),
            other => Err(format!("`{other}` is not a decomposition (channel or spatial)")),
        }
    }
}

/// The singular value decomposition of a reshaping of a filter bank.
#[derive(Clone, Debug)]
pub struct FilterSvd {
    /// Left singular vectors, `[rows, r]` (`r = min(rows, cols)`, see
    /// [`Decomposition::matrix`]).
    pub u: Array2<f64>,
    /// Singular values, largest first, `[r]`.
    pub s: Array1<f64>,
    /// Right singular vectors transposed, `[r, cols]`.
    pub vt: Array2<f64>,
    /// The filters' shape `[c_out, c_in, kh, kw]`.
    pub shape: [usize; 4],
    /// The reshaping decomposed.
    pub decomposition: Decomposition,
}

/// A filter bank factorised by the spatial decomposition to rank `k`.
#[derive(Clone, Debug, PartialEq)]
pub struct SpatialFilters {
    /// `k` vertical filters, `[k, c_in, kh, 1]`.
    pub vertical: Array4<f32>,
    /// `c_out` horizontal filters over the `k` channels, `[c_out, k, 1, kw]`.
    pub horizontal: Array4<f32>,
}

/// The factors of a truncated [`FilterSvd`].
#[derive(Clone, Debug, PartialEq)]
pub enum Factors {
    /// Of the channel decomposition.
    Channel(LowRankFilters),
    /// Of the spatial decomposition.
    Spatial(SpatialFilters),
}

impl Factors {
    /// The rank `k`.
    pub fn rank(&self) -> usize {
        match self {
            Factors::Channel(f) => f.rank(),
            Factors::Spatial(f) => f.vertical.dim().0,
        }
    }

    /// The approximated filter bank, `[c_out, c_in, kh, kw]`.
    pub fn reconstruct(&self) -> Array4<f32> {
        match self {
            Factors::Channel(f) => f.reconstruct(),
            Factors::Spatial(f) => {
                let (k, c_in, kh, _) = f.vertical.dim();
                let (c_out, _, _, kw) = f.horizontal.dim();
                let mut w = Array4::zeros((c_out, c_in, kh, kw));
                for ((co, ci, y, x), v) in w.indexed_iter_mut() {
                    *v = (0..k).map(|r| f.vertical[[r, ci, y, 0]] * f.horizontal[[co, r, 0, x]]).sum();
                }
                w
            }
        }
    }
}

/// A filter bank factorised to rank `k`: `W ≈ mix · basis`.
#[derive(Clone, Debug, PartialEq)]
pub struct LowRankFilters {
    /// `A = U_k S_k`, `[c_out, k]`.
    pub mix: Array2<f32>,
    /// `B = V_kᵀ` as `k` filters, `[k, c_in, kh, kw]`.
    pub basis: Array4<f32>,
}

/// Gradients of a low-rank convolution.
#[derive(Clone, Debug, PartialEq)]
pub struct LowRankGrads {
    /// Gradient of the input, `[n, c_in, h, w]`.
    pub dx: Array4<f32>,
    /// Gradient of the mix matrix, `[c_out, k]`.
    pub dmix: Array2<f32>,
    /// Gradient of the basis filters, `[k, c_in, kh, kw]`.
    pub dbasis: Array4<f32>,
    /// Gradient of the bias, `[c_out]`.
    pub db: Array1<f32>,
}

/// Multiply-adds per output position of the channel decomposition: full rank `c_out·K`, rank
/// `k` `k·(c_out + K)` (see [`Decomposition::macs_per_position`] for both).
pub fn macs_per_position(c_out: usize, patch: usize, rank: Option<usize>) -> usize {
    match rank {
        None => c_out * patch,
        Some(k) => k * (c_out + patch),
    }
}

/// The largest rank that still does fewer multiply-adds than the full layer
/// (`k·(c_out + K) < c_out·K`); 0 when none does.
pub fn max_useful_rank(c_out: usize, patch: usize) -> usize {
    (c_out * patch).saturating_sub(1) / (c_out + patch)
}

/// Decomposes `w` (`[c_out, c_in, kh, kw]`), in f64.
///
/// # Errors
/// An empty filter bank, a NaN or infinite weight (LAPACK would loop or fail on it), or
/// LAPACK failing to converge.
pub fn svd_filters(w: ArrayView4<f32>) -> Result<FilterSvd> {
    svd_filters_as(w, Decomposition::Channel)
}

/// Decomposes `w` (`[c_out, c_in, kh, kw]`) reshaped as `decomposition` says, in f64.
///
/// # Errors
/// As [`svd_filters`].
pub fn svd_filters_as(w: ArrayView4<f32>, decomposition: Decomposition) -> Result<FilterSvd> {
    let (c_out, c_in, kh, kw) = w.dim();
    crate::error::expect_nonempty("filters", w.shape())?;
    expect_finite("filters", &w)?;
    let shape = [c_out, c_in, kh, kw];
    let w = w.mapv(f64::from);
    let matrix = match decomposition {
        Decomposition::Channel => w.into_shape_with_order((c_out, c_in * kh * kw)).expect("filters reshape"),
        // [c_out, c_in, kh, kw] → [c_in, kh, kw, c_out]: row (ci, y), column (x, co)
        Decomposition::Spatial => w.permuted_axes([1, 2, 3, 0]).as_standard_layout().into_owned().into_shape_with_order((c_in * kh, kw * c_out)).expect("filters reshape"),
    };
    let (u, s, vt) = matrix.svd(true, true).map_err(|e| CnnError::Linalg(e.to_string()))?;
    let r = s.len();
    let u = u.expect("asked for U").slice_move(s![.., ..r]);
    let vt = vt.expect("asked for Vt").slice_move(s![..r, ..]);
    Ok(FilterSvd { u, s, vt, shape, decomposition })
}

impl FilterSvd {
    /// The full rank `min(c_out, K)`.
    pub fn full_rank(&self) -> usize {
        self.s.len()
    }

    /// The rank `policy` picks (at least 1, at most the full rank).
    ///
    /// # Errors
    /// A policy that [`RankPolicy::validate`] refuses.
    pub fn rank_for(&self, policy: RankPolicy) -> Result<usize> {
        policy.validate()?;
        let rank = match policy {
            RankPolicy::Fixed(k) => k,
            RankPolicy::Energy(fraction) => {
                let total: f64 = self.s.iter().map(|v| v * v).sum();
                let mut kept = 0.0;
                let mut k = 0;
                for v in &self.s {
                    if kept >= fraction * total {
                        break;
                    }
                    kept += v * v;
                    k += 1;
                }
                k
            }
            RankPolicy::FlopReduction(factor) => {
                let d = self.decomposition;
                (d.macs_per_position(self.shape, None) as f64 / (factor * d.macs_per_position(self.shape, Some(1)) as f64)).floor() as usize
            }
        };
        Ok(rank.clamp(1, self.full_rank()))
    }

    /// Frobenius norm of `W − W_k`, from the discarded singular values: `sqrt(Σ_{i≥k} s_i²)`.
    pub fn truncation_error(&self, rank: usize) -> f64 {
        self.s.iter().skip(rank).map(|v| v * v).sum::<f64>().sqrt()
    }

    /// The factors of the best rank-`rank` approximation of the reshaped filters (the rank
    /// clamped to `1..=full rank`).
    pub fn truncate(&self, rank: usize) -> Factors {
        let [c_out, c_in, kh, kw] = self.shape;
        let k = rank.clamp(1, self.full_rank());
        let (u, s, vt) = (self.u.slice(s![.., ..k]), self.s.slice(s![..k]), self.vt.slice(s![..k, ..]));
        match self.decomposition {
            Decomposition::Channel => {
                let mix = (&u * &s).mapv(|v| v as f32);
                let basis = vt.mapv(|v| v as f32).into_shape_with_order((k, c_in, kh, kw)).expect("k rows of K");
                Factors::Channel(LowRankFilters { mix, basis })
            }
            Decomposition::Spatial => {
                // the singular values shared out as square roots: both factors of one scale
                let root = s.mapv(f64::sqrt);
                // U_k S^½ [(ci, y), k] → [k, ci, y, 1]
                let vertical = (&u * &root).mapv(|v| v as f32).t().as_standard_layout().into_owned().into_shape_with_order((k, c_in, kh, 1)).expect("k x (c_in·kh)");
                // S^½ V_kᵀ [k, (x, co)] → [co, k, 1, x]
                let h = (&vt * &root.view().insert_axis(Axis(1))).mapv(|v| v as f32).into_shape_with_order((k, kw, c_out)).expect("k x (kw·c_out)");
                let horizontal = h.permuted_axes([2, 0, 1]).as_standard_layout().into_owned().into_shape_with_order((c_out, k, 1, kw)).expect("c_out x k x kw");
                Factors::Spatial(SpatialFilters { vertical, horizontal })
            }
        }
    }
}

impl LowRankFilters {
    /// The rank `k`.
    pub fn rank(&self) -> usize {
        self.mix.ncols()
    }

    /// The approximated filter bank `mix · basis`, `[c_out, c_in, kh, kw]`.
    pub fn reconstruct(&self) -> Array4<f32> {
        let (k, c_in, kh, kw) = self.basis.dim();
        let b = self.basis.to_shape((k, c_in * kh * kw)).expect("basis reshape");
        let w = self.mix.dot(&b);
        w.into_shape_with_order((self.mix.nrows(), c_in, kh, kw)).expect("c_out x K")
    }
}

/// Checks the factors against each other and the input; returns the geometry and `c_out`.
fn check(x: &[usize], mix: ArrayView2<f32>, basis: &[usize], win: &Window) -> Result<(crate::Geometry, usize)> {
    let (c_out, k) = mix.dim();
    expect_shape("low-rank mix [c_out, k] vs basis [k, ...]", &[k], &basis[..1])?;
    let g = conv_geometry(x, basis, None, win, 1)?;
    Ok((g, c_out))
}

/// Low-rank convolution forward: `y = mix · (basis · cols) + b`, two GEMMs per sample on one
/// lowering.
///
/// # Shapes
/// - `x`: `[n, c_in, h, w]`
/// - `mix`: `[c_out, k]`, `basis`: `[k, c_in, kh, kw]`, `b`: `[c_out]` (optional)
/// - returns: `[n, c_out, oh, ow]`
///
/// # Errors
/// As [`crate::conv2d`], and factors whose rank `k` disagrees.
pub fn lowrank_conv2d(
    x: ArrayView4<f32>,
    mix: ArrayView2<f32>,
    basis: ArrayView4<f32>,
    b: Option<ArrayView1<f32>>,
    win: &Window,
) -> Result<Array4<f32>> {
    let (g, c_out) = check(x.shape(), mix, basis.shape(), win)?;
    if let Some(b) = b {
        expect_shape("bias", &[c_out], &[b.len()])?;
    }
    let (k, c_in, kh, kw) = basis.dim();
    let b_mat = basis.to_shape((k, c_in * kh * kw)).expect("basis reshape");
    let beta = if b.is_some() { 1.0 } else { 0.0 };
    lowered_forward(x, &g, c_out, b, |cols, y| {
        // t [k, m] = basis [k, K] · cols [K, m]     (k thin filters; m = samples·oh·ow)
        let t = b_mat.dot(cols);
        // y [c_out, m] = mix [c_out, k] · t           (a 1x1 convolution)
        general_mat_mul(1.0, &mix, &t, beta, y);
    })
}

/// Low-rank convolution backward.
///
/// ```text
/// t = basis · cols     dmix   = Σ dy · tᵀ          dt    = mixᵀ · dy
///                      dbasis = Σ dt · colsᵀ        dcols = basisᵀ · dt,  dx = col2im(dcols)
/// ```
///
/// # Shapes
/// As [`lowrank_conv2d`], with `dy`: `[n, c_out, oh, ow]`.
///
/// # Errors
/// As [`lowrank_conv2d`], and a `dy` whose shape is not the output's.
pub fn lowrank_conv2d_backward(
    x: ArrayView4<f32>,
    mix: ArrayView2<f32>,
    basis: ArrayView4<f32>,
    dy: ArrayView4<f32>,
    win: &Window,
) -> Result<LowRankGrads> {
    let (g, c_out) = check(x.shape(), mix, basis.shape(), win)?;
    expect_shape("output gradient dy", &[x.dim().0, c_out, g.oh, g.ow], dy.shape())?;
    let (k, c_in, kh, kw) = basis.dim();
    let patch = c_in * kh * kw;
    let b_mat = basis.to_shape((k, patch)).expect("basis reshape");
    let (dx, partials) = lowered_backward(
        x,
        dy,
        &g,
        || (Array2::zeros((c_out, k)), Array2::zeros((k, patch)), Array1::zeros(c_out)),
        |(dmix, dbasis, db), cols, dy, dcols| {
            let t = b_mat.dot(cols); // [k, m]   (m = samples·oh·ow)
            general_mat_mul(1.0, dy, &t.t(), 1.0, dmix); // [c_out, k] +=
            let dt = mix.t().dot(dy); // [k, m]
            general_mat_mul(1.0, &dt, &cols.t(), 1.0, dbasis); // [k, K] +=
            general_mat_mul(1.0, &b_mat.t(), &dt, 0.0, dcols); // [K, m]
            *db += &dy.sum_axis(Axis(1));
        },
    )?;
    let mut dmix = Array2::zeros((c_out, k));
    let mut dbasis = Array2::zeros((k, patch));
    let mut db = Array1::zeros(c_out);
    for (m, b, d) in &partials {
        dmix += m;
        dbasis += b;
        db += d;
    }
    let dbasis = dbasis.into_shape_with_order((k, c_in, kh, kw)).expect("k x K");
    Ok(LowRankGrads { dx, dmix, dbasis, db })
}
