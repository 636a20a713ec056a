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
//! since the file holds only wrapped copies of the old key. Those rules are
//! stated once, in [`decide`], which the CLI also asks before it writes.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use crate::envelope::Layout;
use crate::error::{Error, Result};
use crate::header::Header;
use crate::keys::{Jwk, KeyKind, KeyWrapper, Pinned};
use crate::progress::Progress;
use crate::rewrap::{self, open_for_update, Refusal, RewrapOptions, RewrapPlan};
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

/// How the fresh data key is wrapped for a recipient that stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WrappedBy {
    /// The key at this index of [`RekeyOptions::recipients`].
    Recipient(usize),
    /// The opening key at this index of the rewrap options' `keys`.
    OpeningKey(usize),
    /// The key wrapper at this index of [`RekeyOptions::wrappers`].
    Wrapper(usize),
}

/// A recipient that stays, and what wraps the new data key for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staying {
    /// Its kid, as in the file.
    pub kid: String,
    /// Its stanza's algorithm, as in the file.
    pub alg: String,
    /// What wraps the new data key for it.
    pub by: WrappedBy,
}

/// What a rekey with given options does to a file, decided from its header
/// alone: the one statement of the rules (FORMAT.md §8.2) that a rekey
/// applies and a caller previewing it (the CLI, before it writes any file
/// of a model) asks for. The header is not verified here; a rekey verifies
/// the file before it decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RekeyPlan {
    /// The rewrap rules' part: recipients kept, added and removed, the
    /// signature and the policy.
    pub rewrap: RewrapPlan,
    /// Every recipient that stays, in the file's order.
    pub staying: Vec<Staying>,
}

/// Why a rekey is refused, decided from the header and the options alone.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RekeyRefusal {
    /// The file is not encrypted: it has no data key to replace.
    NotEncrypted,
    /// What a rewrap with the same changes would refuse.
    Rewrap(Refusal),
    /// These recipients stay, but no key or key wrapper given is theirs
    /// (the file holds only wrapped copies of the old data key).
    NoKeyFor(Vec<String>),
    /// A key or key wrapper given for a recipient that stays has this kid,
    /// which is not one (to give it access is to add it).
    NotStaying(String),
    /// A key wrapper names no kid, so it stands for no recipient.
    WrapperWithoutKid,
}

impl RekeyRefusal {
    /// A stable name for the kind of refusal (a rewrap refusal's own).
    pub fn code(&self) -> &'static str {
        match self {
            RekeyRefusal::NotEncrypted => "no_data_key",
            RekeyRefusal::Rewrap(r) => r.code(),
            RekeyRefusal::NoKeyFor(_) => "no_key_for",
            RekeyRefusal::NotStaying(_) => "not_staying",
            RekeyRefusal::WrapperWithoutKid => "wrapper_without_kid",
        }
    }

    /// The kid the refusal is about, if one.
    pub fn kid(&self) -> Option<&str> {
        match self {
            RekeyRefusal::Rewrap(r) => r.kid(),
            RekeyRefusal::NotStaying(k) => Some(k),
            _ => None,
        }
    }

    /// The kids of the recipients that stay without a key ([`RekeyRefusal::NoKeyFor`]).
    pub fn kids(&self) -> &[String] {
        match self {
            RekeyRefusal::NoKeyFor(kids) => kids,
            _ => &[],
        }
    }
}

impl From<RekeyRefusal> for Error {
    fn from(r: RekeyRefusal) -> Error {
        Error::InvalidArgument(match r {
            RekeyRefusal::NotEncrypted => {
                "the file is not encrypted: it has no data key to replace".into()
            }
            RekeyRefusal::Rewrap(r) => return r.into(),
            RekeyRefusal::NoKeyFor(kids) => format!(
                "the new data key is wrapped for every recipient that stays: pass the key of {} \
                 (a public key is enough for X25519), or remove it",
                kids.join(", ")
            ),
            RekeyRefusal::NotStaying(kid) => {
                format!("{kid:?} is not a recipient that stays (to give it access, add it)")
            }
            RekeyRefusal::WrapperWithoutKid => {
                "a key wrapper for a rekey must name its kid (a kid attribute)".into()
            }
        })
    }
}

