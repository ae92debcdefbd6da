//! `cargo xtask bench`: run criterion, then summarise its results in one table.

use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// One benchmark result, read back from criterion's output directory.
struct Measurement {
    /// `group/implementation/case`, e.g. `conv2d_forward/im2col/ref_conv2_n64`.
    id: String,
    /// Median time of one iteration, nanoseconds.
    median_ns: f64,
    /// Elements (FLOPs for convolutions) per iteration, if set.
    elements: Option<f64>,
}

impl Measurement {
    /// Elements per second in billions (GFLOP/s for convolutions).
    fn giga_per_s(&self) -> Option<f64> {
        self.elements.map(|e| e / self.median_ns)
    }
}

pub fn run(args: &[&str]) -> Result<(), String> {
    let quick = args.contains(&"--quick");
    if let Some(other) = args.iter().find(|a| **a != "--quick") {
        return Err(format!("unknown option `{other}` for bench (only --quick)"));
    }
    let started = SystemTime::now();
    let mut cargo_args = vec!["bench", "-p", "cnn-benches", "--"];
    if quick {
        cargo_args.push("--quick");
    }
    crate::cargo(&cargo_args)?;

    let root = target_dir().join("criterion");
    let results = collect(&root, started)?;
    let summary = summarise(&results, quick);
    println!("\n{summary}");
    let path = root.join("summary.md");
    write_atomic(&path, &summary)?;
    println!("summary: {}\nHTML report: {}", path.display(), root.join("report/index.html").display());
    Ok(())
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").join("target")
    })
}

/// Every `new/` result under `root` written since `since` (older ones are from other runs).
fn collect(root: &Path, since: SystemTime) -> Result<Vec<Measurement>, String> {
    let mut found = vec![];
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.ends_with("new/estimates.json") {
                let fresh = entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| t >= since);
                if fresh {
                    found.push(read_measurement(path.parent().expect("new/ has a parent"))?);
                }
            }
        }
    }
    found.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(found)
}

fn read_json(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("parsing {}: {e}", path.display()))
}

fn read_measurement(new_dir: &Path) -> Result<Measurement, String> {
    let bench = read_json(&new_dir.join("benchmark.json"))?;
    let estimates = read_json(&new_dir.join("estimates.json"))?;
    let id = bench["full_id"].as_str().ok_or_else(|| format!("no full_id in {}", new_dir.display()))?;
    let median_ns = estimates["median"]["point_estimate"]
        .as_f64()
        .ok_or_else(|| format!("no median in {}", new_dir.display()))?;
    let elements = bench["throughput"]["Elements"].as_f64();
    Ok(Measurement { id: id.to_string(), median_ns, elements })
}

fn time(ns: f64) -> String {
    match ns {
        ns if ns >= 1e9 => format!("{:.2} s", ns / 1e9),
        ns if ns >= 1e6 => format!("{:.2} ms", ns / 1e6),
        ns if ns >= 1e3 => format!("{:.1} µs", ns / 1e3),
        ns => format!("{ns:.0} ns"),
    }
}

/// A rate per second with an SI prefix: `102.5 G`, `2.68 k`.
fn rate(per_second: f64) -> String {
    match per_second {
        r if r >= 1e9 => format!("{:.1} G", r / 1e9),
        r if r >= 1e6 => format!("{:.1} M", r / 1e6),
        r if r >= 1e3 => format!("{:.2} k", r / 1e3),
        r => format!("{r:.0}"),
    }
}

fn opt(value: Option<f64>, fmt: impl Fn(f64) -> String) -> String {
    value.map(fmt).unwrap_or_else(|| "–".into())
}

