//! Processes that train one model together: data-parallel training over MPI (`docs/SCALE.md`).
//!
//! A [`World`] is the group of processes of one job: a single process ([`World::single`], what every
//! [`crate::model::Trainer`] starts with), or, with the `mpi` cargo feature, the processes `mpirun` (or
//! `mpiexec`, `srun`) started ([`World::from_env`]). Given one with [`crate::model::Trainer::distribute`],
//! a trainer splits each step's group of batches over the processes (ranks), sums their gradients with one
//! all-reduce of one contiguous buffer, applies the same Adam step on every rank (so the replicas stay
//! identical), splits the evaluation's users over the ranks and sums their metrics. Rank 0 alone writes
//! checkpoints.
//!
//! Failures end every rank in bounded time: an error met by some ranks inside training (a non-finite loss,
//! a failed step, a checkpoint rank 0 could not write) reaches every rank at the next exchange, and each
//! returns it ([`Error::Distributed`] names the rank that met it, which returns its own error); an error
//! met outside training, where the other ranks may already wait in an exchange, is for
//! [`World::exit_on_error`], which prints it and aborts the whole job.
//!
//! Every rank makes the same calls in the same order (the trainer's methods are collective: call them on
//! every rank, from one thread at a time).
//!
//! # Example
//! ```
//! use recgoat_core::dist::World;
//! // without mpirun (or without the `mpi` feature) this is the one process
//! let world = World::from_env()?;
//! assert_eq!((world.rank(), world.size()), (0, 1));
//! assert!(world.is_root());
//! # Ok::<(), recgoat_core::Error>(())
//! ```

use crate::error::{Error, Result};
use crate::simd::{Real, TypedMut};

/// The processes of one job (see the [module documentation](self)).
#[derive(Clone, Debug)]
pub struct World {
    rank: usize,
    size: usize,
    #[cfg(feature = "mpi")]
    _mpi: Option<std::sync::Arc<mpi_world::Hold>>,
}

