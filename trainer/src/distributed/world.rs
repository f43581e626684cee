//! The ranks of a multi-process run: one process per device, started by `mpirun` or `srun`,
//! talking through MPI (the `mpi` feature, rsmpi on Open MPI or MPICH). Every collective
//! here waits with a deadline, so a rank that dies or hangs stops the others with a message
//! naming it instead of a silent hang. Without a launcher in the environment nothing here
//! touches MPI, and every collective is the identity.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Result, bail};

/// Where this process sits in the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct World {
    /// This process's rank, 0 ≤ rank < size.
    pub rank: usize,
    /// Processes in the run.
    pub size: usize,
    /// Rank among the processes of this machine (which picks the GPU).
    pub local_rank: usize,
}

impl World {
    /// One process alone.
    pub const SINGLE: World = World {
        rank: 0,
        size: 1,
        local_rank: 0,
    };

    /// Whether this rank writes the run's files and draws its progress bar (rank 0).
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }
}

static WORLD: OnceLock<World> = OnceLock::new();
/// Seconds a collective may wait for the other ranks (`--dist-timeout`).
static TIMEOUT_SECS: AtomicU64 = AtomicU64::new(600);
/// The training step under way, for messages.
static STEP: AtomicU64 = AtomicU64::new(u64::MAX);
/// What the fault message tells the user to run next.
static RESUME_HINT: OnceLock<String> = OnceLock::new();

/// This process's place in the run: [`World::SINGLE`] until [`init`] found a launcher.
pub fn world() -> World {
    WORLD.get().copied().unwrap_or(World::SINGLE)
}

/// Sets how long a collective waits for the other ranks before the run stops.
pub fn set_timeout(secs: u64) {
    TIMEOUT_SECS.store(secs.max(1), Ordering::Relaxed);
}

/// Records the step under way, which fault messages name.
pub fn set_step(step: u64) {
    STEP.store(step, Ordering::Relaxed);
}

/// Sets the command a fault message suggests (`dino train --resume DIR` under the launcher).
pub fn set_resume_hint(hint: String) {
    let _ = RESUME_HINT.set(hint);
}

/// The number of processes a launcher started, read from its environment: Open MPI's
/// `mpirun`, MPICH/Intel MPI's Hydra (`PMI_SIZE`), PMIx launchers, or Slurm's `srun` (a step's
/// task count; a batch script alone is one process).
pub fn launched_size() -> Option<usize> {
    [
        "OMPI_COMM_WORLD_SIZE",
        "PMI_SIZE",
        "PMIX_SIZE",
        "SLURM_STEP_NUM_TASKS",
    ]
    .iter()
    .find_map(|k| std::env::var(k).ok()?.trim().parse().ok())
}

/// Joins the run's other ranks when a launcher started several processes; a process started
/// alone stays [`World::SINGLE`] and never initialises MPI.
pub fn init() -> Result<World> {
    if let Some(w) = WORLD.get() {
        return Ok(*w);
    }
    let n = launched_size().unwrap_or(1);
    if n <= 1 {
        let _ = WORLD.set(World::SINGLE);
        return Ok(World::SINGLE);
    }
    let w = mpi_backend::init(n)?;
    let _ = WORLD.set(w);
    Ok(w)
}

/// Ends MPI: normally after a run that succeeded, or by aborting every rank after one that
/// failed (so the others stop at once instead of waiting for this rank's next message).
pub fn finalize(failed: bool) {
    mpi_backend::finalize(failed);
}

/// Sums `buf` element-wise over all ranks, in place (`what` names it in fault messages).
pub fn all_reduce_sum(buf: &mut [f32], what: &str) {
    if world().size > 1 {
        mpi_backend::all_reduce_sum(buf, what);
    }
}

/// The element-wise maximum of `buf` over all ranks, in place.
pub fn all_reduce_max(buf: &mut [f32], what: &str) {
    if world().size > 1 {
        mpi_backend::all_reduce_max(buf, what);
    }
}

