//! Writing files: plain files byte-identical to safetensors 0.8, and
//! encrypted or signed files (FORMAT.md §8).
//!
//! A protected file is written in one pass: the header is laid out first
//! with placeholders of the exact length of the values they stand for (the
//! trailer digest, the MAC, the signature), tensors are sealed segment by
//! segment in small parallel batches and written as they are done, the
//! trailer follows, and then the final header overwrites the placeholder
//! in place. Extra memory is one batch of segments, not a copy of the model.
//! Files are written to a temporary file that is renamed over the target.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use rayon::prelude::*;
use ring::digest;

use crate::crypto::{self, Algorithm, Binding, DataKey, SealingKey, SALT_LEN, TAG_LEN};
use crate::dtype::Dtype;
use crate::envelope::{
    self, Encryption, Envelope, Protection, DIGEST_LEN, DIGEST_SHA256, RESERVED_PREFIX, VERSION,
};
use crate::error::{Error, Result};
use crate::header::{self, Entry, Metadata, TensorInfo};
use crate::keys::KeyWrapper;
use crate::keys::{self, b64e, Jwk};
use crate::policy::Policy;
use crate::progress::{Progress, Tracker};

/// One tensor to write; `data` is its raw little-endian bytes.
#[derive(Debug, Clone, Copy)]
pub struct TensorData<'a> {
    /// Name.
    pub name: &'a str,
    /// Element type.
    pub dtype: Dtype,
    /// Dimensions.
    pub shape: &'a [usize],
    /// Bytes, exactly `dtype.byte_size(shape)` long.
    pub data: &'a [u8],
}

/// Encryption settings of a save.
#[derive(Debug, Clone)]
pub struct EncryptOptions {
    /// Keys the data key is wrapped for: oct keys, or X25519 public keys.
    pub recipients: Vec<Jwk>,
    /// Names of the tensors to encrypt; `None` for all.
    pub tensors: Option<BTreeSet<String>>,
    /// AEAD of the segments.
    pub algorithm: Algorithm,
    /// Recipients that wrap outside this crate (an HSM that wraps with a
    /// key it never lets out), after `recipients`: each gets the data key
    /// the writer drew, and the stanza it returns is checked with
    /// [`crate::keys::Recipient::check`] before it is written.
    pub wrappers: Vec<Arc<dyn KeyWrapper>>,
}

fn two_of(kid: &str) -> Error {
    Error::InvalidArgument(format!("two recipients have kid {kid:?}"))
}

/// Appends to `recipients` the stanza each of `wrappers` makes of
/// `data_key`, each checked ([`crate::keys::Recipient::check`]) and of a kid
/// no other stanza has, then checks the whole list as a reader would: the
/// one way a save, a rewrap and a rekey accept a key wrapper's answer.
pub(crate) fn wrap_for(
    wrappers: &[Arc<dyn KeyWrapper>],
    data_key: &DataKey,
    recipients: &mut Vec<crate::keys::Recipient>,
) -> Result<()> {
    // Stanzas are found by kid: a wrapper's may not take one already there
    // (the stanzas a rewrap keeps are the file's own, as they are).
    let mut kids: BTreeSet<String> = recipients.iter().map(|r| r.kid.clone()).collect();
    for wrapper in wrappers {
        let stanza = wrapper.wrap_data_key(data_key)?;
        stanza.check()?;
        if !kids.insert(stanza.kid.clone()) {
            return Err(two_of(&stanza.kid));
        }
        recipients.push(stanza);
    }
    // Readers refuse more stanzas than this; never write such a file.
    envelope::check_recipients(recipients)
}

/// Options of a save.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// User metadata.
    pub metadata: Option<Metadata>,
    /// Encrypt, and for whom.
    pub encrypt: Option<EncryptOptions>,
    /// Sign the header with this Ed25519 or P-256 private key.
    pub sign_with: Option<Jwk>,
    /// Access policy (Rego); needs `encrypt`.
    pub policy: Option<String>,
    /// Segment size; 0 for the default.
    pub segment_size: usize,
    /// Spaces kept free after the metadata, at least, for in-place header
    /// rewrites (more when the metadata slot can end with the first page).
    pub reserve: usize,
    /// fsync the file before renaming it.
    pub fsync: bool,
}

