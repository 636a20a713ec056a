//! Opening a file: header, envelope, trailer, signature, key unwrapping, and
//! reads of whole tensors or slices straight into caller-owned memory.
//!
//! Every check on the header happens in [`Reader::open`]; a `Reader` that
//! exists has a verified header and, for an encrypted file, a key that opens
//! its tensors only because the key commitment and header MAC checked out.
//! Reads then authenticate each segment as it is copied, into the caller's
//! buffer, so the bytes checked are the bytes returned (no re-read of a
//! mapping that might change underneath).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use rayon::prelude::*;
use ring::digest;

use crate::crypto::{Binding, DataKey, OpeningKey, TAG_LEN};
use crate::envelope::{self, Layout, Protection, DIGEST_LEN, MAC_KEY, SIGNATURE_KEY};
use crate::error::{Error, Result, SignatureFailure};
use crate::header::{self, Header, TensorInfo, PREFIX_LEN};
use crate::keys::{self, Jwk, Recipient};
use crate::keys::{Identity, Providers};
use crate::policy::Policy;
use crate::slice::SliceRuns;
use crate::{sign, Source};

/// What the loader brings: keys, trust and requirements.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Keys that may unwrap the file's data key.
    pub keys: Vec<Jwk>,
    /// Public keys whose signatures the loader trusts. When non-empty, every
    /// file must carry a valid signature by one of them.
    pub trusted_signers: Vec<Jwk>,
    /// Refuse files that are not encrypted.
    pub require_encryption: bool,
    /// The input document of the file's access policy (JSON text); `None`
    /// evaluates the policy on an empty object.
    pub policy_input: Option<String>,
    /// Key providers (an HSM, a key service), asked after `keys` and only
    /// when no key of the ring opens the file. A data key a provider
    /// returns is accepted only if it passes the key commitment and the
    /// header MAC, like a key unwrapped here.
    pub providers: Option<Arc<dyn Providers>>,
    /// Reuse the verification of an identical header opened before under
    /// identical options (see [`clear_cache`]).
    pub cache: bool,
}

impl LoadOptions {
    /// Refuses trusted signers that cannot sign (FORMAT.md §6, "Loader
    /// keys"): an oct or X25519 key there is a mistake that would otherwise
    /// show up only as "signature missing". Signing keys among the
    /// decryption keys are allowed (a key ring may hold both kinds) and
    /// simply match no stanza.
    pub fn check(&self) -> Result<()> {
        if let Some(k) = self.trusted_signers.iter().find(|k| !k.kind().signs()) {
            return Err(Error::InvalidKey(format!(
                "trusted signer {:?} is a {:?} key; signers are Ed25519 or P-256",
                k.kid(),
                k.kind()
            )));
        }
        Ok(())
    }
}

/// What verifying a header established: the signer and the payload key.
struct Verified {
    signer: Option<String>,
    payload: Option<Arc<OpeningKey>>,
}

/// Verified headers, keyed by a digest of the header bytes and of the
/// loader's keys, trust and requirements. The verdict depends on nothing
/// else (the trailer is still hashed at every open), so a hit is as good
/// as verifying again; it saves the unwrap, the signature and the MAC,
/// which matters when a loader opens the same file once per tensor.
type Cache = Mutex<HashMap<[u8; 32], Arc<Verified>>>;
const CACHE_CAPACITY: usize = 256;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// Forgets every cached verification (and so the data keys it holds).
pub fn clear_cache() {
    cache().lock().unwrap_or_else(|e| e.into_inner()).clear();
}

fn cache_key(json: &[u8], opts: &LoadOptions) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut put = |b: &[u8]| {
        ctx.update(&(b.len() as u64).to_be_bytes());
        ctx.update(b);
    };
    put(b"cryptotensors open cache v1");
    put(json);
    for k in &opts.keys {
        put(format!("{:?}", k.kind()).as_bytes());
        put(k.kid().as_bytes());
        put(k.thumbprint().as_bytes());
        // An OKP thumbprint covers only the public `x`: without the secret
        // here, a loader holding a recipient's public key would hit the
        // entry made by the holder of its private key.
        match k.secret() {
            Some(secret) => put(secret.expose()),
            None => put(b"public"),
        }
    }
    put(b"trusted");
    for k in &opts.trusted_signers {
        put(k.thumbprint().as_bytes());
    }
    put(&[u8::from(opts.require_encryption)]);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// An open file with a verified header.
pub struct Reader {
    source: Arc<dyn Source>,
    header: Header,
    data_start: u64,
    layout: Option<Layout>,
    trailer: Vec<u8>,
    payload: Option<Arc<OpeningKey>>,
    signer: Option<String>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("tensors", &self.header.tensors().len())
            .field("encrypted", &self.payload.is_some())
            .field("signer", &self.signer)
            .finish()
    }
}

/// Reads and parses the header of a source, without any key or check beyond
/// the format's own (for inspection).
pub fn read_header(source: &dyn Source) -> Result<(Header, u64)> {
    let (json, data_start) = read_header_bytes(source)?;
    Ok((Header::parse(&json)?, data_start))
}

fn read_header_bytes(source: &dyn Source) -> Result<(Vec<u8>, u64)> {
    let (json, declared) = read_header_present(source)?;
    if json.len() != declared {
        return Err(Error::InvalidHeaderLength);
    }
    Ok((json, (PREFIX_LEN + declared) as u64))
}

