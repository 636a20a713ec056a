//! Files of cryptotensors 0.2.3 (the paper's reference implementation),
//! read only to migrate them (FORMAT.md §"Files of cryptotensors 0.2.3").
//!
//! Such a file is a valid safetensors file whose `__metadata__` holds
//! `__crypto_keys__`, `__encryption__`, `__signature__` and `__policy__`.
//! [`is_legacy`] is what the ordinary reader uses to refuse it; [`LegacyReader`]
//! opens one strictly: the Ed25519 signature over its header against a key
//! the caller names (or, only when asked, not at all), every per-tensor data
//! key unwrapped under the caller's master key, and every tag checked before
//! a byte of a tensor is released. Keys come only from the caller, never from
//! a URL (`jku`) the file names.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ring::aead::{self, Aad, LessSafeKey, Nonce, Tag, UnboundKey};
use serde::Deserialize;
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, Result, SignatureFailure};
use crate::header::{self, unique_members, Header, TensorInfo, PREFIX_LEN};
use crate::Source;

/// Metadata key of the per-tensor wrapped keys, IVs and tags.
pub(crate) const ENCRYPTION_KEY: &str = "__encryption__";
/// Metadata key of the version, chunk size and key references.
pub(crate) const CRYPTO_KEYS_KEY: &str = "__crypto_keys__";
/// Metadata key of the Ed25519 header signature.
pub const SIGNATURE_KEY: &str = "__signature__";
/// Metadata key of the Rego access policy (not carried over).
pub(crate) const POLICY_KEY: &str = "__policy__";
/// The metadata keys of the old format, which are not user metadata.
pub(crate) const RESERVED_KEYS: [&str; 4] =
    [ENCRYPTION_KEY, CRYPTO_KEYS_KEY, SIGNATURE_KEY, POLICY_KEY];
/// The chunk size of version 2 when `chunk_size` is absent.
pub(crate) const DEFAULT_CHUNK_SIZE: usize = 2 * 1024 * 1024;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const ED25519_SIG_LEN: usize = 64;

/// Whether a header is a cryptotensors 0.2.3 file: plain-looking, but with
/// its encryption metadata. Such a file is not a plain file; its tensors
/// may be ciphertext.
pub fn is_legacy(header: &Header) -> bool {
    header
        .metadata()
        .is_some_and(|m| m.contains_key(ENCRYPTION_KEY) || m.contains_key(CRYPTO_KEYS_KEY))
}

/// The tensors a 0.2.3 header lists as encrypted (the members of its
/// `__encryption__` map), read without a key, for inspection only; `None`
/// when that map is missing or is not the old format's.
pub(crate) fn encrypted_names(header: &Header) -> Option<Vec<String>> {
    let text = header.metadata_value(ENCRYPTION_KEY)?;
    let entries: BTreeMap<String, RawEntry> = parse_strict(ENCRYPTION_KEY, text).ok()?;
    Some(entries.into_keys().collect())
}

/// The AEAD a legacy file names, for its master key and its data keys alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegacyAlgorithm {
    /// AES-256-GCM.
    Aes256Gcm,
    /// AES-128-GCM.
    Aes128Gcm,
    /// ChaCha20-Poly1305.
    ChaCha20Poly1305,
}

impl LegacyAlgorithm {
    fn parse(name: &str) -> Result<Self> {
        match name {
            "aes256gcm" => Ok(Self::Aes256Gcm),
            "aes128gcm" => Ok(Self::Aes128Gcm),
            "chacha20poly1305" => Ok(Self::ChaCha20Poly1305),
            other => Err(Error::Unsupported(format!(
                "cryptotensors 0.2.3 encryption algorithm {other:?}"
            ))),
        }
    }

