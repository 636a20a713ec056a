//! Re-encryption under a fresh data key (FORMAT.md §8.2): what revokes a
//! data key, which a rewrap (§8.1) keeps.
//!
//! The file is locked and verified as a load verifies it (the same
//! [`open_for_update`] a rewrap uses), then written anew by the writer: a
//! fresh data key and salt, every encrypted tensor decrypted and verified
//! segment by segment under the old key and sealed under the new one, in
//! parallel batches, never a whole tensor in memory, to a temporary file
//! renamed over the target. Plain tensors of a partly encrypted file are
//! verified against their digests and copied. The recipient set is kept
//! (less `remove`, plus `add`); each kept recipient's key must be given,
//! since the file holds only wrapped copies of the old key.

use std::collections::BTreeSet;
use std::path::Path;

use crate::envelope::RESERVED_PREFIX;
use crate::error::{Error, Result};
use crate::header::Metadata;
use crate::keys::{Jwk, KeyKind};
use crate::rewrap::{check_signature_choice, open_for_update, RewrapOptions};
use crate::writer::{self, EncryptOptions, ExternalRecipients, WriteOptions, DEFAULT_RESERVE};

/// What a rekey keeps and changes.
#[derive(Debug, Clone, Default)]
pub struct RekeyOptions {
    /// Opening keys, trusted signers, policy input, recipients to add and
    /// remove, signature and policy changes: as for a rewrap. A signed file
    /// must be re-signed (`sign_with`) or its signature dropped.
    pub rewrap: RewrapOptions,
    /// Keys of current recipients that stay: a public X25519 key or an oct
    /// key, for every recipient not removed whose key is not among the
    /// opening keys.
    pub recipients: Vec<Jwk>,
    /// The fresh data key, drawn by the caller, with its copies wrapped by
    /// key holders outside this crate (an HSM, a key service) for
    /// recipients that stay: a kept stanza whose kid and alg one of them
    /// has needs no key of `recipients`.
    pub external: Option<ExternalRecipients>,
}

/// The key that a recipient stanza of kid `kid` and algorithm `alg` is
/// wrapped for, among `keys` (private X25519 keys give their public half).
fn recipient_key(kid: &str, alg: &str, keys: &[&Jwk]) -> Result<Option<Jwk>> {
    match keys
        .iter()
        .find(|k| k.matches(kid) && k.kind().alg() == alg)
    {
        None => Ok(None),
        Some(k) if k.kind() == KeyKind::X25519 => Ok(Some(k.public()?)),
        Some(k) => Ok(Some((*k).clone())),
    }
}

