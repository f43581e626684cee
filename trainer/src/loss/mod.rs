//! What a step optimises, one file per term: DINO's cross-entropy with its centre (`dino`),
//! iBOT's masked-patch term (`ibot`), KoLeo (`koleo`), Sinkhorn-Knopp targets (`sinkhorn`),
//! DINOv3's Gram anchoring (`gram`), and their composition into one forward pass of student
//! and teacher (`objective`). Adding an objective means a file here and a branch in
//! `objective`. May import `data` (masks), `optim` (DINOv2's rules) and `distributed` (centres).

pub mod dino;
pub mod gram;
pub mod ibot;
pub mod koleo;
pub mod objective;
pub mod sinkhorn;
