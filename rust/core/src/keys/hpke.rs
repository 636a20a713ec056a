//! RFC 9180 base mode, single shot, for DHKEM(X25519, HKDF-SHA256),
//! HKDF-SHA256 and ChaCha20-Poly1305. Only what wrapping a key needs.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::{hkdf, hmac};
use zeroize::Zeroizing;

use crate::crypto::SecretBytes;
use crate::error::{Error, Result};

const KEM_ID: u16 = 0x0020;
const KDF_ID: u16 = 0x0001;
const AEAD_ID: u16 = 0x0003;

fn kem_suite() -> Vec<u8> {
    let mut s = b"KEM".to_vec();
    s.extend_from_slice(&KEM_ID.to_be_bytes());
    s
}

fn hpke_suite() -> Vec<u8> {
    let mut s = b"HPKE".to_vec();
    for id in [KEM_ID, KDF_ID, AEAD_ID] {
        s.extend_from_slice(&id.to_be_bytes());
    }
    s
}

/// LabeledExtract: HMAC-SHA256(salt, "HPKE-v1" || suite || label || ikm).
fn labeled_extract(salt: &[u8], suite: &[u8], label: &[u8], ikm: &[u8]) -> Zeroizing<[u8; 32]> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, salt);
    let mut ctx = hmac::Context::with_key(&key);
    for part in [b"HPKE-v1".as_slice(), suite, label, ikm] {
        ctx.update(part);
    }
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

struct Len(usize);
impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// LabeledExpand: HKDF-Expand(prk, I2OSP(L, 2) || "HPKE-v1" || suite || label || info, L).
fn labeled_expand(prk: &[u8], suite: &[u8], label: &[u8], info: &[u8], out: &mut [u8]) {
    let prk = hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, prk);
    let l = (out.len() as u16).to_be_bytes();
    prk.expand(&[&l, b"HPKE-v1", suite, label, info], Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .expect("short HKDF output");
}

fn shared_secret(dh: &[u8; 32], enc: &[u8; 32], pk_r: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>> {
    // RFC 7748 §6.1: an all-zero shared secret means a low-order point.
    if dh.iter().all(|&b| b == 0) {
        return Err(Error::Integrity);
    }
    let suite = kem_suite();
    let eae_prk = labeled_extract(b"", &suite, b"eae_prk", dh);
    let mut kem_context = [0u8; 64];
    kem_context[..32].copy_from_slice(enc);
    kem_context[32..].copy_from_slice(pk_r);
    let mut ss = Zeroizing::new([0u8; 32]);
    labeled_expand(
        eae_prk.as_ref(),
        &suite,
        b"shared_secret",
        &kem_context,
        ss.as_mut(),
    );
    Ok(ss)
}

fn key_schedule(ss: &[u8; 32], info: &[u8]) -> (Zeroizing<[u8; 32]>, [u8; 12]) {
    let suite = hpke_suite();
    let psk_id_hash = labeled_extract(b"", &suite, b"psk_id_hash", b"");
    let info_hash = labeled_extract(b"", &suite, b"info_hash", info);
    let mut context = Vec::with_capacity(65);
    context.push(0u8); // mode_base
    context.extend_from_slice(psk_id_hash.as_ref());
    context.extend_from_slice(info_hash.as_ref());
    let secret = labeled_extract(ss, &suite, b"secret", b"");
    let mut key = Zeroizing::new([0u8; 32]);
    labeled_expand(secret.as_ref(), &suite, b"key", &context, key.as_mut());
    let mut nonce = [0u8; 12];
    labeled_expand(secret.as_ref(), &suite, b"base_nonce", &context, &mut nonce);
    (key, nonce)
}

fn aead_key(key: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&aead::CHACHA20_POLY1305, key).expect("32-byte key"))
}

/// Encapsulates to `pk_r` with the ephemeral secret `sk_e` and seals
/// `plaintext` as the first message. Returns `(enc, ciphertext || tag)`.
pub fn seal(
    pk_r: &[u8; 32],
    sk_e: &SecretBytes,
    info: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<([u8; 32], Vec<u8>)> {
    let sk = x25519_dalek::StaticSecret::from(*sk_e.expose());
    let enc = x25519_dalek::PublicKey::from(&sk).to_bytes();
    let dh = Zeroizing::new(
        sk.diffie_hellman(&x25519_dalek::PublicKey::from(*pk_r))
            .to_bytes(),
    );
    let ss = shared_secret(&dh, &enc, pk_r)?;
    let (key, nonce) = key_schedule(&ss, info);
    let mut ct = plaintext.to_vec();
    aead_key(&key)
        .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut ct)
        .map_err(|_| Error::Integrity)?;
    Ok((enc, ct))
}

/// Decapsulates `enc` with the recipient's secret and opens `ct`.
pub fn open(
    sk_r: &SecretBytes,
    pk_r: &[u8; 32],
    enc: &[u8; 32],
    info: &[u8],
    aad: &[u8],
    ct: &[u8],
) -> Result<Zeroizing<Vec<u8>>> {
    let sk = x25519_dalek::StaticSecret::from(*sk_r.expose());
    let dh = Zeroizing::new(
        sk.diffie_hellman(&x25519_dalek::PublicKey::from(*enc))
            .to_bytes(),
    );
    let ss = shared_secret(&dh, enc, pk_r)?;
    let (key, nonce) = key_schedule(&ss, info);
    let mut buf = Zeroizing::new(ct.to_vec());
    let n = aead_key(&key)
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut buf,
        )
        .map_err(|_| Error::Integrity)?
        .len();
    Ok(Zeroizing::new(buf[..n].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn hpke_rfc9180_a2_vector() {
        // RFC 9180 A.2.1: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20Poly1305, base mode.
        let info = unhex("4f6465206f6e2061204772656369616e2055726e");
        let sk_e = SecretBytes::from_slice(&unhex(
            "f4ec9b33b792c372c1d2c2063507b684ef925b8c75a42dbcbf57d63ccd381600",
        ))
        .unwrap();
        let sk_r = SecretBytes::from_slice(&unhex(
            "8057991eef8f1f1af18f4a9491d16a1ce333f695d4db8e38da75975c4478e0fb",
        ))
        .unwrap();
        let pk_r: [u8; 32] =
            unhex("4310ee97d88cc1f088a5576c77ab0cf5c3ac797f3d95139c6c84b5429c59662a")
                .try_into()
                .unwrap();
        let pt = unhex("4265617574792069732074727574682c20747275746820626561757479");
        let aad = b"Count-0";
        let (enc, ct) = seal(&pk_r, &sk_e, &info, aad, &pt).unwrap();
        assert_eq!(
            enc.to_vec(),
            unhex("1afa08d3dec047a643885163f1180476fa7ddb54c6a8029ea33f95796bf2ac4a")
        );
        assert_eq!(ct, unhex("1c5250d8034ec2b784ba2cfd69dbdb8af406cfe3ff938e131f0def8c8b60b4db21993c62ce81883d2dd1b51a28"));
        let back = open(&sk_r, &pk_r, &enc, &info, aad, &ct).unwrap();
        assert_eq!(&back[..], &pt[..]);
    }
}
