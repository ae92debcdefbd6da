//! Model compression: replace trained `Conv2d` layers by low-rank ones.

use crate::error::{NnError, Result};
use crate::layers::{Conv2d, LowRankConv2d};
use crate::sequential::Sequential;
use cnn_core::lowrank::{macs_per_position, max_useful_rank, svd_filters, RankPolicy};
use ndarray::Ix4;
use std::any::Any;

/// What [`factorise`] did with one layer.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// The layer was replaced.
    Factorised {
        /// Layer index in the model.
        layer: usize,
        /// The chosen rank.
        rank: usize,
        /// The full rank `min(c_out, K)`.
        full_rank: usize,
        /// Multiply-adds relative to the full layer, `k(c_out + K) / (c_out K)`.
        flop_ratio: f64,
        /// `||W − W_k||_F / ||W||_F`.
        rel_error: f64,
    },
    /// The layer was left as it is.
    Skipped {
        /// Layer index in the model.
        layer: usize,
        /// Why.
        reason: String,
    },
}

/// Indices of the model's `Conv2d` layers.
pub fn conv_layers(model: &Sequential) -> Vec<usize> {
    model.layers().iter().enumerate().filter(|(_, l)| (l.as_ref() as &dyn Any).is::<Conv2d>()).map(|(i, _)| i).collect()
}

/// Replaces each planned `Conv2d` (layer index, rank policy) by its truncated-SVD factorisation.
/// A layer where the chosen rank would not reduce the multiply-adds is left untouched and
/// reported as [`Decision::Skipped`].
///
/// # Errors
/// An index that is not a `Conv2d` layer, or the SVD failing.
pub fn factorise(model: &mut Sequential, plan: &[(usize, RankPolicy)]) -> Result<Vec<Decision>> {
    let mut decisions = vec![];
    for &(index, policy) in plan {
        let layer = model.layers().get(index).ok_or_else(|| NnError::Config(format!("no layer {index} to factorise")))?;
        let conv = (layer.as_ref() as &dyn Any)
            .downcast_ref::<Conv2d>()
            .ok_or_else(|| NnError::Config(format!("layer {index} ({}) is not a Conv2d", layer.describe().name)))?;
        if !conv.is_full() {
            decisions.push(Decision::Skipped { layer: index, reason: "a grouped or depthwise convolution is not factorised".into() });
            continue;
        }
        let weight = conv.weight().expect("built").view().into_dimensionality::<Ix4>().expect("4-D filters");
        let (c_out, c_in, kh, kw) = weight.dim();
        let patch = c_in * kh * kw;
        let svd = svd_filters(weight)?;
        let rank = svd.rank_for(policy)?;
        let useful = max_useful_rank(c_out, patch);
        if rank > useful {
            decisions.push(Decision::Skipped {
                layer: index,
                reason: format!(
                    "rank {rank} would not save work: ranks above {useful} cost more than the full layer (c_out {c_out}, K {patch})"
                ),
            });
            continue;
        }
        let norm = svd.s.iter().map(|v| v * v).sum::<f64>().sqrt();
        let flop_ratio = macs_per_position(c_out, patch, Some(rank)) as f64 / macs_per_position(c_out, patch, None) as f64;
        let low = LowRankConv2d::from_factors(conv, svd.truncate(rank));
        model.replace_layer(index, Box::new(low))?;
        decisions.push(Decision::Factorised {
            layer: index,
            rank,
            full_rank: svd.full_rank(),
            flop_ratio,
            rel_error: svd.truncation_error(rank) / norm.max(f64::MIN_POSITIVE),
        });
    }
    Ok(decisions)
}

/// The factorisations of `decisions` as a plan string, `layer:rank,…` (what checkpoints record
/// under [`crate::checkpoint::FACTORISED`]).
pub fn plan_string(decisions: &[Decision]) -> String {
    let ranks = decisions.iter().filter_map(|d| match d {
        Decision::Factorised { layer, rank, .. } => Some(format!("{layer}:{rank}")),
        Decision::Skipped { .. } => None,
    });
    ranks.collect::<Vec<_>>().join(",")
}

/// Parses a plan written by [`plan_string`] into fixed ranks for [`factorise`].
///
/// # Errors
/// An entry that is not `layer:rank` with two numbers.
pub fn parse_plan(plan: &str) -> std::result::Result<Vec<(usize, RankPolicy)>, String> {
    plan.split(',')
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let (layer, rank) = entry.split_once(':').ok_or_else(|| format!("`{entry}` is not layer:rank"))?;
            let number = |s: &str| s.trim().parse::<usize>().map_err(|e| format!("`{entry}`: {e}"));
            Ok((number(layer)?, RankPolicy::Fixed(number(rank)?)))
        })
        .collect()
}
