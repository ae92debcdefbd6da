//! Window geometry: kernel size, stride and padding, shared by im2col, convolution and pooling.
//!
//! [`axis`] is the only place where an output size is computed; everything else asks a
//! [`Geometry`] made by [`Window::geometry`].

use crate::error::{CnnError, Result};
use std::ops::Range;

/// How the borders of the input are padded (with zeros for convolution; ignored by pooling).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Padding {
    /// No padding: only windows that fit entirely. `out = floor((in - k) / stride) + 1`.
    #[default]
    Valid,
    /// TensorFlow's SAME: `out = ceil(in / stride)`, total padding
    /// `max((out - 1) * stride + k - in, 0)`, the smaller half on top/left and the extra
    /// pixel on bottom/right.
    Same,
    /// Explicit padding per side.
    Explicit {
        /// Rows added above.
        top: usize,
        /// Rows added below.
        bottom: usize,
        /// Columns added on the left.
        left: usize,
        /// Columns added on the right.
        right: usize,
    },
}

impl Padding {
    /// The same explicit padding `p` on all four sides.
    pub fn uniform(p: usize) -> Self {
        Padding::Explicit { top: p, bottom: p, left: p, right: p }
    }

    /// Explicit padding of the row only: `left` and `right` (the padding of a 1-D signal).
    pub fn row(left: usize, right: usize) -> Self {
        Padding::Explicit { top: 0, bottom: 0, left, right }
    }
}

/// As the summary writes it: `Valid`, `Same`, or `(top,bottom,left,right)`.
impl std::fmt::Display for Padding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Padding::Valid => write!(f, "Valid"),
            Padding::Same => write!(f, "Same"),
            Padding::Explicit { top, bottom, left, right } => write!(f, "({top},{bottom},{left},{right})"),
        }
    }
}

/// Padding of one axis, as [`axis`] needs it.
#[derive(Clone, Copy, Debug)]
enum AxisPadding {
    Valid,
    Same,
    Explicit(usize, usize),
}

/// Output length and padding (before, after) of one axis: the output-size formula, in one place.
/// `Ok(None)` if the kernel does not fit the padded input; an error if the padded length
/// overflows.
fn axis(len: usize, k: usize, stride: usize, padding: AxisPadding) -> Result<Option<(usize, usize, usize)>> {
    let overflow = || CnnError::TooLarge { what: "padded input", detail: format!("length {len} with {padding:?} overflows") };
    let (before, after) = match padding {
        AxisPadding::Valid => (0, 0),
        AxisPadding::Explicit(before, after) => (before, after),
        AxisPadding::Same => {
            let out = len.div_ceil(stride);
            let total = (out - 1).checked_mul(stride).and_then(|v| v.checked_add(k)).ok_or_else(overflow)?.saturating_sub(len);
            (total / 2, total - total / 2)
        }
    };
    let padded = len.checked_add(before).and_then(|v| v.checked_add(after)).ok_or_else(overflow)?;
    Ok((k <= padded).then(|| ((padded - k) / stride + 1, before, after)))
}

/// A sliding window: kernel size, stride per axis and padding.
///
/// ```
/// use cnn_core::{Padding, Window};
/// let g = Window::square(3).stride(2).padding(Padding::Same).geometry(28, 28).unwrap();
/// assert_eq!((g.oh, g.ow), (14, 14));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Vertical stride.
    pub sh: usize,
    /// Horizontal stride.
    pub sw: usize,
    /// Vertical dilation: the taps of a column are `dh` rows apart (1: adjacent).
    pub dh: usize,
    /// Horizontal dilation.
    pub dw: usize,
    /// Padding rule.
    pub padding: Padding,
}

impl Window {
    /// A `kh x kw` window with stride 1, no dilation and no padding.
    pub fn new(kh: usize, kw: usize) -> Self {
        Window { kh, kw, sh: 1, sw: 1, dh: 1, dw: 1, padding: Padding::Valid }
    }

    /// A `k x k` window with stride 1 and no padding.
    pub fn square(k: usize) -> Self {
        Window::new(k, k)
    }

    /// A `1 x k` window: a 1-D window of length `k` over a signal seen as one row
    /// (see [`crate::conv1d`]). Stride along it with `.strides(1, s)` and pad it with
    /// [`Padding::Same`] or [`Padding::row`].
    pub fn row(k: usize) -> Self {
        Window::new(1, k)
    }

    /// The same stride on both axes.
    pub fn stride(self, s: usize) -> Self {
        self.strides(s, s)
    }

    /// Vertical and horizontal strides.
    pub fn strides(self, sh: usize, sw: usize) -> Self {
        Window { sh, sw, ..self }
    }