/// The least room left after the metadata of protected files, so that
/// recipients can be added or the file re-signed later by rewriting the
/// header in place (see `header::slot_padding`).
pub const DEFAULT_RESERVE: usize = 1024;

/// Where the bytes go.
trait Sink: Sync {
    fn write_at(&self, offset: u64, bytes: &[u8]) -> Result<()>;
}

impl Sink for File {
    fn write_at(&self, offset: u64, bytes: &[u8]) -> Result<()> {
        Ok(crate::platform::write_all_at(self, bytes, offset)?)
    }
}

/// An in-memory output with interior mutability for the sequential writer.
struct VecSink(std::sync::Mutex<Vec<u8>>);

impl Sink for VecSink {
    fn write_at(&self, offset: u64, bytes: &[u8]) -> Result<()> {
        let mut v = self.0.lock().expect("not poisoned");
        let o = offset as usize;
        v[o..o + bytes.len()].copy_from_slice(bytes);
        Ok(())
    }
}

/// Where a tensor's bytes come from while it is written.
#[derive(Clone, Copy)]
pub(crate) enum Plain<'a> {
    /// The caller's memory.
    Bytes(&'a [u8]),
    /// A function that fills `buf` with the bytes at `offset` of the tensor
    /// (a rekey: decrypted and verified from the old file on demand), so a
    /// tensor never has to be in memory whole.
    Fill(&'a (dyn Fn(usize, &mut [u8]) -> Result<()> + Sync)),
}

/// One tensor of a plan.
#[derive(Clone, Copy)]
pub(crate) struct Input<'a> {
    pub(crate) name: &'a str,
    pub(crate) dtype: Dtype,
    pub(crate) shape: &'a [usize],
    pub(crate) len: usize,
    pub(crate) plain: Plain<'a>,
}

impl<'a> From<&TensorData<'a>> for Input<'a> {
    fn from(t: &TensorData<'a>) -> Input<'a> {
        Input {
            name: t.name,
            dtype: t.dtype,
            shape: t.shape,
            len: t.data.len(),
            plain: Plain::Bytes(t.data),
        }
    }
}

impl Input<'_> {
    /// Hands the tensor's bytes to `emit`, in order: bytes in memory in one
    /// go, bytes filled on demand in pieces of at most `piece` bytes (a plain
    /// file written from another file, which has no segments of its own).
    fn pieces(&self, piece: usize, mut emit: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        match self.plain {
            Plain::Bytes(b) => emit(b),
            Plain::Fill(_) => {
                let mut buf = vec![0u8; piece.min(self.len)];
                let mut offset = 0;
                while offset < self.len {
                    let n = buf.len().min(self.len - offset);
                    self.fill(offset, &mut buf[..n])?;
                    emit(&buf[..n])?;
                    offset += n;
                }
                Ok(())
            }
        }
    }

    /// Fills `buf` with the bytes at `offset`.
    fn fill(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        match self.plain {
            Plain::Bytes(b) => {
                buf.copy_from_slice(&b[offset..offset + buf.len()]);
                Ok(())
            }
            Plain::Fill(f) => f(offset, buf),
        }
    }
}

/// A save, validated and laid out.
struct Plan<'a> {
    /// Plain files: in the order safetensors writes them (§2), which is
    /// also their header order. Protected files: in file order (offsets,
    /// then name), which their header, trailer and canonical header share,
    /// so that a rewrap that re-encodes the header reproduces it exactly.
    tensors: Vec<(Input<'a>, TensorInfo)>,
    metadata: Option<Metadata>,
    protected: Option<Protected>,
    /// The size of the pieces a plain file's tensors filled on demand are
    /// written in (the segment size asked for, or the default).
    piece: usize,
}

/// The crypto half of a plan.
struct Protected {
    segment_size: usize,
    protections: Vec<Protection>,
    trailer_len: usize,
    payload: Option<(DataKey, SealingKey, [u8; SALT_LEN])>,
    sign_with: Option<Jwk>,
    envelope: Envelope,
    reserve: usize,
}

fn plan<'a>(tensors: &[TensorData<'a>], opts: &WriteOptions) -> Result<Plan<'a>> {
    plan_inputs(tensors.iter().map(Input::from).collect(), opts)
}

