//! Python key providers and key wrappers as the core's trait objects.
//!
//! The core calls these with the GIL released (inside `allow_threads`),
//! so each call takes the GIL back. A Python exception becomes
//! `Error::KeyProvider` carrying the `PyErr`, which [`crate::errors::to_py`]
//! raises again unchanged: a provider's exception reaches the caller as it
//! would from a plain Python call.
//!
//! The protocol stays the Python one (see `_providers.py`):
//! `provider.unwrap(stanza: dict) -> bytes | None` and
//! `wrapper.wrap(data_key: bytes) -> dict`. Both hand a data key through a
//! Python `bytes` object, which Python never wipes: that copy of the key is
//! as long-lived as the garbage collector makes it.

use std::sync::Arc;

use cryptotensors::keys::Recipient;
use cryptotensors::keys::{provided_key, Identity, KeyWrapper, Providers};
use cryptotensors::DataKey;
use cryptotensors::{Error, Result};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use zeroize::Zeroizing;

fn provider_error(e: PyErr) -> Error {
    Error::KeyProvider(Box::new(e))
}

/// An object with `unwrap(stanza) -> bytes | None`.
#[derive(Debug)]
pub struct PyIdentity(Py<PyAny>);

impl Identity for PyIdentity {
    fn unwrap_stanza(&self, stanza: &Recipient) -> Option<Result<DataKey>> {
        Python::with_gil(|py| {
            let answer = || -> PyResult<Option<Zeroizing<Vec<u8>>>> {
                // A fresh dict per call, every member included (a provider
                // may implement an alg the core does not know).
                let dict = py
                    .import("json")?
                    .getattr("loads")?
                    .call1((stanza.to_json(),))?;
                let out = self.0.bind(py).call_method1("unwrap", (dict,))?;
                if out.is_none() {
                    return Ok(None);
                }
                let bytes = match out.downcast::<PyBytes>() {
                    Ok(b) => b.as_bytes().to_vec(),
                    Err(_) => out.extract::<Vec<u8>>()?,
                };
                Ok(Some(Zeroizing::new(bytes)))
            };
            match answer() {
                Ok(None) => None,
                Ok(Some(bytes)) => Some(provided_key(&bytes)),
                Err(e) => Some(Err(provider_error(e))),
            }
        })
    }
}

/// A zero-argument callable returning the providers (`_providers.providers`),
/// called only when the key ring opens nothing.
#[derive(Debug)]
pub struct PyProviders(Py<PyAny>);

impl PyProviders {
    pub fn shared(callable: Py<PyAny>) -> Arc<dyn Providers> {
        Arc::new(PyProviders(callable))
    }
}

impl Providers for PyProviders {
    fn identities(&self) -> Result<Vec<Arc<dyn Identity>>> {
        Python::with_gil(|py| {
            let listed = self.0.bind(py).call0()?;
            let list = py.get_type::<PyList>().call1((listed,))?;
            list.try_iter()?
                .map(|p| Ok(Arc::new(PyIdentity(p?.unbind())) as Arc<dyn Identity>))
                .collect::<PyResult<Vec<_>>>()
        })
        .map_err(provider_error)
    }
}

/// An object with `wrap(data_key: bytes) -> dict` (a stanza).
#[derive(Debug)]
pub struct PyWrapper(Py<PyAny>);

impl PyWrapper {
    pub fn shared(wrapper: Py<PyAny>) -> Arc<dyn KeyWrapper> {
        Arc::new(PyWrapper(wrapper))
    }
}

impl KeyWrapper for PyWrapper {
    fn wrap_data_key(&self, key: &DataKey) -> Result<Recipient> {
        let text = Python::with_gil(|py| -> PyResult<String> {
            let key = PyBytes::new(py, key.expose());
            let stanza = self.0.bind(py).call_method1("wrap", (key,))?;
            let dict = py.import("builtins")?.getattr("dict")?.call1((stanza,))?;
            py.import("json")?
                .getattr("dumps")?
                .call1((dict,))?
                .extract()
        })
        .map_err(provider_error)?;
        // The writer checks it (Recipient::check) before it is written.
        Recipient::parse(&text)
    }

    fn kid(&self) -> Option<String> {
        Python::with_gil(|py| self.0.bind(py).getattr("kid").ok()?.extract().ok())
    }
}