/// The Markdown summary: one comparison row per convolution case, then every measurement.
fn summarise(results: &[Measurement], quick: bool) -> String {
    let by_id: BTreeMap<&str, &Measurement> = results.iter().map(|m| (m.id.as_str(), m)).collect();
    let get = |id: String| by_id.get(id.as_str()).copied();
    let mut out = String::new();
    let mode = if quick { "criterion --quick" } else { "criterion" };
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into());
    let _ = writeln!(out, "# Benchmark summary ({mode}; medians; RAYON_NUM_THREADS={threads})\n");

    let _ = writeln!(out, "## Convolution: every algorithm side by side (vs the naive loops, vs low rank)\n");
    let _ = writeln!(out, "GFLOP/s count the direct convolution's multiply-adds (forward + backward: three times the forward's).\n");
    // the algorithms measured (every function of a case's page but low rank), whatever their names
    let mut algorithms: Vec<&str> = results
        .iter()
        .filter_map(|m| m.id.strip_prefix("conv2d_forward/").or_else(|| m.id.strip_prefix("conv2d_fwd_bwd/")))
        .filter_map(|rest| rest.split('/').nth(1))
        .filter(|name| !name.starts_with("lowrank_"))
        .collect();
    algorithms.sort_unstable();
    algorithms.dedup();
    let _ = writeln!(out, "| pass | case | naive | {} | best GFLOP/s | best vs naive | low rank (rank: time, vs best) |", algorithms.join(" | "));
    let _ = writeln!(out, "|---|---|---:|{}---:|---:|---|", "---:|".repeat(algorithms.len()));
    for (pass, group, naive_fn) in [("forward", "conv2d_forward", "forward"), ("fwd+bwd", "conv2d_fwd_bwd", "fwd_bwd")] {
        let prefix = format!("{group}/");
        let mut cases: Vec<&str> = results.iter().filter_map(|m| m.id.strip_prefix(&prefix)).filter_map(|rest| rest.split('/').next()).collect();
        cases.dedup();
        for case in cases {
            let measured: Vec<Option<&Measurement>> = algorithms.iter().map(|name| get(format!("{group}/{case}/{name}"))).collect();
            let Some(best) = measured.iter().flatten().min_by(|a, b| a.median_ns.total_cmp(&b.median_ns)) else { continue };
            let naive = get(format!("conv2d_naive/{case}/{naive_fn}"));
            let lowrank: Vec<String> = results
                .iter()
                .filter_map(|l| l.id.strip_prefix(&format!("{group}/{case}/lowrank_")).map(|rank| (rank, l)))
                .map(|(rank, l)| format!("{rank}: {} ({:.2}x)", time(l.median_ns), best.median_ns / l.median_ns))
                .collect();
            let _ = writeln!(
                out,
                "| {pass} | {case} | {} | {} | {} | {} | {} |",
                opt(naive.map(|n| n.median_ns), time),
                measured.iter().map(|m| opt(m.map(|m| m.median_ns), time)).collect::<Vec<_>>().join(" | "),
                opt(best.giga_per_s(), |g| format!("{g:.1}")),
                opt(naive.map(|n| n.median_ns / best.median_ns), |s| format!("{s:.0}x")),
                if lowrank.is_empty() { "–".into() } else { lowrank.join(", ") },
            );
        }
    }

    let _ = writeln!(out, "\n## Against the machine: bare matrix products on the convolutions' shapes, one thread\n");
    let _ = writeln!(out, "| product (c_out x positions x K) | OpenBLAS GFLOP/s | own engine GFLOP/s |");
    let _ = writeln!(out, "|---|---:|---:|");
    let mut shapes: Vec<&str> = results.iter().filter_map(|m| m.id.strip_prefix("gemm/")).filter_map(|rest| rest.split('/').next()).collect();
    shapes.dedup();
    for shape in shapes {
        let rate = |engine: &str| opt(get(format!("gemm/{shape}/{engine}")).and_then(Measurement::giga_per_s), |g| format!("{g:.1}"));
        let _ = writeln!(out, "| {shape} | {} | {} |", rate("openblas"), rate("own"));
    }

    let _ = writeln!(out, "\n## All measurements\n");
    let _ = writeln!(out, "| benchmark | median | throughput per second (FLOPs for convolutions — the direct convolution's, low rank included —, elements for im2col/col2im/pooling, images for train_step) |");
    let _ = writeln!(out, "|---|---:|---:|");
    for m in results {
        let _ = writeln!(out, "| {} | {} | {} |", m.id, time(m.median_ns), opt(m.giga_per_s(), |g| rate(g * 1e9)));
    }
    out
}

/// Writes `text` to a temporary file beside `path`, then renames it over `path`.
fn write_atomic(path: &Path, text: &str) -> Result<(), String> {
    let tmp = path.with_extension("md.tmp");
    std::fs::write(&tmp, text).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("renaming {} to {}: {e}", tmp.display(), path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str, median_ns: f64, elements: Option<f64>) -> Measurement {
        Measurement { id: id.into(), median_ns, elements }
    }

    #[test]
    fn each_case_is_one_row_of_its_algorithms_and_the_faster_one_counts() {
        let results = vec![
            m("conv2d_forward/ref_conv2_n64/implicit", 1.0e6, Some(2.0e8)),
            m("conv2d_forward/ref_conv2_n64/lowered", 1.5e6, Some(2.0e8)),
            m("conv2d_forward/ref_conv2_n64/winograd", 1.2e6, Some(2.0e8)),
            m("conv2d_forward/ref_conv1_n64/lowered", 0.5e6, Some(1.0e7)),
            m("conv2d_forward/ref_conv2_n64/lowrank_2x_r26", 0.5e6, Some(1.0e8)),
            m("conv2d_naive/ref_conv2_n64/forward", 300.0e6, Some(2.0e8)),
            m("gemm/square_1024/openblas", 1.0e7, Some(2.0e9)),
            m("gemm/square_1024/own", 2.0e7, Some(2.0e9)),
        ];
        let summary = summarise(&results, false);
        assert!(summary.contains("| pass | case | naive | implicit | lowered | winograd | best GFLOP/s |"), "{summary}");
        assert!(summary.contains("| forward | ref_conv2_n64 | 300.00 ms | 1.00 ms | 1.50 ms | 1.20 ms | 200.0 | 300x | 2x_r26: 500.0 µs (2.00x) |"), "{summary}");
        // a case without some algorithm shows a dash there
        assert!(summary.contains("| forward | ref_conv1_n64 | – | – | 500.0 µs | – | 20.0 |"), "{summary}");
        assert!(summary.contains("| square_1024 | 200.0 | 100.0 |"), "{summary}");
    }
}