fn plan_inputs<'a>(tensors: Vec<Input<'a>>, opts: &WriteOptions) -> Result<Plan<'a>> {
    if let Some(m) = &opts.metadata {
        if let Some(k) = m.keys().find(|k| k.starts_with(RESERVED_PREFIX)) {
            return Err(Error::InvalidArgument(format!(
                "metadata key {k:?} is reserved for the format"
            )));
        }
    }
    let mut seen = BTreeSet::new();
    for t in &tensors {
        if !seen.insert(t.name) {
            return Err(Error::InvalidArgument(format!(
                "tensor {:?} given twice",
                t.name
            )));
        }
        if t.dtype.byte_size(t.shape)? != t.len {
            return Err(Error::TensorInvalidInfo(t.name.to_owned()));
        }
    }
    let entries = tensors
        .iter()
        .map(|t| Entry {
            name: t.name.to_owned(),
            dtype: t.dtype,
            shape: t.shape.to_vec(),
        })
        .collect();
    let laid = header::layout(entries)?;
    let by_name: std::collections::HashMap<&str, &Input> =
        tensors.iter().map(|t| (t.name, t)).collect();
    let mut ordered: Vec<(Input, TensorInfo)> = laid
        .into_iter()
        .map(|(e, i)| (*by_name[e.name.as_str()], i))
        .collect();
    let segment_size = if opts.segment_size == 0 {
        crypto::DEFAULT_SEGMENT_SIZE
    } else {
        opts.segment_size
    };
    if opts.policy.is_some() && opts.encrypt.is_none() {
        // Checked before a plain file returns below, which would otherwise
        // drop the policy without a word.
        return Err(Error::InvalidArgument(
            "policy= needs encrypt_for=: without encryption the data is readable directly".into(),
        ));
    }
    if opts.encrypt.is_none() && opts.sign_with.is_none() {
        // A plain file has no segments: the size only sets its pieces.
        return Ok(Plan {
            tensors: ordered,
            metadata: opts.metadata.clone(),
            protected: None,
            piece: segment_size.max(1),
        });
    }
    envelope::check_segment_size(segment_size)?;
    // File order differs from the layout order only among empty tensors of
    // different dtypes, which share their offsets.
    ordered
        .sort_by(|(ta, ia), (tb, ib)| (ia.data_offsets, ta.name).cmp(&(ib.data_offsets, tb.name)));
    if let Some(k) = &opts.sign_with {
        if !k.kind().signs() || !k.is_private() {
            return Err(Error::InvalidKey(
                "sign_with needs a private Ed25519 (OKP) or P-256 (EC) JWK".into(),
            ));
        }
    }
    let (encryption, payload, encrypted) = match &opts.encrypt {
        None => (None, None, BTreeSet::new()),
        Some(enc) => {
            if enc.recipients.is_empty() && enc.wrappers.is_empty() {
                return Err(Error::InvalidArgument(
                    "encrypt_for lists no recipient".into(),
                ));
            }
            let names: BTreeSet<String> = match &enc.tensors {
                None => ordered.iter().map(|(t, _)| t.name.to_owned()).collect(),
                Some(sel) => {
                    if let Some(missing) = sel.iter().find(|n| !by_name.contains_key(n.as_str())) {
                        return Err(Error::InvalidArgument(format!(
                            "encrypted_tensors names {missing:?}, which is not saved"
                        )));
                    }
                    sel.clone()
                }
            };
            if names.is_empty() {
                return Err(Error::InvalidArgument(
                    "encrypted_tensors selects no tensor".into(),
                ));
            }
            let data_key = DataKey::generate()?;
            let mut salt = [0u8; SALT_LEN];
            crypto::fill_random(&mut salt)?;
            let mut recipients = enc
                .recipients
                .iter()
                .map(|r| keys::wrap(&data_key, r))
                .collect::<Result<Vec<_>>>()?;
            // One key given twice, or two keys that claim one kid, would
            // make two stanzas of one kid, which a writer never writes.
            let mut kids = BTreeSet::new();
            if let Some(r) = recipients.iter().find(|r| !kids.insert(r.kid.as_str())) {
                return Err(two_of(&r.kid));
            }
            wrap_for(&enc.wrappers, &data_key, &mut recipients)?;
            let section = Encryption {
                algorithm: enc.algorithm.name().into(),
                salt: b64e(&salt),
                key_commitment: b64e(&data_key.commitment(&salt)),
                recipients,
                tensors: names.iter().cloned().collect(),
            };
            let payload = SealingKey::new(&data_key, enc.algorithm, segment_size, &salt);
            (Some(section), Some((data_key, payload, salt)), names)
        }
    };
    let mut protections = Vec::with_capacity(ordered.len());
    let mut trailer_len = 0usize;
    for (t, info) in &ordered {
        let p = if encrypted.contains(t.name) {
            Protection::Encrypted
        } else {
            Protection::Digested
        };
        trailer_len = trailer_len
            .checked_add(envelope::trailer_bytes(p, info, segment_size)?)
            .ok_or(Error::ValidationOverflow)?;
        protections.push(p);
    }
    if let Some(text) = &opts.policy {
        Policy::compile(text)?;
    }
    let envelope = Envelope {
        version: VERSION,
        segment_size,
        digest: DIGEST_SHA256.into(),
        encryption,
        policy: opts.policy.clone(),
        trailer_length: trailer_len as u64,
        trailer_sha256: b64e(&[0u8; DIGEST_LEN]),
    };
    Ok(Plan {
        tensors: ordered,
        metadata: opts.metadata.clone(),
        protected: Some(Protected {
            segment_size,
            protections,
            trailer_len,
            payload,
            sign_with: opts.sign_with.clone(),
            envelope,
            reserve: opts.reserve,
        }),
        piece: segment_size,
    })
}