    /// The name the old format writes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Aes256Gcm => "aes256gcm",
            Self::Aes128Gcm => "aes128gcm",
            Self::ChaCha20Poly1305 => "chacha20poly1305",
        }
    }

    fn ring(self) -> &'static aead::Algorithm {
        match self {
            Self::Aes256Gcm => &aead::AES_256_GCM,
            Self::Aes128Gcm => &aead::AES_128_GCM,
            Self::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }

    fn key_len(self) -> usize {
        self.ring().key_len()
    }
}

/// One key in the old form: a JWK with lowercase `kty` and standard,
/// padded base64.
#[derive(Clone)]
enum LegacyKey {
    Oct {
        kid: Option<String>,
        alg: Option<String>,
        k: Zeroizing<Vec<u8>>,
    },
    Okp {
        x: [u8; 32],
    },
}

/// Keys of the old package, as its users keep them: a JSON list of its
/// JWKs, a `{"keys": [...]}` set, or one JWK. Private halves (`d`) of
/// signing keys are ignored; secrets never appear in `Debug` or errors.
#[derive(Clone, Default)]
pub struct LegacyKeys(Vec<LegacyKey>);

impl std::fmt::Debug for LegacyKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LegacyKeys({} keys)", self.0.len())
    }
}

#[derive(Deserialize)]
struct RawKey {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    k: Option<String>,
    x: Option<String>,
}

fn b64(field: &str, s: &str) -> Result<Vec<u8>> {
    STANDARD
        .decode(s)
        .map_err(|_| bad(format!("{field} is not standard padded base64")))
}

fn key_b64(field: &str, s: &str) -> Result<Zeroizing<Vec<u8>>> {
    STANDARD
        .decode(s)
        .map(Zeroizing::new)
        .map_err(|_| Error::InvalidKey(format!("member {field:?} is not standard padded base64")))
}

impl LegacyKeys {
    /// Parses keys in the old form. Every entry must be an `oct` key with
    /// `k` or an `okp` key with `x`; anything else is an error naming only
    /// the entry's position and kid.
    pub fn parse(json: &str) -> Result<LegacyKeys> {
        let value: serde_json::Value = serde_json::from_str(json)
            .map_err(|_| Error::InvalidKey("legacy keys are not JSON".into()))?;
        let list = match value {
            serde_json::Value::Array(list) => list,
            serde_json::Value::Object(mut o) if o.contains_key("keys") => match o.remove("keys") {
                Some(serde_json::Value::Array(list)) => list,
                _ => return Err(Error::InvalidKey("\"keys\" is not a list".into())),
            },
            v @ serde_json::Value::Object(_) => vec![v],
            _ => {
                return Err(Error::InvalidKey(
                    "legacy keys: expected a list of JWKs".into(),
                ))
            }
        };
        let mut keys = Vec::with_capacity(list.len());
        for (i, v) in list.into_iter().enumerate() {
            let raw: RawKey = serde_json::from_value(v)
                .map_err(|_| Error::InvalidKey(format!("legacy key #{i} is not a JWK object")))?;
            keys.push(match (raw.kty.as_str(), raw.k, raw.x) {
                ("oct", Some(k), _) => {
                    let k = key_b64("k", &k)?;
                    if k.len() != 16 && k.len() != 32 {
                        return Err(Error::InvalidKey(format!(
                            "legacy key #{i} ({:?}): k is not 16 or 32 bytes",
                            raw.kid
                        )));
                    }
                    LegacyKey::Oct {
                        kid: raw.kid,
                        alg: raw.alg,
                        k,
                    }
                }
                ("okp", _, Some(x)) => {
                    let x = key_b64("x", &x)?;
                    let x = <[u8; 32]>::try_from(x.as_slice()).map_err(|_| {
                        Error::InvalidKey(format!("legacy key #{i}: x is not 32 bytes"))
                    })?;
                    LegacyKey::Okp { x }
                }
                _ => {
                    return Err(Error::InvalidKey(format!(
                        "legacy key #{i} ({:?}): expected kty \"oct\" with k or \"okp\" with x",
                        raw.kid
                    )))
                }
            });
        }
        Ok(LegacyKeys(keys))
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is no key.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn verifying(&self) -> impl Iterator<Item = &[u8; 32]> {
        self.0.iter().filter_map(|k| match k {
            LegacyKey::Okp { x } => Some(x),
            LegacyKey::Oct { .. } => None,
        })
    }

    /// The master keys that may serve a file naming `kid` and `alg`.
    fn masters<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: LegacyAlgorithm,
    ) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.0.iter().filter_map(move |key| match key {
            LegacyKey::Oct {
                kid: kk,
                alg: ka,
                k,
            } if k.len() == alg.key_len()
                && ka.as_deref().is_none_or(|a| a == alg.name())
                && kid.is_none_or(|want| kk.as_deref() == Some(want)) =>
            {
                Some(k.as_slice())
            }
            _ => None,
        })
    }
}