/// Re-encrypts `src` under a fresh data key into `dst` (which may be `src`).
pub fn rekey_file(src: &Path, dst: &Path, opts: &RekeyOptions) -> Result<()> {
    let rw = &opts.rewrap;
    let opened = open_for_update(src, false, rw)?;
    let reader = &opened.reader;
    let header = reader.header();
    let layout = reader.layout();
    let Some((params, enc, layout)) =
        layout.and_then(|l| Some((l.encryption.as_ref()?, l.envelope.encryption.as_ref()?, l)))
    else {
        return Err(Error::InvalidArgument(
            "the file is not encrypted: it has no data key to replace".into(),
        ));
    };
    check_signature_choice(header, rw)?;

    for kid in &rw.remove {
        if !enc.recipients.iter().any(|r| &r.kid == kid) {
            return Err(Error::InvalidArgument(format!(
                "no recipient has kid {kid:?}"
            )));
        }
    }
    let external = opts.external.iter().flat_map(|x| &x.stanzas);
    let rewrapped = |r: &&crate::keys::Recipient| {
        external
            .clone()
            .any(|s| (&s.kid, &s.alg) == (&r.kid, &r.alg))
    };
    if let Some(s) = external.clone().find(|s| {
        !enc.recipients
            .iter()
            .any(|r| (&s.kid, &s.alg) == (&r.kid, &r.alg))
            || rw.remove.contains(&s.kid)
    }) {
        return Err(Error::InvalidArgument(format!(
            "{:?} is not a recipient that stays (to give it access, add it)",
            s.kid
        )));
    }
    let kept: Vec<_> = enc
        .recipients
        .iter()
        .filter(|r| !rw.remove.contains(&r.kid) && !rewrapped(r))
        .collect();
    let given: Vec<&Jwk> = opts.recipients.iter().chain(&rw.keys).collect();
    let mut recipients = Vec::new();
    let mut missing = Vec::new();
    for r in &kept {
        match recipient_key(&r.kid, &r.alg, &given)? {
            Some(k) => recipients.push(k),
            None => missing.push(r.kid.as_str()),
        }
    }
    if !missing.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "the new data key is wrapped for every recipient that stays: pass the key of {} \
             (a public key is enough for X25519), or remove it",
            missing.join(", ")
        )));
    }
    if let Some(k) = opts
        .recipients
        .iter()
        .find(|k| !kept.iter().any(|r| k.matches(&r.kid)))
    {
        return Err(Error::InvalidArgument(format!(
            "{:?} is not a recipient that stays (to give it access, add it)",
            k.kid()
        )));
    }
    for k in &rw.add {
        if kept.iter().any(|r| k.matches(&r.kid)) {
            return Err(Error::InvalidArgument(format!(
                "{:?} is already a recipient",
                k.kid()
            )));
        }
        recipients.push(k.clone());
    }
    if recipients.is_empty() && opts.external.as_ref().is_none_or(|x| x.stanzas.is_empty()) {
        return Err(Error::InvalidArgument(
            "removing every recipient would make the file unreadable".into(),
        ));
    }

    let metadata: Metadata = header
        .metadata()
        .into_iter()
        .flatten()
        .filter(|(k, _)| !k.starts_with(RESERVED_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let write = WriteOptions {
        metadata: Some(metadata).filter(|m| !m.is_empty()),
        encrypt: Some(EncryptOptions {
            recipients,
            tensors: Some(enc.tensors.iter().cloned().collect::<BTreeSet<_>>()),
            algorithm: params.algorithm,
            external: opts.external.clone(),
        }),
        sign_with: rw.sign_with.clone(),
        policy: match &rw.policy {
            Some(p) => p.clone(),
            None => layout.envelope.policy.clone(),
        },
        segment_size: layout.envelope.segment_size,
        reserve: DEFAULT_RESERVE,
        fsync: rw.fsync,
    };
    // Every segment is authenticated before its bytes are used: the writer
    // fills each segment through the reader, which decrypts and verifies
    // it. An empty tensor's one empty segment is checked here, since the
    // writer has no byte of it to ask for.
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
    // Written and renamed while the source is locked (see rewrap_file).
    writer::serialize_filled_to_file(header.tensors(), &fills, &write, dst)?;
    drop(opened);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Algorithm;
    use crate::reader::{LoadOptions, Reader};
    use crate::writer::{serialize_to_file, TensorData};
    use crate::Dtype;
    use std::sync::Arc;

    fn read_all(bytes: Vec<u8>, key: &Jwk, names: &[&str]) -> Result<Vec<Vec<u8>>> {
        let opts = LoadOptions {
            keys: vec![key.clone()],
            ..Default::default()
        };
        let r = Reader::open(Arc::new(bytes), &opts)?;
        names
            .iter()
            .map(|n| {
                let mut out = vec![0u8; r.header().tensor(n)?.len()];
                r.read_into(n, &mut out).map(|_| out)
            })
            .collect()
    }

    /// Encrypted tensors of several segments, a plain one and empty ones come
    /// back under the new key; the old header in front of the new data opens
    /// nothing; a damaged segment leaves the target as it was.
    #[test]
    fn rekey_round_trip_revokes_and_fails_closed() {
        let dir = std::env::temp_dir().join(format!("ct-rekey-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (src, dst) = (dir.join("a.safetensors"), dir.join("b.safetensors"));
        let key = Jwk::generate(KeyKind::Oct).unwrap();
        let big: Vec<u8> = (0..4096 * 5 + 3).map(|i| (i * 13 % 251) as u8).collect();
        let small = [9u8; 40];
        let t = [
            TensorData {
                name: "big",
                dtype: Dtype::U8,
                shape: &[big.len()],
                data: &big,
            },
            TensorData {
                name: "plain",
                dtype: Dtype::U8,
                shape: &[40],
                data: &small,
            },
            TensorData {
                name: "e8",
                dtype: Dtype::U8,
                shape: &[0],
                data: &[],
            },
            TensorData {
                name: "e32",
                dtype: Dtype::F32,
                shape: &[0],
                data: &[],
            },
        ];
        let opts = WriteOptions {
            encrypt: Some(EncryptOptions {
                recipients: vec![key.clone()],
                tensors: Some(["big", "e8", "e32"].map(String::from).into()),
                algorithm: Algorithm::ChaCha20Poly1305,
                external: None,
            }),
            segment_size: 4096,
            ..Default::default()
        };
        serialize_to_file(&t, &opts, &src).unwrap();
        let rk = RekeyOptions {
            rewrap: RewrapOptions {
                keys: vec![key.clone()],
                ..Default::default()
            },
            recipients: Vec::new(),
            external: None,
        };
        rekey_file(&src, &dst, &rk).unwrap();
        let names = ["big", "plain", "e8", "e32"];
        let (old, new) = (std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
        let got = read_all(new.clone(), &key, &names).unwrap();
        assert_eq!(got, [big.clone(), small.to_vec(), vec![], vec![]]);
        let head = |b: &[u8]| 8 + u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
        assert_eq!(head(&old), head(&new));
        let spliced = [&old[..head(&old)], &new[head(&new)..]].concat();
        assert!(matches!(
            read_all(spliced, &key, &names),
            Err(Error::Integrity)
        ));

        let mut damaged = old.clone();
        damaged[head(&old) + 4096 * 2 + 1] ^= 1; // in "big", which the layout puts first
        std::fs::write(&src, &damaged).unwrap();
        let err = rekey_file(&src, &dst, &rk).unwrap_err();
        assert!(matches!(err, Error::Integrity), "{err:?}");
        assert_eq!(std::fs::read(&dst).unwrap(), new, "the target is untouched");
        let mut left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["a.safetensors", "b.safetensors"],
            "no temporary file left"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A key service's stanza that stays is wrapped anew by the service
    /// (the caller's `external`), not asked of `recipients`: without it the
    /// rekey is refused; with it the new file holds the new stanza, opens
    /// with the new data key and not with the old one. An external stanza
    /// for a recipient that does not stay is refused.
    #[test]
    fn rekey_with_a_key_service_recipient() {
        use crate::crypto::DataKey;
        use crate::keys::Recipient;
        let dir = std::env::temp_dir().join(format!("ct-rekey-ext-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (src, dst) = (dir.join("a.safetensors"), dir.join("b.safetensors"));
        let key = Jwk::generate(KeyKind::Oct).unwrap();
        let stanza = |ct: &str, kid: &str| {
            Recipient::parse_list(&format!(
                r#"[{{"kid":"{kid}","alg":"vault-transit","ciphertext":"{ct}"}}]"#
            ))
            .unwrap()
            .remove(0)
        };
        let (old_dk, new_dk) = (DataKey::generate().unwrap(), DataKey::generate().unwrap());
        let data = [5u8; 64];
        let t = [TensorData {
            name: "w",
            dtype: Dtype::U8,
            shape: &[64],
            data: &data,
        }];
        let opts = WriteOptions {
            encrypt: Some(EncryptOptions {
                recipients: vec![key.clone()],
                tensors: None,
                algorithm: Algorithm::Aes256Gcm,
                external: Some(ExternalRecipients {
                    data_key: old_dk.clone(),
                    stanzas: vec![stanza("vault:v1:b2xkb2xkb2xkb2xkb2xkb2xk", "kek")],
                }),
            }),
            reserve: DEFAULT_RESERVE,
            ..Default::default()
        };
        serialize_to_file(&t, &opts, &src).unwrap();
        let rekey = |external: Option<ExternalRecipients>| {
            rekey_file(
                &src,
                &dst,
                &RekeyOptions {
                    rewrap: RewrapOptions {
                        keys: vec![key.clone()],
                        ..Default::default()
                    },
                    recipients: Vec::new(),
                    external,
                },
            )
        };
        let ext = |kid: &str| ExternalRecipients {
            data_key: new_dk.clone(),
            stanzas: vec![stanza("vault:v1:bmV3bmV3bmV3bmV3bmV3bmV3", kid)],
        };
        assert!(matches!(rekey(None), Err(Error::InvalidArgument(m)) if m.contains("kek")));
        assert!(matches!(
            rekey(Some(ext("stranger"))),
            Err(Error::InvalidArgument(_))
        ));
        rekey(Some(ext("kek"))).unwrap();
        let bytes = std::fs::read(&dst).unwrap();
        assert_eq!(
            read_all(bytes.clone(), &key, &["w"]).unwrap(),
            [data.to_vec()]
        );
        let with = |dk: &DataKey| {
            let opts = LoadOptions {
                data_keys: vec![dk.clone()],
                ..Default::default()
            };
            Reader::open(Arc::new(bytes.clone()), &opts)
                .map(|r| r.layout().unwrap().recipients().to_vec())
        };
        let recipients = with(&new_dk).unwrap();
        assert_eq!(recipients.len(), 2);
        assert!(recipients.contains(&ext("kek").stanzas[0]));
        assert!(with(&old_dk).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