impl Plan<'_> {
    fn data_len(&self) -> usize {
        self.tensors.last().map_or(0, |(_, i)| i.data_offsets.1)
    }

    fn infos(&self) -> impl Iterator<Item = (&str, &TensorInfo)> {
        self.tensors.iter().map(|(t, i)| (t.name, i))
    }

    /// The header bytes. With `trailer_sha` `None`, placeholders of the
    /// final length stand in for the trailer digest, MAC and signature.
    fn header(&self, trailer_sha: Option<&[u8]>) -> Result<Vec<u8>> {
        let Some(p) = &self.protected else {
            return header::encode(self.metadata.as_ref(), self.infos(), 0);
        };
        let mut envelope = p.envelope.clone();
        if let Some(sha) = trailer_sha {
            envelope.trailer_sha256 = b64e(sha);
        }
        let tensors: Vec<(String, TensorInfo)> = self
            .tensors
            .iter()
            .map(|(t, i)| (t.name.to_owned(), i.clone()))
            .collect();
        let seal = envelope::Seal {
            mac: p
                .payload
                .as_ref()
                .map(|(data_key, _, salt)| (data_key, salt)),
            sign_with: p.sign_with.as_ref(),
        };
        let meta = envelope::protected_metadata(
            self.metadata.clone().unwrap_or_default(),
            &envelope,
            &tensors,
            &seal,
            trailer_sha.is_none(),
        )?;
        header::encode(
            Some(&meta),
            self.infos(),
            header::slot_padding(&meta, p.reserve)?,
        )
    }

    /// Writes header, data and trailer to `sink`, counting tensor bytes
    /// written in `progress`.
    fn write(&self, sink: &dyn Sink, progress: &Tracker) -> Result<()> {
        let head = self.header(None)?;
        let Some(p) = &self.protected else {
            sink.write_at(0, &head)?;
            let mut pos = head.len() as u64;
            for (t, _) in &self.tensors {
                t.pieces(self.piece, |b| {
                    sink.write_at(pos, b)?;
                    pos += b.len() as u64;
                    progress.wrote(b.len())
                })?;
            }
            return progress.finish();
        };
        let base = head.len() as u64;
        // The trailer is in file order (FORMAT.md §3.3), as the plan is.
        let mut trailer = vec![0u8; p.trailer_len];
        let mut tpos = 0usize;
        for ((t, info), &prot) in self.tensors.iter().zip(&p.protections) {
            let n = envelope::trailer_bytes(prot, info, p.segment_size)?;
            let table = &mut trailer[tpos..tpos + n];
            tpos += n;
            let at = base + info.data_offsets.0 as u64;
            let emit = |off: usize, bytes: &[u8]| {
                sink.write_at(at + off as u64, bytes)?;
                progress.wrote(bytes.len())
            };
            match prot {
                Protection::Digested => digest_segments(t, p.segment_size, table, emit)?,
                Protection::Encrypted => {
                    let (_, payload, _) = p
                        .payload
                        .as_ref()
                        .expect("encrypted tensors have a payload key");
                    let key = payload.tensor_key(&Binding {
                        name: t.name,
                        dtype: t.dtype,
                        shape: t.shape,
                        offsets: info.data_offsets,
                    });
                    seal_segments(&key, t, p.segment_size, table, emit)?;
                }
            }
        }
        progress.finish()?;
        sink.write_at(base + self.data_len() as u64, &trailer)?;
        let sha = digest::digest(&digest::SHA256, &trailer);
        let head2 = self.header(Some(sha.as_ref()))?;
        debug_assert_eq!(head.len(), head2.len());
        if head.len() != head2.len() {
            return Err(Error::InvalidArgument(
                "header length changed while writing".into(),
            ));
        }
        sink.write_at(0, &head2)
    }

    fn total_len(&self) -> Result<usize> {
        let head = self.header(None)?.len();
        let trailer = self.protected.as_ref().map_or(0, |p| p.trailer_len);
        head.checked_add(self.data_len())
            .and_then(|n| n.checked_add(trailer))
            .ok_or(Error::ValidationOverflow)
    }
}

