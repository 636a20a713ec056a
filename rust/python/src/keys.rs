//! Keys as the binding holds them: a [`KeyRing`] parsed once, and the
//! argument types ([`Keys`], [`SigningKey`]) that take only a ring, so key
//! text never crosses the boundary on a save, rewrap, rekey or open. Also
//! key generation and inspection, which take and give one JWK as text.

use cryptotensors::keys::{Jwk, KeyKind};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;

use crate::errors::{IntoPy, InvalidKeyError};
use crate::guard::guard;

/// A fresh private JWK (JSON text) of kind "oct", "X25519", "Ed25519" or
/// "P-256" (aliases "ES256", "EC").
#[pyfunction]
pub fn generate_key(kind: &str) -> PyResult<String> {
    guard("generate_key", || {
        let kind = KeyKind::parse(kind).py_err()?;
        Jwk::generate(kind).and_then(|k| k.to_json(true)).py_err()
    })
}

/// The public JWK (JSON text) of an OKP or EC private JWK.
#[pyfunction]
pub fn public_key(jwk: &str) -> PyResult<String> {
    guard("public_key", || {
        Jwk::parse(jwk)
            .and_then(|k| k.public())
            .and_then(|k| k.to_json(false))
            .py_err()
    })
}

/// The key id (its `kid`, else its RFC 7638 thumbprint) and thumbprint.
#[pyfunction]
pub fn key_id(jwk: &str) -> PyResult<(String, String)> {
    guard("key_id", || {
        let k = Jwk::parse(jwk).py_err()?;
        Ok((k.kid().to_owned(), k.thumbprint().to_owned()))
    })
}

/// JWKs parsed once: the binding holds them, so an open passes this object
/// instead of JSON text to parse again. Its repr names each key's kind and
/// kid, never a secret.
#[pyclass(frozen, module = "cryptotensors._core")]
pub struct KeyRing {
    keys: Vec<Jwk>,
}

impl KeyRing {
    pub fn keys(&self) -> &[Jwk] {
        &self.keys
    }
}

#[pymethods]
impl KeyRing {
    /// Parses a JWK, a JSON list of JWKs or a JWKS (JSON text).
    #[new]
    fn new(jwks: &str) -> PyResult<KeyRing> {
        guard("KeyRing", || {
            Ok(KeyRing {
                keys: Jwk::parse_set(jwks).py_err()?,
            })
        })
    }

    /// The keys of several rings, in order, as one ring.
    #[staticmethod]
    fn join(rings: Vec<PyRef<'_, KeyRing>>) -> PyResult<KeyRing> {
        guard("KeyRing.join", || {
            Ok(KeyRing {
                keys: rings.iter().flat_map(|r| r.keys.iter().cloned()).collect(),
            })
        })
    }

    /// The key ids, in order.
    fn kids(&self) -> PyResult<Vec<String>> {
        guard("KeyRing.kids", || {
            Ok(self.keys.iter().map(|k| k.kid().to_owned()).collect())
        })
    }

    fn __len__(&self) -> PyResult<usize> {
        guard("KeyRing.__len__", || Ok(self.keys.len()))
    }

    fn __repr__(&self) -> PyResult<String> {
        // Jwk's Debug shows kind, kid and whether it is private: no secret.
        guard("KeyRing.__repr__", || {
            Ok(format!("KeyRing({:?})", self.keys))
        })
    }
}

/// A key-typed argument (recipients, keys to add): the keys of a
/// [`KeyRing`], parsed when the ring was built. Anything else, JSON text
/// included, is a `TypeError` naming only the type, never the value.
pub struct Keys(pub Vec<Jwk>);

impl<'py> FromPyObject<'py> for Keys {
    fn extract_bound(ob: &Bound<'py, PyAny>) -> PyResult<Self> {
        match ob.downcast::<KeyRing>() {
            Ok(ring) => Ok(Keys(ring.get().keys.clone())),
            Err(_) => Err(PyTypeError::new_err(format!(
                "'{}' object is not a KeyRing (keys cross as a parsed KeyRing, not as text)",
                ob.get_type().name()?
            ))),
        }
    }
}

/// `sign_with`: a [`KeyRing`] of exactly one private Ed25519 or P-256 key.
/// Refused before anything is read or written (`InvalidKeyError`, saying
/// how many keys the ring holds, never what they are).
pub struct SigningKey(pub Jwk);

impl<'py> FromPyObject<'py> for SigningKey {
    fn extract_bound(ob: &Bound<'py, PyAny>) -> PyResult<Self> {
        let Keys(keys) = ob.extract()?;
        let held = keys.len();
        match <[Jwk; 1]>::try_from(keys) {
            Ok([key]) if key.kind().signs() && key.is_private() => Ok(SigningKey(key)),
            Ok(_) => Err(InvalidKeyError::new_err(
                "sign_with takes exactly one private Ed25519 or P-256 JWK; this one is not a private signing key",
            )),
            Err(_) => Err(InvalidKeyError::new_err(format!(
                "sign_with takes exactly one private Ed25519 or P-256 JWK; this ring holds {held} keys"
            ))),
        }
    }
}
