//! Key rotation without re-encryption (FORMAT.md §8.1): add or remove
//! recipients, replace a key-encryption key, re-sign or drop a signature.
//! Only the header changes; tensor bytes and the trailer are copied
//! unchanged, by the kernel where it can (`copy_file_range`).
//!
//! A rewrap keeps the data key: it changes who can unwrap it from this file
//! on, and revokes no one who ever held it (a removed recipient who opened
//! the file once, or anyone who kept the old header). [`crate::rekey_file`]
//! draws a new data key for that.
//!
//! The file is verified as a load verifies it ([`Reader::open`]: signature,
//! envelope, length, trailer digest, access policy, key) before anything is
//! written, under an exclusive lock on the file (`lock_for_update`), so
//! that concurrent rewraps of one file apply one after the other.
//!
//! A crash at any moment leaves the old file or the new one. When the new
//! metadata fits in the old metadata's slot and that slot lies in the
//! file's first page (writers pad it to end there, FORMAT.md §2), the slot
//! is rewritten in place by one single-page write, which a killed process
//! never leaves half done. Otherwise the new header and the unchanged bytes
//! go to a temporary file renamed over the target.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use crate::crypto::DataKey;
use crate::envelope::{self, Layout, MAC_KEY, SIGNATURE_KEY};
use crate::error::{Error, Result};
use crate::header::{self, Header};
use crate::keys::{self, Jwk, KeyWrapper, Pinned, Providers};
use crate::platform;
use crate::policy::Policy;
use crate::reader::{LoadOptions, Reader};
use crate::writer::{self, AtomicFile, DEFAULT_RESERVE};
use crate::{PreadFile, Source};

/// What to change.
#[derive(Debug, Clone, Default)]
pub struct RewrapOptions {
    /// Keys that open the file now (needed to change recipients).
    pub keys: Vec<Jwk>,
    /// Key providers, asked when `keys` do not open the file (see
    /// `LoadOptions`).
    pub providers: Option<Arc<dyn Providers>>,
    /// Public keys the current signature must verify under, if any.
    pub trusted_signers: Vec<Jwk>,
    /// The input document of the file's access policy (JSON text), which
    /// must allow the rewrap as it would a load; `None`: an empty object.
    pub policy_input: Option<String>,
    /// Recipients to add, by key.
    pub add: Vec<Jwk>,
    /// Recipients to add whose stanza a key wrapper makes from the data
    /// key (an HSM, a key service), after `add`. Each must name its kid
    /// ([`KeyWrapper::kid`]), the kid the plan adds, and return a stanza of
    /// that kid.
    pub add_wrappers: Vec<Arc<dyn KeyWrapper>>,
    /// Kids of recipients to remove.
    pub remove: Vec<String>,
    /// Stanzas to replace, each `(old, new)`: `old` (exactly as in the
    /// file) gives way to `new`, in its place. `new` wraps the same data
    /// key, made by whoever holds the key-encryption key (a Transit
    /// `rewrap` to the key's latest version); it is checked with
    /// [`keys::Recipient::check`], and must keep `old`'s kid and alg.
    pub replace: Vec<(keys::Recipient, keys::Recipient)>,
    /// Sign the new header with this Ed25519 or P-256 private key.
    pub sign_with: Option<Jwk>,
    /// Write the new header unsigned even though the file was signed.
    pub drop_signature: bool,
    /// Replace the access policy: `Some(Some(rego))` sets it,
    /// `Some(None)` removes it, `None` keeps it.
    pub policy: Option<Option<String>>,
    /// Flush to disk before returning (durability across power loss).
    pub fsync: bool,
}

/// A file opened for a read-modify-write: locked, and verified as a load
/// verifies it. The lock lasts as long as `file`.
pub(crate) struct Opened {
    /// The locked file (read-write when it was asked for and allowed).
    pub(crate) file: File,
    pub(crate) writable: bool,
    pub(crate) reader: Reader,
    /// The data key of an encrypted file.
    pub(crate) data_key: Option<DataKey>,
    /// Where the tensor data starts.
    pub(crate) data_start: u64,
}

/// Opens `path` and takes an exclusive `flock` on it, waiting for any other
/// rewrap or rekey of the file to finish. A process that held the lock may
/// have renamed a new file over the path meanwhile: the path is then
/// opened again until the file locked is the one the path names. The lock
/// is advisory (only rewraps and rekeys take it; a save or a copy does not)
/// and, like `flock`, local to one machine.
pub(crate) fn lock_for_update(path: &Path, writable: bool) -> Result<(File, bool)> {
    for _ in 0..1000 {
        let (file, rw) = match writable {
            true => match OpenOptions::new().read(true).write(true).open(path) {
                Ok(f) => (f, true),
                Err(_) => (File::open(path)?, false),
            },
            false => (File::open(path)?, false),
        };
        file.lock()?;
        let (held, named) = (file.metadata()?, std::fs::metadata(path)?);
        if platform::same_file(&held, &named) {
            return Ok((file, rw));
        }
    }
    Err(Error::Io(std::io::Error::other(
        "the file kept being replaced while waiting for its lock",
    )))
}

