//! Model compression: replace trained `Conv2d` layers, at any depth (inside residual blocks
//! too), by low-rank factorisations.
//!
//! Two decompositions (see [`cnn_core::lowrank`]), chosen per layer:
//! - [`Decomposition::Channel`] gives a [`LowRankConv2d`]: `k` full-size filters, then a 1x1
//!   mix, two GEMMs on one lowering;
//! - [`Decomposition::Spatial`] gives a [`Chain`] of two ordinary [`Conv2d`]s: `k` vertical
//!   `kh x 1` filters, then `c_out` horizontal `1 x kw` ones (with the bias), each lowering
//!   `kh` or `kw` times smaller than the full one.
//!
//! A layer is named by its path, as its parameters are: `3` for the fourth layer of the model,
//! `3.1.main.0` for the first layer of the main path of the second block of a stage.

use crate::error::{NnError, Result};
use crate::layers::{Chain, Conv2d, LowRankConv2d};
use crate::sequential::Sequential;
use crate::Layer;
use cnn_core::lowrank::{svd_filters_as, Factors, RankPolicy};
use ndarray::{Ix1, Ix4};
use std::any::Any;

pub use cnn_core::lowrank::Decomposition;

/// A full `Conv2d` of a model, where it is and what it sees.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvSite {
    /// Its path (`3`, `3.1.main.0`).
    pub path: String,
    /// Per-sample input shape `[c_in, h, w]`.
    pub input: Vec<usize>,
    /// Per-sample output shape `[c_out, oh, ow]`.
    pub output: Vec<usize>,
    /// Its filters' shape `[c_out, c_in, kh, kw]`.
    pub filters: [usize; 4],
}

impl ConvSite {
    /// Multiply-adds of one sample through this layer, factorised by `decomposition` at
    /// `rank` (`None`: as it is).
    pub fn macs(&self, decomposition: Decomposition, rank: Option<usize>) -> u64 {
        (decomposition.macs_per_position(self.filters, rank) * self.output[1] * self.output[2]) as u64
    }
}

/// Every full (not grouped, not depthwise) `Conv2d` of `model`, at any depth, in order.
pub fn conv_sites(model: &Sequential) -> Vec<ConvSite> {
    let mut sites = vec![];
    visit(model.chain(), "", &mut sites);
    sites
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() { name.to_string() } else { format!("{path}.{name}") }
}

fn visit(node: &dyn Layer, path: &str, sites: &mut Vec<ConvSite>) {
    let Some(chain) = (node as &dyn Any).downcast_ref::<Chain>() else {
        for (name, child) in node.children() {
            visit(child, &join(path, &name), sites);
        }
        return;
    };
    for (i, layer) in chain.layers().iter().enumerate() {
        let here = join(path, &i.to_string());
        match (layer.as_ref() as &dyn Any).downcast_ref::<Conv2d>() {
            Some(conv) if conv.is_full() => {
                let w = conv.weight().expect("built").shape();
                sites.push(ConvSite { path: here, input: chain.input_of(i).to_vec(), output: chain.shapes()[i].clone(), filters: [w[0], w[1], w[2], w[3]] });
            }
            Some(_) => {}
            None => visit(layer.as_ref(), &here, sites),
        }
    }
}

/// One layer to factorise: where, how, and at which rank.
#[derive(Clone, Debug, PartialEq)]
pub struct Choice {
    /// The layer's path (see [`conv_sites`]).
    pub path: String,
    /// The reshaping factorised.
    pub decomposition: Decomposition,
    /// How its rank is chosen.
    pub policy: RankPolicy,
}

impl Choice {
    /// The channel decomposition of layer `path` under `policy`.
    pub fn channel(path: impl Into<String>, policy: RankPolicy) -> Choice {
        Choice { path: path.into(), decomposition: Decomposition::Channel, policy }
    }

    /// The spatial decomposition of layer `path` under `policy`.
    pub fn spatial(path: impl Into<String>, policy: RankPolicy) -> Choice {
        Choice { path: path.into(), decomposition: Decomposition::Spatial, policy }
    }
}