/// The element-wise mean of `buf` over all ranks, in place.
pub fn all_reduce_mean(buf: &mut [f32], what: &str) {
    let n = world().size;
    if n > 1 {
        mpi_backend::all_reduce_sum(buf, what);
        let inv = 1.0 / n as f32;
        buf.iter_mut().for_each(|v| *v *= inv);
    }
}

/// The mean of `values` over all ranks, in place, in f64 (metrics).
pub fn mean_f64(values: &mut [f64], what: &str) {
    let n = world().size;
    if n > 1 {
        mpi_backend::all_reduce_sum_f64(values, what);
        values.iter_mut().for_each(|v| *v /= n as f64);
    }
}

/// Sums the buffers over all ranks, each filled by `fill(k, buffer)` just before its own
/// reduction starts, so that filling buffer k+1 (a read-back from the device) overlaps the
/// transfer of buffer k. Returns the summed buffers.
pub fn all_reduce_sum_buckets(
    sizes: &[usize],
    mut fill: impl FnMut(usize, &mut [f32]),
    what: &str,
) -> Vec<Vec<f32>> {
    if world().size > 1 {
        return mpi_backend::all_reduce_sum_buckets(sizes, &mut fill, what);
    }
    sizes
        .iter()
        .enumerate()
        .map(|(k, &n)| {
            let mut b = vec![0.0; n];
            fill(k, &mut b);
            b
        })
        .collect()
}

/// Whether every rank holds the same `value` (a layout or weight digest).
pub fn agree(value: u64, what: &str) -> bool {
    if world().size <= 1 {
        return true;
    }
    // One reduction gives the maximum and (through the complement) the minimum.
    let mut buf = [value, !value];
    mpi_backend::all_reduce_max_u64(&mut buf, what);
    buf[0] == value && !buf[1] == value
}

/// Fails unless every rank holds the same `value`; `what` says what differs and why it matters.
pub fn ensure_agree(value: u64, what: &str) -> Result<()> {
    if !agree(value, what) {
        bail!(
            "rank {} of {}: {what} differs between the ranks",
            world().rank,
            world().size
        );
    }
    Ok(())
}

