//! cryptotensors: safetensors files whose tensors are individually sealed
//! with AES-256-GCM or ChaCha20-Poly1305, wrapped for JOSE recipients and
//! optionally signed. Plain files are exactly safetensors 0.8 files.
//!
//! The public modules follow FORMAT.md: [`header`] (the safetensors
//! layout), [`envelope`] (the crypto metadata and trailer), [`keys`] (JWKs,
//! recipients, and the `Identity` and `KeyWrapper` traits of who opens a file
//! and whom it is sealed for), [`sign`] (JWS), [`reader`] and [`writer`],
//! [`inspect`] (what a header says, with no key, even when it is damaged),
//! [`rewrap`] for key rotation, and [`slice`](mod@slice) for partial reads; [`legacy`]
//! reads files of cryptotensors 0.2.3 to migrate them. Re-encryption under a
//! new data key ([`rekey_file`]) and transcoding ([`transcode_to_file`]) are
//! one call each.
//!
//! The segment cipher and key schedule (FORMAT.md §4–5), the access policy
//! engine, the dtype table and atomic file replacement are private: callers
//! reach them only through a [`reader::Reader`] or a [`writer`], so a key
//! that decrypts exists only after the header it came with was verified,
//! and no caller can seal with a reader's key or open with a writer's.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod atomic;
mod crypto;
mod dtype;
pub mod envelope;
mod error;
pub mod header;
pub mod inspect;
pub mod keys;
pub mod legacy;
mod platform;
mod policy;
pub mod progress;
pub mod reader;
mod rekey;
pub mod rewrap;
pub mod sign;
pub mod slice;
mod transcode;
pub mod writer;

pub use crypto::{Algorithm, DataKey};
pub use dtype::Dtype;
pub use error::{Error, Result, SignatureFailure};
pub use progress::Progress;
pub use rekey::{
    decide as decide_rekey, rekey_file, RekeyOptions, RekeyPlan, RekeyRefusal, Staying, WrappedBy,
};
pub use transcode::transcode_to_file;

use std::fs::File;

/// Random-access bytes a [`reader::Reader`] reads from: a file (pread), a
/// buffer, or a memory map provided by the caller.
pub trait Source: Send + Sync {
    /// Total length in bytes.
    fn len(&self) -> u64;
    /// Whether the source is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fills `buf` from `offset`; an error if the range runs past the end.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
}

fn out_of_range() -> Error {
    Error::Io(std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "read past the end of the file",
    ))
}

impl Source for [u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let start = usize::try_from(offset).map_err(|_| out_of_range())?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
            .ok_or_else(out_of_range)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

impl Source for Vec<u8> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.as_slice().read_at(offset, buf)
    }
}

/// A file read with positioned reads; its length is taken at open.
#[derive(Debug)]
pub struct PreadFile {
    file: File,
    len: u64,
}

impl PreadFile {
    /// Wraps an open file.
    pub fn new(file: File) -> Result<PreadFile> {
        let len = file.metadata()?.len();
        Ok(PreadFile { file, len })
    }
}

impl Source for PreadFile {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|e| e > self.len)
        {
            return Err(out_of_range());
        }
        Ok(platform::read_exact_at(&self.file, buf, offset)?)
    }
}

/// Runs `f` on a rayon pool of `threads` threads (0: rayon's default pool).
/// Pools are built once per size and kept.
pub fn with_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    static POOLS: OnceLock<Mutex<HashMap<usize, Arc<rayon::ThreadPool>>>> = OnceLock::new();
    if threads == 0 {
        return f();
    }
    let pool = {
        let mut pools = POOLS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        pools
            .entry(threads)
            .or_insert_with(|| {
                Arc::new(
                    rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .expect("thread pool"),
                )
            })
            .clone()
    };
    pool.install(f)
}