/// Where among `keys` is the key that a stanza of kid `kid` and algorithm
/// `alg` is wrapped for.
fn key_for(kid: &str, alg: &str, keys: &[Jwk]) -> Option<usize> {
    keys.iter()
        .position(|k| k.matches(kid) && k.kind().alg() == alg)
}

/// The plan of a rekey of the file whose header is `old` under `opts`, or
/// the refusal; an `Err` for a malformed envelope or policy. Each wrapper's
/// kid is asked once.
pub fn decide(
    old: &Header,
    opts: &RekeyOptions,
) -> Result<std::result::Result<RekeyPlan, RekeyRefusal>> {
    let layout = Layout::from_header(old)?;
    let Some(enc) = layout.as_ref().and_then(|l| l.envelope.encryption.as_ref()) else {
        return Ok(Err(RekeyRefusal::NotEncrypted));
    };
    let rw = &opts.rewrap;
    let rewrap = match rewrap::decide(old, rw)? {
        Ok(plan) => plan,
        Err(refusal) => return Ok(Err(RekeyRefusal::Rewrap(refusal))),
    };
    let mut unmatched: Vec<(usize, Option<String>)> =
        opts.wrappers.iter().map(|w| w.kid()).enumerate().collect();
    let mut staying = Vec::new();
    let mut missing = Vec::new();
    for r in enc
        .recipients
        .iter()
        .filter(|r| !rw.remove.contains(&r.kid))
    {
        // A file may repeat a stanza (FORMAT.md §6.3); the new one holds
        // one stanza per recipient that stays.
        if staying.iter().any(|s: &Staying| s.kid == r.kid) {
            continue;
        }
        let by = if let Some(i) = key_for(&r.kid, &r.alg, &opts.recipients) {
            WrappedBy::Recipient(i)
        } else if let Some(i) = key_for(&r.kid, &r.alg, &rw.keys) {
            WrappedBy::OpeningKey(i)
        } else if let Some(at) = unmatched
            .iter()
            .position(|(_, kid)| kid.as_deref() == Some(r.kid.as_str()))
        {
            WrappedBy::Wrapper(unmatched.swap_remove(at).0)
        } else {
            missing.push(r.kid.clone());
            continue;
        };
        staying.push(Staying {
            kid: r.kid.clone(),
            alg: r.alg.clone(),
            by,
        });
    }
    if !missing.is_empty() {
        return Ok(Err(RekeyRefusal::NoKeyFor(missing)));
    }
    unmatched.sort_by_key(|(i, _)| *i);
    if let Some((_, kid)) = unmatched.into_iter().next() {
        return Ok(Err(match kid {
            Some(kid) => RekeyRefusal::NotStaying(kid),
            None => RekeyRefusal::WrapperWithoutKid,
        }));
    }
    if let Some(k) = opts
        .recipients
        .iter()
        .find(|k| !rewrap.kept.iter().any(|kid| k.matches(kid)))
    {
        return Ok(Err(RekeyRefusal::NotStaying(k.kid().to_owned())));
    }
    Ok(Ok(RekeyPlan { rewrap, staying }))
}

/// The key a recipient that stays gets the new data key under (a private
/// X25519 key gives its public half).
fn public_part(k: &Jwk) -> Result<Jwk> {
    match k.kind() {
        KeyKind::X25519 => k.public(),
        _ => Ok(k.clone()),
    }
}