    /// The padding rule.
    pub fn padding(self, padding: Padding) -> Self {
        Window { padding, ..self }
    }

    /// The same dilation on both axes: a `k x k` kernel then spans `(k − 1)·d + 1` pixels.
    pub fn dilation(self, d: usize) -> Self {
        self.dilations(d, d)
    }

    /// Vertical and horizontal dilations.
    pub fn dilations(self, dh: usize, dw: usize) -> Self {
        Window { dh, dw, ..self }
    }

    /// Where this window goes on an `h x w` input: output size and padding per side.
    ///
    /// # Errors
    /// A zero stride, dilation or kernel side, an empty input, or a (dilated) kernel larger than
    /// the padded input.
    pub fn geometry(&self, h: usize, w: usize) -> Result<Geometry> {
        let &Window { kh, kw, sh, sw, dh, dw, padding } = self;
        if sh == 0 || sw == 0 {
            return Err(CnnError::ZeroStride { sh, sw });
        }
        if kh == 0 || kw == 0 {
            return Err(CnnError::ZeroKernel { kh, kw });
        }
        if dh == 0 || dw == 0 {
            return Err(CnnError::Invalid { what: "dilation", reason: format!("must be at least 1, got {dh}x{dw}") });
        }
        // the span of a dilated kernel: (k − 1)·d + 1 pixels
        let span = |k: usize, d: usize| (k - 1).checked_mul(d).and_then(|v| v.checked_add(1));
        let too_large = || CnnError::TooLarge { what: "dilated kernel", detail: format!("{kh}x{kw} dilated by {dh}x{dw} overflows") };
        let (ekh, ekw) = (span(kh, dh).ok_or_else(too_large)?, span(kw, dw).ok_or_else(too_large)?);
        if h == 0 || w == 0 {
            return Err(CnnError::Empty { what: "input image", shape: vec![h, w] });
        }
        let (rows, cols) = match padding {
            Padding::Valid => (AxisPadding::Valid, AxisPadding::Valid),
            Padding::Same => (AxisPadding::Same, AxisPadding::Same),
            Padding::Explicit { top, bottom, left, right } => {
                (AxisPadding::Explicit(top, bottom), AxisPadding::Explicit(left, right))
            }
        };
        match (axis(h, ekh, sh, rows)?, axis(w, ekw, sw, cols)?) {
            (Some((oh, pad_top, pad_bottom)), Some((ow, pad_left, pad_right))) => Ok(Geometry {
                kh,
                kw,
                sh,
                sw,
                dh,
                dw,
                h,
                w,
                oh,
                ow,
                pad_top,
                pad_bottom,
                pad_left,
                pad_right,
            }),
            _ => {
                let (padded_h, padded_w) = match padding {
                    Padding::Explicit { top, bottom, left, right } => (h + top + bottom, w + left + right), // no overflow: axis checked
                    _ => (h, w),
                };
                Err(CnnError::KernelTooLarge { kh: ekh, kw: ekw, h, w, padded_h, padded_w })
            }
        }
    }
}

impl Window {
    /// The two windows of a spatially separated convolution (see
    /// [`crate::lowrank::Decomposition::Spatial`]) on an `h x w` input: the vertical
    /// `kh x 1` one with this window's rows (stride, dilation, top and bottom padding), then
    /// the horizontal `1 x kw` one with its columns. Applied one after the other they give
    /// this window's output size; SAME padding is resolved to the sides it pads.
    ///
    /// # Errors
    /// As [`Window::geometry`].
    pub fn split_spatial(&self, h: usize, w: usize) -> Result<(Window, Window)> {
        let g = self.geometry(h, w)?;
        let vertical = Window { kw: 1, sw: 1, dw: 1, padding: Padding::Explicit { top: g.pad_top, bottom: g.pad_bottom, left: 0, right: 0 }, ..*self };
        let horizontal = Window { kh: 1, sh: 1, dh: 1, padding: Padding::Explicit { top: 0, bottom: 0, left: g.pad_left, right: g.pad_right }, ..*self };
        Ok((vertical, horizontal))
    }
}

/// As the summary writes it: `f=3,s=1`, or `f=3x5,s=1x2` when not square, and `,d=2` when
/// dilated.
impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if (self.kh, self.sh) == (self.kw, self.sw) {
            write!(f, "f={},s={}", self.kw, self.sw)?;
        } else {
            write!(f, "f={}x{},s={}x{}", self.kh, self.kw, self.sh, self.sw)?;
        }
        match (self.dh, self.dw) {
            (1, 1) => Ok(()),
            (dh, dw) if dh == dw => write!(f, ",d={dh}"),
            (dh, dw) => write!(f, ",d={dh}x{dw}"),
        }
    }
}

