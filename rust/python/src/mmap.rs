//! A memory-mapped file as a read source.

use std::fs::File;

use cryptotensors::{Error, Result, Source};
use memmap2::Mmap;

/// A read-only private mapping of a whole file.
pub struct MmapSource(Mmap);

impl MmapSource {
    pub fn new(file: &File) -> Result<MmapSource> {
        // SAFETY: the mapping is read-only and private. As with safetensors,
        // the file must not be truncated while mapped; the reader copies
        // every byte it authenticates, so concurrent writes cannot make it
        // return unauthenticated data, only fail.
        let map = unsafe { Mmap::map(file) }.map_err(Error::Io)?;
        Ok(MmapSource(map))
    }
}

impl Source for MmapSource {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.0[..].read_at(offset, buf)
    }
}
