//! Convolution: every algorithm side by side (the lowering, the implicit product, low rank),
//! the naive loops, the parts of the lowered path, pooling, threads.
//!
//! One criterion group per layer shape and pass, its functions the algorithms
//! (`conv2d_forward/ref_conv2_n64/lowered` against `.../implicit` and `.../lowrank_2x_r26`), so
//! that each page of the HTML report is one comparison; the naive loops, a hundred times
//! slower, have their own group (`conv2d_naive/ref_conv2_n64/forward`). Throughput is in FLOPs
//! (elements = floating-point operations), so criterion's report shows GFLOP/s directly: the
//! FLOPs of the direct convolution for every function of a page, low rank included (GFLOP/s
//! *equivalent*: the speed at which it does the layer's work; with FLOP counts that differ
//! within a group, criterion would add a chart of time against FLOPs that means nothing).

use cnn_benches::{big_layer, random, reference_layers, resnet20_downsampling, resnet20_layers, ConvCase};
use cnn_core::{col2im, conv2d, conv2d_backward_with, conv2d_with, im2col, max_pool2d, max_pool2d_backward, reference, threads, Algorithm, Window};
use cnn_core::lowrank::{lowrank_conv2d, lowrank_conv2d_backward, svd_filters, LowRankFilters, RankPolicy};
use cnn_core::{avg_pool2d, avg_pool2d_backward};
#[global_allocator]
static GLOBAL: cnn_benches::MiMalloc = cnn_benches::MiMalloc;

use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use criterion::measurement::WallTime;
use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, Array4, Axis};
use rayon::prelude::*;
use std::hint::black_box;

struct Inputs {
    x: Array4<f32>,
    w: Array4<f32>,
    b: ndarray::Array1<f32>,
    dy: Array4<f32>,
}

fn inputs(case: &ConvCase) -> Inputs {
    let o = case.out_side();
    Inputs {
        x: random((case.n, case.c_in, case.side, case.side), 1),
        w: random((case.c_out, case.c_in, case.k, case.k), 2),
        b: random(case.c_out, 3),
        dy: random((case.n, case.c_out, o, o), 4),
    }
}

fn cases() -> Vec<ConvCase> {
    let mut cases = reference_layers(1).to_vec();
    cases.extend(reference_layers(64));
    cases.extend(reference_layers(256));
    cases.extend(resnet20_layers(128));
    cases.extend(resnet20_downsampling());
    cases.push(big_layer());
    cases
}

/// Naive loops are slow: skip the cases where one iteration takes seconds.
fn naive_is_affordable(case: &ConvCase) -> bool {
    case.flops() < 400_000_000
}

/// The algorithms compared on every case (one group): the lowered and implicit products and
/// the direct convolution everywhere, Winograd on the 3x3 stride-1 ones; the one `conv2d` would take is among them.
fn algorithms(case: &ConvCase) -> Vec<Algorithm> {
    let shape = ([case.n, case.c_in, case.side, case.side], [case.c_out, case.c_in, case.k, case.k]);
    let applies = |a: &Algorithm| conv2d_with(*a, random((1, case.c_in, case.side, case.side), 0).view(), random(shape.1, 0).view(), None, &case.window(), 1).is_ok();
    let all: Vec<Algorithm> = [Algorithm::Lowered, Algorithm::Implicit, Algorithm::Winograd, Algorithm::Winograd4, Algorithm::Direct].into_iter().filter(applies).collect();
    let chosen = Algorithm::choose(&shape.0, &shape.1, &case.window(), 1);
    assert!(all.contains(&chosen.expect("benchmark shapes are valid")));
    all
}

fn conv_forward(c: &mut Criterion) {
    for case in cases() {
        let inp = inputs(&case);
        let win = case.window();
        let mut group = c.benchmark_group(format!("conv2d_forward/{}", case.name));
        group.sample_size(10);
        group.throughput(Throughput::Elements(case.flops()));
        for algorithm in algorithms(&case) {
            group.bench_function(algorithm.name(), |bench| {
                bench.iter(|| conv2d_with(algorithm, inp.x.view(), inp.w.view(), Some(inp.b.view()), &win, 1).unwrap())
            });
        }
        for (label, factors) in low_rank(&inp) {
            group.bench_function(label, |bench| {
                bench.iter(|| lowrank_conv2d(inp.x.view(), factors.mix.view(), factors.basis.view(), Some(inp.b.view()), &win).unwrap())
            });
        }
        group.finish();
    }
}