/// Locks `path` and verifies it with [`Reader::open`] under `opts`' keys,
/// providers, trusted signers and policy input; for an encrypted file, also
/// returns the data key that open unwrapped (each identity is asked once).
pub(crate) fn open_for_update(path: &Path, writable: bool, opts: &RewrapOptions) -> Result<Opened> {
    let (file, writable) = lock_for_update(path, writable)?;
    let source = Arc::new(PreadFile::new(file.try_clone()?)?);
    let load = LoadOptions {
        keys: opts.keys.clone(),
        trusted_signers: opts.trusted_signers.clone(),
        policy_input: opts.policy_input.clone(),
        providers: opts.providers.clone(),
        // Not from the cache: a hit holds no data key.
        cache: false,
        ..Default::default()
    };
    let (reader, data_key) = Reader::open_keyed(source.clone(), &load)?;
    let layout = reader
        .layout()
        .ok_or_else(|| Error::InvalidArgument("the file is neither encrypted nor signed".into()))?;
    if layout.encryption.is_some() != data_key.is_some() {
        return Err(Error::Integrity);
    }
    // Reader::open checked that the file is exactly header, data and trailer.
    let data_start = source.len() - reader.header().data_len() as u64 - layout.trailer_len as u64;
    Ok(Opened {
        file,
        writable,
        reader,
        data_key,
        data_start,
    })
}

/// What happens to a part of the header in a rewrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// Absent before and after.
    Absent,
    /// Carried over unchanged.
    Kept,
    /// Written anew (a policy set, a header re-signed).
    Set,
    /// Removed.
    Removed,
}

/// What a rewrap with given options would change in a file, decided from
/// its header alone: the one statement of the rules (FORMAT.md §8.1) that
/// a rewrap, a rekey and a caller previewing them (the CLI, before it
/// writes any file of a model) share. The header is not verified here; a
/// rewrap verifies the file before it applies the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewrapPlan {
    /// The file is encrypted (it has recipients).
    pub encrypted: bool,
    /// The file is signed now.
    pub signed: bool,
    /// Kids of the recipients that stay, in the file's order.
    pub kept: Vec<String>,
    /// Kids of the recipients added.
    pub added: Vec<String>,
    /// Kids of the recipients removed.
    pub removed: Vec<String>,
    /// What happens to the signature.
    pub signature: Change,
    /// What happens to the access policy.
    pub policy: Change,
}

impl Change {
    /// `absent`, `kept`, `set` or `removed`.
    pub fn name(self) -> &'static str {
        match self {
            Change::Absent => "absent",
            Change::Kept => "kept",
            Change::Set => "set",
            Change::Removed => "removed",
        }
    }
}

/// Why a rewrap is refused, decided from the header and the options alone:
/// a caller can word each in its own terms (the CLI names its flags).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The file is neither encrypted nor signed: there is nothing to rewrap.
    Unprotected,
    /// The file is signed, and the options neither re-sign it nor drop the signature.
    SignedNeedsChoice,
    /// Recipients to add or remove, but the file is not encrypted.
    NotEncrypted,
    /// A policy for a file that is not encrypted.
    PolicyNeedsEncryption,
    /// Dropping the only signature of a file that is not encrypted.
    LastProtection,
    /// No recipient has this kid.
    UnknownKid(String),
    /// This key is already a recipient (its kid).
    AlreadyRecipient(String),
    /// Every recipient would be removed.
    NoRecipientLeft,
    /// A key wrapper to add names no kid, so the plan cannot say whom it adds.
    WrapperWithoutKid,
}

impl Refusal {
    /// A stable name for the kind of refusal.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Unprotected => "unprotected",
            Refusal::SignedNeedsChoice => "signed",
            Refusal::NotEncrypted => "not_encrypted",
            Refusal::PolicyNeedsEncryption => "policy_needs_encryption",
            Refusal::LastProtection => "last_protection",
            Refusal::UnknownKid(_) => "unknown_kid",
            Refusal::AlreadyRecipient(_) => "already_recipient",
            Refusal::NoRecipientLeft => "no_recipient_left",
            Refusal::WrapperWithoutKid => "wrapper_without_kid",
        }
    }

    /// The kid the refusal is about, if any.
    pub fn kid(&self) -> Option<&str> {
        match self {
            Refusal::UnknownKid(k) | Refusal::AlreadyRecipient(k) => Some(k),
            _ => None,
        }
    }
}