/// How the old header signature is checked.
#[derive(Debug, Clone)]
pub enum LegacyVerify {
    /// It must verify under one of these `okp` keys.
    Keys(LegacyKeys),
    /// Not checked: the caller said so explicitly. The ciphertext is still
    /// authenticated; the plain tensors and the header are not.
    Skip,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyRef {
    kty: String,
    alg: String,
    kid: Option<String>,
    #[allow(dead_code)]
    jku: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CryptoKeys {
    version: String,
    chunk_size: Option<u64>,
    enc: KeyRef,
    sign: KeyRef,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    wrapped_key: String,
    key_iv: String,
    key_tag: String,
    iv: Option<String>,
    tag: Option<String>,
    base_iv: Option<String>,
    tags: Option<String>,
}

/// How one encrypted tensor is sealed.
struct Sealed {
    key: LessSafeKey,
    /// Version 1: one (nonce, tag); version 2: the base nonce and one tag
    /// per chunk. An empty tensor of version 1 has none.
    base_nonce: Option<[u8; NONCE_LEN]>,
    tags: Vec<[u8; TAG_LEN]>,
    /// Bytes per tag: the tensor's length (version 1) or the chunk size.
    chunk: usize,
}

/// A cryptotensors 0.2.3 file, opened and checked.
pub struct LegacyReader {
    source: Arc<dyn Source>,
    header: Header,
    data_start: u64,
    version: u8,
    algorithm: LegacyAlgorithm,
    sealed: HashMap<String, Sealed>,
    signature_verified: bool,
    has_policy: bool,
}

impl std::fmt::Debug for LegacyReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegacyReader")
            .field("version", &self.version)
            .field("algorithm", &self.algorithm)
            .field("tensors", &self.header.tensors().len())
            .field("encrypted", &self.sealed.len())
            .finish()
    }
}

fn bad(why: impl Into<String>) -> Error {
    Error::InvalidEnvelope(format!("cryptotensors 0.2.3 header: {}", why.into()))
}

fn parse_strict<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T> {
    unique_members(text).map_err(|e| bad(format!("{what}: {e}")))?;
    serde_json::from_str(text).map_err(|e| bad(format!("{what}: {e}")))
}

fn fixed<const N: usize>(field: &str, s: &str) -> Result<[u8; N]> {
    <[u8; N]>::try_from(b64(field, s)?.as_slice())
        .map_err(|_| bad(format!("{field} is not {N} bytes")))
}

/// The bytes the old package signs: the compact JSON of the metadata less
/// the signature (keys sorted), then each tensor's dtype, shape and
/// offsets in increasing offset order.
fn signed_bytes(header: &Header) -> Result<Vec<u8>> {
    let metadata: BTreeMap<&str, &str> = header
        .metadata()
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.as_str() != SIGNATURE_KEY)
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut out = Vec::new();
    out.extend_from_slice(b"{\"__metadata__\":");
    out.extend(json(&metadata)?);
    for (name, info) in header.tensors() {
        out.push(b',');
        out.extend(json(name)?);
        out.extend_from_slice(b":{\"dtype\":");
        out.extend(json(&info.dtype.name())?);
        out.extend_from_slice(b",\"shape\":");
        out.extend(json(&info.shape)?);
        out.extend_from_slice(b",\"data_offsets\":");
        out.extend(json(&[info.data_offsets.0, info.data_offsets.1])?);
        out.push(b'}');
    }
    out.push(b'}');
    Ok(out)
}