/// What [`factorise`] did with one layer.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// The layer was replaced.
    Factorised {
        /// The layer's path.
        path: String,
        /// The reshaping factorised.
        decomposition: Decomposition,
        /// The chosen rank.
        rank: usize,
        /// The full rank of the reshaped filters.
        full_rank: usize,
        /// Multiply-adds relative to the full layer.
        flop_ratio: f64,
        /// `||W − W_k||_F / ||W||_F`.
        rel_error: f64,
    },
    /// The layer was left as it is.
    Skipped {
        /// The layer's path.
        path: String,
        /// Why.
        reason: String,
    },
}

/// The factorised layer that replaces `conv` (built for `input`).
fn factorised_layer(conv: &Conv2d, factors: Factors, input: &[usize]) -> Result<Box<dyn Layer>> {
    Ok(match factors {
        Factors::Channel(f) => Box::new(LowRankConv2d::from_factors(conv, f)),
        Factors::Spatial(f) => {
            let (vertical, horizontal) = conv.window().split_spatial(input[1], input[2])?;
            let bias = conv.bias().map(|b| b.clone().into_dimensionality::<Ix1>().expect("bias is 1-D"));
            Box::new(Chain::new().add(Conv2d::from_weights(f.vertical, None, vertical)).add(Conv2d::from_weights(f.horizontal, bias, horizontal)))
        }
    })
}

/// The factorised layer for `choice`, built for its place in `model` (ready to run, not yet
/// in the model), with what was decided; `Ok(None)` with a [`Decision::Skipped`] when the
/// rank would not reduce the multiply-adds.
///
/// # Errors
/// A path that is not a full `Conv2d` of the model, a bad policy, or the SVD failing.
pub fn factorised_layer_for(model: &Sequential, choice: &Choice) -> Result<(Option<Box<dyn Layer>>, Decision)> {
    let site = conv_sites(model).into_iter().find(|s| s.path == choice.path).ok_or_else(|| NnError::Config(format!("layer {} is not a full Conv2d of the model", choice.path)))?;
    let conv = model.layer_at(&site.path).and_then(|l| (l as &dyn Any).downcast_ref::<Conv2d>()).expect("a site is a Conv2d");
    let weight = conv.weight().expect("built").view().into_dimensionality::<Ix4>().expect("4-D filters");
    let d = choice.decomposition;
    let svd = svd_filters_as(weight, d)?;
    let rank = svd.rank_for(choice.policy)?;
    let useful = d.max_useful_rank(site.filters);
    if rank > useful {
        let reason = format!("{d} rank {rank} would not save work: ranks above {useful} cost more than the full layer (filters {:?})", site.filters);
        return Ok((None, Decision::Skipped { path: site.path, reason }));
    }
    let norm = svd.s.iter().map(|v| v * v).sum::<f64>().sqrt();
    let flop_ratio = d.macs_per_position(site.filters, Some(rank)) as f64 / d.macs_per_position(site.filters, None) as f64;
    let mut layer = factorised_layer(conv, svd.truncate(rank), &site.input)?;
    let mut rng = <crate::ModelRng as rand::SeedableRng>::seed_from_u64(0);
    layer.build(&site.input, &mut crate::Init { rng: &mut rng }).map_err(|e| NnError::Config(format!("layer {}: {e}", site.path)))?;
    let decision = Decision::Factorised {
        path: site.path,
        decomposition: d,
        rank,
        full_rank: svd.full_rank(),
        flop_ratio,
        rel_error: svd.truncation_error(rank) / norm.max(f64::MIN_POSITIVE),
    };
    Ok((Some(layer), decision))
}

/// Replaces each planned `Conv2d` by its truncated-SVD factorisation. A layer where the chosen
/// rank would not reduce the multiply-adds is left untouched and reported as
/// [`Decision::Skipped`].
///
/// # Errors
/// A path that is not a full `Conv2d` of the model, a bad policy, or the SVD failing.
pub fn factorise(model: &mut Sequential, plan: &[Choice]) -> Result<Vec<Decision>> {
    let mut decisions = vec![];
    for choice in plan {
        let (layer, decision) = factorised_layer_for(model, choice)?;
        if let Some(layer) = layer {
            model.replace_at(&choice.path, layer)?;
        }
        decisions.push(decision);
    }
    Ok(decisions)
}

