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
use std::sync::Arc;

use crate::crypto::DataKey;
use crate::error::{Error, Result};
use crate::keys::{Jwk, KeyKind, KeyWrapper, Recipient};
use crate::rewrap::{self, open_for_update, RewrapOptions};
use crate::transcode::{user_metadata, write_from};
use crate::writer::{EncryptOptions, WriteOptions, DEFAULT_RESERVE};

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
    /// Key wrappers (an HSM, a key service) for recipients that stay, each
    /// matched by its [`KeyWrapper::kid`] to a stanza that no key of
    /// `recipients` covers: it wraps the fresh data key the writer draws,
    /// into a stanza of that kid and alg.
    pub wrappers: Vec<Arc<dyn KeyWrapper>>,
}

/// A wrapper standing in for a recipient that stays: what it returns must
/// be a stanza of that recipient's kid and alg.
#[derive(Debug)]
struct Staying {
    inner: Arc<dyn KeyWrapper>,
    kid: String,
    alg: String,
}

impl KeyWrapper for Staying {
    fn wrap_data_key(&self, key: &DataKey) -> Result<Recipient> {
        let stanza = self.inner.wrap_data_key(key)?;
        if (&stanza.kid, &stanza.alg) != (&self.kid, &self.alg) {
            return Err(Error::InvalidArgument(format!(
                "the key wrapper for recipient {:?} returned a stanza of another kid or alg",
                self.kid
            )));
        }
        Ok(stanza)
    }
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
    // The rules a rewrap follows (signature, recipients removed and added,
    // policy); then a rekey's own, about the keys of those that stay.
    rewrap::plan(header, rw)?;
    let kept: Vec<_> = enc
        .recipients
        .iter()
        .filter(|r| !rw.remove.contains(&r.kid))
        .collect();
    let given: Vec<&Jwk> = opts.recipients.iter().chain(&rw.keys).collect();
    let mut recipients = Vec::new();
    let mut wrappers: Vec<Arc<dyn KeyWrapper>> = Vec::new();
    let mut missing = Vec::new();
    let mut unmatched: Vec<(Option<String>, &Arc<dyn KeyWrapper>)> =
        opts.wrappers.iter().map(|w| (w.kid(), w)).collect();
    for r in &kept {
        if let Some(k) = recipient_key(&r.kid, &r.alg, &given)? {
            recipients.push(k);
        } else if let Some(i) = unmatched
            .iter()
            .position(|(kid, _)| kid.as_deref() == Some(r.kid.as_str()))
        {
            let (_, w) = unmatched.swap_remove(i);
            wrappers.push(Arc::new(Staying {
                inner: w.clone(),
                kid: r.kid.clone(),
                alg: r.alg.clone(),
            }));
        } else {
            missing.push(r.kid.as_str());
        }
    }
    if let Some((kid, _)) = unmatched.first() {
        return Err(Error::InvalidArgument(match kid {
            Some(kid) => {
                format!("{kid:?} is not a recipient that stays (to give it access, add it)")
            }
            None => "a key wrapper for a rekey must name its kid (a kid attribute)".into(),
        }));
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
    recipients.extend(rw.add.iter().cloned());

    let write = WriteOptions {
        metadata: user_metadata(header),
        encrypt: Some(EncryptOptions {
            recipients,
            tensors: Some(enc.tensors.iter().cloned().collect::<BTreeSet<_>>()),
            algorithm: params.algorithm,
            wrappers,
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
    // Written and renamed while the source is locked (see rewrap_file).
    write_from(reader, &write, dst)?;
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
                wrappers: Vec::new(),
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
            wrappers: Vec::new(),
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

    /// A key service as a key wrapper: it answers with a Transit stanza
    /// (FORMAT.md §6.4) of its kid and keeps the data key it was given.
    #[derive(Debug)]
    struct Service(&'static str, std::sync::Mutex<Option<DataKey>>);

    impl KeyWrapper for Service {
        fn wrap_data_key(&self, key: &DataKey) -> Result<Recipient> {
            *self.1.lock().unwrap() = Some(key.clone());
            Recipient::parse(&format!(
                r#"{{"kid":"{}","alg":"vault-transit","ciphertext":"vault:v1:{}"}}"#,
                self.0,
                crate::keys::b64e(key.expose())
            ))
        }

        fn kid(&self) -> Option<String> {
            Some(self.0.to_owned())
        }
    }

    /// A key service's stanza that stays is wrapped anew by its wrapper,
    /// not asked of `recipients`: without it the rekey is refused; with it
    /// the new file holds the new stanza, for a fresh data key that opens
    /// the file; a wrapper for a recipient that does not stay is refused.
    #[test]
    fn rekey_with_a_key_service_recipient() {
        let dir = std::env::temp_dir().join(format!("ct-rekey-ext-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (src, dst) = (dir.join("a.safetensors"), dir.join("b.safetensors"));
        let key = Jwk::generate(KeyKind::Oct).unwrap();
        let data = [5u8; 64];
        let t = [TensorData {
            name: "w",
            dtype: Dtype::U8,
            shape: &[64],
            data: &data,
        }];
        let first = Arc::new(Service("kek", Default::default()));
        let opts = WriteOptions {
            encrypt: Some(EncryptOptions {
                recipients: vec![key.clone()],
                tensors: None,
                algorithm: Algorithm::Aes256Gcm,
                wrappers: vec![first.clone()],
            }),
            reserve: DEFAULT_RESERVE,
            ..Default::default()
        };
        serialize_to_file(&t, &opts, &src).unwrap();
        let old_dk = first.1.lock().unwrap().clone().unwrap();
        let rekey = |wrappers: Vec<Arc<dyn KeyWrapper>>| {
            rekey_file(
                &src,
                &dst,
                &RekeyOptions {
                    rewrap: RewrapOptions {
                        keys: vec![key.clone()],
                        ..Default::default()
                    },
                    recipients: Vec::new(),
                    wrappers,
                },
            )
        };
        assert!(matches!(rekey(vec![]), Err(Error::InvalidArgument(m)) if m.contains("kek")));
        let stranger = Arc::new(Service("stranger", Default::default()));
        assert!(matches!(
            rekey(vec![Arc::new(Service("kek", Default::default())), stranger]),
            Err(Error::InvalidArgument(m)) if m.contains("stranger")
        ));
        let again = Arc::new(Service("kek", Default::default()));
        rekey(vec![again.clone()]).unwrap();
        let new_dk = again.1.lock().unwrap().clone().unwrap();
        assert_ne!(new_dk.expose(), old_dk.expose());
        let bytes = std::fs::read(&dst).unwrap();
        assert_eq!(
            read_all(bytes.clone(), &key, &["w"]).unwrap(),
            [data.to_vec()]
        );
        let opened = |dk: &DataKey| {
            #[derive(Debug)]
            struct Fixed(DataKey);
            impl crate::keys::Identity for Fixed {
                fn unwrap_stanza(&self, s: &Recipient) -> Option<Result<DataKey>> {
                    (s.alg == "vault-transit").then(|| Ok(self.0.clone()))
                }
            }
            let providers: Vec<Arc<dyn crate::keys::Identity>> = vec![Arc::new(Fixed(dk.clone()))];
            let opts = LoadOptions {
                providers: Some(Arc::new(providers)),
                ..Default::default()
            };
            Reader::open(Arc::new(bytes.clone()), &opts)
                .map(|r| r.layout().unwrap().recipients().to_vec())
        };
        let recipients = opened(&new_dk).unwrap();
        assert_eq!(recipients.len(), 2);
        assert!(recipients
            .iter()
            .any(|r| r.alg == "vault-transit" && r.kid == "kek"));
        assert!(opened(&old_dk).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