fn json<T: serde::Serialize + ?Sized>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| Error::InvalidHeaderDeserialization(e.to_string()))
}

fn verify_signature(header: &Header, verify: &LegacyVerify) -> Result<bool> {
    let keys = match verify {
        LegacyVerify::Skip => return Ok(false),
        LegacyVerify::Keys(keys) => keys,
    };
    if keys.verifying().next().is_none() {
        return Err(Error::InvalidKey(
            "no Ed25519 (kty \"okp\") verifying key among the trusted legacy signers".into(),
        ));
    }
    let sig = header
        .metadata_value(SIGNATURE_KEY)
        .filter(|s| !s.is_empty())
        .ok_or(Error::Signature(SignatureFailure::Missing))?;
    let sig = b64("__signature__", sig)?;
    if sig.len() != ED25519_SIG_LEN {
        return Err(Error::Signature(SignatureFailure::Invalid));
    }
    let msg = signed_bytes(header)?;
    let ok = keys.verifying().any(|x| {
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, x)
            .verify(&msg, &sig)
            .is_ok()
    });
    if ok {
        Ok(true)
    } else {
        // The old format cannot tell "modified" from "someone else's key":
        // the signature carries no key id that the verifying key binds.
        Err(Error::Signature(SignatureFailure::Invalid))
    }
}

fn nonce_at(base: &[u8; NONCE_LEN], i: u64) -> Result<Nonce> {
    let counter = u32::from_be_bytes(base[8..].try_into().expect("4 bytes"));
    let next = u32::try_from(i)
        .ok()
        .and_then(|i| counter.checked_add(i))
        .ok_or_else(|| bad("the chunk counter overflows its 32 bits"))?;
    let mut n = *base;
    n[8..].copy_from_slice(&next.to_be_bytes());
    Ok(Nonce::assume_unique_for_key(n))
}

fn tags(field: &str, s: &str, count: usize) -> Result<Vec<[u8; TAG_LEN]>> {
    let raw = b64(field, s)?;
    if Some(raw.len()) != count.checked_mul(TAG_LEN) {
        return Err(bad(format!(
            "{field} holds {} bytes, expected {count} tags",
            raw.len()
        )));
    }
    Ok(raw
        .chunks_exact(TAG_LEN)
        .map(|c| c.try_into().expect("16 bytes"))
        .collect())
}