/// Segments handled at once: enough to keep every thread busy.
fn batch_segments() -> usize {
    (rayon::current_num_threads() * 4).max(4)
}

/// Digests a plain tensor into `table` and hands its bytes to `emit`. Bytes
/// in memory are hashed where they are and written in one go; bytes read
/// on demand go through one batch buffer.
fn digest_segments(
    t: &Input,
    seg: usize,
    table: &mut [u8],
    mut emit: impl FnMut(usize, &[u8]) -> Result<()>,
) -> Result<()> {
    let hash = |out: &mut [u8], chunk: &[u8]| {
        out.copy_from_slice(digest::digest(&digest::SHA256, chunk).as_ref())
    };
    if t.len == 0 {
        hash(table, &[]);
        return Ok(());
    }
    if let Plain::Bytes(data) = t.plain {
        table
            .par_chunks_mut(DIGEST_LEN)
            .zip(data.par_chunks(seg))
            .for_each(|(out, chunk)| hash(out, chunk));
        return emit(0, data);
    }
    let batch_bytes = batch_segments() * seg;
    let mut buf = vec![0u8; batch_bytes.min(t.len)];
    for (b, tags) in table.chunks_mut(batch_segments() * DIGEST_LEN).enumerate() {
        let start = b * batch_bytes;
        let buf = &mut buf[..batch_bytes.min(t.len - start)];
        buf.par_chunks_mut(seg)
            .zip(tags.par_chunks_mut(DIGEST_LEN))
            .enumerate()
            .try_for_each(|(i, (chunk, out))| {
                t.fill(start + i * seg, chunk)?;
                hash(out, chunk);
                Ok::<_, Error>(())
            })?;
        emit(start, buf)?;
    }
    Ok(())
}

