//! Serialization entry point.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use cryptotensors::crypto::{Algorithm, DataKey};
use cryptotensors::keys::{Jwk, Recipient};
use cryptotensors::rekey::{rekey_file, RekeyOptions};
use cryptotensors::rewrap::{rewrap_file, RewrapOptions};
use cryptotensors::writer::{
    self, EncryptOptions, ExternalRecipients, TensorData, WriteOptions, DEFAULT_RESERVE,
};
use cryptotensors::Dtype;
use cryptotensors::Error;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::buffer::ReadBuffer;
use crate::errors::IntoPy;
use crate::guard::guard;
use crate::threads::Threads;

/// Serializes `(name, dtype, shape, data)` records to bytes, or atomically
/// to `path` (then returns `None`). `data` is any C-contiguous buffer
/// holding the tensor's bytes; its export is held for the whole call.
///
/// Encryption: `recipients` (JWKS JSON text) with the optional `encrypted`
/// names, `algorithm` and `segment_size`, and `external`, a data key with
/// recipient stanzas wrapped for it elsewhere (JSON list); signing:
/// `sign_with`.
#[pyfunction]
#[pyo3(signature = (tensors, metadata=None, path=None, *, recipients=None, encrypted=None, algorithm=None, segment_size=0, sign_with=None, policy=None, threads=Threads::default(), external=None))]
#[allow(clippy::too_many_arguments)]
pub fn serialize<'py>(
    py: Python<'py>,
    tensors: Vec<(String, String, Vec<usize>, Bound<'py, PyAny>)>,
    metadata: Option<BTreeMap<String, String>>,
    path: Option<PathBuf>,
    recipients: Option<&str>,
    encrypted: Option<BTreeSet<String>>,
    algorithm: Option<&str>,
    segment_size: usize,
    sign_with: Option<&str>,
    policy: Option<String>,
    threads: Threads,
    external: Option<(Vec<u8>, String)>,
) -> PyResult<Option<Bound<'py, PyBytes>>> {
    guard("serialize", || {
        let dtypes = tensors
            .iter()
            .map(|t| Dtype::parse(&t.1))
            .collect::<cryptotensors::Result<Vec<_>>>()
            .py_err()?;
        let buffers = tensors
            .iter()
            .map(|t| ReadBuffer::new(&t.3, "tensor data"))
            .collect::<PyResult<Vec<_>>>()?;
        let data: Vec<TensorData> = tensors
            .iter()
            .zip(&dtypes)
            .zip(&buffers)
            .map(|(((name, _, shape, _), &dtype), buf)| TensorData {
                name,
                dtype,
                shape,
                data: buf.bytes(),
            })
            .collect();
        let opts = write_options(
            metadata,
            recipients,
            encrypted,
            algorithm,
            segment_size,
            sign_with,
            policy,
            external,
        )?;
        match path {
            Some(path) => {
                py.allow_threads(|| threads.run(|| writer::serialize_to_file(&data, &opts, &path)))
                    .py_err()?;
                Ok(None)
            }
            None => {
                let bytes = py
                    .allow_threads(|| threads.run(|| writer::serialize(&data, &opts)))
                    .py_err()?;
                Ok(Some(PyBytes::new(py, &bytes)))
            }
        }
    })
}

/// Rewrites a file's header to change recipients, policy or signature;
/// tensor bytes and the data key stay unchanged (see `cryptotensors::rewrap`).
#[pyfunction]
///
/// `replace`: JSON `[[old, new], ...]`, recipient stanzas replaced in place
/// by ones wrapping the same data key (a key service's rewrap).
#[pyo3(signature = (src, dst, *, keys=None, trusted=None, add=None, remove=Vec::new(), sign_with=None, drop_signature=false, data_keys=None, policy=None, remove_policy=false, policy_input=None, replace=None))]
#[allow(clippy::too_many_arguments)]
pub fn rewrap(
    py: Python<'_>,
    src: PathBuf,
    dst: PathBuf,
    keys: Option<&str>,
    trusted: Option<&str>,
    add: Option<&str>,
    remove: Vec<String>,
    sign_with: Option<&str>,
    drop_signature: bool,
    data_keys: Option<Vec<Vec<u8>>>,
    policy: Option<String>,
    remove_policy: bool,
    policy_input: Option<String>,
    replace: Option<&str>,
) -> PyResult<()> {
    guard("rewrap", || {
        let mut opts = rewrap_options(
            keys,
            trusted,
            add,
            remove,
            sign_with,
            drop_signature,
            data_keys,
            policy,
            remove_policy,
            policy_input,
        )?;
        opts.replace = replace
            .map(Recipient::parse_pairs)
            .transpose()
            .py_err()?
            .unwrap_or_default();
        py.allow_threads(|| rewrap_file(&src, &dst, &opts)).py_err()
    })
}

