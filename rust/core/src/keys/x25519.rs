//! X25519 recipients: the data key sealed with HPKE base mode (RFC 9180,
//! [`super::ALG_HPKE`]) to the recipient's public key, bound to this format
//! by [`HPKE_INFO`].

use zeroize::Zeroizing;

use super::stanza::decode_field;
use super::{b64e, hpke, Recipient, ALG_HPKE, HPKE_INFO};
use crate::crypto::{DataKey, SecretBytes};
use crate::error::{Error, Result};

/// The stanza of `data_key` sealed to `public` for `kid`.
pub(super) fn wrap(data_key: &DataKey, public: &[u8; 32], kid: &str) -> Result<Recipient> {
    let ikm = SecretBytes::random()?;
    let (enc, ct) = hpke::seal(public, &ikm, HPKE_INFO, b"", data_key.expose())?;
    Ok(Recipient {
        kid: kid.to_owned(),
        alg: ALG_HPKE.into(),
        iv: None,
        tag: None,
        enc: Some(b64e(&enc)),
        encrypted_key: b64e(&ct),
        other: serde_json::Map::new(),
    })
}

/// Opens `ct`, the stanza's decoded `encrypted_key`, with the recipient's
/// secret key (HPKE derives its public half).
pub(super) fn unwrap(r: &Recipient, secret: &SecretBytes, ct: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    let enc: [u8; 32] = decode_field(r, "enc", &r.enc)?
        .try_into()
        .map_err(|_| Error::Integrity)?;
    hpke::open(secret, &enc, HPKE_INFO, b"", ct)
}
