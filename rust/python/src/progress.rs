//! The `progress` argument of long writes (transcode, rekey): a Python
//! callable the core reports the tensor bytes written to, as they are.
//!
//! The write runs on a worker thread with the GIL released; the calling
//! thread waits for its reports and calls the callable, with the GIL, on
//! the thread that called in (the main thread, for the CLI). That is where
//! Python delivers signals: a Ctrl-C raises `KeyboardInterrupt` in the
//! callable, or, between reports, from the signal check the waiting thread
//! makes. Each report waits for the callable's answer, so an exception it
//! raises stops the write at once: the core abandons the output (its
//! temporary file is removed, the target untouched) and the exception is
//! raised to the caller as it was. A signal seen after the last report
//! reaches the write at no further report: the file is then complete, and
//! the exception is raised once it is in place.

use std::ops::ControlFlow;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Mutex;
use std::time::Duration;

use cryptotensors::Progress;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;

use crate::errors::IntoPy;

/// A callable `progress(done: int) -> None`.
pub struct ProgressCallback(Py<PyAny>);

impl<'py> FromPyObject<'py> for ProgressCallback {
    fn extract_bound(ob: &Bound<'py, PyAny>) -> PyResult<Self> {
        if !ob.is_callable() {
            return Err(PyTypeError::new_err(format!(
                "progress: expected a callable taking the bytes done, got {}",
                ob.get_type().name()?
            )));
        }
        Ok(ProgressCallback(ob.clone().unbind()))
    }
}

/// How long the waiting thread waits for a report before it checks for a
/// signal (a Ctrl-C during a part of the write that reports nothing).
const SIGNAL_POLL: Duration = Duration::from_millis(100);

/// The core's side of the rendezvous: each report is sent to the waiting
/// thread, and the write waits for whether to go on.
struct Hook(Mutex<(SyncSender<u64>, Receiver<bool>)>);

impl Progress for Hook {
    fn report(&self, done: u64) -> ControlFlow<()> {
        let chan = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match chan.0.send(done).ok().and_then(|()| chan.1.recv().ok()) {
            Some(true) => ControlFlow::Continue(()),
            _ => ControlFlow::Break(()),
        }
    }
}

/// Runs `work` with the GIL released, handing it a progress hook that calls
/// `callback` when there is one. The callback's exception (or a signal's)
/// is raised in place of the work's result.
pub fn with_progress<R: Send>(
    py: Python<'_>,
    callback: Option<ProgressCallback>,
    work: impl FnOnce(Option<&dyn Progress>) -> cryptotensors::Result<R> + Send,
) -> PyResult<R> {
    let Some(callback) = callback else {
        return py.allow_threads(|| work(None)).py_err();
    };
    let (report_tx, report_rx) = mpsc::sync_channel::<u64>(0);
    let (answer_tx, answer_rx) = mpsc::sync_channel::<bool>(0);
    let (outcome, raised) = py.allow_threads(move || {
        let mut raised: Option<PyErr> = None;
        let outcome = std::thread::scope(|s| {
            let worker = s.spawn(move || {
                let hook = Hook(Mutex::new((report_tx, answer_rx)));
                work(Some(&hook))
            });
            loop {
                match report_rx.recv_timeout(SIGNAL_POLL) {
                    Ok(done) => {
                        if raised.is_none() {
                            let called =
                                Python::with_gil(|py| callback.0.bind(py).call1((done,)).map(drop));
                            raised = called.err();
                        }
                        // The worker is gone only once it has stopped.
                        let _ = answer_tx.send(raised.is_none());
                    }
                    Err(RecvTimeoutError::Timeout) => {
                        if raised.is_none() {
                            raised = Python::with_gil(|py| py.check_signals()).err();
                        }
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            worker.join()
        });
        (outcome, raised)
    });
    // A panic of the work goes on to the entry's guard, as without a callback.
    let outcome = outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    match raised {
        Some(e) => Err(e),
        None => outcome.py_err(),
    }
}