/// The naive loops of every affordable case, forward and forward + backward.
fn conv_naive(c: &mut Criterion) {
    for case in cases().into_iter().filter(naive_is_affordable) {
        let inp = inputs(&case);
        let win = case.window();
        let mut group = c.benchmark_group(format!("conv2d_naive/{}", case.name));
        group.sample_size(10);
        group.throughput(Throughput::Elements(case.flops()));
        group.bench_function("forward", |bench| bench.iter(|| reference::conv2d(inp.x.view(), inp.w.view(), Some(inp.b.view()), &win).unwrap()));
        group.throughput(Throughput::Elements(3 * case.flops()));
        group.bench_function("fwd_bwd", |bench| {
            bench.iter(|| {
                let y = reference::conv2d(inp.x.view(), inp.w.view(), Some(inp.b.view()), &win).unwrap();
                black_box(y);
                reference::conv2d_backward(inp.x.view(), inp.w.view(), inp.dy.view(), &win).unwrap()
            })
        });
        group.finish();
    }
}

/// The filters factorised at the ranks that cut the FLOPs about 2x and 4x, with their labels
/// (`lowrank_2x_r26`).
fn low_rank(inp: &Inputs) -> Vec<(String, LowRankFilters)> {
    let svd = svd_filters(inp.w.view()).unwrap();
    [2.0, 4.0]
        .into_iter()
        .map(|factor| {
            let rank = svd.rank_for(RankPolicy::FlopReduction(factor)).expect("a valid factor");
            (format!("lowrank_{factor}x_r{rank}"), match svd.truncate(rank) { cnn_core::lowrank::Factors::Channel(f) => f, _ => unreachable!("a channel SVD") })
        })
        .collect()
}

fn conv_forward_backward(c: &mut Criterion) {
    for case in cases() {
        let inp = inputs(&case);
        let win = case.window();
        let mut group = c.benchmark_group(format!("conv2d_fwd_bwd/{}", case.name));
        group.sample_size(10);
        // forward + backward = 3 GEMMs of the forward's size
        group.throughput(Throughput::Elements(3 * case.flops()));
        for algorithm in algorithms(&case) {
            group.bench_function(algorithm.name(), |bench| {
                bench.iter(|| {
                    let y = conv2d_with(algorithm, inp.x.view(), inp.w.view(), Some(inp.b.view()), &win, 1).unwrap();
                    black_box(y);
                    conv2d_backward_with(algorithm, inp.x.view(), inp.w.view(), inp.dy.view(), &win, 1).unwrap()
                })
            });
        }
        for (label, f) in low_rank(&inp) {
            group.bench_function(label, |bench| {
                bench.iter(|| {
                    let y = lowrank_conv2d(inp.x.view(), f.mix.view(), f.basis.view(), Some(inp.b.view()), &win).unwrap();
                    black_box(y);
                    lowrank_conv2d_backward(inp.x.view(), f.mix.view(), f.basis.view(), inp.dy.view(), &win).unwrap()
                })
            });
        }
        group.finish();
    }
}

