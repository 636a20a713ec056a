//! `A256GCMKW` recipients (RFC 7518 §4.7): an `oct` key-encryption key
//! seals the data key with AES-256-GCM under a fresh 96-bit IV, no AAD.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use zeroize::Zeroizing;

use super::stanza::decode_field;
use super::{b64e, Recipient, ALG_A256GCMKW};
use crate::crypto::{fill_random, DataKey, SecretBytes};
use crate::error::{Error, Result};

fn gcm_key(key: &[u8]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&aead::AES_256_GCM, key).expect("32-byte key"))
}

/// The stanza of `data_key` wrapped with `kek` for `kid`.
pub(super) fn wrap(data_key: &DataKey, kek: &SecretBytes, kid: &str) -> Result<Recipient> {
    let mut iv = [0u8; 12];
    fill_random(&mut iv)?;
    let mut ct = Zeroizing::new(data_key.expose().to_vec());
    let tag = gcm_key(kek.expose())
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(iv), Aad::empty(), &mut ct)
        .map_err(|_| Error::Integrity)?;
    Ok(Recipient {
        kid: kid.to_owned(),
        alg: ALG_A256GCMKW.into(),
        iv: Some(b64e(&iv)),
        tag: Some(b64e(tag.as_ref())),
        enc: None,
        encrypted_key: b64e(&ct),
        other: serde_json::Map::new(),
    })
}

/// Opens `ct`, the stanza's decoded `encrypted_key`, with `kek`.
pub(super) fn unwrap(
    r: &Recipient,
    kek: &SecretBytes,
    mut ct: Zeroizing<Vec<u8>>,
) -> Result<Zeroizing<Vec<u8>>> {
    let iv: [u8; 12] = decode_field(r, "iv", &r.iv)?
        .try_into()
        .map_err(|_| Error::Integrity)?;
    let tag = aead::Tag::try_from(decode_field(r, "tag", &r.tag)?.as_slice())
        .map_err(|_| Error::Integrity)?;
    gcm_key(kek.expose())
        .open_in_place_separate_tag(
            Nonce::assume_unique_for_key(iv),
            Aad::empty(),
            tag,
            &mut ct,
            0..,
        )
        .map_err(|_| Error::Integrity)?;
    Ok(ct)
}