/// The header bytes a source holds, at most the declared length `N` (under
/// the cap, so nothing a file says is allocated beyond it, nor beyond the
/// file), and `N`: fewer bytes than `N` is a truncated file, which only an
/// inspection reads on.
pub(crate) fn read_header_present(source: &dyn Source) -> Result<(Vec<u8>, usize)> {
    let len = source.len();
    let mut prefix = [0u8; PREFIX_LEN];
    if len < PREFIX_LEN as u64 {
        return Err(Error::HeaderTooSmall);
    }
    source.read_at(0, &mut prefix)?;
    let declared = header::declared_len(&prefix)?;
    let present = usize::try_from(len - PREFIX_LEN as u64).unwrap_or(usize::MAX);
    let mut json = vec![0u8; declared.min(present)];
    source.read_at(PREFIX_LEN as u64, &mut json)?;
    Ok((json, declared))
}

impl Reader {
    /// Opens and verifies a file: format, envelope, trailer digest, signature,
    /// requirements, and for encrypted files the data key.
    pub fn open(source: Arc<dyn Source>, opts: &LoadOptions) -> Result<Reader> {
        Ok(Reader::open_keyed(source, opts)?.0)
    }

    /// [`Reader::open`], also returning the data key of an encrypted file
    /// when this open unwrapped it (not on a cache hit), for a rewrap.
    pub(crate) fn open_keyed(
        source: Arc<dyn Source>,
        opts: &LoadOptions,
    ) -> Result<(Reader, Option<DataKey>)> {
        opts.check()?;
        let (json, data_start) = read_header_bytes(source.as_ref())?;
        let header = Header::parse(&json)?;
        // Before anything the header says is believed: a legacy file looks
        // plain, and its ciphertext would load as weights.
        if crate::legacy::is_legacy(&header) {
            return Err(Error::LegacyFormat);
        }
        let key = opts.cache.then(|| cache_key(&json, opts));
        let hit = key.and_then(|k| {
            cache()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&k)
                .cloned()
        });
        // The signature first: for a signed file, any change to the header
        // is reported as what it is (a modified signed header), whatever
        // else it breaks.
        let signer = match header.metadata_value(SIGNATURE_KEY) {
            _ if hit.is_some() => hit.as_ref().and_then(|v| v.signer.clone()),
            Some(jws) => Some(sign::verify(
                jws,
                &envelope::signature_input(&header),
                &opts.trusted_signers,
            )?),
            None if !opts.trusted_signers.is_empty() => {
                return Err(Error::Signature(SignatureFailure::Missing))
            }
            None => None,
        };
        let layout = Layout::from_header(&header)?;
        let trailer_len = layout.as_ref().map_or(0, |l| l.trailer_len) as u64;
        let expected = data_start
            .checked_add(header.data_len() as u64)
            .and_then(|n| n.checked_add(trailer_len))
            .ok_or(Error::ValidationOverflow)?;
        if expected != source.len() {
            return Err(Error::MetadataIncompleteBuffer);
        }
        let mut trailer = vec![0u8; trailer_len as usize];
        if let Some(layout) = &layout {
            source.read_at(data_start + header.data_len() as u64, &mut trailer)?;
            let d = digest::digest(&digest::SHA256, &trailer);
            // Digests are public values: a plain comparison is enough.
            if d.as_ref() != layout.trailer_sha256 {
                return Err(Error::Integrity);
            }
        }
        if opts.require_encryption && layout.as_ref().is_none_or(|l| l.encryption.is_none()) {
            return Err(Error::EncryptionRequired);
        }
        // The policy runs at every open, cached or not (its input: time,
        // host, claims, changes between opens), and only once the file is
        // authenticated (FORMAT.md §4.4): a cache hit or a trusted signer's
        // signature before any key is unwrapped, so a denied loader never
        // asks a key service; else the header MAC, after the unwrap.
        let policy = layout.as_ref().and_then(|l| l.envelope.policy.as_deref());
        let enforce = || match policy {
            Some(text) => Policy::enforce(text, opts.policy_input.as_deref().unwrap_or("{}")),
            None => Ok(()),
        };
        let signed_by_trusted = signer.is_some() && !opts.trusted_signers.is_empty();
        let early = hit.is_some() || signed_by_trusted;
        if early {
            enforce()?;
        }
        // Only what the key ring opened is cached (the cache key covers the
        // ring, not the providers): a provider's answer is asked for again
        // at the next open, so unregistering a provider takes effect.
        let mut cacheable = true;
        let mut data_key = None;
        let payload = match &layout {
            Some(l) if l.encryption.is_some() => match &hit {
                Some(v) => v.payload.clone(),
                None => {
                    let u = unlock(&header, l, &opts.keys, opts.providers.as_deref())?;
                    cacheable = !u.by_provider;
                    data_key = Some(u.data_key);
                    Some(Arc::new(u.payload))
                }
            },
            _ => None,
        };
        if !early {
            // A policy requires encryption (envelope.rs), so the MAC has
            // just been verified: no payload key, no policy run.
            if payload.is_none() && policy.is_some() {
                return Err(Error::Integrity);
            }
            enforce()?;
        }
        if let (Some(k), None, true) = (key, &hit, cacheable) {
            let mut c = cache().lock().unwrap_or_else(|e| e.into_inner());
            if c.len() >= CACHE_CAPACITY {
                c.clear();
            }
            c.insert(
                k,
                Arc::new(Verified {
                    signer: signer.clone(),
                    payload: payload.clone(),
                }),
            );
        }
        let reader = Reader {
            source,
            header,
            data_start,
            layout,
            trailer,
            payload,
            signer,
        };
        Ok((reader, data_key))
    }

    /// The parsed header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The validated crypto layout, if the file has one.
    pub fn layout(&self) -> Option<&Layout> {
        self.layout.as_ref()
    }

    /// The kid of the verified signer, if the file is signed.
    pub fn signer(&self) -> Option<&str> {
        self.signer.as_deref()
    }

    /// Whether a tensor is encrypted.
    pub fn is_encrypted(&self, name: &str) -> bool {
        self.protection(name) == Some(Protection::Encrypted)
    }

    fn protection(&self, name: &str) -> Option<Protection> {
        let pos = self.header.position(name)?;
        Some(self.layout.as_ref()?.entries[pos].0)
    }

    /// Absolute file offset of a tensor whose bytes can be used as stored
    /// (no encryption and no digests to check), for zero-copy mapping.
    pub fn raw_offset(&self, name: &str) -> Result<Option<u64>> {
        let info = self.header.tensor(name)?;
        Ok(self
            .layout
            .is_none()
            .then(|| self.data_start + info.data_offsets.0 as u64))
    }

    /// The source the file is read from.
    pub fn source(&self) -> &Arc<dyn Source> {
        &self.source
    }

    /// Reads a whole tensor into `out`, decrypting or verifying each segment
    /// in parallel on the current rayon pool. On error `out` is wiped.
    pub fn read_into(&self, name: &str, out: &mut [u8]) -> Result<()> {
        let info = self.header.tensor(name)?;
        if out.len() != info.len() {
            return Err(Error::InvalidArgument(format!(
                "output buffer is {} bytes, tensor {name:?} is {}",
                out.len(),
                info.len()
            )));
        }
        self.read_range_into(name, 0, out)
    }

    /// Reads bytes `[offset, offset + out.len())` of a tensor into `out`.
    /// Ranges that start on a segment boundary and end on one (or at the
    /// tensor's end) are decrypted straight into `out`; others go through
    /// the slice path. This is what staged copies to a GPU use.
    pub fn read_range_into(&self, name: &str, offset: usize, out: &mut [u8]) -> Result<()> {
        let info = self.header.tensor(name)?;
        let end = offset
            .checked_add(out.len())
            .filter(|&e| e <= info.len())
            .ok_or_else(|| Error::InvalidSlice("range runs past the tensor".into()))?;
        let base = self.data_start + (info.data_offsets.0 + offset) as u64;
        let Some(seal) = self.sealer(name, info)? else {
            const CHUNK: usize = 1 << 22;
            return out
                .par_chunks_mut(CHUNK)
                .enumerate()
                .try_for_each(|(i, c)| self.source.read_at(base + (i * CHUNK) as u64, c));
        };
        let seg = seal.segment_size;
        if !offset.is_multiple_of(seg) || (!end.is_multiple_of(seg) && end != info.len()) {
            return self.read_slice_into(name, &SliceRuns::contiguous(offset, out.len()), out);
        }
        let first = offset / seg;
        let result = if out.is_empty() && info.is_empty() {
            seal.check(0, &mut [])
        } else {
            out.par_chunks_mut(seg)
                .enumerate()
                .try_for_each(|(i, chunk)| {
                    self.source.read_at(base + (i * seg) as u64, chunk)?;
                    seal.check(first + i, chunk)
                })
        };
        if result.is_err() {
            out.fill(0);
        }
        result
    }

    /// Reads the selection `runs` of a tensor into `out` (`runs.len` bytes).
    /// Only the segments that the runs touch are read and authenticated.
    pub fn read_slice_into(&self, name: &str, runs: &SliceRuns, out: &mut [u8]) -> Result<()> {
        let info = self.header.tensor(name)?;
        if out.len() != runs.len {
            return Err(Error::InvalidArgument(
                "output buffer does not match the slice".into(),
            ));
        }
        if runs
            .runs
            .iter()
            .any(|&(o, l)| o.checked_add(l).is_none_or(|e| e > info.len()))
        {
            return Err(Error::InvalidSlice("slice runs past the tensor".into()));
        }
        let base = self.data_start + info.data_offsets.0 as u64;
        let Some(seal) = self.sealer(name, info)? else {
            let mut pos = 0;
            for &(off, len) in &runs.runs {
                self.source
                    .read_at(base + off as u64, &mut out[pos..pos + len])?;
                pos += len;
            }
            return Ok(());
        };
        let seg = seal.segment_size;
        if let [(off, len)] = runs.runs[..] {
            let end = off + len;
            if off.is_multiple_of(seg) && (end.is_multiple_of(seg) || end == info.len()) {
                // One aligned run (e.g. a block of rows): no scratch needed.
                return self.read_range_into(name, off, out);
            }
            // One unaligned run: only its partial first and last segments
            // need scratch; the whole segments between decrypt in place.
            let mid_start = off.next_multiple_of(seg);
            let mid_end = if end == info.len() {
                end
            } else {
                end / seg * seg
            };
            if mid_start < mid_end {
                let (head, rest) = out.split_at_mut(mid_start - off);
                let (mid, tail) = rest.split_at_mut(mid_end - mid_start);
                let piece = |o: usize, buf: &mut [u8]| match buf.len() {
                    0 => Ok(()),
                    n => self.read_slice_into(name, &SliceRuns::contiguous(o, n), buf),
                };
                let result = piece(off, head)
                    .and_then(|_| self.read_range_into(name, mid_start, mid))
                    .and_then(|_| piece(mid_end, tail));
                if result.is_err() {
                    out.fill(0);
                }
                return result;
            }
        }
        let mut touched: Vec<usize> = Vec::new();
        for &(off, len) in &runs.runs {
            for s in off / seg..(off + len).div_ceil(seg) {
                if touched.last() != Some(&s) {
                    touched.push(s);
                }
            }
        }
        let mut scratch = vec![0u8; touched.len() * seg];
        let seg_len = |s: usize| seg.min(info.len() - s * seg);
        let result = scratch
            .par_chunks_mut(seg)
            .zip(&touched)
            .try_for_each(|(buf, &s)| {
                let buf = &mut buf[..seg_len(s)];
                self.source.read_at(base + (s * seg) as u64, buf)?;
                seal.check(s, buf)
            });
        if let Err(e) = result {
            out.fill(0);
            return Err(e);
        }
        let mut pos = 0;
        let mut t = 0;
        for &(off, len) in &runs.runs {
            let mut done = 0;
            while done < len {
                let at = off + done;
                let s = at / seg;
                while touched[t] != s {
                    t += 1;
                }
                let within = at - s * seg;
                let n = (seg_len(s) - within).min(len - done);
                out[pos..pos + n].copy_from_slice(&scratch[t * seg + within..t * seg + within + n]);
                pos += n;
                done += n;
            }
        }
        Ok(())
    }

    fn sealer(&self, name: &str, info: &TensorInfo) -> Result<Option<Sealer<'_>>> {
        let Some(layout) = &self.layout else {
            return Ok(None);
        };
        let pos = self
            .header
            .position(name)
            .ok_or_else(|| Error::TensorNotFound(name.into()))?;
        let (protection, offset) = layout.entries[pos];
        let key = match protection {
            Protection::Encrypted => {
                let payload = self.payload.as_ref().ok_or(Error::Integrity)?;
                Some(payload.tensor_key(&Binding {
                    name,
                    dtype: info.dtype,
                    shape: &info.shape,
                    offsets: info.data_offsets,
                }))
            }
            Protection::Digested => None,
        };
        let len = envelope::trailer_bytes(protection, info, layout.envelope.segment_size)?;
        Ok(Some(Sealer {
            key,
            table: &self.trailer[offset..offset + len],
            segment_size: layout.envelope.segment_size,
        }))
    }
}

