//! RFC 9180 base mode, single shot, for DHKEM(X25519, HKDF-SHA256),
//! HKDF-SHA256 and ChaCha20-Poly1305, through the `hpke` crate. Only what
//! wrapping a key needs: the ephemeral key's input keying material is drawn
//! here, fallibly, from the system's random source (ring), and handed to
//! the crate's key generation (`DeriveKeyPair`), so no random draw can fail
//! inside it.

use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::rand_core::{CryptoRng, RngCore};
use hpke::{Deserializable, Kem, OpModeR, OpModeS, Serializable};
use zeroize::Zeroizing;

use crate::crypto::SecretBytes;
use crate::error::{Error, Result};

type Suite = X25519HkdfSha256;

/// Hands the crate the 32 bytes of input keying material drawn for one
/// ephemeral key pair, and nothing else: any further request is refused
/// (recorded, and the seal then fails) rather than served from a source we
/// did not choose.
struct Ikm<'a> {
    ikm: &'a [u8; 32],
    served: bool,
    misused: bool,
}

impl RngCore for Ikm<'_> {
    fn next_u32(&mut self) -> u32 {
        self.misused = true;
        0
    }

    fn next_u64(&mut self) -> u64 {
        self.misused = true;
        0
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        if self.served || dest.len() != self.ikm.len() {
            self.misused = true;
            dest.fill(0);
            return;
        }
        dest.copy_from_slice(self.ikm);
        self.served = true;
    }
}

impl CryptoRng for Ikm<'_> {}

/// Encapsulates to `pk_r` with an ephemeral key derived from `ikm_e` and
/// seals `plaintext` as the first message. Returns `(enc, ciphertext || tag)`.
pub fn seal(
    pk_r: &[u8; 32],
    ikm_e: &SecretBytes,
    info: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<([u8; 32], Vec<u8>)> {
    let pk = <Suite as Kem>::PublicKey::from_bytes(pk_r)
        .map_err(|_| Error::InvalidKey("not an X25519 public key".into()))?;
    let mut rng = Ikm {
        ikm: ikm_e.expose(),
        served: false,
        misused: false,
    };
    let sealed = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, Suite, _>(
        &OpModeS::Base,
        &pk,
        info,
        plaintext,
        aad,
        &mut rng,
    );
    if rng.misused || !rng.served {
        return Err(Error::Io(std::io::Error::other(
            "HPKE asked for randomness other than one ephemeral key",
        )));
    }
    // The only failure of a base-mode seal is an all-zero shared secret (a
    // low-order recipient key).
    let (enc, ct) = sealed.map_err(|_| Error::Integrity)?;
    let enc: [u8; 32] = enc
        .to_bytes()
        .as_slice()
        .try_into()
        .map_err(|_| Error::Integrity)?;
    Ok((enc, ct))
}

/// Decapsulates `enc` with the recipient's secret and opens `ct`.
pub fn open(
    sk_r: &SecretBytes,
    enc: &[u8; 32],
    info: &[u8],
    aad: &[u8],
    ct: &[u8],
) -> Result<Zeroizing<Vec<u8>>> {
    let sk = <Suite as Kem>::PrivateKey::from_bytes(sk_r.expose()).map_err(|_| Error::Integrity)?;
    let enc = <Suite as Kem>::EncappedKey::from_bytes(enc).map_err(|_| Error::Integrity)?;
    hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, Suite>(
        &OpModeR::Base,
        &sk,
        &enc,
        info,
        ct,
        aad,
    )
    .map(Zeroizing::new)
    .map_err(|_| Error::Integrity)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::unhex;

    /// RFC 9180 A.2.1: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
    /// ChaCha20Poly1305, base mode, the first message (sequence 0).
    #[test]
    fn hpke_rfc9180_a2_vector() {
        let info = unhex("4f6465206f6e2061204772656369616e2055726e");
        let ikm_e = SecretBytes::from_slice(&unhex(
            "909a9b35d3dc4713a5e72a4da274b55d3d3821a37e5d099e74a647db583a904b",
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
        let (enc, ct) = seal(&pk_r, &ikm_e, &info, aad, &pt).unwrap();
        assert_eq!(
            enc.to_vec(),
            unhex("1afa08d3dec047a643885163f1180476fa7ddb54c6a8029ea33f95796bf2ac4a")
        );
        assert_eq!(ct, unhex("1c5250d8034ec2b784ba2cfd69dbdb8af406cfe3ff938e131f0def8c8b60b4db21993c62ce81883d2dd1b51a28"));
        let back = open(&sk_r, &enc, &info, aad, &ct).unwrap();
        assert_eq!(&back[..], &pt[..]);
        // A changed byte anywhere fails, as an integrity error.
        let mut bad = ct.clone();
        bad[0] ^= 1;
        assert!(matches!(
            open(&sk_r, &enc, &info, aad, &bad),
            Err(Error::Integrity)
        ));
        assert!(matches!(
            open(&sk_r, &enc, b"other info", aad, &ct),
            Err(Error::Integrity)
        ));
    }

    /// A low-order point (here all zeros) as the recipient key or as `enc`
    /// gives an all-zero shared secret, which RFC 9180 §7.1.4 refuses.
    #[test]
    fn low_order_points_are_refused() {
        let ikm = SecretBytes::random().unwrap();
        assert!(seal(&[0u8; 32], &ikm, b"", b"", b"x").is_err());
        let sk = SecretBytes::random().unwrap();
        assert!(matches!(
            open(&sk, &[0u8; 32], b"", b"", &[0u8; 17]),
            Err(Error::Integrity)
        ));
    }
}
