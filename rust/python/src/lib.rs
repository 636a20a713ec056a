//! The Python binding of cryptotensors: type conversion and GIL release
//! only. All format and crypto logic lives in the `cryptotensors` crate.
//!
//! Two rules hold at every entry point:
//! - memory crosses as Python buffers, never as integer addresses
//!   ([`buffer`], the only raw-pointer code), so no argument can make the
//!   extension touch memory it was not given;
//! - no Rust panic reaches Python: each entry runs under [`guard::guard`],
//!   which raises `InternalError` (a `SafetensorError`) instead.

use pyo3::prelude::*;

mod args;
mod buffer;
mod errors;
mod guard;
mod handle;
mod identity;
mod inspect;
mod keys;
mod legacy;
mod progress;
mod threads;
mod write;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    guard::install_hook();
    errors::register(m)?;
    m.add_class::<handle::Handle>()?;
    m.add_class::<args::SliceIndex>()?;
    m.add_function(wrap_pyfunction!(args::load_target, m)?)?;
    m.add_function(wrap_pyfunction!(args::check_device, m)?)?;
    m.add_function(wrap_pyfunction!(args::spec_dtype, m)?)?;
    m.add_class::<keys::KeyRing>()?;
    m.add_class::<legacy::LegacyKeyRing>()?;
    m.add_function(wrap_pyfunction!(write::serialize, m)?)?;
    m.add_function(wrap_pyfunction!(write::rewrap, m)?)?;
    m.add_function(wrap_pyfunction!(write::rewrap_plan, m)?)?;
    m.add_function(wrap_pyfunction!(write::rekey, m)?)?;
    m.add_function(wrap_pyfunction!(write::rekey_plan, m)?)?;
    m.add_function(wrap_pyfunction!(write::transcode, m)?)?;
    inspect::register(m)?;
    m.add_function(wrap_pyfunction!(legacy::read_legacy, m)?)?;
    m.add_function(wrap_pyfunction!(legacy::migrate, m)?)?;
    m.add_function(wrap_pyfunction!(keys::generate_key, m)?)?;
    m.add_function(wrap_pyfunction!(keys::public_key, m)?)?;
    m.add_function(wrap_pyfunction!(keys::key_id, m)?)?;
    m.add_function(wrap_pyfunction!(guard::_check_panic_boundary, m)?)?;
    // The core's dtype table, for the Python adapters: header name ->
    // (bits, the frameworks' type name or None).
    let dtypes = pyo3::types::PyDict::new(m.py());
    for d in cryptotensors::Dtype::all() {
        dtypes.set_item(d.name(), (d.bits(), d.type_name()))?;
    }
    m.add("DTYPES", dtypes)?;
    Ok(())
}
