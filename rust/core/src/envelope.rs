//! The crypto metadata of a file (FORMAT.md §3): the `__cryptotensors__`
//! envelope in `__metadata__`, the canonical header that the MAC and the
//! signature cover, and the trailer of segment tags and digests after the
//! last tensor.

use serde::{Deserialize, Serialize};

use crate::crypto::{self, Algorithm, DataKey, SALT_LEN, TAG_LEN};
use crate::error::{Error, Result};
use crate::header::{Header, Metadata, TensorInfo};
use crate::keys::{b64d, b64e, Jwk, Recipient, MAX_RECIPIENTS};
use crate::sign;

/// Metadata key of the envelope (a JSON string).
pub const ENVELOPE_KEY: &str = "__cryptotensors__";
/// Metadata key of the header MAC (base64url).
pub const MAC_KEY: &str = "__cryptotensors_mac__";
/// Metadata key of the detached JWS signature.
pub const SIGNATURE_KEY: &str = "__cryptotensors_signature__";
/// Metadata keys with this prefix are reserved to the format.
pub const RESERVED_PREFIX: &str = "__cryptotensors";
/// The format version this build reads and writes.
pub(crate) const VERSION: u32 = 1;
/// The per-segment digest of plaintext tensors.
pub(crate) const DIGEST_SHA256: &str = "SHA-256";
/// Length of a SHA-256 digest.
pub(crate) const DIGEST_LEN: usize = 32;
/// Domain separator that starts the canonical header.
pub(crate) const CANONICAL_DOMAIN: &[u8] = b"cryptotensors/v1 canonical header\0";

/// The envelope, as stored (JSON) in `__metadata__["__cryptotensors__"]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Format version, `VERSION` (1).
    pub version: u32,
    /// Segment size in bytes, a power of two.
    pub segment_size: usize,
    /// Digest of plaintext segments, `"SHA-256"`.
    pub digest: String,
    /// Present when some tensors are encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
    /// Access policy (Rego text), evaluated before the data key is unwrapped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Length of the trailer in bytes.
    pub trailer_length: u64,
    /// SHA-256 of the trailer, base64url.
    pub trailer_sha256: String,
}

/// How the encrypted tensors are keyed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Encryption {
    /// `AES-256-GCM` or `ChaCha20-Poly1305`.
    pub algorithm: String,
    /// 32-byte HKDF salt, base64url.
    pub salt: String,
    /// 32-byte key commitment, base64url.
    pub key_commitment: String,
    /// Wrapped copies of the data key.
    pub recipients: Vec<Recipient>,
    /// Names of the encrypted tensors, sorted.
    pub tensors: Vec<String>,
}

/// How one tensor's segments are protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protection {
    /// AEAD-sealed; the trailer holds one tag per segment.
    Encrypted,
    /// Plaintext; the trailer holds one SHA-256 per segment.
    Digested,
}

/// A validated envelope with its per-tensor trailer positions.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The envelope as parsed.
    pub envelope: Envelope,
    /// Parsed encryption parameters, if any.
    pub encryption: Option<EncryptionParams>,
    /// Per tensor in file order: protection and trailer offset.
    pub entries: Vec<(Protection, usize)>,
    /// Trailer length.
    pub trailer_len: usize,
    /// Decoded trailer digest.
    pub trailer_sha256: [u8; DIGEST_LEN],
}

/// Decoded encryption parameters.
#[derive(Debug, Clone)]
pub struct EncryptionParams {
    /// AEAD.
    pub algorithm: Algorithm,
    /// HKDF salt.
    pub salt: [u8; crypto::SALT_LEN],
    /// Key commitment.
    pub commitment: [u8; crypto::KEY_LEN],
}

fn bad(why: impl Into<String>) -> Error {
    Error::InvalidEnvelope(why.into())
}

fn decode32(field: &str, s: &str) -> Result<[u8; 32]> {
    b64d(field, s)
        .map_err(|_| bad(format!("{field} is not base64url")))?
        .try_into()
        .map_err(|_| bad(format!("{field} must be 32 bytes")))
}

