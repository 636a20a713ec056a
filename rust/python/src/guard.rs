//! The panic boundary: no Rust panic reaches Python.
//!
//! Every `#[pyfunction]` and `#[pymethods]` entry runs its work through
//! [`guard`], which catches a panic (in the entry itself, in work run with
//! the GIL released, or on a rayon pool thread, which rayon hands back to
//! the caller) and raises `InternalError`, a `SafetensorError`, instead of
//! letting PyO3 raise `pyo3_runtime.PanicException` (a `BaseException`
//! that `except Exception` misses).
//!
//! The exception's message is fixed: it names the entry point and nothing
//! else. A panic's payload can quote what the failing code was looking at
//! (a key, a policy, a file's bytes), so it is dropped unread; the panic
//! hook installed by [`install_hook`] likewise prints only the source
//! location to stderr (`CRYPTOTENSORS_PANIC_DETAILS=1` at import keeps
//! Rust's default hook, payload included, for debugging).
//!
//! After a caught panic later calls work as before: the binding's and the
//! core's shared state (key, policy, header and thread-pool caches) sits
//! behind locks whose poisoning is ignored, and is only ever updated by
//! whole inserts, so a panic cannot leave it half-written; an open
//! `Reader` is immutable. An output buffer the failed call was filling may
//! be partly written, as on any error, and the Python layer discards it.
//!
//! The binding registers no C callbacks (no buffer export, no Python-backed
//! `Source`), so no panic can unwind into an `extern "C"` frame and abort.

use std::io::Write;
use std::panic::{self, AssertUnwindSafe};

use pyo3::prelude::*;

use crate::errors::InternalError;

// catch_unwind catches nothing under panic = "abort": refuse such a build.
#[cfg(panic = "abort")]
compile_error!("the binding turns panics into exceptions: build it with panic = \"unwind\"");

/// Runs an entry point's `work`, turning a panic into `InternalError`.
/// `entry` is the Python name of the entry point, for the message.
pub fn guard<T>(entry: &'static str, work: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    // AssertUnwindSafe: see the module docs for why no state a later call
    // sees is left broken by an unwind.
    panic::catch_unwind(AssertUnwindSafe(work)).unwrap_or_else(|payload| {
        // A payload's own Drop could panic in turn; keep that inside too.
        let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(payload)));
        Err(InternalError::new_err(format!(
            "internal error in {entry}: a bug in cryptotensors stopped the call \
             (nothing was returned; please report it)"
        )))
    })
}

/// Replaces the panic hook of this extension's Rust runtime by one that
/// prints the panic's location only, never its payload.
pub fn install_hook() {
    if std::env::var_os("CRYPTOTENSORS_PANIC_DETAILS").is_some_and(|v| v == "1") {
        return;
    }
    panic::set_hook(Box::new(|info| {
        let at = info
            .location()
            .map_or_else(String::new, |l| format!(" at {}:{}", l.file(), l.line()));
        // Never panic here (a panic in the hook aborts): errors are ignored.
        let _ = writeln!(
            std::io::stderr(),
            "cryptotensors: internal error (Rust panic){at}; raised as InternalError"
        );
    }));
}

/// Panics on purpose, on a pool of `threads` threads (0: the calling
/// thread) with the GIL released: proves that this build turns panics into
/// `InternalError` (a build that aborts on panic would die here).
#[pyfunction]
#[pyo3(signature = (threads=crate::threads::Threads::default()))]
pub fn _check_panic_boundary(py: Python<'_>, threads: crate::threads::Threads) -> PyResult<()> {
    guard("_check_panic_boundary", || {
        py.allow_threads(|| {
            threads.run(|| -> PyResult<()> {
                panic!("boundary self-check: this payload must never be shown")
            })
        })
    })
}
