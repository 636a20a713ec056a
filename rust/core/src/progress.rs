//! How far a long write has got: the bytes of tensor data written so far,
//! reported to a caller's hook (a progress bar) while a file is transcoded
//! or rekeyed, so that a large shard does not sit at 0% until it is done.
//!
//! The count is of tensor bytes written to the output, in the order they
//! are written (tensor by tensor, batch by batch), so it never goes back;
//! it ends at the sum of the tensors' sizes, which the caller knows from
//! the header. The hook sees numbers only: never a byte of a tensor, a key
//! or a name. It is called at most once per [`REPORT_EVERY`] bytes, plus
//! once at the end, so a file of many small tensors does not call it for
//! each one. The hook may stop the write: the output is then abandoned
//! (its temporary file removed, the target untouched) and the write
//! returns [`Error::Stopped`].

use std::ops::ControlFlow;
use std::sync::Mutex;

use crate::error::{Error, Result};

/// The least number of bytes between two reports (the last report, at the
/// end, may come sooner).
pub const REPORT_EVERY: u64 = 4 << 20;

/// A caller's progress hook. It is called from the writer's threads, one
/// call at a time, with the write waiting for its answer.
pub trait Progress: Sync {
    /// `done` bytes of tensor data are written (a running total).
    /// `ControlFlow::Break` stops the write.
    fn report(&self, done: u64) -> ControlFlow<()>;
}

impl<F: Fn(u64) -> ControlFlow<()> + Sync> Progress for F {
    fn report(&self, done: u64) -> ControlFlow<()> {
        self(done)
    }
}

/// The running count of one write, and when it was last reported.
pub(crate) struct Tracker<'a> {
    hook: Option<&'a dyn Progress>,
    /// (bytes written, bytes at the last report).
    state: Mutex<(u64, Option<u64>)>,
}

impl<'a> Tracker<'a> {
    pub(crate) fn new(hook: Option<&'a dyn Progress>) -> Tracker<'a> {
        Tracker {
            hook,
            state: Mutex::new((0, None)),
        }
    }

    /// `n` more bytes of tensor data are written.
    pub(crate) fn wrote(&self, n: usize) -> Result<()> {
        self.advance(n as u64, false)
    }

    /// Every tensor is written: reports the total unless it just was.
    pub(crate) fn finish(&self) -> Result<()> {
        self.advance(0, true)
    }

    fn advance(&self, n: u64, last: bool) -> Result<()> {
        let Some(hook) = self.hook else {
            return Ok(());
        };
        // Writes report one after another; a poisoned lock only means a
        // panic elsewhere, which unwinds the write anyway.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (done, reported) = &mut *state;
        *done = done.saturating_add(n);
        let due = match *reported {
            None => last || *done >= REPORT_EVERY,
            Some(r) => (last && r != *done) || *done - r >= REPORT_EVERY,
        };
        if !due {
            return Ok(());
        }
        *reported = Some(*done);
        match hook.report(*done) {
            ControlFlow::Continue(()) => Ok(()),
            ControlFlow::Break(()) => Err(Error::Stopped),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reports(writes: &[usize]) -> Vec<u64> {
        let seen = Mutex::new(Vec::new());
        let hook = |done: u64| {
            seen.lock().unwrap().push(done);
            ControlFlow::Continue(())
        };
        let t = Tracker::new(Some(&hook));
        for &n in writes {
            t.wrote(n).unwrap();
        }
        t.finish().unwrap();
        seen.into_inner().unwrap()
    }

    /// At most one report per REPORT_EVERY bytes, rising, and always one at
    /// the total (a file of no bytes reports 0 once).
    #[test]
    fn reports_are_bounded_rising_and_end_at_the_total() {
        let mib = 1 << 20;
        assert_eq!(reports(&[]), [0]);
        assert_eq!(reports(&[10, 20]), [30]);
        assert_eq!(
            reports(&[3 * mib, 3 * mib, 3 * mib]),
            [6 * mib as u64, 9 * mib as u64]
        );
        assert_eq!(reports(&[4 * mib, 4 * mib]), [4 << 20, 8 << 20]);
        let many = reports(&vec![1000; 100_000]);
        assert_eq!(*many.last().unwrap(), 100_000_000);
        let (last, rest) = many.split_last().unwrap();
        assert!(rest.windows(2).all(|w| w[1] - w[0] >= REPORT_EVERY));
        assert!(last > rest.last().unwrap());
    }

    #[test]
    fn a_hook_that_breaks_stops_with_stopped() {
        let hook = |done: u64| {
            if done > 0 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        };
        let t = Tracker::new(Some(&hook));
        t.wrote(1).unwrap();
        assert!(matches!(t.finish(), Err(Error::Stopped)));
        let none = Tracker::new(None);
        none.wrote(usize::MAX).unwrap();
        none.finish().unwrap();
    }
}
