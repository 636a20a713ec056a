//! Recipient stanzas (FORMAT.md §6): their members, checks, and wrapping
//! and unwrapping a data key for one JWK.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{b64e, hpke, Jwk, KeyKind, ALG_A256GCMKW, ALG_HPKE, HPKE_INFO};
use crate::crypto::{fill_random, DataKey, SecretBytes};
use crate::error::{Error, Result};

/// Most recipient stanzas a file may list (FORMAT.md §3.2). Each is a
/// trial unwrap for every loader key that matches its kid, so a forged file
/// with thousands of stanzas under a victim's kid must not be opened at all.
pub const MAX_RECIPIENTS: usize = 64;
/// Largest stanza, as its compact JSON encoding (FORMAT.md §6).
pub const MAX_STANZA_BYTES: usize = 4096;

/// One recipient of a file: a wrapped copy of the data key (FORMAT.md §6).
///
/// A stanza of a known `alg` has exactly that algorithm's members. A stanza
/// of an `alg` this build does not know is kept with all its members in
/// [`Recipient::other`] (written back unchanged by a rewrap) and never
/// opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// The recipient key's id.
    pub kid: String,
    /// `A256GCMKW` or [`ALG_HPKE`], or one this build does not know.
    pub alg: String,
    /// A256GCMKW: the 96-bit IV.
    pub iv: Option<String>,
    /// A256GCMKW: the 128-bit tag.
    pub tag: Option<String>,
    /// HPKE: the encapsulated key (the ephemeral X25519 public key).
    pub enc: Option<String>,
    /// The wrapped data key (HPKE: ciphertext and tag); empty for an
    /// unknown `alg`.
    pub encrypted_key: String,
    /// Every member but `kid` and `alg` of a stanza whose `alg` is unknown;
    /// empty for known ones.
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// The members of a known stanza algorithm besides `kid` and `alg`.
fn known_members(alg: &str) -> Option<&'static [&'static str]> {
    match alg {
        ALG_A256GCMKW => Some(&["iv", "tag", "encrypted_key"]),
        ALG_HPKE => Some(&["enc", "encrypted_key"]),
        _ => None,
    }
}

impl Recipient {
    /// The stanza as compact JSON, every member included.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a stanza serializes")
    }

    /// Whether this build knows the stanza's algorithm (else it is skipped).
    pub fn is_known(&self) -> bool {
        known_members(&self.alg).is_some()
    }

    fn from_members(
        mut m: serde_json::Map<String, serde_json::Value>,
    ) -> std::result::Result<Recipient, String> {
        let size = serde_json::to_vec(&m).map_err(|e| e.to_string())?.len();
        if size > MAX_STANZA_BYTES {
            return Err(format!(
                "a recipient stanza is {size} bytes, more than {MAX_STANZA_BYTES}"
            ));
        }
        fn string(
            m: &mut serde_json::Map<String, serde_json::Value>,
            name: &str,
        ) -> std::result::Result<Option<String>, String> {
            match m.remove(name) {
                None => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s)),
                Some(_) => Err(format!("recipient member {name:?} must be a string")),
            }
        }
        let kid = string(&mut m, "kid")?.ok_or("a recipient stanza has no \"kid\"")?;
        let alg = string(&mut m, "alg")?.ok_or("a recipient stanza has no \"alg\"")?;
        if kid.is_empty() {
            return Err("a recipient stanza has an empty \"kid\"".into());
        }
        let Some(members) = known_members(&alg) else {
            return Ok(Recipient {
                kid,
                alg,
                iv: None,
                tag: None,
                enc: None,
                encrypted_key: String::new(),
                other: m,
            });
        };
        if let Some(extra) = m.keys().find(|k| !members.contains(&k.as_str())) {
            return Err(format!(
                "recipient {kid:?}: unknown member {extra:?} for alg {alg:?}"
            ));
        }
        let mut take = |name: &str| -> std::result::Result<Option<String>, String> {
            match members.contains(&name) {
                true => string(&mut m, name)?
                    .map(Some)
                    .ok_or_else(|| format!("recipient {kid:?} lacks {name:?}")),
                false => Ok(None),
            }
        };
        Ok(Recipient {
            iv: take("iv")?,
            tag: take("tag")?,
            enc: take("enc")?,
            encrypted_key: take("encrypted_key")?.unwrap_or_default(),
            other: serde_json::Map::new(),
            kid,
            alg,
        })
    }
}

impl<'de> Deserialize<'de> for Recipient {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let m = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        Recipient::from_members(m).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Recipient {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("kid", &self.kid)?;
        map.serialize_entry("alg", &self.alg)?;
        if self.is_known() {
            for (name, v) in [("iv", &self.iv), ("tag", &self.tag), ("enc", &self.enc)] {
                if let Some(v) = v {
                    map.serialize_entry(name, v)?;
                }
            }
            map.serialize_entry("encrypted_key", &self.encrypted_key)?;
        } else {
            for (k, v) in &self.other {
                map.serialize_entry(k, v)?;
            }
        }
        map.end()
    }
}

impl Recipient {
    /// Parses one stanza made outside this crate (by a key wrapper), as JSON
    /// text, checked with [`Recipient::check`].
    pub fn parse(json: &str) -> Result<Recipient> {
        crate::header::unique_members(json).map_err(|_| {
            Error::InvalidArgument("a recipient stanza repeats a member, or is not JSON".into())
        })?;
        let stanza: Recipient = serde_json::from_str(json).map_err(|e| {
            Error::InvalidArgument(format!("not a recipient stanza ({:?} error)", e.classify()))
        })?;
        stanza.check()?;
        Ok(stanza)
    }

