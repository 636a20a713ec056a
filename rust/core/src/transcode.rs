//! Rewriting an opened file under new write options: a plain file
//! encrypted or signed, an encrypted one decrypted (FORMAT.md §8).
//!
//! The source is a [`Reader`], so it was verified as a load verifies it
//! (signature, envelope, trailer digest, policy, key) before any byte is
//! written. Its tensors keep their names, dtypes (every dtype, whether or
//! not a framework has it) and shapes, and its user metadata is carried
//! over. The writer fills each tensor through the reader, which
//! authenticates every segment before handing its bytes on, so no tensor
//! is ever whole in memory; the output goes to a temporary file renamed
//! over the target, so the target may be the source itself. A caller's
//! [`Progress`] hook hears how many tensor bytes are written as they are,
//! and may stop the write.

use std::path::Path;

use crate::envelope::RESERVED_PREFIX;
use crate::error::Result;
use crate::header::{Header, Metadata};
use crate::progress::Progress;
use crate::reader::Reader;
use crate::writer::{self, WriteOptions};

/// The metadata a user wrote into a file: every entry but the format's own
/// (`__cryptotensors*`), which a rewritten file gets anew. `None` if empty.
pub(crate) fn user_metadata(header: &Header) -> Option<Metadata> {
    let kept: Metadata = header
        .metadata()
        .into_iter()
        .flatten()
        .filter(|(k, _)| !k.starts_with(RESERVED_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Some(kept).filter(|m| !m.is_empty())
}

/// Writes every tensor of `reader`'s file, with its user metadata, to `dst`
/// under `opts` (whose own `metadata` is replaced by the file's), reporting
/// the tensor bytes written to `progress`.
pub fn transcode_to_file(
    reader: &Reader,
    opts: &WriteOptions,
    dst: &Path,
    progress: Option<&dyn Progress>,
) -> Result<()> {
    let header = reader.header();
    let mut opts = opts.clone();
    opts.metadata = user_metadata(header);
    if opts.encrypt.is_none() && opts.sign_with.is_none() {
        // A plain output is filled in pieces of this size: the source's
        // segments, each authenticated once, never a part of one twice.
        if let Some(layout) = reader.layout() {
            opts.segment_size = layout.envelope.segment_size;
        }
    }
    write_from(reader, &opts, dst, progress)
}

/// Writes every tensor of `reader`'s file to `dst` under `opts` as they
/// are (a transcode, a rekey). Every segment is authenticated before its
/// bytes are used: the writer fills each segment through the reader, which
/// decrypts and verifies it.
pub(crate) fn write_from(
    reader: &Reader,
    opts: &WriteOptions,
    dst: &Path,
    progress: Option<&dyn Progress>,
) -> Result<()> {
    let header = reader.header();
    // An empty tensor's one empty segment is checked here, since the writer
    // has no byte of it to ask for.
    for (name, info) in header.tensors() {
        if info.is_empty() {
            reader.read_into(name, &mut [])?;
        }
    }
    let fills: Vec<_> = header
        .tensors()
        .iter()
        .map(|(name, _)| {
            move |offset: usize, buf: &mut [u8]| reader.read_range_into(name, offset, buf)
        })
        .collect();
    writer::serialize_filled_to_file(header.tensors(), &fills, opts, dst, progress)
}