/// Trailer bytes that one tensor needs.
pub(crate) fn trailer_bytes(
    p: Protection,
    info: &TensorInfo,
    segment_size: usize,
) -> Result<usize> {
    let per = match p {
        Protection::Encrypted => TAG_LEN,
        Protection::Digested => DIGEST_LEN,
    };
    usize::try_from(crypto::segment_count(info.len(), segment_size))
        .ok()
        .and_then(|n| n.checked_mul(per))
        .ok_or(Error::ValidationOverflow)
}

/// Checks the list of recipient stanzas an encrypted file may carry: at
/// least one, at most [`MAX_RECIPIENTS`] (readers refuse more, so writers
/// must not write more).
pub(crate) fn check_recipients(recipients: &[Recipient]) -> Result<()> {
    if recipients.is_empty() {
        return Err(bad("encrypted file lists no recipients"));
    }
    if recipients.len() > MAX_RECIPIENTS {
        return Err(bad(format!(
            "{} recipient stanzas, more than the {MAX_RECIPIENTS} a file may list",
            recipients.len()
        )));
    }
    Ok(())
}

/// Checks that a segment size is one the format allows.
pub(crate) fn check_segment_size(s: usize) -> Result<()> {
    if !s.is_power_of_two() || !(crypto::MIN_SEGMENT_SIZE..=crypto::MAX_SEGMENT_SIZE).contains(&s) {
        return Err(Error::InvalidArgument(format!(
            "segment size must be a power of two between {} and {} bytes, got {s}",
            crypto::MIN_SEGMENT_SIZE,
            crypto::MAX_SEGMENT_SIZE
        )));
    }
    Ok(())
}

impl Layout {
    /// Reads and validates the envelope of a header, if it has one, in the
    /// order of FORMAT.md §9: the JSON (no repeated member), then `version`
    /// ("unsupported" unless 1), then the v1 members strictly, then `digest`
    /// and `algorithm` ("unsupported"), then everything else ("format").
    pub fn from_header(header: &Header) -> Result<Option<Layout>> {
        let Some(text) = header.metadata_value(ENVELOPE_KEY) else {
            if header
                .metadata()
                .is_some_and(|m| m.contains_key(MAC_KEY) || m.contains_key(SIGNATURE_KEY))
            {
                return Err(bad("a MAC or signature without an envelope"));
            }
            return Ok(None);
        };
        if header.has_duplicate_keys() {
            return Err(bad("a protected header repeats a JSON key"));
        }
        let known = [ENVELOPE_KEY, MAC_KEY, SIGNATURE_KEY];
        if let Some(k) = header
            .metadata()
            .into_iter()
            .flat_map(|m| m.keys())
            .find(|k| k.starts_with(RESERVED_PREFIX) && !known.contains(&k.as_str()))
        {
            return Err(bad(format!("unknown reserved metadata key {k:?}")));
        }
        crate::header::unique_members(text).map_err(|e| {
            bad(format!(
                "the envelope is not JSON without repeated members: {e}"
            ))
        })?;
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let version = value
            .as_object()
            .ok_or_else(|| bad("the envelope is not a JSON object"))?
            .get("version")
            .ok_or_else(|| bad("the envelope has no \"version\""))?
            .as_u64()
            .ok_or_else(|| bad("\"version\" is not a non-negative integer"))?;
        if version != u64::from(VERSION) {
            return Err(Error::Unsupported(format!(
                "cryptotensors format version {version} (this build reads version {VERSION})"
            )));
        }
        let envelope: Envelope = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
        if envelope.digest != DIGEST_SHA256 {
            return Err(Error::Unsupported(format!("digest {:?}", envelope.digest)));
        }
        let algorithm = envelope
            .encryption
            .as_ref()
            .map(|enc| Algorithm::parse(&enc.algorithm))
            .transpose()?;
        if envelope.policy.is_some() && envelope.encryption.is_none() {
            return Err(bad(
                "a policy needs encryption: without it the data is readable directly",
            ));
        }
        if envelope.encryption.is_none() && header.metadata_value(SIGNATURE_KEY).is_none() {
            return Err(bad("an envelope with neither encryption nor a signature protects nothing (a stripped file?)"));
        }
        if envelope.encryption.is_some() != header.metadata_value(MAC_KEY).is_some() {
            return Err(bad(
                "the header MAC must be present if and only if the file is encrypted",
            ));
        }
        check_segment_size(envelope.segment_size).map_err(|e| bad(e.to_string()))?;
        let encryption = match (&envelope.encryption, algorithm) {
            (Some(enc), Some(algorithm)) => {
                check_recipients(&enc.recipients)?;
                for r in enc.recipients.iter().filter(|r| r.is_known()) {
                    r.check()?;
                }
                if enc.tensors.is_empty() {
                    return Err(bad("encryption section lists no tensors"));
                }
                if enc.tensors.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(bad("encrypted tensor names must be sorted and unique"));
                }
                for name in &enc.tensors {
                    header.tensor(name).map_err(|_| {
                        bad(format!("encrypted tensor {name:?} is not in the header"))
                    })?;
                }
                Some(EncryptionParams {
                    algorithm,
                    salt: decode32("salt", &enc.salt)?,
                    commitment: decode32("key_commitment", &enc.key_commitment)?,
                })
            }
            _ => None,
        };
        let encrypted = |name: &str| {
            envelope
                .encryption
                .as_ref()
                .is_some_and(|e| e.tensors.binary_search_by(|n| n.as_str().cmp(name)).is_ok())
        };
        let mut offset = 0usize;
        let mut entries = Vec::with_capacity(header.tensors().len());
        for (name, info) in header.tensors() {
            let p = if encrypted(name) {
                Protection::Encrypted
            } else {
                Protection::Digested
            };
            entries.push((p, offset));
            offset = offset
                .checked_add(trailer_bytes(p, info, envelope.segment_size)?)
                .ok_or(Error::ValidationOverflow)?;
        }
        if envelope.trailer_length != offset as u64 {
            return Err(bad("trailer length does not match the tensors"));
        }
        let trailer_sha256 = decode32("trailer_sha256", &envelope.trailer_sha256)?;
        Ok(Some(Layout {
            envelope,
            encryption,
            entries,
            trailer_len: offset,
            trailer_sha256,
        }))
    }

    /// Recipients of the data key.
    pub fn recipients(&self) -> &[Recipient] {
        self.envelope
            .encryption
            .as_ref()
            .map(|e| e.recipients.as_slice())
            .unwrap_or(&[])
    }
}

