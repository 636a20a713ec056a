//! Key rotation without re-encryption (FORMAT.md §8.1): add or remove
//! recipients, replace a key-encryption key, re-sign or drop a signature.
//! Only the header changes; tensor bytes and the trailer are copied
//! unchanged, by the kernel where it can (`copy_file_range`).
//!
//! A rewrap keeps the data key: it changes who can unwrap it from this file
//! on, and revokes no one who ever held it (a removed recipient who opened
//! the file once, or anyone who kept the old header). [`crate::rekey`]
//! draws a new data key for that.
//!
//! The file is verified as a load verifies it ([`Reader::open`]: signature,
//! envelope, length, trailer digest, access policy, key) before anything is
//! written, under an exclusive lock on the file ([`lock_for_update`]), so
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

use crate::crypto::{self, DataKey};
use crate::envelope::{self, Layout, ENVELOPE_KEY, MAC_KEY, SIGNATURE_KEY};
use crate::error::{Error, Result};
use crate::header::{self, Header};
use crate::keys::{self, b64e, Jwk};
use crate::policy::Policy;
use crate::reader::{unlock, LoadOptions, Reader};
use crate::writer::{AtomicFile, DEFAULT_RESERVE};
use crate::{platform, sign};
use crate::{PreadFile, Source};