impl LegacyReader {
    /// Opens a legacy file: layout, strict crypto metadata, the signature
    /// (unless [`LegacyVerify::Skip`]), and every data key under the
    /// caller's master key. Fails with [`Error::InvalidArgument`] on a
    /// file that is not a legacy file.
    pub fn open(
        source: Arc<dyn Source>,
        keys: &LegacyKeys,
        verify: &LegacyVerify,
    ) -> Result<LegacyReader> {
        let len = source.len();
        if len < PREFIX_LEN as u64 {
            return Err(Error::HeaderTooSmall);
        }
        let mut prefix = [0u8; PREFIX_LEN];
        source.read_at(0, &mut prefix)?;
        let n = header::read_prefix(&prefix, len)?;
        let mut json = vec![0u8; n];
        source.read_at(PREFIX_LEN as u64, &mut json)?;
        let header = Header::parse(&json)?;
        let data_start = (PREFIX_LEN + n) as u64;
        if !is_legacy(&header) {
            return Err(Error::InvalidArgument(
                "not a cryptotensors 0.2.3 file (no __encryption__ or __crypto_keys__ metadata)"
                    .into(),
            ));
        }
        // A signature covers what one parser read: no repeated member at
        // any depth, so no other parser reads another header.
        let text = std::str::from_utf8(&json).map_err(|_| Error::InvalidHeader)?;
        if header.has_duplicate_keys() || unique_members(text).is_err() {
            return Err(bad("the header repeats a member name"));
        }
        if data_start.checked_add(header.data_len() as u64) != Some(len) {
            return Err(Error::MetadataIncompleteBuffer);
        }
        // The signature first: nothing else the header says is believed
        // before it verifies.
        let signature_verified = verify_signature(&header, verify)?;
        let meta = |k: &str| {
            header
                .metadata_value(k)
                .ok_or_else(|| bad(format!("{k} is missing")))
        };
        let ck: CryptoKeys = parse_strict(CRYPTO_KEYS_KEY, meta(CRYPTO_KEYS_KEY)?)?;
        let version: u8 = match ck.version.as_str() {
            "1" => 1,
            "2" => 2,
            v => {
                return Err(Error::Unsupported(format!(
                    "cryptotensors 0.2.3 format version {v:?}"
                )))
            }
        };
        let chunk = match (version, ck.chunk_size) {
            (1, None) => 0,
            (1, Some(_)) => return Err(bad("chunk_size in a version 1 file")),
            (_, None) => DEFAULT_CHUNK_SIZE,
            (_, Some(c)) => usize::try_from(c)
                .ok()
                .filter(|&c| c > 0 && c <= u32::MAX as usize)
                .ok_or_else(|| bad("chunk_size is not in 1..=2^32-1"))?,
        };
        if ck.enc.kty != "oct" {
            return Err(bad("enc.kty is not \"oct\""));
        }
        if ck.sign.kty != "okp" || ck.sign.alg != "ed25519" {
            return Err(Error::Unsupported(format!(
                "cryptotensors 0.2.3 signature {:?}/{:?}",
                ck.sign.kty, ck.sign.alg
            )));
        }
        let algorithm = LegacyAlgorithm::parse(&ck.enc.alg)?;
        let has_policy = match header.metadata_value(POLICY_KEY) {
            None => false,
            Some(p) => {
                parse_strict::<serde_json::Value>(POLICY_KEY, p)?;
                true
            }
        };
        let entries: BTreeMap<String, RawEntry> =
            parse_strict(ENCRYPTION_KEY, meta(ENCRYPTION_KEY)?)?;
        let masters: Vec<&[u8]> = keys.masters(ck.enc.kid.as_deref(), algorithm).collect();
        if masters.is_empty() {
            return Err(Error::KeyNotFound {
                kids: vec![ck.enc.kid.unwrap_or_else(|| "(no kid)".into())],
            });
        }
        // The master key that opens the first wrapped key must open them
        // all; a file with no encrypted tensor needs none.
        let mut master: Option<&[u8]> = None;
        let mut sealed = HashMap::with_capacity(entries.len());
        for (name, e) in entries {
            let info = header
                .tensor(&name)
                .map_err(|_| bad(format!("__encryption__ names no tensor {name:?}")))?;
            let key_len = algorithm.key_len();
            let wrapped = b64("wrapped_key", &e.wrapped_key)?;
            if wrapped.len() != key_len {
                return Err(bad(format!(
                    "wrapped_key of {name:?} is not {key_len} bytes"
                )));
            }
            let key_iv: [u8; NONCE_LEN] = fixed("key_iv", &e.key_iv)?;
            let key_tag: [u8; TAG_LEN] = fixed("key_tag", &e.key_tag)?;
            let unwrap = |mk: &[u8]| -> Option<Zeroizing<Vec<u8>>> {
                let k = LessSafeKey::new(UnboundKey::new(algorithm.ring(), mk).ok()?);
                let mut buf = Zeroizing::new(wrapped.clone());
                k.open_in_place_separate_tag(
                    Nonce::assume_unique_for_key(key_iv),
                    Aad::empty(),
                    Tag::from(key_tag),
                    &mut buf,
                    0..,
                )
                .ok()?;
                Some(buf)
            };
            let data_key = match master {
                Some(mk) => unwrap(mk).ok_or(Error::Integrity)?,
                None => {
                    let (mk, dk) = masters
                        .iter()
                        .find_map(|mk| unwrap(mk).map(|dk| (*mk, dk)))
                        .ok_or(Error::Integrity)?;
                    master = Some(mk);
                    dk
                }
            };
            let key = LessSafeKey::new(
                UnboundKey::new(algorithm.ring(), &data_key).map_err(|_| Error::Integrity)?,
            );
            let s = Self::sealing(version, chunk, info, &e, key)?;
            sealed.insert(name, s);
        }
        Ok(LegacyReader {
            source,
            header,
            data_start,
            version,
            algorithm,
            sealed,
            signature_verified,
            has_policy,
        })
    }

