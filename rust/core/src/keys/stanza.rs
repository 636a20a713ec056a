//! Recipient stanzas (FORMAT.md §6): their members, checks, and wrapping
//! and unwrapping a data key for one JWK.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{
    a256gcmkw, x25519, Jwk, KeyKind, ALG_A256GCMKW, ALG_HPKE, ALG_VAULT_TRANSIT,
    MAX_SERVICE_CIPHERTEXT,
};
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
    /// `A256GCMKW` or the HPKE algorithm, or one this build does not know.
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

/// The members besides `kid` and `alg` of a key-service stanza (§6.4),
/// whose `alg` this build knows but whose key it never holds: they are
/// kept in [`Recipient::other`] and opened only by key providers.
fn service_members(alg: &str) -> Option<&'static [&'static str]> {
    match alg {
        ALG_VAULT_TRANSIT => Some(&["ciphertext"]),
        _ => None,
    }
}

/// Checks the members of a key-service stanza: exactly those of its `alg`,
/// each a non-empty printable-ASCII string of at most
/// [`MAX_SERVICE_CIPHERTEXT`] bytes.
fn check_service_members(
    kid: &str,
    alg: &str,
    members: &[&str],
    m: &serde_json::Map<String, serde_json::Value>,
) -> std::result::Result<(), String> {
    if let Some(extra) = m.keys().find(|k| !members.contains(&k.as_str())) {
        return Err(format!(
            "recipient {kid:?}: unknown member {extra:?} for alg {alg:?}"
        ));
    }
    for name in members {
        match m.get(*name) {
            Some(serde_json::Value::String(s))
                if !s.is_empty()
                    && s.len() <= MAX_SERVICE_CIPHERTEXT
                    && s.bytes().all(|b| b.is_ascii_graphic()) => {}
            Some(_) => {
                return Err(format!(
                    "recipient {kid:?}: {name:?} must be a printable string of 1 to {MAX_SERVICE_CIPHERTEXT} bytes"
                ))
            }
            None => return Err(format!("recipient {kid:?} lacks {name:?}")),
        }
    }
    Ok(())
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
        if let Some(members) = service_members(&alg) {
            check_service_members(&kid, &alg, members, &m)?;
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
        // A wrapper's stanza is no secret (it goes into the file as it is),
        // so the reason may name its members.
        let stanza: Recipient = serde_json::from_str(json)
            .map_err(|e| Error::InvalidArgument(format!("not a recipient stanza: {e}")))?;
        stanza.check()?;
        Ok(stanza)
    }

    /// Parses `[[old, new], ...]`, stanzas to replace in a rewrap; each
    /// `new` is checked with [`Recipient::check`] where it is used.
    pub fn parse_pairs(json: &str) -> Result<Vec<(Recipient, Recipient)>> {
        crate::header::unique_members(json).map_err(|_| {
            Error::InvalidArgument("replacement stanzas repeat a member, or are not JSON".into())
        })?;
        serde_json::from_str(json).map_err(|e| {
            Error::InvalidArgument(format!(
                "not a list of [old, new] recipient stanzas ({:?} error)",
                e.classify()
            ))
        })
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
            alg if service_members(alg).is_some()
                && self.iv.is_none()
                && self.tag.is_none()
                && self.enc.is_none()
                && self.encrypted_key.is_empty() =>
            {
                let members = service_members(alg).expect("a service alg");
                check_service_members(&self.kid, alg, members, &self.other)
                    .map_err(Error::InvalidEnvelope)
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
        KeyKind::X25519 => x25519::unwrap(r, secret, &ct)?,
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

    /// A Transit stanza (§6.4) is accepted from a wrapper with exactly its
    /// members, written back as it came, and refused when malformed, from a
    /// wrapper and in a file alike.
    #[test]
    fn vault_transit_stanza() {
        let good = r#"{"kid":"model-kek","alg":"vault-transit","ciphertext":"vault:v1:QUJD"}"#;
        let stanza = Recipient::parse(good).unwrap();
        assert!(!stanza.is_known());
        assert_eq!(stanza.to_json(), good);
        for bad in [
            r#"{"kid":"k","alg":"vault-transit"}"#,
            r#"{"kid":"k","alg":"vault-transit","ciphertext":""}"#,
            r#"{"kid":"k","alg":"vault-transit","ciphertext":7}"#,
            r#"{"kid":"k","alg":"vault-transit","ciphertext":"a b"}"#,
            r#"{"kid":"k","alg":"vault-transit","ciphertext":"x","addr":"https://evil"}"#,
        ] {
            assert!(Recipient::parse(bad).is_err(), "{bad}");
            assert!(serde_json::from_str::<Recipient>(bad).is_err(), "{bad}");
        }
        let mut forged = stanza.clone();
        forged.encrypted_key = "AAAA".into();
        assert!(forged.check().is_err());
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