/// A [`Window`] placed on an input of a given size: everything im2col, convolution and pooling
/// need to walk the receptive fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Vertical stride.
    pub sh: usize,
    /// Horizontal stride.
    pub sw: usize,
    /// Vertical dilation.
    pub dh: usize,
    /// Horizontal dilation.
    pub dw: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
    /// Rows of padding above.
    pub pad_top: usize,
    /// Rows of padding below.
    pub pad_bottom: usize,
    /// Columns of padding on the left.
    pub pad_left: usize,
    /// Columns of padding on the right.
    pub pad_right: usize,
}

impl Geometry {
    /// Number of output positions (receptive fields) per channel: `oh * ow`.
    pub fn positions(&self) -> usize {
        self.oh * self.ow
    }

    /// A 1x1 window with stride 1 and no padding: every output reads its own pixel, so the
    /// lowered matrix of a sample is the sample itself (`[c, h·w]`).
    pub fn is_identity(&self) -> bool {
        (self.kh, self.kw, self.sh, self.sw) == (1, 1, 1, 1) && (self.pad_top, self.pad_bottom, self.pad_left, self.pad_right) == (0, 0, 0, 0)
    }

    /// The input row of tap row `ky` for output row `oy`: `oy·sh + ky·dh − pad_top` (only
    /// for `oy` in [`Geometry::rows_inside`]).
    pub fn input_row(&self, oy: usize, ky: usize) -> usize {
        oy * self.sh + ky * self.dh - self.pad_top
    }

    /// The input column of tap column `kx` for output column `ox`: `ox·sw + kx·dw − pad_left`
    /// (only for `ox` in [`Geometry::cols_inside`]).
    pub fn input_col(&self, ox: usize, kx: usize) -> usize {
        ox * self.sw + kx * self.dw - self.pad_left
    }

    /// Output rows `oy` whose input row `oy·sh + ky·dh − pad_top` lies inside the image.
    pub fn rows_inside(&self, ky: usize) -> Range<usize> {
        inside(self.oh, self.h, self.sh, self.pad_top, ky * self.dh)
    }

    /// Output columns `ox` whose input column `ox·sw + kx·dw − pad_left` lies inside the image.
    pub fn cols_inside(&self, kx: usize) -> Range<usize> {
        inside(self.ow, self.w, self.sw, self.pad_left, kx * self.dw)
    }
}

