//! Several processes per run under `mpirun`/`srun`: the world (rank, size, collectives with
//! deadlines) and DistributedDataParallel's gradient averaging. Imports nothing of the crate
//! above it; `data`, `loss` and `train` call into it.

pub mod ddp;
pub mod world;

pub use world::{
    World, all_reduce_max, all_reduce_mean, all_reduce_sum, ensure_agree, finalize, init, mean_f64,
    set_resume_hint, set_step, set_timeout, world,
};