/// Where the time of the im2col path goes: the lowering, its adjoint, and the bare GEMMs.
fn parts(c: &mut Criterion) {
    let mut group = c.benchmark_group("parts");
    group.sample_size(20);
    for case in reference_layers(64).into_iter().chain([big_layer()]) {
        let inp = inputs(&case);
        let win = case.window();
        let cols = im2col(inp.x.view(), &win).unwrap();
        let (k, p) = (case.patch(), case.out_side().pow(2));
        let w_mat = inp.w.to_shape((case.c_out, k)).unwrap().to_owned();
        let x_shape = [case.n, case.c_in, case.side, case.side];

        group.throughput(Throughput::Elements((case.n * k * p) as u64));
        group.bench_function(format!("im2col/{}", case.name), |bench| bench.iter(|| im2col(inp.x.view(), &win).unwrap()));
        group.bench_function(format!("col2im/{}", case.name), |bench| {
            bench.iter(|| col2im(cols.view(), x_shape, &win).unwrap())
        });

        // The GEMMs alone, on an already lowered batch: per sample, in parallel, one BLAS thread each
        // (what conv2d does) ...
        group.throughput(Throughput::Elements(case.flops()));
        let mut y = Array2::<f32>::zeros((case.c_out, case.n * p));
        threads::init();
        group.bench_function(format!("gemm_per_sample/{}", case.name), |bench| {
            bench.iter(|| {
                y.axis_chunks_iter_mut(Axis(1), p)
                    .into_par_iter()
                    .zip(cols.axis_chunks_iter(Axis(1), p))
                    .for_each(|(mut y_i, cols_i)| general_mat_mul(1.0, &w_mat, &cols_i, 0.0, &mut y_i));
            })
        });
        // ... against one big GEMM over the whole batch with OpenBLAS's own threads.
        group.bench_function(format!("gemm_whole_batch_blas_mt/{}", case.name), |bench| {
            threads::set_blas_threads(rayon::current_num_threads());
            bench.iter(|| general_mat_mul(1.0, &w_mat, &cols, 0.0, &mut y));
            threads::set_blas_threads(1);
        });
        // The alternative design end to end: lower the whole batch, then one multi-threaded GEMM.
        group.bench_function(format!("conv_whole_batch_blas_mt/{}", case.name), |bench| {
            threads::set_blas_threads(rayon::current_num_threads());
            bench.iter(|| {
                let cols = im2col(inp.x.view(), &win).unwrap();
                general_mat_mul(1.0, &w_mat, &cols, 0.0, &mut y);
            });
            threads::set_blas_threads(1);
        });
    }
    group.finish();
}

fn pool_case(group: &mut BenchmarkGroup<WallTime>, name: &str, shape: (usize, usize, usize, usize), win: Window) {
    let x = random(shape, 5);
    let (n, c, h, w) = shape;
    let pooled = max_pool2d(x.view(), &win).unwrap();
    let dy = random(pooled.y.raw_dim(), 6);
    group.throughput(Throughput::Elements(x.len() as u64));
    group.bench_function(format!("max_forward/{name}"), |bench| bench.iter(|| max_pool2d(x.view(), &win).unwrap()));
    group.bench_function(format!("max_backward/{name}"), |bench| {
        bench.iter(|| max_pool2d_backward(dy.view(), pooled.argmax.view(), [n, c, h, w], &win).unwrap())
    });
    group.bench_function(format!("avg_forward/{name}"), |bench| bench.iter(|| avg_pool2d(x.view(), &win).unwrap()));
    group.bench_function(format!("avg_backward/{name}"), |bench| {
        bench.iter(|| avg_pool2d_backward(dy.view(), [n, c, h, w], &win).unwrap())
    });
}

fn pooling(c: &mut Criterion) {
    let mut group = c.benchmark_group("pool2d");
    group.sample_size(20);
    // the reference network's first pool: (64, 32, 26, 26) → (64, 32, 13, 13)
    pool_case(&mut group, "ref_pool1_2x2s2_n64", (64, 32, 26, 26), Window::square(2).stride(2));
    pool_case(&mut group, "overlap_3x3s2_n64", (64, 32, 26, 26), Window::square(3).stride(2));
    group.finish();
}

/// The 2-core speedup: the same conv with rayon on one thread against the default pool.
fn thread_scaling(c: &mut Criterion) {
    let mut group = c.benchmark_group("threads");
    group.sample_size(10);
    let case = reference_layers(64)[1];
    let inp = inputs(&case);
    let win = case.window();
    group.throughput(Throughput::Elements(case.flops()));
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    group.bench_function(format!("rayon_1/{}", case.name), |bench| {
        bench.iter(|| one.install(|| conv2d(inp.x.view(), inp.w.view(), Some(inp.b.view()), &win).unwrap()))
    });
    group.bench_function(format!("rayon_default/{}", case.name), |bench| {
        bench.iter(|| conv2d(inp.x.view(), inp.w.view(), Some(inp.b.view()), &win).unwrap())
    });
    group.finish();
}

criterion_group!(benches, conv_forward, conv_forward_backward, conv_naive, parts, pooling, thread_scaling);
criterion_main!(benches);