/// Seals a tensor in batches of segments and hands each sealed batch to
/// `emit` in order. Two batch buffers alternate: while one is written out,
/// the next is filled and sealed in parallel. Memory stays at two batches.
fn seal_segments(
    key: &crypto::TensorSealingKey,
    t: &Input,
    seg: usize,
    table: &mut [u8],
    mut emit: impl FnMut(usize, &[u8]) -> Result<()> + Send,
) -> Result<()> {
    if t.len == 0 {
        table.copy_from_slice(&key.seal(0, &mut [])?);
        return Ok(());
    }
    let batch_segments = batch_segments();
    let batch_bytes = batch_segments * seg;
    // (first byte, length, tags) of each batch.
    let batches: Vec<(usize, usize, &mut [u8])> = table
        .chunks_mut(batch_segments * TAG_LEN)
        .enumerate()
        .map(|(b, tags)| {
            let start = b * batch_bytes;
            (start, batch_bytes.min(t.len - start), tags)
        })
        .collect();
    let cap = batch_bytes.min(t.len);
    let mut bufs = [vec![0u8; cap], vec![0u8; cap]];
    let seal_batch = |start: usize, out: &mut [u8], tags: &mut [u8]| -> Result<()> {
        let first = start / seg;
        out.par_chunks_mut(seg)
            .zip(tags.par_chunks_mut(TAG_LEN))
            .enumerate()
            .try_for_each(|(i, (dst, tag))| {
                t.fill(start + i * seg, dst)?;
                tag.copy_from_slice(&key.seal((first + i) as u64, dst)?);
                Ok(())
            })
    };
    let mut batches = batches.into_iter().enumerate().peekable();
    if let Some((_, (start, len, tags))) = batches.peek_mut() {
        seal_batch(*start, &mut bufs[0][..*len], tags)?;
    }
    while let Some((b, (start, len, _))) = batches.next() {
        let (done, next) = bufs.split_at_mut(1);
        let (done, next) = if b.is_multiple_of(2) {
            (&mut done[0], &mut next[0])
        } else {
            (&mut next[0], &mut done[0])
        };
        let sealed = &done[..len];
        let following = batches.peek_mut();
        let (written, sealed_next) = rayon::join(
            || emit(start, sealed),
            || match following {
                Some((_, (nstart, nlen, ntags))) => seal_batch(*nstart, &mut next[..*nlen], ntags),
                None => Ok(()),
            },
        );
        written?;
        sealed_next?;
    }
    Ok(())
}

/// Serializes to bytes.
pub fn serialize(tensors: &[TensorData], opts: &WriteOptions) -> Result<Vec<u8>> {
    let plan = plan(tensors, opts)?;
    let sink = VecSink(std::sync::Mutex::new(vec![0u8; plan.total_len()?]));
    plan.write(&sink, &Tracker::new(None))?;
    Ok(sink.0.into_inner().expect("not poisoned"))
}

/// Serializes to a file, atomically: readers see the old file or the new
/// one, and a writer killed midway leaves no file behind ([`AtomicFile`]).
pub fn serialize_to_file(tensors: &[TensorData], opts: &WriteOptions, path: &Path) -> Result<()> {
    write_to_file(plan(tensors, opts)?, opts, path, None)
}

/// [`serialize_to_file`] for tensors whose bytes may be filled on demand
/// ([`Plain::Fill`]), reporting the bytes written to `progress`.
pub(crate) fn serialize_inputs_to_file(
    tensors: Vec<Input>,
    opts: &WriteOptions,
    path: &Path,
    progress: Option<&dyn Progress>,
) -> Result<()> {
    write_to_file(plan_inputs(tensors, opts)?, opts, path, progress)
}

/// [`serialize_inputs_to_file`] for the tensors of a header read from
/// another file (a rekey, a migration): tensor `i` keeps its name, dtype
/// and shape, and its bytes come from `fills[i]`.
pub(crate) fn serialize_filled_to_file<F>(
    tensors: &[(String, TensorInfo)],
    fills: &[F],
    opts: &WriteOptions,
    path: &Path,
    progress: Option<&dyn Progress>,
) -> Result<()>
where
    F: Fn(usize, &mut [u8]) -> Result<()> + Sync,
{
    let inputs = tensors
        .iter()
        .zip(fills)
        .map(|((name, info), fill)| Input {
            name,
            dtype: info.dtype,
            shape: &info.shape,
            len: info.len(),
            plain: Plain::Fill(fill),
        })
        .collect();
    serialize_inputs_to_file(inputs, opts, path, progress)
}

/// Writes `plan` to a temporary file renamed over `path` once complete: an
/// error on the way (the progress hook's stop included) drops it unnamed.
fn write_to_file(
    plan: Plan,
    opts: &WriteOptions,
    path: &Path,
    progress: Option<&dyn Progress>,
) -> Result<()> {
    let progress = Tracker::new(progress);
    let tmp = AtomicFile::create(path)?;
    if plan.protected.is_some() {
        tmp.file.set_len(plan.total_len()? as u64)?;
        plan.write(&tmp.file, &progress)?;
    } else {
        // Plain files stream sequentially, as safetensors does.
        let mut w = std::io::BufWriter::with_capacity(1 << 20, &tmp.file);
        w.write_all(&plan.header(None)?)?;
        for (t, _) in &plan.tensors {
            t.pieces(plan.piece, |b| {
                w.write_all(b)?;
                progress.wrote(b.len())
            })?;
        }
        progress.finish()?;
        w.flush()?;
    }
    tmp.commit(opts.fsync)
}