/// Checks segments of one tensor against its slice of the trailer.
struct Sealer<'a> {
    key: Option<crate::crypto::TensorOpeningKey>,
    table: &'a [u8],
    segment_size: usize,
}

impl Sealer<'_> {
    /// Decrypts (encrypted tensors) or verifies (plain ones) segment `i` in place.
    fn check(&self, i: usize, buf: &mut [u8]) -> Result<()> {
        match &self.key {
            Some(key) => key.open(i as u64, &self.table[i * TAG_LEN..(i + 1) * TAG_LEN], buf),
            None => {
                let d = digest::digest(&digest::SHA256, buf);
                if d.as_ref() != &self.table[i * DIGEST_LEN..(i + 1) * DIGEST_LEN] {
                    buf.fill(0);
                    return Err(Error::Integrity);
                }
                Ok(())
            }
        }
    }
}

/// The data key of an encrypted file, checked, and who unwrapped it.
pub(crate) struct Unlocked {
    /// The data key.
    pub data_key: DataKey,
    /// The payload key derived from it.
    pub payload: OpeningKey,
    /// Whether a key provider (not the key ring) unwrapped it.
    pub by_provider: bool,
}

/// Unwraps the data key of an encrypted file, checks the key commitment
/// and the header MAC, and returns the data key with the payload key
/// derived from it (FORMAT.md §4.4 steps 4–6, §6.3).
///
/// Identities are asked in order: each key of `keys`, then, only when none
/// of those opened the file, each provider; each identity is asked once per
/// distinct stanza, and the first key that passes the checks ends the
/// search. Not-my-key answers are skipped; an identity whose stanza does
/// not open (or whose key fails the checks) makes the result
/// [`Error::Integrity`] unless a later one succeeds; any other error of an
/// identity ends the search with that error.
///
/// Work is bounded by what is distinct: a stanza identical to an earlier
/// one is not asked about again, nor is a data key already checked.
pub(crate) fn unlock(
    header: &Header,
    layout: &Layout,
    keys: &[Jwk],
    providers: Option<&dyn Providers>,
) -> Result<Unlocked> {
    let params = layout
        .encryption
        .as_ref()
        .ok_or_else(|| Error::InvalidArgument("the file is not encrypted".into()))?;
    let mac = header
        .metadata_value(MAC_KEY)
        .ok_or_else(|| Error::InvalidEnvelope("encrypted file has no header MAC".into()))?;
    let mac = keys::b64d("mac", mac).map_err(|_| Error::Integrity)?;
    let mac_input = envelope::mac_input(header);
    let recipients = layout.recipients();
    let verify = |dk: &DataKey| {
        OpeningKey::verify(
            dk,
            params.algorithm,
            layout.envelope.segment_size,
            &params.salt,
            &params.commitment,
            &mac_input,
            &mac,
        )
    };
    let distinct: Vec<&Recipient> = recipients
        .iter()
        .enumerate()
        .filter(|&(i, r)| !recipients[..i].contains(r))
        .map(|(_, r)| r)
        .collect();
    let mut search = Search {
        distinct: &distinct,
        verify: &verify,
        tried: false,
        checked: Vec::new(),
    };
    let ring = keys.iter().map(|k| k as &dyn Identity);
    if let Some((data_key, payload)) = search.run(ring)? {
        return Ok(Unlocked {
            data_key,
            payload,
            by_provider: false,
        });
    }
    if let Some(p) = providers {
        let listed = p.identities()?;
        if let Some((data_key, payload)) = search.run(listed.iter().map(|i| i.as_ref()))? {
            return Ok(Unlocked {
                data_key,
                payload,
                by_provider: true,
            });
        }
    }
    if search.tried {
        Err(Error::Integrity)
    } else {
        let mut kids: Vec<String> = Vec::new();
        for r in recipients {
            if !kids.contains(&r.kid) {
                kids.push(r.kid.clone());
            }
        }
        Err(Error::KeyNotFound { kids })
    }
}

