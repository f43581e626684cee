//! What the parity tests share: comparing our outputs with the official ones.

use dino_model::RawTensor;

/// Largest f32 difference allowed between our outputs and the official code's.
pub const TOLERANCE: f32 = 1e-4;

/// The largest absolute difference between `ours` and the official `theirs`, printed and
/// required to stay under [`TOLERANCE`].
pub fn max_abs_diff(ours: Vec<f32>, theirs: &RawTensor, what: &str) -> f32 {
    assert_eq!(ours.len(), theirs.data.len(), "{what}: length");
    let err = ours
        .iter()
        .zip(&theirs.data)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    println!("{what}: max abs error {err:.3e} over {} values", ours.len());
    assert!(
        err < TOLERANCE,
        "{what}: max abs error {err} exceeds {TOLERANCE}"
    );
    err
}