/// Re-encrypts `src` under a fresh data key into `dst` (which may be `src`),
/// reporting the tensor bytes written to `progress`.
pub fn rekey_file(
    src: &Path,
    dst: &Path,
    opts: &RekeyOptions,
    progress: Option<&dyn Progress>,
) -> Result<()> {
    let rw = &opts.rewrap;
    let opened = open_for_update(src, false, rw)?;
    let reader = &opened.reader;
    let header = reader.header();
    // Decided on the header just verified: the rules a rewrap follows, then
    // a rekey's own, about the keys of those that stay.
    let plan = decide(header, opts)?.map_err(Error::from)?;
    let Some((params, enc, layout)) = reader
        .layout()
        .and_then(|l| Some((l.encryption.as_ref()?, l.envelope.encryption.as_ref()?, l)))
    else {
        return Err(RekeyRefusal::NotEncrypted.into());
    };
    let mut recipients = Vec::new();
    let mut wrappers: Vec<Arc<dyn KeyWrapper>> = Vec::new();
    for stay in plan.staying {
        match stay.by {
            WrappedBy::Recipient(i) => recipients.push(public_part(&opts.recipients[i])?),
            WrappedBy::OpeningKey(i) => recipients.push(public_part(&rw.keys[i])?),
            // Held to the stanza it stands in for: its kid and alg.
            WrappedBy::Wrapper(i) => wrappers.push(Arc::new(Pinned {
                inner: opts.wrappers[i].clone(),
                kid: stay.kid,
                alg: Some(stay.alg),
            })),
        }
    }
    recipients.extend(rw.add.iter().cloned());
    wrappers.extend(rewrap::pinned_to_plan(rw, &plan.rewrap)?);

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
    write_from(reader, &write, dst, progress)?;
    drop(opened);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Algorithm;
    use crate::crypto::DataKey;
    use crate::keys::Recipient;
    use crate::reader::{LoadOptions, Reader};
    use crate::rewrap::tests::WrapsWith;
    use crate::writer::{serialize_to_file, TensorData};
    use crate::Dtype;
    use std::path::PathBuf;
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
        rekey_file(&src, &dst, &rk, None).unwrap();
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
        let err = rekey_file(&src, &dst, &rk, None).unwrap_err();
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
        let key = Jwk::generate(KeyKind::Oct).unwrap();
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
        let (dir, src, dst) = one_tensor_file("ext", 5, &opts);
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
                None,
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
            [vec![5u8; 64]]
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

    /// A recipient added by a key wrapper gets the fresh data key as the
    /// wrapper wraps it: the key behind the wrapper opens the new file, and
    /// the old data key does not. A wrapper whose stanza is not of the kid
    /// it names, or of a recipient's kid, is refused before anything is written.
    #[test]
    fn rekey_adds_a_key_wrapper_recipient() {
        let (key, hsm) = (
            Jwk::generate(KeyKind::Oct).unwrap(),
            Jwk::generate(KeyKind::Oct).unwrap(),
        );
        let (dir, src, dst) = one_tensor_file("add", 6, &for_recipients(vec![key.clone()], None));
        let rekey = |w: WrapsWith| {
            let mut o = options(&[&key], &[], &[]);
            o.rewrap.add_wrappers = vec![Arc::new(w)];
            rekey_file(&src, &dst, &o, None)
        };
        let mislabelled = WrapsWith {
            key: hsm.clone(),
            kid: Some("hsm-label".into()),
        };
        let e = rekey(mislabelled).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidArgument(m) if m.contains("hsm-label")),
            "{e:?}"
        );
        let e = rekey(WrapsWith::as_itself(&key)).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidArgument(m) if m.contains("already a recipient")),
            "{e:?}"
        );
        assert!(!dst.exists());

        rekey(WrapsWith::as_itself(&hsm)).unwrap();
        let bytes = std::fs::read(&dst).unwrap();
        assert_eq!(
            read_all(bytes.clone(), &hsm, &["w"]).unwrap(),
            [vec![6u8; 64]]
        );
        assert_eq!(read_all(bytes, &key, &["w"]).unwrap(), [vec![6u8; 64]]);
        let old = std::fs::read(&src).unwrap();
        let head = |b: &[u8]| 8 + u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
        let new = std::fs::read(&dst).unwrap();
        let spliced = [&old[..head(&old)], &new[head(&new)..]].concat();
        assert!(read_all(spliced, &key, &["w"]).is_err(), "a fresh data key");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The header of a file of one U8 tensor "w" of 64 bytes under `opts`.
    /// A temporary directory holding `a.safetensors`: one 64-byte tensor
    /// "w" of `byte`s, saved under `opts`; and the path `b.safetensors`
    /// beside it, for a rekey's output.
    fn one_tensor_file(tag: &str, byte: u8, opts: &WriteOptions) -> (PathBuf, PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("ct-rekey-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (src, dst) = (dir.join("a.safetensors"), dir.join("b.safetensors"));
        let data = [byte; 64];
        let t = [TensorData {
            name: "w",
            dtype: Dtype::U8,
            shape: &[64],
            data: &data,
        }];
        serialize_to_file(&t, opts, &src).unwrap();
        (dir, src, dst)
    }

    fn header_of(opts: &WriteOptions) -> Header {
        let data = [1u8; 64];
        let t = [TensorData {
            name: "w",
            dtype: Dtype::U8,
            shape: &[64],
            data: &data,
        }];
        let bytes = crate::writer::serialize(&t, opts).unwrap();
        crate::reader::read_header(&bytes).unwrap().0
    }

    fn for_recipients(recipients: Vec<Jwk>, sign_with: Option<Jwk>) -> WriteOptions {
        WriteOptions {
            encrypt: Some(EncryptOptions {
                recipients,
                tensors: None,
                algorithm: Algorithm::Aes256Gcm,
                wrappers: Vec::new(),
            }),
            sign_with,
            ..Default::default()
        }
    }

    fn options(keys: &[&Jwk], recipients: &[&Jwk], remove: &[&Jwk]) -> RekeyOptions {
        RekeyOptions {
            rewrap: RewrapOptions {
                keys: keys.iter().map(|k| (*k).clone()).collect(),
                remove: remove.iter().map(|k| k.kid().to_owned()).collect(),
                ..Default::default()
            },
            recipients: recipients.iter().map(|k| (*k).clone()).collect(),
            wrappers: Vec::new(),
        }
    }

    /// Each refusal of the plan, as its exact variant, decided from headers
    /// alone; and an accepted plan says what wraps the key for whom.
    #[test]
    fn the_plan_names_each_refusal() {
        let opener = Jwk::generate(KeyKind::Oct).unwrap();
        let holder = Jwk::generate(KeyKind::X25519).unwrap();
        let stranger = Jwk::generate(KeyKind::Oct).unwrap();
        let signer = Jwk::generate(KeyKind::Ed25519).unwrap();
        let both = header_of(&for_recipients(
            vec![opener.clone(), holder.public().unwrap()],
            None,
        ));
        let decided = |h: &Header, o: &RekeyOptions| decide(h, o).unwrap();

        let plain = header_of(&WriteOptions::default());
        let signed_only = header_of(&WriteOptions {
            sign_with: Some(signer.clone()),
            ..Default::default()
        });
        for h in [&plain, &signed_only] {
            assert_eq!(
                decided(h, &options(&[&opener], &[], &[])),
                Err(RekeyRefusal::NotEncrypted)
            );
        }
        let signed = header_of(&for_recipients(vec![opener.clone()], Some(signer)));
        assert_eq!(
            decided(&signed, &options(&[&opener], &[], &[])),
            Err(RekeyRefusal::Rewrap(Refusal::SignedNeedsChoice))
        );
        assert_eq!(
            decided(&both, &options(&[&opener], &[], &[&stranger])),
            Err(RekeyRefusal::Rewrap(Refusal::UnknownKid(
                stranger.kid().into()
            )))
        );
        assert_eq!(
            decided(&both, &options(&[&opener], &[], &[])),
            Err(RekeyRefusal::NoKeyFor(vec![holder.kid().into()]))
        );
        // A key of the right kid but another kind is not the recipient's key.
        let mut same_kid = Jwk::parse(&format!(
            r#"{{"kty":"oct","k":"{}","kid":"{}"}}"#,
            crate::keys::b64e(&[7u8; 32]),
            holder.kid()
        ))
        .unwrap();
        assert_eq!(
            decided(&both, &options(&[&opener], &[&same_kid], &[])),
            Err(RekeyRefusal::NoKeyFor(vec![holder.kid().into()]))
        );
        same_kid = holder.public().unwrap();
        assert_eq!(
            decided(&both, &options(&[&opener], &[&same_kid, &stranger], &[])),
            Err(RekeyRefusal::NotStaying(stranger.kid().into()))
        );
        assert_eq!(
            decided(&both, &options(&[&opener], &[&same_kid], &[&holder])),
            Err(RekeyRefusal::NotStaying(holder.kid().into())),
            "the key of a recipient removed"
        );
        #[derive(Debug)]
        struct NoKid;
        impl KeyWrapper for NoKid {
            fn wrap_data_key(&self, _: &DataKey) -> Result<Recipient> {
                unreachable!("a plan wraps nothing")
            }
        }
        let mut o = options(&[&opener], &[&same_kid], &[]);
        o.wrappers = vec![Arc::new(NoKid)];
        assert_eq!(decided(&both, &o), Err(RekeyRefusal::WrapperWithoutKid));
        let e = Error::from(RekeyRefusal::WrapperWithoutKid);
        assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");

        let plan = decided(&both, &options(&[&opener, &holder], &[], &[])).unwrap();
        assert_eq!(
            plan.staying
                .iter()
                .map(|s| (s.kid.as_str(), s.by))
                .collect::<Vec<_>>(),
            [
                (opener.kid(), WrappedBy::OpeningKey(0)),
                (holder.kid(), WrappedBy::OpeningKey(1))
            ]
        );
        let plan = decided(&both, &options(&[&opener], &[&same_kid], &[])).unwrap();
        assert_eq!(plan.staying[1].by, WrappedBy::Recipient(0));
        assert_eq!(plan.rewrap.kept, [opener.kid(), holder.kid()]);
    }

    /// rekey_file refuses what the plan refuses, with the refusal's error,
    /// before anything is written.
    #[test]
    fn rekey_refuses_what_the_plan_refuses() {
        let opener = Jwk::generate(KeyKind::Oct).unwrap();
        let holder = Jwk::generate(KeyKind::X25519).unwrap();
        let opts = for_recipients(vec![opener.clone(), holder.public().unwrap()], None);
        let (dir, src, dst) = one_tensor_file("plan", 3, &opts);
        let o = options(&[&opener], &[], &[]);
        let header = crate::reader::read_header(&std::fs::read(&src).unwrap())
            .unwrap()
            .0;
        let refusal = decide(&header, &o).unwrap().unwrap_err();
        let Error::InvalidArgument(expected) = Error::from(refusal) else {
            unreachable!()
        };
        let got = rekey_file(&src, &dst, &o, None).unwrap_err();
        assert!(
            matches!(&got, Error::InvalidArgument(m) if *m == expected),
            "{got:?}"
        );
        assert!(!dst.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The progress hook of a rekey hears rising totals that end at the
    /// tensors' size; a hook that stops it leaves the target as it was and
    /// no temporary file.
    #[test]
    fn rekey_reports_progress_and_can_be_stopped() {
        use std::ops::ControlFlow;
        let dir = std::env::temp_dir().join(format!("ct-rekey-progress-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (src, dst) = (dir.join("a.safetensors"), dir.join("b.safetensors"));
        let key = Jwk::generate(KeyKind::Oct).unwrap();
        let mib = 1 << 20;
        let (a, b) = (vec![1u8; 5 * mib], vec![2u8; 3 * mib + 7]);
        let t = [
            TensorData {
                name: "a",
                dtype: Dtype::U8,
                shape: &[a.len()],
                data: &a,
            },
            TensorData {
                name: "b",
                dtype: Dtype::U8,
                shape: &[b.len()],
                data: &b,
            },
        ];
        serialize_to_file(&t, &for_recipients(vec![key.clone()], None), &src).unwrap();
        let o = options(&[&key], &[], &[]);
        let seen = std::sync::Mutex::new(Vec::new());
        let hook = |done: u64| {
            seen.lock().unwrap().push(done);
            ControlFlow::Continue(())
        };
        rekey_file(&src, &dst, &o, Some(&hook)).unwrap();
        let seen = seen.into_inner().unwrap();
        assert!(seen.len() >= 2, "{seen:?}");
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        assert_eq!(*seen.last().unwrap(), (a.len() + b.len()) as u64);

        let before = std::fs::read(&dst).unwrap();
        let stop = |_: u64| ControlFlow::Break(());
        let e = rekey_file(&src, &dst, &o, Some(&stop)).unwrap_err();
        assert!(matches!(e, Error::Stopped), "{e:?}");
        assert_eq!(std::fs::read(&dst).unwrap(), before);
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
}