/// The outputs `o` in `0..out` for which `o * stride + offset - pad` is in `0..len`.
fn inside(out: usize, len: usize, stride: usize, pad: usize, offset: usize) -> Range<usize> {
    let first = pad.saturating_sub(offset).div_ceil(stride);
    let end = (len + pad).saturating_sub(offset).div_ceil(stride);
    let end = end.min(out);
    first.min(end)..end
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(h: usize, w: &Window) -> (usize, usize, usize) {
        let g = w.geometry(h, h).unwrap();
        (g.oh, g.pad_top, g.pad_bottom)
    }

    #[test]
    fn valid_is_floor() {
        assert_eq!(out(28, &Window::square(3)), (26, 0, 0));
        assert_eq!(out(26, &Window::square(2).stride(2)), (13, 0, 0));
        assert_eq!(out(13, &Window::square(2).stride(2)), (6, 0, 0));
        assert_eq!(out(7, &Window::square(3).stride(3)), (2, 0, 0));
    }

    #[test]
    fn same_follows_tensorflow() {
        // in 5, k 3, s 1: out 5, total (4*1+3-5)=2 -> 1 / 1
        assert_eq!(out(5, &Window::square(3).padding(Padding::Same)), (5, 1, 1));
        // in 4, k 2, s 1: out 4, total 1 -> 0 on top, 1 below
        assert_eq!(out(4, &Window::square(2).padding(Padding::Same)), (4, 0, 1));
        // in 5, k 3, s 2: out 3, total (2*2+3-5)=2 -> 1 / 1
        assert_eq!(out(5, &Window::square(3).stride(2).padding(Padding::Same)), (3, 1, 1));
        // in 6, k 3, s 2: out 3, total (2*2+3-6)=1 -> 0 / 1
        assert_eq!(out(6, &Window::square(3).stride(2).padding(Padding::Same)), (3, 0, 1));
        // in 6, k 4, s 2: out 3, total 2 -> 1 / 1; in 7, k 4, s 3: out 3, total 3 -> 1 / 2
        assert_eq!(out(6, &Window::square(4).stride(2).padding(Padding::Same)), (3, 1, 1));
        assert_eq!(out(7, &Window::square(4).stride(3).padding(Padding::Same)), (3, 1, 2));
        // stride larger than kernel: no padding needed, never negative
        assert_eq!(out(6, &Window::square(1).stride(4).padding(Padding::Same)), (2, 0, 0));
    }

    #[test]
    fn explicit_and_non_square() {
        let g = Window::new(3, 5)
            .strides(1, 2)
            .padding(Padding::Explicit { top: 1, bottom: 0, left: 2, right: 2 })
            .geometry(6, 9)
            .unwrap();
        // rows: 6+1-3+1 = 5; cols: (9+4-5)/2+1 = 5
        assert_eq!((g.oh, g.ow), (5, 5));
    }

    #[test]
    fn reference_network_sizes() {
        let conv = Window::square(3);
        let pool = Window::square(2).stride(2);
        let mut side = 28;
        let mut sides = vec![];
        for layer in [conv, pool, conv, pool, conv, pool] {
            side = layer.geometry(side, side).unwrap().oh;
            sides.push(side);
        }
        assert_eq!(sides, [26, 13, 11, 5, 3, 1]);
    }

    #[test]
    fn errors_name_the_problem() {
        let e = Window::square(3).stride(0).geometry(5, 5).unwrap_err();
        assert_eq!(e.to_string(), "stride must be at least 1, got 0x0");
        let e = Window::square(5).geometry(4, 6).unwrap_err();
        assert_eq!(e.to_string(), "kernel 5x5 is larger than the padded input 4x6 (input 4x6)");
        let e = Window::square(5).padding(Padding::uniform(1)).geometry(2, 6).unwrap_err();
        assert!(matches!(e, CnnError::KernelTooLarge { padded_h: 4, padded_w: 8, .. }));
        assert!(matches!(Window::new(0, 3).geometry(4, 4), Err(CnnError::ZeroKernel { .. })));
        assert!(matches!(Window::square(1).geometry(0, 4), Err(CnnError::Empty { .. })));
    }

    #[test]
    fn huge_sizes_are_errors_not_overflows() {
        let huge = Window::square(3).padding(Padding::Explicit { top: usize::MAX, bottom: 1, left: 0, right: 0 });
        let e = huge.geometry(5, 5).unwrap_err();
        assert!(matches!(e, CnnError::TooLarge { what: "padded input", .. }), "{e}");
        let e = Window::square(3).padding(Padding::Same).geometry(usize::MAX, 3).unwrap_err();
        assert!(matches!(e, CnnError::TooLarge { .. }), "{e}");
    }

    #[test]
    fn dilation_widens_the_kernel() {
        // 3x3 dilated by 2 spans 5x5: VALID on 7 gives 3; SAME pads (5 - 1) = 4, 2 / 2
        let g = Window::square(3).dilation(2).geometry(7, 7).unwrap();
        assert_eq!((g.oh, g.ow), (3, 3));
        let g = Window::square(3).dilation(2).padding(Padding::Same).geometry(7, 7).unwrap();
        assert_eq!((g.oh, g.pad_top, g.pad_bottom), (7, 2, 2));
        // tap 2 of output 0 reads input 0·1 + 2·2 − 2 = 2; rows 0..5 keep it inside 0..7
        assert_eq!((g.input_row(0, 2), g.rows_inside(2)), (2, 0..5));
        assert!(matches!(Window::square(3).dilation(4).geometry(8, 8), Err(CnnError::KernelTooLarge { kh: 9, .. })));
        assert!(matches!(Window::square(3).dilation(0).geometry(8, 8), Err(CnnError::Invalid { what: "dilation", .. })));
        assert_eq!(Window::square(3).dilation(2).to_string(), "f=3,s=1,d=2");
    }

    #[test]
    fn labels() {
        assert_eq!(Window::square(3).to_string(), "f=3,s=1");
        assert_eq!(Window::new(3, 5).strides(1, 2).to_string(), "f=3x5,s=1x2");
        assert_eq!(Padding::Same.to_string(), "Same");
        assert_eq!(Padding::row(2, 1).to_string(), "(0,0,2,1)");
    }

    #[test]
    fn inside_ranges() {
        // in 5, k 3, s 1, pad 1: out 5; kx 0 reads x-1 -> first column is padding
        let g = Window::square(3).padding(Padding::Same).geometry(5, 5).unwrap();
        assert_eq!(g.cols_inside(0), 1..5);
        assert_eq!(g.cols_inside(1), 0..5);
        assert_eq!(g.cols_inside(2), 0..4);
        // stride 2, pad_left 0, pad_right 1 (in 6, k 3): ox*2+kx in 0..6
        let g = Window::square(3).stride(2).padding(Padding::Same).geometry(6, 6).unwrap();
        assert_eq!(g.cols_inside(2), 0..2);
        assert_eq!(g.cols_inside(1), 0..3);
    }
}