/// The message of a run that stopped because other ranks stopped answering.
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
fn fault_message(what: &str, silent: &[usize], waited: u64) -> String {
    let w = world();
    let who = match silent {
        [] => "the other ranks stopped the run".to_string(),
        [r] => format!("rank {r} stopped answering (it died or hangs)"),
        rs => format!(
            "ranks {} stopped answering (they died or hang)",
            rs.iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let hint = RESUME_HINT
        .get()
        .map(|h| format!("; continue from the last checkpoint with `{h}`"))
        .unwrap_or_default();
    let at = match STEP.load(Ordering::Relaxed) {
        u64::MAX => String::new(),
        s => format!(" of step {s}"),
    };
    format!(
        "rank {} of {}: {what}{at} got no answer within {waited} s: {who}. Stopping{hint}",
        w.rank, w.size
    )
}

#[cfg(feature = "mpi")]
mod mpi_backend {
    //! The MPI side, on the thread that called `init` (the training thread): rsmpi's
    //! communicators are not `Send`, so they live in a thread-local.

    use std::cell::RefCell;
    use std::time::{Duration, Instant};

    use anyhow::{Context, Result, bail};
    use mpi::collective::SystemOperation;
    use mpi::datatype::Equivalence;
    use mpi::environment::Universe;
    use mpi::point_to_point::{Destination, Source, Status};
    use mpi::request::{Request, Scope};
    use mpi::topology::{Communicator, SimpleCommunicator};
    use mpi::traits::*;

    use super::{TIMEOUT_SECS, World, fault_message, world};

    /// Fields drop in order: the communicators are freed before `MPI_Finalize`.
    struct Mpi {
        world: SimpleCommunicator,
        /// A separate communicator for the fault protocol, so its messages never match the
        /// training's.
        alive: SimpleCommunicator,
        /// Dropped last: `MPI_Finalize`.
        _universe: Universe,
    }

    thread_local! {
        static STATE: RefCell<Option<Mpi>> = const { RefCell::new(None) };
    }

    pub fn init(expected: usize) -> Result<World> {
        let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Funneled)
            .context("MPI was initialised twice")?;
        let comm = universe.world();
        let (rank, size) = (comm.rank() as usize, comm.size() as usize);
        if size != expected {
            bail!(
                "the launcher started {expected} processes but MPI sees {size}: this dino was built against another MPI than the mpirun that started it; rebuild with the MPI of this machine"
            );
        }
        let local_rank = comm.split_shared(rank as i32).rank() as usize;
        let alive = comm.duplicate();
        STATE.with(|s| {
            *s.borrow_mut() = Some(Mpi {
                _universe: universe,
                world: comm,
                alive,
            })
        });
        Ok(World {
            rank,
            size,
            local_rank,
        })
    }

    pub fn finalize(failed: bool) {
        STATE.with(|s| {
            let state = s.borrow_mut().take();
            if let Some(m) = state {
                if failed && m.world.size() > 1 {
                    m.world.abort(1);
                }
                drop(m);
            }
        });
    }

    fn with<R>(f: impl FnOnce(&Mpi) -> R) -> R {
        STATE.with(|s| {
            f(s.borrow()
                .as_ref()
                .expect("collectives run on the thread that initialised MPI"))
        })
    }

    /// Waits for `req`, polling so that a deadline and the other ranks' fault messages are
    /// noticed; on either, runs the fault protocol, which ends the process.
    fn wait<'a, D: ?Sized, S: Scope<'a>>(m: &Mpi, mut req: Request<'a, D, S>, what: &str) {
        let start = Instant::now();
        let timeout = Duration::from_secs(TIMEOUT_SECS.load(std::sync::atomic::Ordering::Relaxed));
        let mut polls = 0u64;
        loop {
            match req.test() {
                Ok(_) => return,
                Err(r) => req = r,
            }
            polls += 1;
            if polls.is_multiple_of(256) {
                if m.alive.any_process().immediate_probe().is_some() {
                    fault(m, what, start.elapsed().as_secs());
                }
                if start.elapsed() > timeout {
                    fault(m, what, timeout.as_secs());
                }
            }
            if polls > 2000 {
                std::thread::sleep(Duration::from_micros(100));
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// Tells every other rank that this one is alive and giving up, listens for theirs for
    /// a few seconds, names the silent ones and exits. The pending requests are left to the
    /// process's end: MPI cannot cancel a collective.
    fn fault(m: &Mpi, what: &str, waited: u64) -> ! {
        let w = world();
        let me = [w.rank as u64];
        mpi::request::scope(|scope| {
            let _sends: Vec<_> = (0..w.size)
                .filter(|&r| r != w.rank)
                .map(|r| {
                    m.alive
                        .process_at_rank(r as i32)
                        .immediate_send(scope, &me[..])
                })
                .collect();
            let mut heard = vec![false; w.size];
            heard[w.rank] = true;
            let grace = Instant::now() + Duration::from_secs(5);
            while Instant::now() < grace && heard.iter().any(|h| !h) {
                if m.alive.any_process().immediate_probe().is_some() {
                    let (_, status): (u64, Status) = m.alive.any_process().receive();
                    heard[status.source_rank() as usize] = true;
                } else {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            let silent: Vec<usize> = (0..w.size).filter(|&r| !heard[r]).collect();
            let msg = fault_message(what, &silent, waited);
            log::error!("{msg}");
            eprintln!("error: {msg}");
            std::process::exit(1);
        })
    }

    /// `op` over all ranks, element-wise and in place.
    fn all_reduce<T: Equivalence + Clone>(buf: &mut [T], op: SystemOperation, what: &str) {
        with(|m| {
            let send = buf.to_vec();
            mpi::request::scope(|scope| {
                let req = m
                    .world
                    .immediate_all_reduce_into(scope, &send[..], &mut *buf, op);
                wait(m, req, what);
            });
        });
    }

    pub fn all_reduce_sum(buf: &mut [f32], what: &str) {
        all_reduce(buf, SystemOperation::sum(), what);
    }

    pub fn all_reduce_sum_f64(buf: &mut [f64], what: &str) {
        all_reduce(buf, SystemOperation::sum(), what);
    }

    pub fn all_reduce_max_u64(buf: &mut [u64], what: &str) {
        all_reduce(buf, SystemOperation::max(), what);
    }

    pub fn all_reduce_max(buf: &mut [f32], what: &str) {
        all_reduce(buf, SystemOperation::max(), what);
    }

    pub fn all_reduce_sum_buckets(
        sizes: &[usize],
        fill: &mut dyn FnMut(usize, &mut [f32]),
        what: &str,
    ) -> Vec<Vec<f32>> {
        let mut sends: Vec<Vec<f32>> = sizes.iter().map(|&n| vec![0.0; n]).collect();
        let mut recvs: Vec<Vec<f32>> = sizes.iter().map(|&n| vec![0.0; n]).collect();
        with(|m| {
            mpi::request::scope(|scope| {
                let mut pending = Vec::with_capacity(sizes.len());
                for (k, (send, recv)) in sends.iter_mut().zip(recvs.iter_mut()).enumerate() {
                    fill(k, send);
                    let send: &Vec<f32> = send;
                    pending.push(m.world.immediate_all_reduce_into(
                        scope,
                        &send[..],
                        &mut recv[..],
                        SystemOperation::sum(),
                    ));
                }
                for req in pending {
                    wait(m, req, what);
                }
            });
        });
        recvs
    }
}

#[cfg(not(feature = "mpi"))]
mod mpi_backend {
    //! A build without MPI: a multi-process launch is refused, so no collective is reached.

    use anyhow::{Result, bail};

    use super::World;

    pub fn init(n: usize) -> Result<World> {
        bail!(
            "dino was started as one of {n} processes (mpirun/srun), but this build has no MPI support: \
             install Open MPI or MPICH with its headers and libclang (Debian: `apt install libopenmpi-dev openmpi-bin libclang-dev`), \
             then build with `cargo build --release -p dino-trainer --features mpi`; or run a single process"
        )
    }

    pub fn finalize(_failed: bool) {}

    pub fn all_reduce_sum(_buf: &mut [f32], _what: &str) {
        unreachable!("a build without MPI never has more than one rank")
    }

    pub fn all_reduce_sum_f64(_buf: &mut [f64], _what: &str) {
        unreachable!("a build without MPI never has more than one rank")
    }

    pub fn all_reduce_max_u64(_buf: &mut [u64], _what: &str) {
        unreachable!("a build without MPI never has more than one rank")
    }

    pub fn all_reduce_max(_buf: &mut [f32], _what: &str) {
        unreachable!("a build without MPI never has more than one rank")
    }

    pub fn all_reduce_sum_buckets(
        _sizes: &[usize],
        _fill: &mut dyn FnMut(usize, &mut [f32]),
        _what: &str,
    ) -> Vec<Vec<f32>> {
        unreachable!("a build without MPI never has more than one rank")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_messages_name_the_silent_ranks() {
        let m = fault_message("the gradient all-reduce", &[1], 20);
        assert!(m.contains("rank 1 stopped answering"), "{m}");
        assert!(m.contains("within 20 s"), "{m}");
        let m = fault_message("x", &[1, 3], 5);
        assert!(m.contains("ranks 1, 3 stopped answering"), "{m}");
    }

    #[test]
    fn a_single_process_never_touches_mpi() {
        let mut b = [1.0f32, 2.0];
        all_reduce_mean(&mut b, "test");
        assert_eq!(b, [1.0, 2.0]);
        assert!(agree(7, "test"));
        let out = all_reduce_sum_buckets(&[2, 1], |k, b| b.fill(k as f32 + 1.0), "test");
        assert_eq!(out, vec![vec![1.0, 1.0], vec![2.0]]);
    }
}