/// Re-encrypts a file under a fresh data key (see `cryptotensors::rekey`);
/// `recipients`: keys of the recipients that stay, the other arguments as
/// for `rewrap`; `external`: the fresh data key and its stanzas wrapped
/// outside (as for `serialize`) for recipients that stay.
#[pyfunction]
#[pyo3(signature = (src, dst, *, keys=None, trusted=None, recipients=None, add=None, remove=Vec::new(), sign_with=None, drop_signature=false, data_keys=None, policy=None, remove_policy=false, policy_input=None, threads=Threads::default(), external=None))]
#[allow(clippy::too_many_arguments)]
pub fn rekey(
    py: Python<'_>,
    src: PathBuf,
    dst: PathBuf,
    keys: Option<&str>,
    trusted: Option<&str>,
    recipients: Option<&str>,
    add: Option<&str>,
    remove: Vec<String>,
    sign_with: Option<&str>,
    drop_signature: bool,
    data_keys: Option<Vec<Vec<u8>>>,
    policy: Option<String>,
    remove_policy: bool,
    policy_input: Option<String>,
    threads: Threads,
    external: Option<(Vec<u8>, String)>,
) -> PyResult<()> {
    guard("rekey", || {
        let opts = RekeyOptions {
            rewrap: rewrap_options(
                keys,
                trusted,
                add,
                remove,
                sign_with,
                drop_signature,
                data_keys,
                policy,
                remove_policy,
                policy_input,
            )?,
            recipients: recipients.map_or(Ok(Vec::new()), Jwk::parse_set).py_err()?,
            external: external.map(external_recipients).transpose().py_err()?,
        };
        py.allow_threads(|| threads.run(|| rekey_file(&src, &dst, &opts)))
            .py_err()
    })
}

#[allow(clippy::too_many_arguments)]
fn rewrap_options(
    keys: Option<&str>,
    trusted: Option<&str>,
    add: Option<&str>,
    remove: Vec<String>,
    sign_with: Option<&str>,
    drop_signature: bool,
    data_keys: Option<Vec<Vec<u8>>>,
    policy: Option<String>,
    remove_policy: bool,
    policy_input: Option<String>,
) -> PyResult<RewrapOptions> {
    let parse = |s: Option<&str>| s.map_or(Ok(Vec::new()), Jwk::parse_set);
    Ok(RewrapOptions {
        keys: parse(keys).py_err()?,
        data_keys: crate::handle::data_keys(data_keys).py_err()?,
        trusted_signers: parse(trusted).py_err()?,
        policy_input,
        add: parse(add).py_err()?,
        remove,
        replace: Vec::new(),
        sign_with: sign_with.map(Jwk::parse).transpose().py_err()?,
        drop_signature,
        policy: if remove_policy {
            Some(None)
        } else {
            policy.map(Some)
        },
        fsync: fsync_requested(),
    })
}

/// The writer's options from the arguments `serialize` and `migrate` share.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_options(
    metadata: Option<BTreeMap<String, String>>,
    recipients: Option<&str>,
    encrypted: Option<BTreeSet<String>>,
    algorithm: Option<&str>,
    segment_size: usize,
    sign_with: Option<&str>,
    policy: Option<String>,
    external: Option<(Vec<u8>, String)>,
) -> PyResult<WriteOptions> {
    let encrypt = match recipients {
        None => None,
        Some(json) => Some(EncryptOptions {
            recipients: Jwk::parse_set(json).py_err()?,
            tensors: encrypted,
            algorithm: Algorithm::parse(algorithm.unwrap_or("AES-256-GCM")).py_err()?,
            external: external.map(external_recipients).transpose().py_err()?,
        }),
    };
    let sign_with = sign_with.map(Jwk::parse).transpose().py_err()?;
    let reserve = if encrypt.is_some() || sign_with.is_some() {
        DEFAULT_RESERVE
    } else {
        0
    };
    Ok(WriteOptions {
        metadata,
        encrypt,
        sign_with,
        policy,
        segment_size,
        reserve,
        fsync: fsync_requested(),
    })
}

/// `CRYPTOTENSORS_FSYNC=1`: flush saves and rewraps to disk before they return.
fn fsync_requested() -> bool {
    std::env::var_os("CRYPTOTENSORS_FSYNC").is_some_and(|v| v == "1")
}

fn external_recipients(
    (key, stanzas): (Vec<u8>, String),
) -> cryptotensors::Result<ExternalRecipients> {
    Ok(ExternalRecipients {
        data_key: DataKey::from_bytes(&key).ok_or_else(|| {
            Error::InvalidArgument("external recipients: the data key must be 32 bytes".into())
        })?,
        stanzas: Recipient::parse_list(&stanzas)?,
    })
}