/// The state of one [`unlock`] across its identities.
struct Search<'a, V: Fn(&DataKey) -> Result<OpeningKey>> {
    distinct: &'a [&'a Recipient],
    verify: &'a V,
    /// Whether any identity claimed a stanza.
    tried: bool,
    /// Data keys that failed the checks.
    checked: Vec<DataKey>,
}

impl<V: Fn(&DataKey) -> Result<OpeningKey>> Search<'_, V> {
    fn run<'i>(
        &mut self,
        identities: impl Iterator<Item = &'i dyn Identity>,
    ) -> Result<Option<(DataKey, OpeningKey)>> {
        for identity in identities {
            for stanza in self.distinct {
                let Some(answer) = identity.unwrap_stanza(stanza) else {
                    continue;
                };
                self.tried = true;
                let dk = match answer {
                    Ok(dk) => dk,
                    Err(Error::Integrity) => continue,
                    Err(e) => return Err(e),
                };
                if self.checked.iter().any(|c| c.0.expose() == dk.0.expose()) {
                    continue;
                }
                if let Ok(p) = (self.verify)(&dk) {
                    return Ok(Some((dk, p)));
                }
                self.checked.push(dk);
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Algorithm;
    use crate::keys::KeyWrapper;
    use crate::keys::{KeyKind, MAX_RECIPIENTS};
    use crate::writer::{serialize, EncryptOptions, TensorData, WriteOptions};
    use crate::Dtype;

    fn encrypted(tensors: &[TensorData], to: Vec<Jwk>) -> Arc<dyn Source> {
        let opts = WriteOptions {
            encrypt: Some(EncryptOptions {
                recipients: to,
                tensors: None,
                algorithm: Algorithm::Aes256Gcm,
                wrappers: Vec::new(),
            }),
            ..Default::default()
        };
        Arc::new(serialize(tensors, &opts).unwrap())
    }

    fn loader(keys: Vec<Jwk>) -> LoadOptions {
        LoadOptions {
            keys,
            cache: true,
            ..Default::default()
        }
    }

    /// A key wrapper that keeps the data key the writer gave it, so that a
    /// test can forge what a recipient could.
    #[derive(Debug)]
    struct Capture(Jwk, Mutex<Option<DataKey>>);

    impl KeyWrapper for Capture {
        fn wrap_data_key(&self, key: &DataKey) -> Result<Recipient> {
            *self.1.lock().unwrap() = Some(key.clone());
            keys::wrap(key, &self.0)
        }
    }

    /// `tensors` encrypted for `key` through a wrapper, with the data key.
    fn captured(tensors: &[TensorData], key: &Jwk) -> (Vec<u8>, DataKey) {
        let capture = Arc::new(Capture(key.clone(), Mutex::new(None)));
        let opts = WriteOptions {
            encrypt: Some(EncryptOptions {
                recipients: vec![],
                tensors: None,
                algorithm: Algorithm::Aes256Gcm,
                wrappers: vec![capture.clone()],
            }),
            ..Default::default()
        };
        let bytes = serialize(tensors, &opts).unwrap();
        let dk = capture.1.lock().unwrap().clone().unwrap();
        (bytes, dk)
    }

    /// A provider that answers every stanza with `answer` and counts the
    /// stanzas it is asked about.
    #[derive(Debug)]
    struct Counting {
        answer: fn(&Recipient) -> Option<Result<DataKey>>,
        asked: Mutex<Vec<Recipient>>,
    }

    impl Counting {
        fn new(answer: fn(&Recipient) -> Option<Result<DataKey>>) -> Arc<Counting> {
            Arc::new(Counting {
                answer,
                asked: Mutex::new(Vec::new()),
            })
        }
        fn asked(&self) -> usize {
            self.asked.lock().unwrap().len()
        }
    }

    impl Identity for Counting {
        fn unwrap_stanza(&self, stanza: &Recipient) -> Option<Result<DataKey>> {
            self.asked.lock().unwrap().push(stanza.clone());
            (self.answer)(stanza)
        }
    }

    /// The identity of an oct JWK, as a provider (a key the loader does not
    /// hold in its ring).
    #[derive(Debug)]
    struct Holds(Jwk, Mutex<usize>);

    impl Identity for Holds {
        fn unwrap_stanza(&self, stanza: &Recipient) -> Option<Result<DataKey>> {
            *self.1.lock().unwrap() += 1;
            self.0.unwrap_stanza(stanza)
        }
    }

    fn with_providers(keys: Vec<Jwk>, providers: Vec<Arc<dyn Identity>>) -> LoadOptions {
        LoadOptions {
            providers: Some(Arc::new(providers)),
            ..loader(keys)
        }
    }

    fn one_tensor() -> [TensorData<'static>; 1] {
        [TensorData {
            name: "w",
            dtype: Dtype::U8,
            shape: &[4],
            data: &[1, 2, 3, 4],
        }]
    }

    /// A key under the right kid but with other bytes, and one flipped
    /// ciphertext byte, fail with the same opaque error, Display and Debug
    /// alike: nothing says which it was.
    #[test]
    fn wrong_key_and_flipped_byte_fail_alike() {
        let key = Jwk::generate(KeyKind::Oct).unwrap();
        let mut forged: serde_json::Value =
            serde_json::from_str(&Jwk::generate(KeyKind::Oct).unwrap().to_json(true).unwrap())
                .unwrap();
        forged["kid"] = key.kid().into();
        let forged = Jwk::parse(&forged.to_string()).unwrap();
        let bytes = captured(&one_tensor(), &key).0;
        let e1 = Reader::open(Arc::new(bytes.clone()), &loader(vec![forged])).unwrap_err();
        let (header, data_start) = read_header(&bytes).unwrap();
        let at = data_start as usize + header.tensor("w").unwrap().data_offsets.0;
        let mut flipped = bytes;
        flipped[at + 1] ^= 0x40;
        let r = Reader::open(Arc::new(flipped), &loader(vec![key])).unwrap();
        let mut out = [0xAAu8; 4];
        let e2 = r.read_into("w", &mut out).unwrap_err();
        assert!(matches!(e1, Error::Integrity), "{e1:?}");
        assert!(matches!(e2, Error::Integrity), "{e2:?}");
        assert_eq!(
            (e1.to_string(), format!("{e1:?}")),
            (e2.to_string(), format!("{e2:?}"))
        );
        assert_eq!(out, [0; 4], "no unauthenticated plaintext is left");
    }

    /// The key ring first, providers only when it opens nothing; among
    /// providers the first that opens wins and later ones are not asked.
    #[test]
    fn identities_are_asked_in_order_and_stop_at_success() {
        let key = Jwk::generate(KeyKind::Oct).unwrap();
        let file: Arc<dyn Source> = Arc::new(captured(&one_tensor(), &key).0);
        let never = Counting::new(|_| None);
        let opts = with_providers(vec![key.clone()], vec![never.clone()]);
        Reader::open(file.clone(), &opts).unwrap();
        assert_eq!(
            never.asked(),
            0,
            "the ring opened it: providers are not asked"
        );
        let first = Arc::new(Holds(key.clone(), Mutex::new(0)));
        let later = Counting::new(|_| None);
        let opts = with_providers(vec![], vec![first.clone(), later.clone()]);
        let r = Reader::open(file.clone(), &opts).unwrap();
        let mut out = [0u8; 4];
        r.read_into("w", &mut out).unwrap();
        assert_eq!(out, [1, 2, 3, 4]);
        assert_eq!(*first.1.lock().unwrap(), 1);
        assert_eq!(later.asked(), 0, "an earlier provider opened it");
        // Nobody claims a stanza: KeyNotFound, after every provider was asked.
        let (a, b) = (Counting::new(|_| None), Counting::new(|_| None));
        let opts = with_providers(vec![], vec![a.clone(), b.clone()]);
        let e = Reader::open(file, &opts).unwrap_err();
        assert!(matches!(e, Error::KeyNotFound { .. }), "{e:?}");
        assert_eq!((a.asked(), b.asked()), (1, 1));
    }

    /// A provider's key that fails the commitment is not believed and the
    /// next identity is asked; what a provider opened is not cached (a later
    /// open without it finds no key).
    #[test]
    fn a_provider_key_failing_the_commitment_falls_through() {
        let key = Jwk::generate(KeyKind::Oct).unwrap();
        let file: Arc<dyn Source> = Arc::new(captured(&one_tensor(), &key).0);
        let liar = Counting::new(|_| Some(Ok(DataKey::from_bytes(&[7; 32]).unwrap())));
        let honest = Arc::new(Holds(key.clone(), Mutex::new(0)));
        let opts = with_providers(vec![], vec![liar.clone(), honest.clone()]);
        Reader::open(file.clone(), &opts).unwrap();
        assert_eq!((liar.asked(), *honest.1.lock().unwrap()), (1, 1));
        let e = Reader::open(file.clone(), &loader(vec![])).unwrap_err();
        assert!(matches!(e, Error::KeyNotFound { .. }), "{e:?}");
        // Only a liar: the file does not open, as an integrity failure.
        let opts = with_providers(vec![], vec![liar.clone()]);
        let e = Reader::open(file, &opts).unwrap_err();
        assert!(matches!(e, Error::Integrity), "{e:?}");
    }

    /// A provider answering with a key of the wrong length is an error that
    /// ends the open (no panic, no later provider asked), as is any failure
    /// of a provider other than "does not open".
    #[test]
    fn a_wrong_length_provider_key_is_an_error() {
        let key = Jwk::generate(KeyKind::Oct).unwrap();
        let file: Arc<dyn Source> = Arc::new(captured(&one_tensor(), &key).0);
        for len in [0usize, 16, 31, 33, 64] {
            static LEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            LEN.store(len, std::sync::atomic::Ordering::SeqCst);
            let short = Counting::new(|_| {
                let n = LEN.load(std::sync::atomic::Ordering::SeqCst);
                Some(crate::keys::provided_key(&vec![1u8; n]))
            });
            let later = Arc::new(Holds(key.clone(), Mutex::new(0)));
            let opts = with_providers(vec![], vec![short, later.clone()]);
            let e = Reader::open(file.clone(), &opts).unwrap_err();
            assert!(
                matches!(&e, Error::InvalidKey(m) if m.contains(&format!("{len} bytes"))),
                "{e:?}"
            );
            assert_eq!(*later.1.lock().unwrap(), 0);
        }
        let failing = Counting::new(|_| {
            Some(Err(Error::KeyProvider(
                std::io::Error::other("service down").into(),
            )))
        });
        let opts = with_providers(vec![], vec![failing]);
        let e = Reader::open(file, &opts).unwrap_err();
        assert!(
            matches!(&e, Error::KeyProvider(s) if s.to_string() == "service down"),
            "{e:?}"
        );
    }

    /// Each identity is asked once per distinct stanza, however often the
    /// file repeats it, in one open.
    #[test]
    fn a_provider_is_asked_once_per_distinct_stanza() {
        let key = Jwk::generate(KeyKind::Oct).unwrap();
        let other = Jwk::generate(KeyKind::Oct).unwrap();
        let (bytes, dk) = captured(&one_tensor(), &key);
        let file = with_recipients(&bytes, &dk, |l| {
            let mine = l[0].clone();
            let theirs = serde_json::to_value(keys::wrap(&dk, &other).unwrap()).unwrap();
            *l = vec![theirs.clone(), mine.clone(), theirs, mine.clone(), mine];
        });
        let none = Counting::new(|_| None);
        let opts = with_providers(vec![], vec![none.clone()]);
        assert!(Reader::open(file, &opts).is_err());
        let asked = none.asked.lock().unwrap();
        assert_eq!(asked.len(), 2);
        assert_ne!(asked[0], asked[1]);
    }

    /// A file whose envelope is edited (recipients replaced) and whose MAC is
    /// recomputed with its data key: what a recipient could forge.
    fn with_recipients(
        bytes: &[u8],
        dk: &DataKey,
        edit: impl Fn(&mut Vec<serde_json::Value>),
    ) -> Arc<dyn Source> {
        let (h, start) = read_header(&bytes.to_vec()).unwrap();
        let mut meta = h.metadata().unwrap().clone();
        let mut env: serde_json::Value =
            serde_json::from_str(&meta[envelope::ENVELOPE_KEY]).unwrap();
        let list = env["encryption"]["recipients"].as_array_mut().unwrap();
        edit(list);
        meta.insert(envelope::ENVELOPE_KEY.into(), env.to_string());
        let salt = keys::b64d("s", env["encryption"]["salt"].as_str().unwrap()).unwrap();
        let probe = Header::from_parts(Some(meta.clone()), h.tensors().to_vec()).unwrap();
        meta.insert(
            MAC_KEY.into(),
            keys::b64e(&crate::crypto::header_mac(
                dk,
                &salt,
                &envelope::mac_input(&probe),
            )),
        );
        let infos = h.tensors().iter().map(|(n, i)| (n.as_str(), i));
        let mut out = header::encode(Some(&meta), infos, 0).unwrap();
        out.extend_from_slice(&bytes[start as usize..]);
        Arc::new(out)
    }

    /// §6.3: thousands of stanzas under the loader's kid cost at most
    /// MAX_RECIPIENTS trial unwraps (more are refused unread), identical
    /// stanzas are tried once, and the first success ends the search.
    #[test]
    fn stanzas_are_bounded_deduplicated_and_stop_at_success() {
        let key = Jwk::generate(KeyKind::Oct).unwrap();
        let data = [3u8; 16];
        let t = [TensorData {
            name: "w",
            dtype: Dtype::U8,
            shape: &[16],
            data: &data,
        }];
        let (bytes, dk) = captured(&t, &key);
        let count = |file: Arc<dyn Source>| {
            keys::UNWRAPS.with(|n| n.set(0));
            let r = Reader::open(file, &loader(vec![key.clone()]));
            (r.map(|_| ()), keys::UNWRAPS.with(|n| n.get()))
        };
        let fake = |i: u8| {
            let wrong = Jwk::parse(&format!(
                r#"{{"kty":"oct","kid":{:?},"k":"{}"}}"#,
                key.kid(),
                keys::b64e(&[i; 32])
            ))
            .unwrap();
            serde_json::to_value(keys::wrap(&dk, &wrong).unwrap()).unwrap()
        };
        // 64 copies of one stanza that does not open: tried once.
        let f = with_recipients(&bytes, &dk, |l| {
            let bad = fake(1);
            *l = vec![bad; MAX_RECIPIENTS];
        });
        let (r, n) = count(f);
        assert!(matches!(r, Err(Error::Integrity)), "{r:?}");
        assert_eq!(n, 1);
        // 63 distinct forgeries, then the real stanza: all tried, in order.
        let f = with_recipients(&bytes, &dk, |l| {
            let real = l[0].clone();
            *l = (0..MAX_RECIPIENTS as u8 - 1).map(fake).collect();
            l.push(real);
        });
        let (r, n) = count(f);
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(n, MAX_RECIPIENTS);
        // The real stanza first: one unwrap, then done.
        let f = with_recipients(&bytes, &dk, |l| {
            l.extend((0..MAX_RECIPIENTS as u8 - 1).map(fake));
        });
        assert_eq!(count(f).1, 1);
        // One stanza too many: refused before any unwrap, as a format error.
        let f = with_recipients(&bytes, &dk, |l| {
            let real = l[0].clone();
            *l = vec![real; MAX_RECIPIENTS + 1];
        });
        let (r, n) = count(f);
        assert!(matches!(r, Err(Error::InvalidEnvelope(_))), "{r:?}");
        assert_eq!(n, 0);
    }

    /// Found by fuzzing (tests/FUZZING.md, crash 1): an OKP thumbprint covers
    /// only the public half, so the cache must not let a public key reuse
    /// what its private key opened.
    #[test]
    fn open_cache_does_not_serve_a_public_key() {
        let secret = Jwk::generate(KeyKind::X25519).unwrap();
        let public = secret.public().unwrap();
        let data = [7u8; 64];
        let t = [TensorData {
            name: "w",
            dtype: Dtype::U8,
            shape: &[64],
            data: &data,
        }];
        let file = encrypted(&t, vec![public.clone()]);
        let r = Reader::open(file.clone(), &loader(vec![secret])).unwrap();
        let mut out = [0u8; 64];
        r.read_into("w", &mut out).unwrap();
        assert_eq!(out, data);
        let err = Reader::open(file, &loader(vec![public])).unwrap_err();
        assert!(matches!(err, Error::KeyNotFound { .. }), "{err:?}");
    }

    /// Found by fuzzing (tests/FUZZING.md, crash 2): empty tensors share
    /// their offsets, and the trailer must follow file order among them.
    #[test]
    fn empty_encrypted_tensors_read_back() {
        let key = Jwk::generate(KeyKind::Oct).unwrap();
        let t = [
            TensorData {
                name: "a",
                dtype: Dtype::U8,
                shape: &[0],
                data: &[],
            },
            TensorData {
                name: "b",
                dtype: Dtype::F32,
                shape: &[0],
                data: &[],
            },
            TensorData {
                name: "c",
                dtype: Dtype::U8,
                shape: &[3],
                data: &[1, 2, 3],
            },
        ];
        let r = Reader::open(encrypted(&t, vec![key.clone()]), &loader(vec![key])).unwrap();
        for t in &t {
            let mut out = vec![0u8; t.data.len()];
            r.read_into(t.name, &mut out).unwrap();
            assert_eq!(out, t.data);
        }
    }

    /// An unaligned run reads whole segments in place and the partial ends
    /// through scratch; every piece is authenticated.
    #[test]
    fn unaligned_runs_match_and_fail_closed() {
        let key = Jwk::generate(KeyKind::Oct).unwrap();
        let seg = 4096;
        let data: Vec<u8> = (0..seg * 5 + 1000).map(|i| (i * 7 % 251) as u8).collect();
        let t = [TensorData {
            name: "w",
            dtype: Dtype::U8,
            shape: &[data.len()],
            data: &data,
        }];
        let opts = WriteOptions {
            encrypt: Some(EncryptOptions {
                recipients: vec![key.clone()],
                tensors: None,
                algorithm: Algorithm::Aes256Gcm,
                wrappers: Vec::new(),
            }),
            segment_size: seg,
            ..Default::default()
        };
        let mut bytes = serialize(&t, &opts).unwrap();
        let r = Reader::open(Arc::new(bytes.clone()), &loader(vec![key.clone()])).unwrap();
        for (off, len) in [
            (100, seg * 4),
            (1, data.len() - 1),
            (seg - 1, 2),
            (seg, seg + 5),
            (7, 3),
        ] {
            let mut out = vec![0u8; len];
            r.read_slice_into("w", &SliceRuns::contiguous(off, len), &mut out)
                .unwrap();
            assert_eq!(out, data[off..off + len], "({off}, {len})");
        }
        // A flipped byte in the third segment: a run over it fails and
        // returns nothing; a run beside it still reads.
        let start = bytes.len() - r.trailer.len() - data.len();
        bytes[start + 2 * seg + 9] ^= 1;
        let r = Reader::open(Arc::new(bytes), &loader(vec![key])).unwrap();
        let mut out = vec![0u8; seg * 4];
        let err = r.read_slice_into("w", &SliceRuns::contiguous(100, seg * 4), &mut out);
        assert!(matches!(err, Err(Error::Integrity)), "{err:?}");
        assert!(out.iter().all(|&b| b == 0));
        let mut out = vec![0u8; seg];
        r.read_slice_into("w", &SliceRuns::contiguous(3 * seg + 5, seg), &mut out)
            .unwrap();
        assert_eq!(out, data[3 * seg + 5..4 * seg + 5]);
    }
}