impl From<Refusal> for Error {
    fn from(r: Refusal) -> Error {
        Error::InvalidArgument(match r {
            Refusal::Unprotected => "the file is neither encrypted nor signed".into(),
            Refusal::SignedNeedsChoice => {
                "the file is signed: pass sign_with= to re-sign it, or drop_signature=True".into()
            }
            Refusal::NotEncrypted => {
                "the file is not encrypted: it has no recipients to change".into()
            }
            Refusal::PolicyNeedsEncryption => "a policy needs an encrypted file".into(),
            Refusal::LastProtection => "dropping the only signature of an unencrypted file \
                                        would leave nothing to protect it"
                .into(),
            Refusal::UnknownKid(kid) => format!("no recipient has kid {kid:?}"),
            Refusal::AlreadyRecipient(kid) => format!("{kid:?} is already a recipient"),
            Refusal::NoRecipientLeft => {
                "removing every recipient would make the file unreadable".into()
            }
            Refusal::WrapperWithoutKid => {
                "a key wrapper to add must name its kid (a kid attribute)".into()
            }
        })
    }
}

/// The plan of a rewrap of the file whose header is `old` under `opts`,
/// or the refusal (as an `InvalidArgument`).
pub fn plan(old: &Header, opts: &RewrapOptions) -> Result<RewrapPlan> {
    decide(old, opts)?.map_err(Error::from)
}

/// [`plan`], with a refusal kept apart from an error in the header or the
/// options (a malformed envelope, a policy that does not compile). Each
/// wrapper of `add_wrappers` is asked its kid once, and nothing else.
pub fn decide(
    old: &Header,
    opts: &RewrapOptions,
) -> Result<std::result::Result<RewrapPlan, Refusal>> {
    let signed = old.metadata_value(SIGNATURE_KEY).is_some();
    if signed && opts.sign_with.is_none() && !opts.drop_signature {
        return Ok(Err(Refusal::SignedNeedsChoice));
    }
    let Some(layout) = Layout::from_header(old)? else {
        return Ok(Err(Refusal::Unprotected));
    };
    let Some(enc) = layout.envelope.encryption.as_ref() else {
        if !opts.add.is_empty()
            || !opts.add_wrappers.is_empty()
            || !opts.remove.is_empty()
            || !opts.replace.is_empty()
        {
            return Ok(Err(Refusal::NotEncrypted));
        }
        if matches!(opts.policy, Some(Some(_))) {
            return Ok(Err(Refusal::PolicyNeedsEncryption));
        }
        if opts.sign_with.is_none() {
            return Ok(Err(Refusal::LastProtection));
        }
        return Ok(Ok(RewrapPlan {
            encrypted: false,
            signed,
            kept: Vec::new(),
            added: Vec::new(),
            removed: Vec::new(),
            signature: Change::Set,
            policy: Change::Absent,
        }));
    };
    if let Some(kid) = opts
        .remove
        .iter()
        .find(|kid| !enc.recipients.iter().any(|r| &r.kid == *kid))
    {
        return Ok(Err(Refusal::UnknownKid(kid.clone())));
    }
    let kept: Vec<String> = enc
        .recipients
        .iter()
        .map(|r| r.kid.clone())
        .filter(|kid| !opts.remove.contains(kid))
        .collect();
    // A key already a recipient, or given twice, would make two stanzas of
    // one kid (FORMAT.md §8.1).
    let mut added: Vec<String> = Vec::new();
    for k in &opts.add {
        if kept.iter().chain(&added).any(|kid| k.matches(kid)) {
            return Ok(Err(Refusal::AlreadyRecipient(k.kid().to_owned())));
        }
        added.push(k.kid().to_owned());
    }
    for w in &opts.add_wrappers {
        let Some(kid) = w.kid() else {
            return Ok(Err(Refusal::WrapperWithoutKid));
        };
        // Wrappers' stanzas are found by kid: one already there, or added
        // twice, would make two stanzas of one kid.
        if kept.contains(&kid) || added.contains(&kid) {
            return Ok(Err(Refusal::AlreadyRecipient(kid)));
        }
        added.push(kid);
    }
    if kept.is_empty() && added.is_empty() {
        return Ok(Err(Refusal::NoRecipientLeft));
    }
    if let Some(Some(text)) = &opts.policy {
        Policy::compile(text)?;
    }
    let had_policy = layout.envelope.policy.is_some();
    Ok(Ok(RewrapPlan {
        encrypted: true,
        signed,
        kept,
        added,
        removed: opts.remove.clone(),
        signature: match (&opts.sign_with, signed) {
            (Some(_), _) => Change::Set,
            (None, true) => Change::Removed,
            (None, false) => Change::Absent,
        },
        policy: match (&opts.policy, had_policy) {
            (Some(Some(_)), _) => Change::Set,
            (Some(None), true) => Change::Removed,
            (None, true) => Change::Kept,
            (_, false) => Change::Absent,
        },
    }))
}