    fn sealing(
        version: u8,
        chunk: usize,
        info: &TensorInfo,
        e: &RawEntry,
        key: LessSafeKey,
    ) -> Result<Sealed> {
        let len = info.len();
        match (version, e) {
            (
                1,
                RawEntry {
                    iv: Some(iv),
                    tag: Some(tag),
                    base_iv: None,
                    tags: None,
                    ..
                },
            ) => {
                if len == 0 {
                    // Nothing to seal; the old format writes no IV or tag.
                    if !iv.is_empty() || !tag.is_empty() {
                        return Err(bad("an empty tensor of version 1 has an iv or a tag"));
                    }
                    return Ok(Sealed {
                        key,
                        base_nonce: None,
                        tags: Vec::new(),
                        chunk: 0,
                    });
                }
                Ok(Sealed {
                    key,
                    base_nonce: Some(fixed("iv", iv)?),
                    tags: vec![fixed("tag", tag)?],
                    chunk: len,
                })
            }
            (
                2,
                RawEntry {
                    iv: None,
                    tag: None,
                    base_iv: Some(base),
                    tags: Some(t),
                    ..
                },
            ) => {
                let count = len.div_ceil(chunk).max(1);
                let base: [u8; NONCE_LEN] = fixed("base_iv", base)?;
                nonce_at(&base, (count - 1) as u64)?;
                Ok(Sealed {
                    key,
                    base_nonce: Some(base),
                    tags: tags("tags", t, count)?,
                    chunk,
                })
            }
            _ => Err(bad(format!(
                "an __encryption__ entry does not have the members of version {version}"
            ))),
        }
    }

    /// The parsed header (its metadata still holds the old keys).
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Format version, 1 or 2.
    pub fn version(&self) -> u8 {
        self.version
    }

    /// The file's algorithm.
    pub fn algorithm(&self) -> LegacyAlgorithm {
        self.algorithm
    }

    /// Whether the header signature was verified (false only with
    /// [`LegacyVerify::Skip`]).
    pub fn signature_verified(&self) -> bool {
        self.signature_verified
    }

    /// Whether the file had a `__policy__` (which is not carried over).
    pub fn has_policy(&self) -> bool {
        self.has_policy
    }

