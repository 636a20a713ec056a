//! Key generation and inspection.

use cryptotensors::keys::{Jwk, KeyKind};
use pyo3::prelude::*;

use crate::errors::IntoPy;
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