/// Rewrites the header of `src` into `dst` (which may be `src`).
pub fn rewrap_file(src: &Path, dst: &Path, opts: &RewrapOptions) -> Result<()> {
    // Opened for writing when the target is the source itself, so that the
    // header checked and the header rewritten are those of one file.
    let same = src == dst || same_file(src, dst);
    let opened = open_for_update(src, same, opts)?;
    let old = opened.reader.header();
    let data_start = opened.data_start;
    let new = rewrap_header(old, opened.data_key.as_ref(), opts)?;
    let source = opened.reader.source();
    if opened.writable {
        let mut json = vec![0u8; (data_start as usize).saturating_sub(header::PREFIX_LEN)];
        source.read_at(header::PREFIX_LEN as u64, &mut json)?;
        if let Some(slot) = in_place_slot(&json, old, &new)? {
            // One write: a short one would be a torn header, so it is an error
            // and never retried piecewise.
            let n = platform::write_at(&opened.file, &slot, header::PREFIX_LEN as u64)?;
            if n != slot.len() {
                return Err(Error::Io(std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    "short write while rewriting the header in place",
                )));
            }
            if opts.fsync {
                opened.file.sync_data()?;
            }
            return Ok(());
        }
    }
    let tmp = AtomicFile::create(dst)?;
    let data_len = source.len() - data_start;
    // Keep the data where it is when the new header fits in the old one's
    // room, so the file's layout (and the data's alignment) does not move.
    let tight = header::encode(new.metadata(), infos(&new), 0)?.len() as u64;
    let reserve = if tight <= data_start && (data_start - 8).is_multiple_of(8) {
        (data_start - tight) as usize
    } else {
        DEFAULT_RESERVE
    };
    let bytes = header::encode(new.metadata(), infos(&new), reserve)?;
    use std::io::Write;
    let mut out = &tmp.file;
    out.write_all(&bytes)?;
    // From the file that was verified and is locked, not from the path.
    let mut input = opened.file.try_clone()?;
    input.seek(SeekFrom::Start(data_start))?;
    let copied = std::io::copy(&mut input.take(data_len), &mut out)?;
    if copied != data_len {
        return Err(Error::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the file changed while it was rewrapped",
        )));
    }
    // Renamed while the old file is still locked: a rewrap waiting for the
    // lock then finds the path names another file, and opens that one.
    tmp.commit(opts.fsync)
}

pub(crate) fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => platform::same_file(&a, &b),
        _ => false,
    }
}

/// The new bytes of the metadata slot, `[PREFIX_LEN, PREFIX_LEN + n)`, when
/// the new header can replace the old one (whose JSON is `old_json`) by
/// rewriting that slot alone within [`header::IN_PLACE_END`]: the old JSON
/// must be exactly the encoding of `old` with its metadata padded, and the
/// new encoding must differ from it only inside the slot.
fn in_place_slot(old_json: &[u8], old: &Header, new: &Header) -> Result<Option<Vec<u8>>> {
    let (Some(old_meta), Some(new_meta)) = (old.metadata(), new.metadata()) else {
        return Ok(None);
    };
    let opening = header::metadata_json(old_meta)?;
    let Some(rest) = old_json.strip_prefix(opening.as_slice()) else {
        return Ok(None);
    };
    let slot = opening.len() + rest.iter().take_while(|&&b| b == b' ').count();
    let fresh = header::metadata_json(new_meta)?.len();
    if header::PREFIX_LEN + slot > header::IN_PLACE_END || fresh > slot {
        return Ok(None);
    }
    let bytes = header::encode(Some(new_meta), infos(new), slot - fresh)?;
    let bytes = &bytes[header::PREFIX_LEN..];
    if bytes.len() != old_json.len() || bytes[slot..] != old_json[slot..] {
        return Ok(None);
    }
    Ok(Some(bytes[..slot].to_vec()))
}

/// The key wrappers to add, each held to the kid the plan adds it under
/// (`plan.added`: the kids of `opts.add`, then the wrappers', in order).
pub(crate) fn pinned_to_plan(
    opts: &RewrapOptions,
    plan: &RewrapPlan,
) -> Result<Vec<Arc<dyn KeyWrapper>>> {
    let kids = plan.added.get(opts.add.len()..).unwrap_or_default();
    if kids.len() != opts.add_wrappers.len() {
        return Err(Error::InvalidArgument(
            "the rewrap plan does not list the key wrappers to add".into(),
        ));
    }
    Ok(opts
        .add_wrappers
        .iter()
        .zip(kids)
        .map(|(w, kid)| {
            Arc::new(Pinned {
                inner: w.clone(),
                kid: kid.clone(),
                alg: None,
            }) as Arc<dyn KeyWrapper>
        })
        .collect())
}

fn infos(h: &Header) -> impl Iterator<Item = (&str, &header::TensorInfo)> {
    h.tensors().iter().map(|(n, i)| (n.as_str(), i))
}