/// The canonical header (FORMAT.md §3.4): every metadata entry except those
/// in `exclude`, sorted by key, then every tensor in file order, each field
/// length-prefixed, so that no two headers share an encoding.
pub fn canonical(header: &Header, exclude: &[&str]) -> Vec<u8> {
    let mut out = CANONICAL_DOMAIN.to_vec();
    let entries: Vec<(&String, &String)> = header
        .metadata()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| !exclude.contains(&k.as_str()))
                .collect()
        })
        .unwrap_or_default();
    crypto::put_u64(&mut out, entries.len() as u64);
    for (k, v) in entries {
        crypto::put_bytes(&mut out, k.as_bytes());
        crypto::put_bytes(&mut out, v.as_bytes());
    }
    crypto::put_u64(&mut out, header.tensors().len() as u64);
    for (name, info) in header.tensors() {
        crypto::put_bytes(&mut out, name.as_bytes());
        crypto::put_bytes(&mut out, info.dtype.name().as_bytes());
        crypto::put_u64(&mut out, info.shape.len() as u64);
        for &d in &info.shape {
            crypto::put_u64(&mut out, d as u64);
        }
        crypto::put_u64(&mut out, info.data_offsets.0 as u64);
        crypto::put_u64(&mut out, info.data_offsets.1 as u64);
    }
    out
}

/// The bytes the header MAC covers.
pub fn mac_input(header: &Header) -> Vec<u8> {
    canonical(header, &[MAC_KEY, SIGNATURE_KEY])
}

/// The bytes the signature covers (the MAC included).
pub fn signature_input(header: &Header) -> Vec<u8> {
    canonical(header, &[SIGNATURE_KEY])
}

/// What seals a protected header: the data key and salt its MAC is keyed
/// with (an encrypted file), and the private key that signs it.
pub(crate) struct Seal<'a> {
    pub(crate) mac: Option<(&'a DataKey, &'a [u8; SALT_LEN])>,
    pub(crate) sign_with: Option<&'a Jwk>,
}