pub use crate::atomic::AtomicFile;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{KeyKind, MAX_RECIPIENTS};
    use crate::reader::{read_header, LoadOptions, Reader};

    const W: TensorData<'static> = TensorData {
        name: "w",
        dtype: Dtype::F32,
        shape: &[2],
        data: &[0; 8],
    };

    fn oct() -> Jwk {
        Jwk::generate(KeyKind::Oct).unwrap()
    }

    fn encrypted_for(recipients: Vec<Jwk>) -> WriteOptions {
        WriteOptions {
            encrypt: Some(EncryptOptions {
                recipients,
                tensors: None,
                algorithm: Algorithm::ChaCha20Poly1305,
                wrappers: Vec::new(),
            }),
            ..Default::default()
        }
    }

    fn refusal(tensors: &[TensorData], opts: &WriteOptions) -> Error {
        serialize(tensors, opts).expect_err("the save must be refused")
    }

    #[test]
    fn tensors_are_checked_before_anything_is_written() {
        let e = refusal(&[W, W], &WriteOptions::default());
        assert!(
            matches!(&e, Error::InvalidArgument(m) if m.contains("given twice")),
            "{e:?}"
        );
        let short = TensorData { data: &[0; 7], ..W };
        assert!(matches!(
            refusal(&[short], &WriteOptions::default()),
            Error::TensorInvalidInfo(n) if n == "w"
        ));
        let reserved = WriteOptions {
            metadata: Some([("__cryptotensors_x".into(), "1".into())].into()),
            ..Default::default()
        };
        assert!(matches!(
            refusal(&[W], &reserved),
            Error::InvalidArgument(_)
        ));
    }

    /// Protected files take only the segment sizes the format allows; a
    /// plain file has no segments, so any size only sets its write pieces.
    #[test]
    fn segment_sizes_are_bounded_for_protected_files() {
        for bad in [
            1000,
            crypto::MIN_SEGMENT_SIZE / 2,
            crypto::MAX_SEGMENT_SIZE * 2,
            crypto::MIN_SEGMENT_SIZE + 1,
        ] {
            let opts = WriteOptions {
                segment_size: bad,
                ..encrypted_for(vec![oct()])
            };
            let e = refusal(&[W], &opts);
            assert!(
                matches!(&e, Error::InvalidArgument(m) if m.contains("segment size")),
                "{bad}: {e:?}"
            );
        }
        for good in [crypto::MIN_SEGMENT_SIZE, crypto::MAX_SEGMENT_SIZE] {
            let opts = WriteOptions {
                segment_size: good,
                ..encrypted_for(vec![oct()])
            };
            serialize(&[W], &opts).unwrap();
        }
        let plain = WriteOptions {
            segment_size: 1000,
            ..Default::default()
        };
        serialize(&[W], &plain).unwrap();
    }

    #[test]
    fn encryption_settings_are_checked() {
        let e = refusal(&[W], &encrypted_for(vec![]));
        assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
        let mut opts = encrypted_for(vec![oct()]);
        for sel in [vec!["nope".to_string()], vec![]] {
            opts.encrypt.as_mut().unwrap().tensors = Some(sel.into_iter().collect());
            let e = refusal(&[W], &opts);
            assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
        }
        let too_many = encrypted_for((0..=MAX_RECIPIENTS).map(|_| oct()).collect());
        let e = refusal(&[W], &too_many);
        assert!(matches!(e, Error::InvalidEnvelope(_)), "{e:?}");
        let policy_alone = WriteOptions {
            policy: Some("package cryptotensors\nallow := true".into()),
            ..Default::default()
        };
        // Neither encrypted nor signed: once written as a plain file with
        // the policy silently dropped.
        let e = refusal(&[W], &policy_alone);
        assert!(
            matches!(&e, Error::InvalidArgument(m) if m.contains("policy")),
            "{e:?}"
        );
        let signed = WriteOptions {
            sign_with: Some(Jwk::generate(KeyKind::Ed25519).unwrap()),
            ..policy_alone
        };
        let e = refusal(&[W], &signed);
        assert!(
            matches!(&e, Error::InvalidArgument(m) if m.contains("policy")),
            "{e:?}"
        );
    }

    #[test]
    fn only_private_signing_keys_sign() {
        let ed = Jwk::generate(KeyKind::Ed25519).unwrap();
        for k in [oct(), ed.public().unwrap()] {
            let opts = WriteOptions {
                sign_with: Some(k),
                ..Default::default()
            };
            assert!(matches!(refusal(&[W], &opts), Error::InvalidKey(_)));
        }
        let opts = WriteOptions {
            sign_with: Some(ed),
            ..Default::default()
        };
        serialize(&[W], &opts).unwrap();
    }

    /// A wrapper may not return a stanza under a kid already listed.
    #[test]
    fn a_wrapper_cannot_repeat_a_kid() {
        #[derive(Debug)]
        struct Again(Jwk);
        impl KeyWrapper for Again {
            fn wrap_data_key(&self, key: &DataKey) -> Result<crate::keys::Recipient> {
                keys::wrap(key, &self.0)
            }
        }
        let key = oct();
        let mut opts = encrypted_for(vec![key.clone()]);
        opts.encrypt.as_mut().unwrap().wrappers = vec![Arc::new(Again(key))];
        let e = refusal(&[W], &opts);
        assert!(
            matches!(&e, Error::InvalidArgument(m) if m.contains("two recipients")),
            "{e:?}"
        );
    }

    /// One key given twice, or two keys that claim one kid, would make two
    /// stanzas of one kid: refused, with nothing written.
    #[test]
    fn recipients_cannot_repeat_a_kid() {
        let key = oct();
        let mut other: serde_json::Value =
            serde_json::from_str(&oct().to_json(true).unwrap()).unwrap();
        other["kid"] = key.kid().into();
        let claims_its_kid = Jwk::parse(&other.to_string()).unwrap();
        for twice in [
            vec![key.clone(), key.clone()],
            vec![key.clone(), claims_its_kid],
        ] {
            let e = refusal(&[W], &encrypted_for(twice));
            assert!(
                matches!(&e, Error::InvalidArgument(m) if m.contains("two recipients have kid")),
                "{e:?}"
            );
        }
    }

    /// Zero-size tensors are written: no data bytes, but one (empty)
    /// segment each, whose tag or digest the trailer holds, so their
    /// emptiness is authenticated too.
    #[test]
    fn zero_size_tensors_have_one_segment() {
        let empty = TensorData {
            name: "e",
            dtype: Dtype::F32,
            shape: &[3, 0],
            data: &[],
        };
        let key = oct();
        let mut opts = encrypted_for(vec![key.clone()]);
        opts.encrypt.as_mut().unwrap().tensors = Some(["e".to_string()].into());
        let bytes = serialize(&[empty, W], &opts).unwrap();
        let (header, _) = read_header(&bytes).unwrap();
        let layout = crate::envelope::Layout::from_header(&header)
            .unwrap()
            .unwrap();
        assert_eq!(layout.trailer_len, TAG_LEN + crate::envelope::DIGEST_LEN);
        let reader = Reader::open(
            Arc::new(bytes),
            &LoadOptions {
                keys: vec![key],
                ..Default::default()
            },
        )
        .unwrap();
        reader.read_into("e", &mut []).unwrap();
        let mut w = [1u8; 8];
        reader.read_into("w", &mut w).unwrap();
        assert_eq!(w, [0; 8]);
    }

    /// A refused save to a path leaves nothing there.
    #[test]
    fn a_refused_save_leaves_no_file() {
        let dir = std::env::temp_dir().join(format!("ct-writer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.safetensors");
        let e = serialize_to_file(&[W, W], &WriteOptions::default(), &path).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)));
        assert!(!path.exists());
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "no temporary left"
        );
        std::fs::remove_dir(&dir).unwrap();
    }
}