    /// Checks a stanza made outside this crate (by an HSM, say) before it
    /// goes into a file: a known algorithm with exactly its members, each
    /// base64url of the right length. It cannot check that the stanza opens.
    pub fn check(&self) -> Result<()> {
        let len = |name: &str, v: &Option<String>, n: usize| -> Result<()> {
            match decode_field(self, name, v)?.len() == n {
                true => Ok(()),
                false => Err(Error::InvalidEnvelope(format!(
                    "recipient {:?}: {name:?} must be {n} bytes",
                    self.kid
                ))),
            }
        };
        if self.kid.is_empty() {
            return Err(Error::InvalidEnvelope("a recipient needs a kid".into()));
        }
        let key = Some(self.encrypted_key.clone());
        match self.alg.as_str() {
            ALG_A256GCMKW if self.enc.is_none() => {
                len("iv", &self.iv, 12)?;
                len("tag", &self.tag, 16)?;
                len("encrypted_key", &key, 32)
            }
            ALG_HPKE if self.iv.is_none() && self.tag.is_none() => {
                len("enc", &self.enc, 32)?;
                len("encrypted_key", &key, 48)
            }
            _ => Err(Error::InvalidEnvelope(format!(
                "recipient {:?}: unsupported algorithm or members ({:?})",
                self.kid, self.alg
            ))),
        }
    }
}

fn gcm_key(key: &[u8]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&aead::AES_256_GCM, key).expect("32-byte key"))
}

fn decode_field(r: &Recipient, name: &str, v: &Option<String>) -> Result<Vec<u8>> {
    let s = v
        .as_deref()
        .ok_or_else(|| Error::InvalidEnvelope(format!("recipient {:?} lacks {name:?}", r.kid)))?;
    URL_SAFE_NO_PAD.decode(s).map_err(|_| {
        Error::InvalidEnvelope(format!("recipient {:?}: {name:?} is not base64url", r.kid))
    })
}

/// Wraps a data key for one recipient key.
pub fn wrap(data_key: &DataKey, to: &Jwk) -> Result<Recipient> {
    match to.kind {
        KeyKind::Oct => {
            let kek = to.secret.as_ref().expect("oct keys are secret");
            let mut iv = [0u8; 12];
            fill_random(&mut iv)?;
            let mut ct = Zeroizing::new(data_key.0.expose().to_vec());
            let tag = gcm_key(kek.expose())
                .seal_in_place_separate_tag(Nonce::assume_unique_for_key(iv), Aad::empty(), &mut ct)
                .map_err(|_| Error::Integrity)?;
            Ok(Recipient {
                kid: to.kid.clone(),
                alg: ALG_A256GCMKW.into(),
                iv: Some(b64e(&iv)),
                tag: Some(b64e(tag.as_ref())),
                enc: None,
                encrypted_key: b64e(&ct),
                other: serde_json::Map::new(),
            })
        }
        KeyKind::X25519 => {
            let ephemeral = SecretBytes::random()?;
            let (enc, ct) =
                hpke::seal(&to.public, &ephemeral, HPKE_INFO, b"", data_key.0.expose())?;
            Ok(Recipient {
                kid: to.kid.clone(),
                alg: ALG_HPKE.into(),
                iv: None,
                tag: None,
                enc: Some(b64e(&enc)),
                encrypted_key: b64e(&ct),
                other: serde_json::Map::new(),
            })
        }
        KeyKind::Ed25519 | KeyKind::P256 => Err(Error::InvalidKey(format!(
            "an {} key signs; it cannot be an encryption recipient",
            if to.kind == KeyKind::P256 {
                "EC P-256"
            } else {
                "Ed25519"
            }
        ))),
    }
}

/// Tries to unwrap a recipient stanza with one key. `None`: not this key's
/// stanza. `Some(Err(Integrity))`: this key's stanza, but it does not open.
pub fn unwrap(r: &Recipient, key: &Jwk) -> Option<Result<DataKey>> {
    if !key.matches(&r.kid) || r.alg != key.kind.alg() {
        return None;
    }
    let secret = key.secret.as_ref()?;
    Some(unwrap_with(r, key, secret))
}

#[cfg(test)]
thread_local! {
    /// Trial unwraps made on this thread, for tests that bound them.
    pub(crate) static UNWRAPS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn unwrap_with(r: &Recipient, key: &Jwk, secret: &SecretBytes) -> Result<DataKey> {
    #[cfg(test)]
    UNWRAPS.with(|n| n.set(n.get() + 1));
    let mut ct = Zeroizing::new(decode_field(
        r,
        "encrypted_key",
        &Some(r.encrypted_key.clone()),
    )?);
    let plain: Zeroizing<Vec<u8>> = match key.kind {
        KeyKind::Oct => {
            let iv: [u8; 12] = decode_field(r, "iv", &r.iv)?
                .try_into()
                .map_err(|_| Error::Integrity)?;
            let tag = aead::Tag::try_from(decode_field(r, "tag", &r.tag)?.as_slice())
                .map_err(|_| Error::Integrity)?;
            gcm_key(secret.expose())
                .open_in_place_separate_tag(
                    Nonce::assume_unique_for_key(iv),
                    Aad::empty(),
                    tag,
                    &mut ct,
                    0..,
                )
                .map_err(|_| Error::Integrity)?;
            Zeroizing::new(ct.to_vec())
        }
        KeyKind::X25519 => {
            let enc: [u8; 32] = decode_field(r, "enc", &r.enc)?
                .try_into()
                .map_err(|_| Error::Integrity)?;
            hpke::open(secret, &key.public, &enc, HPKE_INFO, b"", &ct)?
        }
        KeyKind::Ed25519 | KeyKind::P256 => return Err(Error::Integrity),
    };
    SecretBytes::from_slice(&plain)
        .map(DataKey)
        .ok_or(Error::Integrity)
}