/// The new header of a file verified by [`open_for_update`] (`data_key`:
/// its data key, if encrypted): recipients, policy, MAC and signature
/// replaced. Everything else (tensors, user metadata, salt, commitment,
/// trailer digest) is carried over unchanged.
fn rewrap_header(old: &Header, data_key: Option<&DataKey>, opts: &RewrapOptions) -> Result<Header> {
    let planned = plan(old, opts)?;
    let layout = Layout::from_header(old)?
        .ok_or_else(|| Error::InvalidArgument("the file is neither encrypted nor signed".into()))?;
    let mut envelope = layout.envelope.clone();
    let mut meta = old.metadata().cloned().unwrap_or_default();
    meta.remove(MAC_KEY);
    meta.remove(SIGNATURE_KEY);
    if let (Some(enc), Some(dk)) = (envelope.encryption.as_mut(), data_key) {
        for (old, new) in &opts.replace {
            new.check()?;
            if (&old.kid, &old.alg) != (&new.kid, &new.alg) {
                return Err(Error::InvalidArgument(format!(
                    "a replacement of recipient {:?} must keep its kid and alg",
                    old.kid
                )));
            }
            let slot = enc
                .recipients
                .iter_mut()
                .find(|r| *r == old)
                .ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "no recipient stanza of kid {:?} is the one to replace",
                        old.kid
                    ))
                })?;
            *slot = new.clone();
        }
        enc.recipients.retain(|r| !opts.remove.contains(&r.kid));
        for k in &opts.add {
            enc.recipients.push(keys::wrap(dk, k)?);
        }
        let wrappers = pinned_to_plan(opts, &planned)?;
        writer::wrap_for(&wrappers, dk, &mut enc.recipients)?;
    }
    if let Some(policy) = &opts.policy {
        envelope.policy = policy.clone();
    }
    let tensors = old.tensors().to_vec();
    let seal = envelope::Seal {
        mac: layout
            .encryption
            .as_ref()
            .zip(data_key)
            .map(|(enc, dk)| (dk, &enc.salt)),
        sign_with: opts.sign_with.as_ref(),
    };
    let meta = envelope::protected_metadata(meta, &envelope, &tensors, &seal, false)?;
    Header::from_parts(Some(meta), tensors)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::keys::KeyKind;
    use crate::reader::{LoadOptions, Reader};
    use crate::writer::{serialize_to_file, EncryptOptions, TensorData, WriteOptions};
    use crate::Dtype;
    use std::sync::Arc;

    fn open(path: &Path, key: &Jwk) -> Result<Vec<u8>> {
        let src = Arc::new(PreadFile::new(File::open(path)?)?);
        let r = Reader::open(
            src,
            &LoadOptions {
                keys: vec![key.clone()],
                ..Default::default()
            },
        )?;
        let mut out = vec![0u8; 4096 * 3];
        r.read_into("w", &mut out)?;
        Ok(out)
    }

    /// Saves `data` as the U8 tensor "w", encrypted for `to`.
    fn save_for(path: &Path, to: &Jwk, data: &[u8], policy: Option<String>, segment_size: usize) {
        let t = [TensorData {
            name: "w",
            dtype: Dtype::U8,
            shape: &[data.len()],
            data,
        }];
        let opts = WriteOptions {
            encrypt: Some(EncryptOptions {
                recipients: vec![to.clone()],
                tensors: None,
                algorithm: crate::crypto::Algorithm::Aes256Gcm,
                wrappers: Vec::new(),
            }),
            policy,
            segment_size,
            reserve: DEFAULT_RESERVE,
            ..Default::default()
        };
        serialize_to_file(&t, &opts, path).unwrap();
    }

    /// Every refusal of the plan, from headers alone, and an accepted plan.
    #[test]
    fn the_plan_names_each_refusal() {
        let dir = std::env::temp_dir().join(format!("ct-rewrap-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let header_of = |name: &str, opts: &WriteOptions| {
            let path = dir.join(name);
            let t = [TensorData {
                name: "w",
                dtype: Dtype::U8,
                shape: &[3],
                data: &[1, 2, 3],
            }];
            serialize_to_file(&t, opts, &path).unwrap();
            crate::reader::read_header(&PreadFile::new(File::open(&path).unwrap()).unwrap())
                .unwrap()
                .0
        };
        let key = Jwk::generate(KeyKind::Oct).unwrap();
        let other = Jwk::generate(KeyKind::Oct).unwrap();
        let signer = Jwk::generate(KeyKind::Ed25519).unwrap();
        let encrypt = Some(EncryptOptions {
            recipients: vec![key.clone()],
            tensors: None,
            algorithm: crate::crypto::Algorithm::Aes256Gcm,
            wrappers: Vec::new(),
        });
        let plain = header_of("plain.safetensors", &WriteOptions::default());
        let signed_plain = header_of(
            "signed.safetensors",
            &WriteOptions {
                sign_with: Some(signer.clone()),
                ..Default::default()
            },
        );
        let enc = header_of(
            "enc.safetensors",
            &WriteOptions {
                encrypt: encrypt.clone(),
                ..Default::default()
            },
        );
        let signed_enc = header_of(
            "signed-enc.safetensors",
            &WriteOptions {
                encrypt,
                sign_with: Some(signer.clone()),
                ..Default::default()
            },
        );
        let refusal = |h: &Header, o: RewrapOptions| decide(h, &o).unwrap().unwrap_err();
        let resign = || RewrapOptions {
            sign_with: Some(signer.clone()),
            ..Default::default()
        };
        assert_eq!(refusal(&plain, resign()), Refusal::Unprotected);
        assert_eq!(
            refusal(&signed_enc, RewrapOptions::default()),
            Refusal::SignedNeedsChoice
        );
        let add = RewrapOptions {
            add: vec![other.clone()],
            ..resign()
        };
        assert_eq!(refusal(&signed_plain, add), Refusal::NotEncrypted);
        let policy = RewrapOptions {
            policy: Some(Some("package cryptotensors\nallow := true\n".into())),
            ..resign()
        };
        assert_eq!(
            refusal(&signed_plain, policy),
            Refusal::PolicyNeedsEncryption
        );
        let drop = RewrapOptions {
            drop_signature: true,
            ..Default::default()
        };
        assert_eq!(refusal(&signed_plain, drop), Refusal::LastProtection);
        let unknown = RewrapOptions {
            remove: vec!["nope".into()],
            ..Default::default()
        };
        assert_eq!(refusal(&enc, unknown), Refusal::UnknownKid("nope".into()));
        let again = RewrapOptions {
            add: vec![key.clone()],
            ..Default::default()
        };
        assert_eq!(
            refusal(&enc, again),
            Refusal::AlreadyRecipient(key.kid().into())
        );
        let wrapper = |w: WrapsWith| RewrapOptions {
            add_wrappers: vec![Arc::new(w)],
            ..Default::default()
        };
        assert_eq!(
            refusal(&enc, wrapper(WrapsWith::as_itself(&key))),
            Refusal::AlreadyRecipient(key.kid().into()),
            "a key wrapper of a recipient's kid"
        );
        let same_key_twice = RewrapOptions {
            add: vec![other.clone(), other.clone()],
            ..Default::default()
        };
        assert_eq!(
            refusal(&enc, same_key_twice),
            Refusal::AlreadyRecipient(other.kid().into()),
            "one key added twice"
        );
        let twice = RewrapOptions {
            add: vec![other.clone()],
            ..wrapper(WrapsWith::as_itself(&other))
        };
        assert_eq!(
            refusal(&enc, twice),
            Refusal::AlreadyRecipient(other.kid().into()),
            "a key and a key wrapper of one kid"
        );
        let unnamed = WrapsWith {
            key: other.clone(),
            kid: None,
        };
        assert_eq!(refusal(&enc, wrapper(unnamed)), Refusal::WrapperWithoutKid);
        assert!(matches!(
            Error::from(Refusal::WrapperWithoutKid),
            Error::InvalidArgument(_)
        ));
        let to_plain = RewrapOptions {
            sign_with: Some(signer.clone()),
            ..wrapper(WrapsWith::as_itself(&other))
        };
        assert_eq!(refusal(&signed_plain, to_plain), Refusal::NotEncrypted);
        let none_left = RewrapOptions {
            remove: vec![key.kid().into()],
            ..Default::default()
        };
        assert_eq!(refusal(&enc, none_left), Refusal::NoRecipientLeft);
        assert!(matches!(
            plan(&enc, &RewrapOptions { remove: vec!["nope".into()], ..Default::default() }),
            Err(Error::InvalidArgument(m)) if m == "no recipient has kid \"nope\""
        ));

        let replace = RewrapOptions {
            add: vec![other.clone()],
            remove: vec![key.kid().into()],
            sign_with: Some(signer.clone()),
            ..Default::default()
        };
        let p = plan(&signed_enc, &replace).unwrap();
        assert_eq!(
            p,
            RewrapPlan {
                encrypted: true,
                signed: true,
                kept: vec![],
                added: vec![other.kid().into()],
                removed: vec![key.kid().into()],
                signature: Change::Set,
                policy: Change::Absent,
            }
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    /// The writer and a rewrap assemble a protected header in one place
    /// (`envelope::protected_metadata`): re-signing a signed, encrypted file
    /// with the key that signed it (Ed25519 is deterministic) and changing
    /// nothing else reproduces the writer's header and data.
    #[test]
    fn resigning_unchanged_reproduces_the_writers_header() {
        let dir = std::env::temp_dir().join(format!("ct-rewrap-same-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (src, dst) = (dir.join("a.safetensors"), dir.join("b.safetensors"));
        let key = Jwk::generate(KeyKind::Oct).unwrap();
        let signer = Jwk::generate(KeyKind::Ed25519).unwrap();
        let data: Vec<u8> = (0..4096 * 2 + 5).map(|i| (i % 253) as u8).collect();
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
                algorithm: crate::crypto::Algorithm::Aes256Gcm,
                wrappers: Vec::new(),
            }),
            sign_with: Some(signer.clone()),
            policy: Some("package cryptotensors\nallow := true\n".into()),
            segment_size: 4096,
            reserve: DEFAULT_RESERVE,
            ..Default::default()
        };
        serialize_to_file(&t, &opts, &src).unwrap();
        let rw = RewrapOptions {
            keys: vec![key.clone()],
            sign_with: Some(signer),
            ..Default::default()
        };
        rewrap_file(&src, &dst, &rw).unwrap();
        let (a, b) = (std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
        // The same header (the rewrap spreads the padding differently) and data.
        let split = |f: &[u8]| {
            let n = 8 + u64::from_le_bytes(f[..8].try_into().unwrap()) as usize;
            let json: serde_json::Value = serde_json::from_slice(&f[8..n]).unwrap();
            (json, f[n..].to_vec())
        };
        assert_eq!(split(&a), split(&b));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn add_remove_recipients_keeps_data_bytes() {
        let dir = std::env::temp_dir().join(format!("ct-rewrap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.safetensors");
        let (a, b) = (
            Jwk::generate(KeyKind::Oct).unwrap(),
            Jwk::generate(KeyKind::X25519).unwrap(),
        );
        let data: Vec<u8> = (0..4096 * 3).map(|i| (i % 251) as u8).collect();
        save_for(&path, &a, &data, None, 4096);
        let before = std::fs::read(&path).unwrap();
        let rw = RewrapOptions {
            keys: vec![a.clone()],
            add: vec![b.public().unwrap()],
            remove: vec![a.kid().into()],
            ..Default::default()
        };
        rewrap_file(&path, &path, &rw).unwrap();
        let after = std::fs::read(&path).unwrap();
        assert_eq!(
            before.len(),
            after.len(),
            "the header fit in its reserved room"
        );
        let n = 8 + u64::from_le_bytes(before[..8].try_into().unwrap()) as usize;
        assert_eq!(
            before[n..],
            after[n..],
            "tensor bytes and trailer unchanged"
        );
        assert_eq!(open(&path, &b).unwrap(), data);
        assert!(matches!(open(&path, &a), Err(Error::KeyNotFound { .. })));
        // Removing the last recipient is refused; so is a wrong key.
        let none = RewrapOptions {
            keys: vec![b.clone()],
            remove: vec![b.kid().into()],
            ..Default::default()
        };
        assert!(rewrap_file(&path, &path, &none).is_err());
        let wrong = RewrapOptions {
            keys: vec![a.clone()],
            add: vec![a.clone()],
            ..Default::default()
        };
        assert!(matches!(
            rewrap_file(&path, &path, &wrong),
            Err(Error::KeyNotFound { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A Transit stanza (FORMAT.md §6.4) as a key service would make it.
    fn transit(ciphertext: &str) -> keys::Recipient {
        keys::Recipient::parse(&format!(
            r#"{{"kid":"model-kek","alg":"vault-transit","ciphertext":"{ciphertext}"}}"#
        ))
        .unwrap()
    }

    /// A key wrapper that wraps with `key` (so that `key` opens what it
    /// adds), naming `kid`, which may not be the kid its stanzas carry.
    #[derive(Debug)]
    pub(crate) struct WrapsWith {
        pub(crate) key: Jwk,
        pub(crate) kid: Option<String>,
    }

    impl WrapsWith {
        pub(crate) fn as_itself(key: &Jwk) -> WrapsWith {
            WrapsWith {
                key: key.clone(),
                kid: Some(key.kid().into()),
            }
        }
    }

    impl crate::keys::KeyWrapper for WrapsWith {
        fn wrap_data_key(&self, dk: &DataKey) -> Result<keys::Recipient> {
            keys::wrap(dk, &self.key)
        }

        fn kid(&self) -> Option<String> {
            self.kid.clone()
        }
    }

    /// A recipient added by a key wrapper gets the data key as the wrapper
    /// wraps it: the key behind the wrapper opens the rewrapped file. A
    /// wrapper whose stanza is not of the kid it names, two wrappers of one
    /// kid, and a wrapper of no kid are refused, and leave the file as it was.
    #[test]
    fn add_a_key_wrapper_recipient() {
        let dir = std::env::temp_dir().join(format!("ct-rewrap-wrapper-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.safetensors");
        let (a, hsm, c) = (
            Jwk::generate(KeyKind::Oct).unwrap(),
            Jwk::generate(KeyKind::Oct).unwrap(),
            Jwk::generate(KeyKind::Oct).unwrap(),
        );
        let data: Vec<u8> = (0..4096 * 3).map(|i| (i % 241) as u8).collect();
        save_for(&path, &a, &data, None, 4096);
        let before = std::fs::read(&path).unwrap();
        let with = |wrappers: Vec<WrapsWith>| RewrapOptions {
            keys: vec![a.clone()],
            add_wrappers: wrappers
                .into_iter()
                .map(|w| Arc::new(w) as Arc<dyn crate::keys::KeyWrapper>)
                .collect(),
            ..Default::default()
        };
        let mislabelled = WrapsWith {
            key: c.clone(),
            kid: Some("hsm-label".into()),
        };
        let e = rewrap_file(&path, &path, &with(vec![mislabelled])).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidArgument(m) if m.contains("hsm-label") && m.contains("another kid")),
            "{e:?}"
        );
        let twice = vec![WrapsWith::as_itself(&c), WrapsWith::as_itself(&c)];
        let e = rewrap_file(&path, &path, &with(twice)).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidArgument(m) if m.contains("already a recipient")),
            "{e:?}"
        );
        let unnamed = WrapsWith {
            key: c.clone(),
            kid: None,
        };
        let e = rewrap_file(&path, &path, &with(vec![unnamed])).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidArgument(m) if m.contains("kid")),
            "{e:?}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), before, "nothing written");
        assert!(matches!(open(&path, &hsm), Err(Error::KeyNotFound { .. })));

        rewrap_file(&path, &path, &with(vec![WrapsWith::as_itself(&hsm)])).unwrap();
        assert_eq!(open(&path, &hsm).unwrap(), data);
        assert_eq!(open(&path, &a).unwrap(), data);
        let kids: Vec<String> = recipients_of(&path, &a)
            .into_iter()
            .map(|r| r.kid)
            .collect();
        assert_eq!(kids, [a.kid(), hsm.kid()]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A key service as a key wrapper: it answers with a fixed stanza.
    #[derive(Debug)]
    struct Service(keys::Recipient);

    impl crate::keys::KeyWrapper for Service {
        fn wrap_data_key(&self, _key: &DataKey) -> Result<keys::Recipient> {
            Ok(self.0.clone())
        }
    }

    fn recipients_of(path: &Path, key: &Jwk) -> Vec<keys::Recipient> {
        let src = Arc::new(PreadFile::new(File::open(path).unwrap()).unwrap());
        let opts = LoadOptions {
            keys: vec![key.clone()],
            ..Default::default()
        };
        let r = Reader::open(src, &opts).unwrap();
        r.layout().unwrap().recipients().to_vec()
    }

    /// A key service's rewrap replaces its stanza in place, under the same
    /// data key (the MAC is made anew); a replacement that changes the kid
    /// or alg, or names a stanza the file does not hold, is refused.
    #[test]
    fn replace_a_key_service_stanza() {
        let dir = std::env::temp_dir().join(format!("ct-replace-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.safetensors");
        let a = Jwk::generate(KeyKind::Oct).unwrap();
        let data = [7u8; 4096 * 3];
        let t = [TensorData {
            name: "w",
            dtype: Dtype::U8,
            shape: &[4096 * 3],
            data: &data,
        }];
        let (v1, v2) = (
            transit("vault:v1:QUJDREVGR0hJSktMTU5PUFFSU1RVVg=="),
            transit("vault:v2:QUJDREVGR0hJSktMTU5PUFFSU1RVVg=="),
        );
        let opts = WriteOptions {
            encrypt: Some(EncryptOptions {
                recipients: vec![a.clone()],
                tensors: None,
                algorithm: crate::crypto::Algorithm::Aes256Gcm,
                wrappers: vec![Arc::new(Service(v1.clone()))],
            }),
            reserve: DEFAULT_RESERVE,
            ..Default::default()
        };
        serialize_to_file(&t, &opts, &path).unwrap();
        let with = |replace| RewrapOptions {
            keys: vec![a.clone()],
            replace,
            ..Default::default()
        };
        let mut renamed = v2.clone();
        renamed.kid = "other".into();
        for bad in [vec![(v1.clone(), renamed)], vec![(v2.clone(), v1.clone())]] {
            assert!(matches!(
                rewrap_file(&path, &path, &with(bad)),
                Err(Error::InvalidArgument(_))
            ));
        }
        rewrap_file(&path, &path, &with(vec![(v1.clone(), v2.clone())])).unwrap();
        let now = recipients_of(&path, &a);
        assert_eq!(now.len(), 2);
        assert!(now.contains(&v2) && !now.contains(&v1));
        assert_eq!(open(&path, &a).unwrap(), data);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn inode(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).unwrap().ino()
    }

    /// A rewrap whose metadata fits its slot in the first page rewrites the
    /// file in place (same inode, nothing after the first page changes);
    /// metadata beyond the first page (here a long policy) goes through a
    /// temporary file and a rename.
    #[test]
    fn in_place_when_the_slot_fits_else_renamed() {
        let dir = std::env::temp_dir().join(format!("ct-inplace-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (
            Jwk::generate(KeyKind::Oct).unwrap(),
            Jwk::generate(KeyKind::X25519).unwrap(),
        );
        let data = vec![5u8; 4096 * 3];
        let long = format!(
            "package cryptotensors\n# {}\ndefault allow := true\n",
            "x".repeat(5000)
        );
        for (policy, in_place) in [(None, true), (Some(long), false)] {
            let path = dir.join("m.safetensors");
            save_for(&path, &a, &data, policy, 0);
            let (before, ino) = (std::fs::read(&path).unwrap(), inode(&path));
            let rw = RewrapOptions {
                keys: vec![a.clone()],
                add: vec![b.public().unwrap()],
                ..Default::default()
            };
            rewrap_file(&path, &path, &rw).unwrap();
            let after = std::fs::read(&path).unwrap();
            assert_eq!(inode(&path) == ino, in_place);
            assert_eq!(before.len(), after.len());
            if in_place {
                let n = header::IN_PLACE_END;
                assert_eq!(before[n..], after[n..], "only the first page changed");
                assert_ne!(before[..n], after[..n]);
            }
            assert_eq!(open(&path, &b).unwrap(), data);
            assert_eq!(open(&path, &a).unwrap(), data);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