/// One way to factorise one layer, with what it was measured to save and what it discards.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// The factorisation.
    pub choice: Choice,
    /// Time the layer saves, factorised this way (ms, measured; at most the layer's time).
    pub saved_ms: f64,
    /// Fraction of the reshaped filters' energy discarded, `||W − W_k||² / ||W||²`.
    pub energy_lost: f64,
}

/// Chooses at most one candidate per layer so that the times saved add up to at least
/// `needed_ms`, greedily: each step takes the move (a layer's first factorisation, or a
/// cheaper one for a layer already chosen) with the most time saved per unit of energy lost,
/// until the budget is met. Returns the indices of the chosen candidates.
///
/// # Errors
/// A budget or a candidate's time or energy that is not a finite number of at least 0, or a
/// budget that cannot be met even by taking every layer's fastest candidate (naming the time
/// that could be saved).
pub fn choose_under_budget(candidates: &[Candidate], needed_ms: f64) -> std::result::Result<Vec<usize>, String> {
    let fine = |v: f64| v.is_finite() && v >= 0.0;
    if !fine(needed_ms) {
        return Err(format!("the time to save must be a finite number of ms >= 0, got {needed_ms}"));
    }
    if let Some(c) = candidates.iter().find(|c| !(fine(c.saved_ms) && fine(c.energy_lost))) {
        return Err(format!("candidate {} {} {:?}: saved {} ms, energy lost {}: both must be finite numbers >= 0", c.choice.path, c.choice.decomposition, c.choice.policy, c.saved_ms, c.energy_lost));
    }
    let mut chosen: std::collections::BTreeMap<&str, usize> = Default::default();
    let saved = |chosen: &std::collections::BTreeMap<&str, usize>| chosen.values().map(|&i| candidates[i].saved_ms).sum::<f64>();
    while saved(&chosen) < needed_ms {
        let mut best: Option<(f64, usize)> = None;
        for (i, c) in candidates.iter().enumerate() {
            let current = chosen.get(c.choice.path.as_str()).map(|&j| &candidates[j]);
            let gain = c.saved_ms - current.map_or(0.0, |j| j.saved_ms);
            if gain <= 0.0 {
                continue;
            }
            let loss = (c.energy_lost - current.map_or(0.0, |j| j.energy_lost)).max(1e-12);
            let value = gain / loss;
            if best.is_none_or(|(v, _)| value > v) {
                best = Some((value, i));
            }
        }
        let Some((_, i)) = best else {
            return Err(format!("saving {needed_ms:.2} ms is out of reach: every layer's fastest factorisation saves {:.2} ms", saved(&chosen)));
        };
        chosen.insert(candidates[i].choice.path.as_str(), i);
    }
    Ok(chosen.into_values().collect())
}

/// The factorisations of `decisions` as a plan string, `path:rank` for the channel
/// decomposition and `path:spatial:rank` for the spatial one, comma-separated (what
/// checkpoints record under [`crate::checkpoint::FACTORISED`]).
pub fn plan_string(decisions: &[Decision]) -> String {
    let ranks = decisions.iter().filter_map(|d| match d {
        Decision::Factorised { path, decomposition: Decomposition::Channel, rank, .. } => Some(format!("{path}:{rank}")),
        Decision::Factorised { path, decomposition, rank, .. } => Some(format!("{path}:{decomposition}:{rank}")),
        Decision::Skipped { .. } => None,
    });
    ranks.collect::<Vec<_>>().join(",")
}

/// Parses a plan written by [`plan_string`] into fixed ranks for [`factorise`].
///
/// # Errors
/// An entry that is not `path:rank` or `path:decomposition:rank`.
pub fn parse_plan(plan: &str) -> std::result::Result<Vec<Choice>, String> {
    plan.split(',')
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let parts: Vec<&str> = entry.split(':').collect();
            let (path, decomposition, rank) = match parts[..] {
                [path, rank] => (path, Decomposition::Channel, rank),
                [path, d, rank] => (path, d.parse::<Decomposition>().map_err(|e| format!("`{entry}`: {e}"))?, rank),
                _ => return Err(format!("`{entry}` is not path:rank or path:decomposition:rank")),
            };
            let rank = rank.trim().parse::<usize>().map_err(|e| format!("`{entry}`: {e}"))?;
            Ok(Choice { path: path.trim().to_string(), decomposition, policy: RankPolicy::Fixed(rank) })
        })
        .collect()
}
