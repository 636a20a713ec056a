//! Recipient stanzas (FORMAT.md §6): their members, checks, and wrapping
//! and unwrapping a data key for one JWK.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{a256gcmkw, x25519, Jwk, KeyKind, ALG_A256GCMKW, ALG_HPKE};
use crate::crypto::{DataKey, SecretBytes};
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

pub(super) fn decode_field(r: &Recipient, name: &str, v: &Option<String>) -> Result<Vec<u8>> {
    let s = v
        .as_deref()
        .ok_or_else(|| Error::InvalidEnvelope(format!("recipient {:?} lacks {name:?}", r.kid)))?;
    URL_SAFE_NO_PAD.decode(s).map_err(|_| {
        Error::InvalidEnvelope(format!("recipient {:?}: {name:?} is not base64url", r.kid))
    })
}

/// Wraps a data key for one recipient key.
pub fn wrap(data_key: &DataKey, to: &Jwk) -> Result<Recipient> {
    match (to.kind, &to.secret) {
        (KeyKind::Oct, Some(kek)) => a256gcmkw::wrap(data_key, kek, &to.kid),
        (KeyKind::Oct, None) => Err(Error::InvalidKey("an oct key without \"k\"".into())),
        (KeyKind::X25519, _) => x25519::wrap(data_key, &to.public, &to.kid),
        (KeyKind::Ed25519 | KeyKind::P256, _) => Err(Error::InvalidKey(format!(
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
    let ct = Zeroizing::new(decode_field(
        r,
        "encrypted_key",
        &Some(r.encrypted_key.clone()),
    )?);
    let plain = match key.kind {
        KeyKind::Oct => a256gcmkw::unwrap(r, secret, ct)?,
        KeyKind::X25519 => x25519::unwrap(r, secret, &key.public, &ct)?,
        KeyKind::Ed25519 | KeyKind::P256 => return Err(Error::Integrity),
    };
    DataKey::from_bytes(&plain).ok_or(Error::Integrity)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{b64d, b64e, KeyKind};

    /// Stanzas this crate makes pass the check given to stanzas made
    /// elsewhere; malformed ones do not.
    #[test]
    fn recipient_check() {
        let dk = DataKey::generate().unwrap();
        for kind in [KeyKind::Oct, KeyKind::X25519] {
            let k = Jwk::generate(kind).unwrap();
            let r = wrap(&dk, &k.public().unwrap_or(k.clone())).unwrap();
            r.check().unwrap();
            assert_eq!(Recipient::parse(&r.to_json()).unwrap(), r);
            let mut bad = r.clone();
            bad.encrypted_key.pop();
            assert!(bad.check().is_err());
            let mut bad = r.clone();
            bad.kid.clear();
            assert!(bad.check().is_err());
            let mut bad = r;
            bad.alg = "dir".into();
            assert!(bad.check().is_err());
        }
        assert!(Recipient::parse(r#"{"kid":"a"}"#).is_err());
        assert!(Recipient::parse(r#"[{"kid":"a"}]"#).is_err());
    }

    #[test]
    fn wrap_unwrap_both_kinds() {
        for kind in [KeyKind::Oct, KeyKind::X25519] {
            let key = Jwk::generate(kind).unwrap();
            let dk = DataKey::generate().unwrap();
            let to = if kind == KeyKind::Oct {
                key.clone()
            } else {
                key.public().unwrap()
            };
            let r = wrap(&dk, &to).unwrap();
            let got = unwrap(&r, &key).unwrap().unwrap();
            assert_eq!(got.0, dk.0);
            assert!(
                unwrap(&r, &Jwk::generate(kind).unwrap()).is_none(),
                "other kid"
            );
            let mut bad = r.clone();
            let mut ct = b64d("x", &bad.encrypted_key).unwrap();
            ct[0] ^= 1;
            bad.encrypted_key = b64e(&ct);
            assert!(matches!(unwrap(&bad, &key), Some(Err(Error::Integrity))));
        }
    }
}