/// What to change.
#[derive(Debug, Clone, Default)]
pub struct RewrapOptions {
    /// Keys that open the file now (needed to change recipients).
    pub keys: Vec<Jwk>,
    /// Data keys unwrapped by external providers (see `LoadOptions`).
    pub data_keys: Vec<DataKey>,
    /// Public keys the current signature must verify under, if any.
    pub trusted_signers: Vec<Jwk>,
    /// The input document of the file's access policy (JSON text), which
    /// must allow the rewrap as it would a load; `None`: an empty object.
    pub policy_input: Option<String>,
    /// Recipients to add.
    pub add: Vec<Jwk>,
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
/// trusted signers and policy input; for an encrypted file, also returns
/// the data key (unwrapped again: a `Reader` keeps only keys derived from it).
pub(crate) fn open_for_update(path: &Path, writable: bool, opts: &RewrapOptions) -> Result<Opened> {
    let (file, writable) = lock_for_update(path, writable)?;
    let source = Arc::new(PreadFile::new(file.try_clone()?)?);
    let load = LoadOptions {
        keys: opts.keys.clone(),
        trusted_signers: opts.trusted_signers.clone(),
        policy_input: opts.policy_input.clone(),
        data_keys: opts.data_keys.clone(),
        ..Default::default()
    };
    let reader = Reader::open(source.clone(), &load)?;
    let layout = reader
        .layout()
        .ok_or_else(|| Error::InvalidArgument("the file is neither encrypted nor signed".into()))?;
    let data_key = match layout.encryption {
        Some(_) => Some(unlock(reader.header(), layout, &opts.keys, &opts.data_keys)?.0),
        None => None,
    };
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

/// A signed file must be re-signed or its signature explicitly dropped.
pub(crate) fn check_signature_choice(old: &Header, opts: &RewrapOptions) -> Result<()> {
    if old.metadata_value(SIGNATURE_KEY).is_some()
        && opts.sign_with.is_none()
        && !opts.drop_signature
    {
        return Err(Error::InvalidArgument(
            "the file is signed: pass sign_with= to re-sign it, or drop_signature=True".into(),
        ));
    }
    Ok(())
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

fn infos(h: &Header) -> impl Iterator<Item = (&str, &header::TensorInfo)> {
    h.tensors().iter().map(|(n, i)| (n.as_str(), i))
}

/// The new header of a file verified by [`open_for_update`] (`data_key`:
/// its data key, if encrypted): recipients, policy, MAC and signature
/// replaced. Everything else (tensors, user metadata, salt, commitment,
/// trailer digest) is carried over unchanged.
fn rewrap_header(old: &Header, data_key: Option<&DataKey>, opts: &RewrapOptions) -> Result<Header> {
    check_signature_choice(old, opts)?;
    let layout = Layout::from_header(old)?
        .ok_or_else(|| Error::InvalidArgument("the file is neither encrypted nor signed".into()))?;
    let mut envelope = layout.envelope.clone();
    let mut meta = old.metadata().cloned().unwrap_or_default();
    meta.remove(MAC_KEY);
    meta.remove(SIGNATURE_KEY);
    if envelope.encryption.is_none()
        && (!opts.add.is_empty() || !opts.remove.is_empty() || !opts.replace.is_empty())
    {
        return Err(Error::InvalidArgument(
            "the file is not encrypted: it has no recipients to change".into(),
        ));
    }
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
        for kid in &opts.remove {
            let before = enc.recipients.len();
            enc.recipients.retain(|r| &r.kid != kid);
            if enc.recipients.len() == before {
                return Err(Error::InvalidArgument(format!(
                    "no recipient has kid {kid:?}"
                )));
            }
        }
        for k in &opts.add {
            if enc.recipients.iter().any(|r| k.matches(&r.kid)) {
                return Err(Error::InvalidArgument(format!(
                    "{:?} is already a recipient",
                    k.kid()
                )));
            }
            enc.recipients.push(keys::wrap(dk, k)?);
        }
        if enc.recipients.is_empty() {
            return Err(Error::InvalidArgument(
                "removing every recipient would make the file unreadable".into(),
            ));
        }
        // Readers refuse more stanzas than this; never write such a file.
        envelope::check_recipients(&enc.recipients)?;
    }
    if let Some(policy) = &opts.policy {
        if let Some(text) = policy {
            if envelope.encryption.is_none() {
                return Err(Error::InvalidArgument(
                    "a policy needs an encrypted file".into(),
                ));
            }
            Policy::compile(text)?;
        }
        envelope.policy = policy.clone();
    }
    meta.insert(
        ENVELOPE_KEY.into(),
        serde_json::to_string(&envelope).expect("JSON"),
    );
    let tensors = old.tensors().to_vec();
    if let (Some(enc), Some(dk)) = (&layout.encryption, data_key) {
        let h = Header::from_parts(Some(meta.clone()), tensors.clone())?;
        let mac = crypto::header_mac(dk, &enc.salt, &envelope::mac_input(&h));
        meta.insert(MAC_KEY.into(), b64e(&mac));
    }
    if let Some(k) = &opts.sign_with {
        let h = Header::from_parts(Some(meta.clone()), tensors.clone())?;
        meta.insert(
            SIGNATURE_KEY.into(),
            sign::sign(&envelope::signature_input(&h), k)?,
        );
    }
    if envelope.encryption.is_none() && !meta.contains_key(SIGNATURE_KEY) {
        return Err(Error::InvalidArgument(
            "dropping the only signature of an unencrypted file would leave nothing to protect it"
                .into(),
        ));
    }
    Header::from_parts(Some(meta), tensors)
}

#[cfg(test)]
mod tests {
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
                algorithm: crypto::Algorithm::Aes256Gcm,
                external: None,
            }),
            policy,
            segment_size,
            reserve: DEFAULT_RESERVE,
            ..Default::default()
        };
        serialize_to_file(&t, &opts, path).unwrap();
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
    pub(crate) fn transit(ciphertext: &str) -> keys::Recipient {
        keys::Recipient::parse_list(&format!(
            r#"[{{"kid":"model-kek","alg":"vault-transit","ciphertext":"{ciphertext}"}}]"#
        ))
        .unwrap()
        .remove(0)
    }

    fn recipients_of(path: &Path, dk: &DataKey) -> Vec<keys::Recipient> {
        let src = Arc::new(PreadFile::new(File::open(path).unwrap()).unwrap());
        let opts = LoadOptions {
            data_keys: vec![dk.clone()],
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
        let dk = DataKey::generate().unwrap();
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
                algorithm: crypto::Algorithm::Aes256Gcm,
                external: Some(crate::writer::ExternalRecipients {
                    data_key: dk.clone(),
                    stanzas: vec![v1.clone()],
                }),
            }),
            reserve: DEFAULT_RESERVE,
            ..Default::default()
        };
        serialize_to_file(&t, &opts, &path).unwrap();
        let with = |replace| RewrapOptions {
            data_keys: vec![dk.clone()],
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
        let now = recipients_of(&path, &dk);
        assert_eq!(now.len(), 2);
        assert_eq!(now[1], v2);
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
