//! Our own kernels for burn's CPU backend (flex): attention from the packed qkv, GELU,
//! LayerNorm and the linear layer, each with its backward, wired in as a burn backend
//! extension (`fused`). Imports nothing else of the crate: the ViT calls down into it.

pub mod attention;
pub mod fastmath;
pub mod fused;
pub mod gemm;
pub mod linear;
pub mod pointwise;
