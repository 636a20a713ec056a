//! Serialization entry point.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use cryptotensors::keys::{KeyWrapper, Recipient};
use cryptotensors::reader::read_header;
use cryptotensors::rewrap::{self as rewrap_core, rewrap_file, RewrapOptions};
use cryptotensors::transcode_to_file;
use cryptotensors::writer::{self, EncryptOptions, TensorData, WriteOptions, DEFAULT_RESERVE};
use cryptotensors::Algorithm;
use cryptotensors::Dtype;
use cryptotensors::Error;
use cryptotensors::PreadFile;
use cryptotensors::{decide_rekey, rekey_file, RekeyOptions, WrappedBy};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::buffer::ReadBuffer;
use crate::errors::IntoPy;
use crate::guard::guard;
use crate::handle::Handle;
use crate::identity::{PyProviders, PyWrapper};
use crate::keys::{KeyRing, Keys, SigningKey};
use crate::progress::{with_progress, ProgressCallback};
use crate::threads::Threads;

/// Serializes `(name, dtype, shape, data)` records to bytes, or atomically
/// to `path` (then returns `None`). `data` is any C-contiguous buffer
/// holding the tensor's bytes; its export is held for the whole call.
///
/// Encryption: `recipients` (a `KeyRing`) with the optional `encrypted`
/// names, `algorithm` and `segment_size`, and `wrappers`, objects with
/// `wrap(data_key) -> stanza` that wrap the data key the core draws
/// elsewhere (an HSM); signing: `sign_with`, a `KeyRing` of one private
/// signing key.
#[pyfunction]
#[pyo3(signature = (tensors, metadata=None, path=None, *, recipients=None, encrypted=None, algorithm=None, segment_size=0, sign_with=None, policy=None, threads=Threads::default(), wrappers=None))]
#[allow(clippy::too_many_arguments)]
pub fn serialize<'py>(
    py: Python<'py>,
    tensors: Vec<(String, String, Vec<usize>, Bound<'py, PyAny>)>,
    metadata: Option<BTreeMap<String, String>>,
    path: Option<PathBuf>,
    recipients: Option<Keys>,
    encrypted: Option<BTreeSet<String>>,
    algorithm: Option<&str>,
    segment_size: usize,
    sign_with: Option<SigningKey>,
    policy: Option<String>,
    threads: Threads,
    wrappers: Option<Vec<Py<PyAny>>>,
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
            wrappers,
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

/// Writes every tensor of the open file `handle`, with its user metadata,
/// atomically to `path` under `serialize`'s write options, streaming: each
/// segment is authenticated as it is read and written on, no tensor is
/// whole in memory, and every dtype is carried (see
/// `cryptotensors::transcode_to_file`). `path` may be the file `handle` reads.
/// `progress`: a callable given the tensor bytes written so far, as they
/// are; an exception it raises stops the write (see `crate::progress`).
#[pyfunction]
#[pyo3(signature = (handle, path, *, recipients=None, encrypted=None, algorithm=None, segment_size=0, sign_with=None, policy=None, threads=Threads::default(), wrappers=None, progress=None))]
#[allow(clippy::too_many_arguments)]
pub fn transcode(
    py: Python<'_>,
    handle: &Handle,
    path: PathBuf,
    recipients: Option<Keys>,
    encrypted: Option<BTreeSet<String>>,
    algorithm: Option<&str>,
    segment_size: usize,
    sign_with: Option<SigningKey>,
    policy: Option<String>,
    threads: Threads,
    wrappers: Option<Vec<Py<PyAny>>>,
    progress: Option<ProgressCallback>,
) -> PyResult<()> {
    guard("transcode", || {
        let reader = handle.get()?;
        let opts = write_options(
            None,
            recipients,
            encrypted,
            algorithm,
            segment_size,
            sign_with,
            policy,
            wrappers,
        )?;
        with_progress(py, progress, |hook| {
            threads.run(|| transcode_to_file(&reader, &opts, &path, hook))
        })
    })
}

/// Rewrites a file's header to change recipients, policy or signature;
/// tensor bytes and the data key stay unchanged (see `cryptotensors::rewrap`).
/// `replace`: JSON `[[old, new], ...]`, recipient stanzas replaced in place
/// by ones wrapping the same data key (a key service's rewrap).
/// `add_wrappers`: recipients to add as objects with `wrap(data_key) ->
/// stanza` and a `kid` (an HSM, a key service), as for `serialize`.
#[pyfunction]
#[pyo3(signature = (src, dst, *, keys=None, trusted=None, add=None, remove=Vec::new(), sign_with=None, drop_signature=false, providers=None, policy=None, remove_policy=false, policy_input=None, replace=None, add_wrappers=None))]
#[allow(clippy::too_many_arguments)]
pub fn rewrap(
    py: Python<'_>,
    src: PathBuf,
    dst: PathBuf,
    keys: Option<PyRef<'_, KeyRing>>,
    trusted: Option<PyRef<'_, KeyRing>>,
    add: Option<Keys>,
    remove: Vec<String>,
    sign_with: Option<SigningKey>,
    drop_signature: bool,
    providers: Option<Py<PyAny>>,
    policy: Option<String>,
    remove_policy: bool,
    policy_input: Option<String>,
    replace: Option<&str>,
    add_wrappers: Option<Vec<Py<PyAny>>>,
) -> PyResult<()> {
    guard("rewrap", || {
        let mut opts = rewrap_options(
            keys,
            trusted,
            add,
            add_wrappers,
            remove,
            sign_with,
            drop_signature,
            providers,
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

/// What `rewrap` with these options would change in the file at `src`
/// (each of `add_wrappers` is asked its `kid`, nothing else), decided from its header alone (see `cryptotensors::rewrap::plan`; the
/// header is not verified): `{refusal: None, encrypted, signed, kept,
/// added, removed, signature, policy}`, the kids of recipients kept, added
/// and removed, and for the signature and the policy one of "absent",
/// "kept", "set" or "removed"; or `{refusal: {code, kid, message}}` when
/// the rewrap would be refused. Raises for a damaged header or bad options.
#[pyfunction]
#[pyo3(signature = (src, *, add=None, remove=Vec::new(), sign_with=None, drop_signature=false, policy=None, remove_policy=false, add_wrappers=None))]
#[allow(clippy::too_many_arguments)]
pub fn rewrap_plan<'py>(
    py: Python<'py>,
    src: PathBuf,
    add: Option<Keys>,
    remove: Vec<String>,
    sign_with: Option<SigningKey>,
    drop_signature: bool,
    policy: Option<String>,
    remove_policy: bool,
    add_wrappers: Option<Vec<Py<PyAny>>>,
) -> PyResult<Bound<'py, PyDict>> {
    guard("rewrap_plan", || {
        let opts = rewrap_options(
            None,
            None,
            add,
            add_wrappers,
            remove,
            sign_with,
            drop_signature,
            None,
            policy,
            remove_policy,
            None,
        )?;
        let decided = py
            .allow_threads(|| -> cryptotensors::Result<_> {
                let source = PreadFile::new(std::fs::File::open(&src)?)?;
                let (header, _) = read_header(&source)?;
                rewrap_core::decide(&header, &opts)
            })
            .py_err()?;
        let out = PyDict::new(py);
        match decided {
            Err(refusal) => {
                let r = PyDict::new(py);
                r.set_item("code", refusal.code())?;
                r.set_item("kid", refusal.kid())?;
                r.set_item("message", Error::from(refusal).to_string())?;
                out.set_item("refusal", r)?;
            }
            Ok(plan) => set_plan(&out, plan)?,
        }
        Ok(out)
    })
}

/// Re-encrypts a file under a fresh data key (see `cryptotensors::rekey_file`);
/// `recipients`: keys of the recipients that stay; `wrappers`: objects with
/// `wrap(data_key) -> stanza` and a `kid` (an HSM, a key service) for
/// recipients that stay; `progress` as for `transcode`; the other arguments
/// (`add_wrappers`: recipients to add) as for `rewrap`.
#[pyfunction]
#[pyo3(signature = (src, dst, *, keys=None, trusted=None, recipients=None, add=None, remove=Vec::new(), sign_with=None, drop_signature=false, providers=None, policy=None, remove_policy=false, policy_input=None, threads=Threads::default(), wrappers=None, progress=None, add_wrappers=None))]
#[allow(clippy::too_many_arguments)]
pub fn rekey(
    py: Python<'_>,
    src: PathBuf,
    dst: PathBuf,
    keys: Option<PyRef<'_, KeyRing>>,
    trusted: Option<PyRef<'_, KeyRing>>,
    recipients: Option<Keys>,
    add: Option<Keys>,
    remove: Vec<String>,
    sign_with: Option<SigningKey>,
    drop_signature: bool,
    providers: Option<Py<PyAny>>,
    policy: Option<String>,
    remove_policy: bool,
    policy_input: Option<String>,
    threads: Threads,
    wrappers: Option<Vec<Py<PyAny>>>,
    progress: Option<ProgressCallback>,
    add_wrappers: Option<Vec<Py<PyAny>>>,
) -> PyResult<()> {
    guard("rekey", || {
        let opts = RekeyOptions {
            rewrap: rewrap_options(
                keys,
                trusted,
                add,
                add_wrappers,
                remove,
                sign_with,
                drop_signature,
                providers,
                policy,
                remove_policy,
                policy_input,
            )?,
            recipients: recipients.map(|Keys(k)| k).unwrap_or_default(),
            wrappers: wrapped(wrappers),
        };
        with_progress(py, progress, |hook| {
            threads.run(|| rekey_file(&src, &dst, &opts, hook))
        })
    })
}

/// What `rekey` with these options would do to the file at `src`, decided
/// from its header alone by the rules `rekey` applies (see
/// `cryptotensors::decide_rekey`; the header is not verified): as
/// `rewrap_plan`'s answer, plus `staying`, `[(kid, by)]` for each
/// recipient that stays, `by` one of "recipient", "key" (an opening key)
/// or "wrapper"; or `{refusal: {code, kid, kids, message}}` (`kids`: the
/// recipients that stay without a key). The arguments are `rekey`'s (each
/// wrapper is asked its `kid`, nothing else). Raises for a damaged header
/// or bad options.
#[pyfunction]
#[pyo3(signature = (src, *, keys=None, recipients=None, add=None, remove=Vec::new(), sign_with=None, drop_signature=false, policy=None, remove_policy=false, wrappers=None, add_wrappers=None))]
#[allow(clippy::too_many_arguments)]
pub fn rekey_plan<'py>(
    py: Python<'py>,
    src: PathBuf,
    keys: Option<PyRef<'_, KeyRing>>,
    recipients: Option<Keys>,
    add: Option<Keys>,
    remove: Vec<String>,
    sign_with: Option<SigningKey>,
    drop_signature: bool,
    policy: Option<String>,
    remove_policy: bool,
    wrappers: Option<Vec<Py<PyAny>>>,
    add_wrappers: Option<Vec<Py<PyAny>>>,
) -> PyResult<Bound<'py, PyDict>> {
    guard("rekey_plan", || {
        let opts = RekeyOptions {
            rewrap: rewrap_options(
                keys,
                None,
                add,
                add_wrappers,
                remove,
                sign_with,
                drop_signature,
                None,
                policy,
                remove_policy,
                None,
            )?,
            recipients: recipients.map(|Keys(k)| k).unwrap_or_default(),
            wrappers: wrapped(wrappers),
        };
        let decided = py
            .allow_threads(|| -> cryptotensors::Result<_> {
                let source = PreadFile::new(std::fs::File::open(&src)?)?;
                let (header, _) = read_header(&source)?;
                decide_rekey(&header, &opts)
            })
            .py_err()?;
        let out = PyDict::new(py);
        match decided {
            Err(refusal) => {
                let r = PyDict::new(py);
                r.set_item("code", refusal.code())?;
                r.set_item("kid", refusal.kid())?;
                r.set_item("kids", refusal.kids())?;
                r.set_item("message", Error::from(refusal).to_string())?;
                out.set_item("refusal", r)?;
            }
            Ok(plan) => {
                set_plan(&out, plan.rewrap)?;
                let staying: Vec<(String, &str)> = plan
                    .staying
                    .into_iter()
                    .map(|s| {
                        let by = match s.by {
                            WrappedBy::Recipient(_) => "recipient",
                            WrappedBy::OpeningKey(_) => "key",
                            _ => "wrapper",
                        };
                        (s.kid, by)
                    })
                    .collect();
                out.set_item("staying", staying)?;
            }
        }
        Ok(out)
    })
}

/// A plan's answer for Python (`rewrap_plan`, `rekey_plan`).
fn set_plan(out: &Bound<'_, PyDict>, plan: rewrap_core::RewrapPlan) -> PyResult<()> {
    out.set_item("refusal", out.py().None())?;
    out.set_item("encrypted", plan.encrypted)?;
    out.set_item("signed", plan.signed)?;
    out.set_item("kept", plan.kept)?;
    out.set_item("added", plan.added)?;
    out.set_item("removed", plan.removed)?;
    out.set_item("signature", plan.signature.name())?;
    out.set_item("policy", plan.policy.name())
}

#[allow(clippy::too_many_arguments)]
fn rewrap_options(
    keys: Option<PyRef<'_, KeyRing>>,
    trusted: Option<PyRef<'_, KeyRing>>,
    add: Option<Keys>,
    add_wrappers: Option<Vec<Py<PyAny>>>,
    remove: Vec<String>,
    sign_with: Option<SigningKey>,
    drop_signature: bool,
    providers: Option<Py<PyAny>>,
    policy: Option<String>,
    remove_policy: bool,
    policy_input: Option<String>,
) -> PyResult<RewrapOptions> {
    let ring = |r: Option<PyRef<'_, KeyRing>>| r.map(|r| r.keys().to_vec()).unwrap_or_default();
    Ok(RewrapOptions {
        keys: ring(keys),
        providers: providers.map(PyProviders::shared),
        trusted_signers: ring(trusted),
        policy_input,
        add: add.map(|Keys(k)| k).unwrap_or_default(),
        add_wrappers: wrapped(add_wrappers),
        remove,
        replace: Vec::new(),
        sign_with: sign_with.map(|SigningKey(k)| k),
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
    recipients: Option<Keys>,
    encrypted: Option<BTreeSet<String>>,
    algorithm: Option<&str>,
    segment_size: usize,
    sign_with: Option<SigningKey>,
    policy: Option<String>,
    wrappers: Option<Vec<Py<PyAny>>>,
) -> PyResult<WriteOptions> {
    let encrypt = match recipients {
        None => None,
        Some(Keys(recipients)) => Some(EncryptOptions {
            recipients,
            tensors: encrypted,
            algorithm: Algorithm::parse(algorithm.unwrap_or("AES-256-GCM")).py_err()?,
            wrappers: wrapped(wrappers),
        }),
    };
    let sign_with = sign_with.map(|SigningKey(k)| k);
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

/// Python key wrappers (objects with `wrap(data_key) -> stanza`, and a
/// `kid` where a plan needs one) as the core's.
fn wrapped(wrappers: Option<Vec<Py<PyAny>>>) -> Vec<Arc<dyn KeyWrapper>> {
    wrappers
        .unwrap_or_default()
        .into_iter()
        .map(PyWrapper::shared)
        .collect()
}

/// `CRYPTOTENSORS_FSYNC=1`: flush saves and rewraps to disk before they return.
fn fsync_requested() -> bool {
    std::env::var_os("CRYPTOTENSORS_FSYNC").is_some_and(|v| v == "1")
}
