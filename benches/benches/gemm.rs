//! Bare matrix products on the shapes the convolutions run, one thread, each engine side by
//! side: OpenBLAS (through ndarray) and cnn-core's own packed product.

use cnn_benches::random;
use cnn_core::gemm::gemm;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ndarray::linalg::general_mat_mul;
use ndarray::Array2;

#[global_allocator]
static GLOBAL: cnn_benches::MiMalloc = cnn_benches::MiMalloc;

fn products(c: &mut Criterion) {
    cnn_core::threads::init();
    for &(name, m, n, k) in cnn_benches::GEMM_SHAPES {
        let mut group = c.benchmark_group(format!("gemm/{name}"));
        group.throughput(Throughput::Elements((2 * m * n * k) as u64)); // FLOPs
        let a: Array2<f32> = random((m, k), 1);
        let b: Array2<f32> = random((k, n), 2);
        let mut out = Array2::<f32>::zeros((m, n));
        group.bench_function("openblas", |bench| bench.iter(|| general_mat_mul(1.0, &a, &b, 0.0, &mut out)));
        group.bench_function("own", |bench| bench.iter(|| gemm(1.0, &a.view(), &b.view(), 0.0, &mut out.view_mut()).unwrap()));
        group.finish();
    }
}

criterion_group!(benches, products);
criterion_main!(benches);