/// The `__metadata__` of a protected header (FORMAT.md §3), the one place
/// it is assembled, for a save and a rewrap alike: `user` (which must hold
/// none of the MAC and signature keys) with the envelope, then the MAC over
/// the canonical header, then the signature over it and the MAC. With
/// `placeholder`, a zero MAC and a signature over no bytes stand in, of the
/// lengths of the final ones, so that a writer can lay the file out before
/// the trailer digest the envelope names is known.
pub(crate) fn protected_metadata(
    mut meta: Metadata,
    envelope: &Envelope,
    tensors: &[(String, TensorInfo)],
    seal: &Seal,
    placeholder: bool,
) -> Result<Metadata> {
    debug_assert!(!meta.contains_key(MAC_KEY) && !meta.contains_key(SIGNATURE_KEY));
    meta.insert(
        ENVELOPE_KEY.into(),
        serde_json::to_string(envelope).expect("JSON"),
    );
    let as_header = |meta: &Metadata| Header::from_parts(Some(meta.clone()), tensors.to_vec());
    if let Some((data_key, salt)) = seal.mac {
        let mac = match placeholder {
            false => crypto::header_mac(data_key, salt, &mac_input(&as_header(&meta)?)),
            true => [0u8; crypto::KEY_LEN],
        };
        meta.insert(MAC_KEY.into(), b64e(&mac));
    }
    if let Some(k) = seal.sign_with {
        // A placeholder signature over other bytes has the same length.
        let input = match placeholder {
            false => signature_input(&as_header(&meta)?),
            true => Vec::new(),
        };
        meta.insert(SIGNATURE_KEY.into(), sign::sign(&input, k)?);
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyKind;
    use crate::reader::read_header;
    use crate::writer::{serialize, EncryptOptions, TensorData, WriteOptions};
    use crate::Dtype;
    use serde_json::{json, Value};

    /// The header of a file with two tensors, `a` encrypted and `b` plain.
    fn sealed() -> Header {
        let key = Jwk::generate(KeyKind::Oct).unwrap();
        let tensors = [
            TensorData {
                name: "a",
                dtype: Dtype::U8,
                shape: &[4],
                data: &[1, 2, 3, 4],
            },
            TensorData {
                name: "b",
                dtype: Dtype::U8,
                shape: &[2],
                data: &[5, 6],
            },
        ];
        let opts = WriteOptions {
            encrypt: Some(EncryptOptions {
                recipients: vec![key],
                tensors: Some(["a".to_string()].into()),
                algorithm: Algorithm::Aes256Gcm,
                wrappers: Vec::new(),
            }),
            ..Default::default()
        };
        read_header(&serialize(&tensors, &opts).unwrap()).unwrap().0
    }

    fn with_metadata(h: &Header, edit: impl FnOnce(&mut Metadata)) -> Header {
        let mut meta = h.metadata().cloned().unwrap_or_default();
        edit(&mut meta);
        Header::from_parts(Some(meta), h.tensors().to_vec()).unwrap()
    }

    /// `h` with its envelope JSON edited.
    fn with_envelope(h: &Header, edit: impl FnOnce(&mut Value)) -> Header {
        with_metadata(h, |m| {
            let mut v: Value = serde_json::from_str(&m[ENVELOPE_KEY]).unwrap();
            edit(&mut v);
            m.insert(ENVELOPE_KEY.into(), v.to_string());
        })
    }

    /// An edit of the envelope JSON, named for the failure message.
    type Edit = (&'static str, fn(&mut Value));

    fn refusal(h: &Header) -> Error {
        Layout::from_header(h).expect_err("the envelope must be refused")
    }

    #[test]
    fn a_written_envelope_parses() {
        let l = Layout::from_header(&sealed()).unwrap().unwrap();
        assert_eq!(
            l.entries,
            vec![(Protection::Encrypted, 0), (Protection::Digested, TAG_LEN)]
        );
        assert_eq!(l.trailer_len, TAG_LEN + DIGEST_LEN);
        assert_eq!(l.recipients().len(), 1);
        assert_eq!(l.encryption.unwrap().algorithm, Algorithm::Aes256Gcm);
    }

    #[test]
    fn a_plain_header_has_no_layout() {
        let h = with_metadata(&sealed(), |m| m.clear());
        assert!(Layout::from_header(&h).unwrap().is_none());
    }

    #[test]
    fn versions_digests_and_algorithms_it_does_not_know_are_unsupported() {
        let h = sealed();
        for edit in [
            (|v: &mut Value| v["version"] = json!(2)) as fn(&mut Value),
            |v| v["digest"] = json!("SHA-512"),
            |v| v["encryption"]["algorithm"] = json!("AES-128-GCM"),
        ] {
            let e = refusal(&with_envelope(&h, edit));
            assert!(matches!(e, Error::Unsupported(_)), "{e:?}");
        }
        // A version of another type is malformed, not a future version.
        let e = refusal(&with_envelope(&h, |v| v["version"] = json!("1")));
        assert!(matches!(e, Error::InvalidEnvelope(_)), "{e:?}");
    }

    #[test]
    fn malformed_envelopes_are_invalid_envelope() {
        let h = sealed();
        let edits: [Edit; 10] = [
            ("unknown member", |v| v["extra"] = json!(1)),
            ("not an object", |v| *v = json!([1])),
            ("segment size", |v| v["segment_size"] = json!(1000)),
            ("segment size too small", |v| {
                v["segment_size"] = json!(2048)
            }),
            ("no recipients", |v| {
                v["encryption"]["recipients"] = json!([])
            }),
            ("no tensors", |v| v["encryption"]["tensors"] = json!([])),
            ("unknown tensor", |v| {
                v["encryption"]["tensors"] = json!(["a", "z"])
            }),
            ("unsorted tensors", |v| {
                v["encryption"]["tensors"] = json!(["b", "a"])
            }),
            ("trailer length", |v| {
                v["trailer_length"] = json!(TAG_LEN + DIGEST_LEN + 1)
            }),
            ("salt length", |v| {
                v["encryption"]["salt"] = json!(b64e(&[0u8; 16]))
            }),
        ];
        for (what, edit) in edits {
            let e = refusal(&with_envelope(&h, edit));
            assert!(matches!(e, Error::InvalidEnvelope(_)), "{what}: {e:?}");
        }
    }

    #[test]
    fn more_recipients_than_the_limit_are_refused() {
        let h = sealed();
        let at_limit = |n: usize| {
            with_envelope(&h, |v| {
                let one = v["encryption"]["recipients"][0].clone();
                v["encryption"]["recipients"] = Value::Array(vec![one; n]);
            })
        };
        Layout::from_header(&at_limit(MAX_RECIPIENTS)).unwrap();
        let e = refusal(&at_limit(MAX_RECIPIENTS + 1));
        assert!(
            matches!(&e, Error::InvalidEnvelope(m) if m.contains("more than the 64")),
            "{e:?}"
        );
    }

    #[test]
    fn reserved_keys_and_orphan_macs_are_refused() {
        let h = sealed();
        let e = refusal(&with_metadata(&h, |m| {
            m.insert("__cryptotensors_x".into(), "1".into());
        }));
        assert!(matches!(e, Error::InvalidEnvelope(_)), "{e:?}");
        let e = refusal(&with_metadata(&h, |m| {
            m.remove(ENVELOPE_KEY);
        }));
        assert!(matches!(e, Error::InvalidEnvelope(_)), "{e:?}");
        let e = refusal(&with_metadata(&h, |m| {
            m.remove(MAC_KEY);
        }));
        assert!(matches!(e, Error::InvalidEnvelope(_)), "{e:?}");
    }

    /// Length prefixes keep entries apart: moving a byte from a key to its
    /// value changes the canonical header, and excluded keys are left out.
    #[test]
    fn canonical_headers_do_not_collide() {
        let h = |k: &str, v: &str| {
            Header::from_parts(Some([(k.to_string(), v.to_string())].into()), vec![]).unwrap()
        };
        assert_ne!(canonical(&h("ab", "c"), &[]), canonical(&h("a", "bc"), &[]));
        assert!(canonical(&h("a", "b"), &[]).starts_with(CANONICAL_DOMAIN));
        assert_eq!(
            canonical(&h(MAC_KEY, "x"), &[MAC_KEY]),
            canonical(
                &Header::from_parts(Some(Metadata::new()), vec![]).unwrap(),
                &[]
            )
        );
    }
}
