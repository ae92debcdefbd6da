//! The convolutions on cnn-core's own GEMM engine: the agreement suite's cases against the
//! naive loops, forward and backward, with `Engine::Own` chosen for the whole process.

#[path = "agreement.rs"]
mod agreement;

use cnn_core::gemm::{engine, set_engine, Engine};

#[test]
fn convolutions_on_the_own_engine_agree_with_the_naive_loops() {
    set_engine(Engine::Own);
    assert_eq!(engine(), Engine::Own);
    agreement::grid_of_shapes();
    agreement::reference_network_layers();
    agreement::dilated_kernels();
    agreement::pointwise_convolutions_skip_the_lowering();
    agreement::large_images_are_lowered_in_bands();
    agreement::non_contiguous_inputs();
    agreement::grouped_and_depthwise();
    agreement::conv1d_matches_naive_loops();
    agreement::stride_one_shapes_of_the_implicit_product();
}