    /// The user metadata: every entry but the four of the old format.
    pub fn user_metadata(&self) -> BTreeMap<String, String> {
        self.header
            .metadata()
            .into_iter()
            .flatten()
            .filter(|(k, _)| !RESERVED_KEYS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Whether a tensor was encrypted (and so authenticated) in the file.
    pub fn is_encrypted(&self, name: &str) -> bool {
        self.sealed.contains_key(name)
    }

    /// Tensors stored in the clear, which the old format did not
    /// authenticate at all (its signature covers the header only).
    pub fn plain_tensors(&self) -> Vec<String> {
        self.header
            .tensors()
            .iter()
            .filter(|(n, _)| !self.sealed.contains_key(n))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Reads a tensor into `out`, which must be exactly its size. An
    /// encrypted tensor is opened chunk by chunk in place; on any failure
    /// `out` is zeroed and [`Error::Integrity`] returned, so no byte of a
    /// tensor is released unless all of its tags verify.
    pub fn read_into(&self, name: &str, out: &mut [u8]) -> Result<()> {
        let info = self.header.tensor(name)?;
        if out.len() != info.len() {
            return Err(Error::InvalidArgument(format!(
                "output buffer is {} bytes, tensor {name:?} is {}",
                out.len(),
                info.len()
            )));
        }
        if let Err(e) = self
            .source
            .read_at(self.data_start + info.data_offsets.0 as u64, out)
        {
            out.zeroize();
            return Err(e);
        }
        let Some(s) = self.sealed.get(name) else {
            return Ok(());
        };
        let Some(base) = &s.base_nonce else {
            return Ok(());
        };
        let opened = (|| -> Result<()> {
            if out.is_empty() {
                // Version 2 seals an empty tensor: one tag over nothing.
                let tag = s.tags.first().ok_or(Error::Integrity)?;
                return s
                    .key
                    .open_in_place_separate_tag(
                        nonce_at(base, 0)?,
                        Aad::empty(),
                        Tag::from(*tag),
                        &mut [],
                        0..,
                    )
                    .map(|_| ())
                    .map_err(|_| Error::Integrity);
            }
            for (i, (piece, tag)) in out.chunks_mut(s.chunk).zip(&s.tags).enumerate() {
                s.key
                    .open_in_place_separate_tag(
                        nonce_at(base, i as u64)?,
                        Aad::empty(),
                        Tag::from(*tag),
                        piece,
                        0..,
                    )
                    .map_err(|_| Error::Integrity)?;
            }
            Ok(())
        })();
        if opened.is_err() {
            out.zeroize();
        }
        opened
    }
}

/// Decrypted legacy tensors kept while the writer asks for their segments:
/// the writer seals a few batches of segments at once, which may span
/// several small tensors, so a few are kept, and at most one beyond
/// [`MIGRATE_CACHE_BYTES`].
const MIGRATE_CACHE_BYTES: usize = 64 << 20;
const MIGRATE_CACHE_TENSORS: usize = 64;

/// Writes the tensors of an opened legacy file into a new file of this
/// format at `dst`, with `opts` (its metadata, recipients, signer), through
/// the writer's streaming path: each tensor is decrypted and authenticated
/// whole, when the writer first asks for one of its segments, and dropped
/// once the writer has moved on, so memory holds a few tensors, never the
/// whole model. Atomic, as every write.
pub fn migrate_to_file(
    reader: &LegacyReader,
    opts: &crate::writer::WriteOptions,
    dst: &std::path::Path,
) -> Result<()> {
    use crate::writer;
    use std::sync::Mutex;

    if opts.encrypt.is_none() && opts.sign_with.is_none() {
        return Err(Error::InvalidArgument(
            "a migrated file is encrypted or signed: give recipients or a signing key".into(),
        ));
    }
    type Plaintext = Arc<Zeroizing<Vec<u8>>>;
    let cache: Mutex<Vec<(usize, Plaintext)>> = Mutex::new(Vec::new());
    let tensors = reader.header().tensors();
    let tensor = |i: usize| -> Result<Plaintext> {
        let mut kept = cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, t)) = kept.iter().find(|(j, _)| *j == i) {
            return Ok(t.clone());
        }
        let (name, info) = &tensors[i];
        let mut buf = Zeroizing::new(vec![0u8; info.len()]);
        reader.read_into(name, &mut buf)?;
        let t = Arc::new(buf);
        kept.push((i, t.clone()));
        while kept.len() > MIGRATE_CACHE_TENSORS
            || (kept.len() > 1
                && kept.iter().map(|(_, t)| t.len()).sum::<usize>() > MIGRATE_CACHE_BYTES)
        {
            kept.remove(0);
        }
        Ok(t)
    };
    // An empty tensor's one tag is checked here: the writer asks for no byte of it.
    for (name, info) in tensors {
        if info.is_empty() {
            reader.read_into(name, &mut [])?;
        }
    }
    let tensor = &tensor;
    let fills: Vec<_> = (0..tensors.len())
        .map(|i| {
            move |offset: usize, buf: &mut [u8]| -> Result<()> {
                let t = tensor(i)?;
                let src = offset
                    .checked_add(buf.len())
                    .and_then(|end| t.get(offset..end))
                    .ok_or(Error::ValidationOverflow)?;
                buf.copy_from_slice(src);
                Ok(())
            }
        })
        .collect();
    writer::serialize_filled_to_file(tensors, &fills, opts, dst, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector(name: &str) -> Arc<dyn Source> {
        let path = format!(
            "{}/../../tests/vectors/legacy/{name}.safetensors",
            env!("CARGO_MANIFEST_DIR")
        );
        Arc::new(std::fs::read(path).expect("legacy vector"))
    }

    fn keys(name: &str) -> LegacyKeys {
        let path = format!(
            "{}/../../tests/vectors/legacy/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        LegacyKeys::parse(&std::fs::read_to_string(path).expect("keys")).expect("parse")
    }

    #[test]
    fn chunk_counter_overflow_is_an_error() {
        let mut base = [0u8; NONCE_LEN];
        base[8..].copy_from_slice(&(u32::MAX - 1).to_be_bytes());
        assert!(nonce_at(&base, 1).is_ok());
        assert!(matches!(nonce_at(&base, 2), Err(Error::InvalidEnvelope(_))));
        assert!(nonce_at(&base, u64::from(u32::MAX) + 1).is_err());
    }

    #[test]
    fn reads_a_vector_and_refuses_it_in_the_ordinary_reader() {
        let src = vector("v2_partial");
        let opened = LegacyReader::open(
            src.clone(),
            &keys("keys.json"),
            &LegacyVerify::Keys(keys("keys.public.json")),
        )
        .expect("open");
        assert!(opened.signature_verified());
        assert_eq!(opened.plain_tensors(), ["weight", "bias", "flag"]);
        let mut ids = vec![0u8; 8000];
        opened.read_into("ids", &mut ids).expect("ids");
        assert_eq!(&ids[8..16], &1i64.to_le_bytes());
        let err = crate::reader::Reader::open(src, &Default::default()).unwrap_err();
        assert!(matches!(err, Error::LegacyFormat));
    }

    #[test]
    fn a_flipped_chunk_zeroes_the_output() {
        let mut raw = std::fs::read(format!(
            "{}/../../tests/vectors/legacy/v2_partial.safetensors",
            env!("CARGO_MANIFEST_DIR")
        ))
        .expect("vector");
        let opened = LegacyReader::open(
            Arc::new(raw.clone()),
            &keys("keys.json"),
            &LegacyVerify::Skip,
        )
        .expect("open");
        let info = opened.header().tensor("ids").expect("ids").clone();
        let at = opened.data_start as usize + info.data_offsets.1 - 1;
        raw[at] ^= 1;
        let opened = LegacyReader::open(Arc::new(raw), &keys("keys.json"), &LegacyVerify::Skip)
            .expect("open");
        let mut out = vec![0xAAu8; info.len()];
        assert!(matches!(
            opened.read_into("ids", &mut out),
            Err(Error::Integrity)
        ));
        assert!(out.iter().all(|&b| b == 0));
    }

    #[test]
    fn keys_need_the_old_encoding_and_never_show_secrets() {
        let secret = STANDARD.encode([7u8; 32]);
        let k = LegacyKeys::parse(&format!(r#"[{{"kty":"oct","kid":"a","k":"{secret}"}}]"#))
            .expect("parse");
        assert!(!format!("{k:?}").contains(&secret));
        let url = secret
            .trim_end_matches('=')
            .replace('+', "-")
            .replace('/', "_");
        let err = LegacyKeys::parse(&format!(r#"{{"kty":"oct","k":"{url}"}}"#)).unwrap_err();
        assert!(!err.to_string().contains(&url));
        assert!(LegacyKeys::parse(r#"{"kty":"OKP","x":"AA=="}"#).is_err());
    }
}
