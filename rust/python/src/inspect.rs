//! Header-only inspection: no key needed, nothing decrypted.

use std::fs::File;

use cryptotensors::envelope::{Layout, Protection, MAC_KEY, RESERVED_PREFIX, SIGNATURE_KEY};
use cryptotensors::legacy::is_legacy;
use cryptotensors::reader::read_header;
use cryptotensors::{sign, PreadFile};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::errors::IntoPy;
use crate::guard::guard;

/// "encrypted" or "signed" for a file cryptotensors protects, None for a
/// plain safetensors file, from its header alone (errors: an unreadable
/// header). For loaders that read tensor bytes themselves and so can neither
/// decrypt nor verify, it fails closed: an envelope this build rejects
/// (damaged, or another version) still counts as protected, by its reserved
/// members, and a cryptotensors 0.2.3 file counts as encrypted.
#[pyfunction]
pub fn protection(py: Python<'_>, path: std::path::PathBuf) -> PyResult<Option<&'static str>> {
    guard("protection", || {
        py.allow_threads(|| -> cryptotensors::Result<_> {
            let source = PreadFile::new(File::open(&path)?)?;
            let (header, _) = read_header(&source)?;
            Ok(classify(&header))
        })
        .py_err()
    })
}

fn classify(header: &cryptotensors::header::Header) -> Option<&'static str> {
    let has = |k: &str| header.metadata().is_some_and(|m| m.contains_key(k));
    match Layout::from_header(header) {
        Ok(Some(l)) => {
            let encrypted = l.envelope.encryption.is_some()
                || l.entries.iter().any(|e| e.0 == Protection::Encrypted);
            if encrypted {
                Some("encrypted")
            } else if has(SIGNATURE_KEY) {
                Some("signed")
            } else {
                None
            }
        }
        Ok(None) if is_legacy(header) => Some("encrypted"),
        Ok(None) => None,
        Err(_) if !has(MAC_KEY) && has(SIGNATURE_KEY) => Some("signed"),
        Err(_) => Some("encrypted"),
    }
}

/// Describes a file from its header alone: tensors (dtype, shape, whether
/// encrypted), user metadata, algorithm, segment size, recipients' kids and
/// the signer the signature names (unverified).
#[pyfunction]
pub fn inspect<'py>(py: Python<'py>, path: std::path::PathBuf) -> PyResult<Bound<'py, PyDict>> {
    guard("inspect", || describe(py, &path))
}

fn describe<'py>(py: Python<'py>, path: &std::path::Path) -> PyResult<Bound<'py, PyDict>> {
    let (header, layout) = py
        .allow_threads(|| -> cryptotensors::Result<_> {
            let source = PreadFile::new(File::open(path)?)?;
            let (header, _) = read_header(&source)?;
            let layout = Layout::from_header(&header)?;
            Ok((header, layout))
        })
        .py_err()?;
    let out = PyDict::new(py);
    let tensors = PyList::empty(py);
    for (pos, (name, info)) in header.tensors().iter().enumerate() {
        let t = PyDict::new(py);
        t.set_item("name", name)?;
        t.set_item("dtype", info.dtype.name())?;
        t.set_item("shape", info.shape.clone())?;
        t.set_item("nbytes", info.len())?;
        let encrypted = layout
            .as_ref()
            .is_some_and(|l| l.entries[pos].0 == cryptotensors::envelope::Protection::Encrypted);
        t.set_item("encrypted", encrypted)?;
        tensors.append(t)?;
    }
    out.set_item("tensors", tensors)?;
    let user = PyDict::new(py);
    for (k, v) in header.metadata().into_iter().flatten() {
        if !k.starts_with(RESERVED_PREFIX) {
            user.set_item(k, v)?;
        }
    }
    out.set_item("metadata", user)?;
    out.set_item(
        "signer",
        header
            .metadata_value(SIGNATURE_KEY)
            .and_then(sign::signer_hint),
    )?;
    if let Some(l) = &layout {
        out.set_item("format_version", l.envelope.version)?;
        out.set_item("segment_size", l.envelope.segment_size)?;
        out.set_item("policy", l.envelope.policy.as_deref())?;
        if let Some(e) = &l.envelope.encryption {
            out.set_item("algorithm", &e.algorithm)?;
            let recipients = PyList::empty(py);
            let loads = py.import("json")?.getattr("loads")?;
            for r in &e.recipients {
                // Stanzas hold only public values; key providers get them
                // whole, with every member of a stanza of an unknown alg.
                let text = r.to_json();
                recipients.append(loads.call1((text,))?)?;
            }
            out.set_item("recipients", recipients)?;
        }
    }
    Ok(out)
}