/// The first of a launcher's environment variables `vars` (Open MPI's, MPICH / Hydra's, PMIx's) that is
/// set and that `parse` reads, with its name.
fn launcher_value<T>(
    vars: [&'static str; 3],
    get: impl Fn(&str) -> Option<String>,
    parse: impl Fn(&str) -> Option<T>,
) -> Option<(T, &'static str)> {
    vars.into_iter()
        .find_map(|var| Some((parse(get(var)?.trim())?, var)))
}

/// The process count a launcher announces in the environment (Open MPI, MPICH / Hydra and PMI-based
/// launchers such as Slurm's), with the variable that said it; `None` when not launched by one.
fn launched_size(get: impl Fn(&str) -> Option<String>) -> Option<(usize, &'static str)> {
    let vars = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"];
    launcher_value(vars, get, |v| Some(v.parse().unwrap_or(0)))
}

/// This process's rank as its launcher announces it (0 when none does).
#[cfg(feature = "mpi")]
fn launched_rank() -> usize {
    let vars = ["OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"];
    launcher_value(vars, |v| std::env::var(v).ok(), |v| v.parse().ok()).map_or(0, |(r, _)| r)
}

impl World {
    /// One process alone: the exchanges do nothing.
    pub fn single() -> World {
        World {
            rank: 0,
            size: 1,
            #[cfg(feature = "mpi")]
            _mpi: None,
        }
    }

    /// The job this process was launched in: with the `mpi` feature and a launcher's environment
    /// (`mpirun -np P`), MPI's world (MPI is initialised on the first call and finalised when the last
    /// `World` from it is dropped: keep one for the program's length); otherwise [`World::single`].
    ///
    /// # Errors
    /// [`Error::Distributed`] when a launcher started several processes but the crate was built without
    /// its `mpi` feature (each would train alone and write the same files), or when MPI cannot be
    /// initialised (it was finalised already in this process).
    pub fn from_env() -> Result<World> {
        World::from_launch(|var| std::env::var(var).ok())
    }

    /// [`World::from_env`] with the environment read through `get`.
    fn from_launch(get: impl Fn(&str) -> Option<String>) -> Result<World> {
        let Some((size, var)) = launched_size(get) else {
            return Ok(World::single());
        };
        #[cfg(feature = "mpi")]
        {
            let _ = var;
            mpi_world::join(size)
        }
        #[cfg(not(feature = "mpi"))]
        {
            if size <= 1 {
                return Ok(World::single());
            }
            Err(Error::Distributed {
                rank: 0,
                size,
                reason: format!(
                    "launched as one of {size} processes ({var}), but recgoat-core was built without its \
                     `mpi` feature: each process would train alone and write the same files; build with \
                     `--features mpi`"
                ),
            })
        }
    }

    /// This process's rank, `0..size`.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of processes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Whether this is rank 0, the one that prints and writes.
    pub fn is_root(&self) -> bool {
        self.rank == 0
    }

    /// This rank's share of `n` items split in contiguous parts over the ranks (the first `n % size` ranks
    /// take one more).
    pub fn share(&self, n: usize) -> std::ops::Range<usize> {
        let (q, r) = (n / self.size, n % self.size);
        let start = self.rank * q + self.rank.min(r);
        start..start + q + usize::from(self.rank < r)
    }

    /// The value of `r` on this rank; an error when it failed on any rank: this rank's own error where it
    /// failed, else [`Error::Distributed`] with the lowest failing rank's message. Collective.
    ///
    /// # Errors
    /// As described; and MPI's own failures.
    pub fn agree<T>(&self, r: Result<T>) -> Result<T> {
        if self.size == 1 {
            return r;
        }
        let mine = if r.is_err() { self.rank } else { self.size };
        let first = self.min_usize(mine)?;
        if first == self.size {
            return r;
        }
        let mut message = match &r {
            // a rank's own disagreement is said once, not wrapped in its rank again
            Err(Error::Distributed { rank, reason, .. })
                if self.rank == first && *rank == first =>
            {
                reason.clone().into_bytes()
            }
            Err(e) if self.rank == first => e.to_string().into_bytes(),
            _ => Vec::new(),
        };
        self.broadcast_bytes(first, &mut message)?;
        match r {
            Err(e) if self.rank == first => Err(e),
            _ => Err(Error::Distributed {
                rank: first,
                size: self.size,
                reason: String::from_utf8_lossy(&message).into_owned(),
            }),
        }
    }

    /// Checks that every rank holds the same `value` of `what` (a fingerprint); collective.
    ///
    /// # Errors
    /// [`Error::Distributed`] on every rank naming the first rank whose value differs from rank 0's.
    pub fn check_same(&self, what: &str, value: &str) -> Result<()> {
        if self.size == 1 {
            return Ok(());
        }
        let mut root = value.as_bytes().to_vec();
        self.broadcast_bytes(0, &mut root)?;
        let mine = if root == value.as_bytes() {
            Ok(())
        } else {
            Err(Error::Distributed {
                rank: self.rank,
                size: self.size,
                reason: format!(
                    "its {what} differs from rank 0's ({} against {}): every rank must train the same",
                    shorten(value),
                    shorten(&String::from_utf8_lossy(&root))
                ),
            })
        };
        self.agree(mine)
    }

    /// Element-wise sum over the ranks, in place, every rank getting the same values; collective.
    ///
    /// # Errors
    /// MPI's failures.
    pub fn sum<F: Real>(&self, buf: &mut [F]) -> Result<()> {
        if self.size == 1 {
            return Ok(());
        }
        match F::typed_mut(buf) {
            TypedMut::F32(b) => self.sum_f32(b),
            TypedMut::F64(b) => self.sum_f64(b),
        }
    }

    /// Ends the program on an error: prints `error: ...` (with the rank when there are several) to
    /// standard error and exits with status 1, aborting every rank of the job (`MPI_Abort`) so that none
    /// is left waiting in an exchange; returns the value otherwise. For `main`, around what ranks do apart.
    pub fn exit_on_error<T>(&self, r: Result<T>) -> T {
        match r {
            Ok(v) => v,
            Err(e) => {
                if self.size > 1 {
                    eprintln!("error (rank {} of {}): {e}", self.rank, self.size);
                    self.abort(1)
                }
                eprintln!("error: {e}");
                std::process::exit(1)
            }
        }
    }

    fn min_usize(&self, v: usize) -> Result<usize> {
        let mut b = [v as f64];
        self.min_f64(&mut b)?;
        Ok(b[0] as usize)
    }
}

/// At most 80 characters of a value, for messages.
fn shorten(s: &str) -> String {
    if s.chars().count() <= 80 {
        return s.to_string();
    }
    let head: String = s.chars().take(77).collect();
    format!("{head}...")
}

#[cfg(not(feature = "mpi"))]
impl World {
    fn sum_f32(&self, _: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn sum_f64(&self, _: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn min_f64(&self, _: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn broadcast_bytes(&self, _: usize, _: &mut Vec<u8>) -> Result<()> {
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

#[cfg(feature = "mpi")]
mod mpi_world {
    use super::World;
    use crate::error::{Error, Result};
    use mpi::collective::SystemOperation;
    use mpi::environment::Universe;
    use mpi::topology::SimpleCommunicator;
    use mpi::traits::*;
    use std::sync::{Arc, Mutex, Weak};

    /// MPI's environment, finalised when the last [`World`] holding it is dropped.
    #[derive(Debug)]
    pub(super) struct Hold {
        _universe: UniverseBox,
    }

    struct UniverseBox(#[allow(dead_code)] Universe);

    impl std::fmt::Debug for UniverseBox {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Universe")
        }
    }

    static HELD: Mutex<Option<Weak<Hold>>> = Mutex::new(None);

    fn comm() -> SimpleCommunicator {
        SimpleCommunicator::world()
    }

    /// Joins MPI's world; `launched` is the process count the launcher announced (for messages).
    pub(super) fn join(launched: usize) -> Result<World> {
        let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
        let hold = match held.as_ref().and_then(Weak::upgrade) {
            Some(h) => h,
            None => {
                let rank = super::launched_rank();
                let failed = |why: &str| Error::Distributed {
                    rank,
                    size: launched,
                    reason: format!("MPI could not be initialised: {why}"),
                };
                if mpi::environment::is_finalized() {
                    return Err(failed(
                        "it was finalised already in this process (keep one World for the program's length)",
                    ));
                }
                let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Serialized)
                    .ok_or_else(|| failed("it was initialised already, outside recgoat-core"))?;
                let h = Arc::new(Hold {
                    _universe: UniverseBox(universe),
                });
                *held = Some(Arc::downgrade(&h));
                h
            }
        };
        let c = comm();
        Ok(World {
            rank: c.rank() as usize,
            size: c.size() as usize,
            _mpi: Some(hold),
        })
    }

    fn count(op: &'static str, n: usize) -> Result<i32> {
        i32::try_from(n).map_err(|_| {
            Error::param(
                op,
                "buffer length",
                n,
                "MPI counts are 32-bit: at most 2^31 - 1 values per exchange",
            )
        })
    }

    /// `buf` reduced element-wise over the ranks by `op`, in place.
    fn all_reduce<T: Equivalence + Clone>(buf: &mut [T], op: SystemOperation) -> Result<()> {
        count("World::sum", buf.len())?;
        let send = buf.to_vec();
        comm().all_reduce_into(&send[..], buf, op);
        Ok(())
    }

    impl World {
        pub(super) fn sum_f32(&self, buf: &mut [f32]) -> Result<()> {
            all_reduce(buf, SystemOperation::sum())
        }

        pub(super) fn sum_f64(&self, buf: &mut [f64]) -> Result<()> {
            all_reduce(buf, SystemOperation::sum())
        }

        pub(super) fn min_f64(&self, buf: &mut [f64]) -> Result<()> {
            all_reduce(buf, SystemOperation::min())
        }

        pub(super) fn broadcast_bytes(&self, root: usize, bytes: &mut Vec<u8>) -> Result<()> {
            let c = comm();
            let root = c.process_at_rank(root as i32);
            let mut len = bytes.len() as u64;
            root.broadcast_into(&mut len);
            let n = usize::try_from(len).unwrap_or(usize::MAX);
            count("World::broadcast", n)?;
            bytes.resize(n, 0);
            root.broadcast_into(&mut bytes[..]);
            Ok(())
        }

        pub(super) fn abort(&self, code: i32) -> ! {
            comm().abort(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_world_shares_everything_and_agrees_with_itself() {
        let w = World::single();
        assert_eq!(w.share(7), 0..7);
        assert!(w.agree(Ok(3)).is_ok());
        let e = Error::param("op", "x", 1, "bad");
        assert_eq!(w.agree::<()>(Err(e.clone())), Err(e));
        let mut b = [1.0f32, 2.0];
        w.sum(&mut b).unwrap();
        assert_eq!(b, [1.0, 2.0]);
        w.check_same("data", "abc").unwrap();
    }

    #[test]
    #[cfg(not(feature = "mpi"))]
    fn several_processes_without_the_mpi_feature_are_refused() {
        let env =
            |size: &'static str| move |var: &str| (var == "PMI_SIZE").then(|| size.to_string());
        let e = World::from_launch(env("2")).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("one of 2 processes (PMI_SIZE)") && msg.contains("--features mpi"));
        // one process, or no launcher: this process alone
        assert_eq!(World::from_launch(env("1")).unwrap().size(), 1);
        assert_eq!(World::from_launch(|_| None).unwrap().size(), 1);
    }

    #[test]
    fn shares_cover_the_range_in_order() {
        for size in 1..6 {
            for n in 0..13 {
                let parts: Vec<_> = (0..size)
                    .map(|rank| {
                        let mut w = World::single();
                        (w.rank, w.size) = (rank, size);
                        w.share(n)
                    })
                    .collect();
                assert_eq!(parts[0].start, 0);
                assert_eq!(parts[size - 1].end, n);
                for w in parts.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                    assert!(w[0].len() >= w[1].len() && w[0].len() <= w[1].len() + 1);
                }
            }
        }
    }
}
