//! The `threads` argument, bounded where it enters: a pool is built once
//! per size and kept, so an absurd count must not reach the core.

use cryptotensors::with_threads;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// The most threads one pool may have.
pub const MAX_THREADS: usize = 1024;

/// A decryption/encryption thread count: 0 for rayon's default pool (all
/// cores), else a pool of that many threads, at most [`MAX_THREADS`].
#[derive(Clone, Copy, Default)]
pub struct Threads(usize);

impl<'py> FromPyObject<'py> for Threads {
    fn extract_bound(ob: &Bound<'py, PyAny>) -> PyResult<Self> {
        let n: usize = ob.extract()?;
        if n > MAX_THREADS {
            return Err(PyValueError::new_err(format!(
                "threads: at most {MAX_THREADS}, got {n}"
            )));
        }
        Ok(Threads(n))
    }
}

impl Threads {
    /// Runs `f` on this many threads (see `cryptotensors::with_threads`).
    pub fn run<R: Send>(self, f: impl FnOnce() -> R + Send) -> R {
        with_threads(self.0, f)
    }
}
