//! Arguments converted where they enter, as safetensors' own binding
//! converts them (`FromPyObject` for its framework, device, backend and
//! slice index types): a wrong argument fails here, with safetensors 0.8's
//! exception class and message, and what passes on is typed.

use cryptotensors::slice::Index;
use cryptotensors::Dtype;
use pyo3::exceptions::{PyOverflowError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyEllipsis, PyList, PySlice, PyString, PyTuple};

use crate::errors::SafetensorError;

/// A `str` argument, refused in the words of safetensors' PyO3 (which
/// PyO3 0.23 words differently): "'None' is not an instance of 'str'".
pub struct Str(pub String);

impl<'py> FromPyObject<'py> for Str {
    fn extract_bound(ob: &Bound<'py, PyAny>) -> PyResult<Self> {
        if let Ok(s) = ob.downcast::<PyString>() {
            return Ok(Str(s.to_cow()?.into_owned()));
        }
        let what = if ob.is_none() {
            "'None'".to_owned()
        } else {
            format!("'{}' object", ob.get_type().name()?)
        };
        Err(PyTypeError::new_err(format!(
            "{what} is not an instance of 'str'"
        )))
    }
}

/// The framework tensors are returned in.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Framework {
    Pytorch,
    Numpy,
    Tensorflow,
    Flax,
    Mlx,
    Paddle,
}

impl Framework {
    /// The canonical name, which the Python adapters are keyed by.
    fn name(self) -> &'static str {
        match self {
            Framework::Pytorch => "pt",
            Framework::Numpy => "np",
            Framework::Tensorflow => "tf",
            Framework::Flax => "flax",
            Framework::Mlx => "mlx",
            Framework::Paddle => "paddle",
        }
    }

    /// The name safetensors gives it in messages.
    fn label(self) -> &'static str {
        match self {
            Framework::Pytorch => "pytorch",
            Framework::Numpy => "numpy",
            Framework::Tensorflow => "tensorflow",
            Framework::Flax => "flax",
            Framework::Mlx => "mlx",
            Framework::Paddle => "paddle",
        }
    }
}

impl<'py> FromPyObject<'py> for Framework {
    fn extract_bound(ob: &Bound<'py, PyAny>) -> PyResult<Self> {
        let Str(name) = ob.extract()?;
        // Case-sensitive, as in safetensors.
        Ok(match name.as_str() {
            "pt" | "torch" | "pytorch" => Framework::Pytorch,
            "np" | "numpy" => Framework::Numpy,
            "tf" | "tensorflow" => Framework::Tensorflow,
            "flax" | "jax" => Framework::Flax,
            "mlx" => Framework::Mlx,
            "paddle" => Framework::Paddle,
            _ => {
                return Err(SafetensorError::new_err(format!(
                    "framework {name} is invalid"
                )))
            }
        })
    }
}

/// Accelerators named "kind" or "kind:N" (N defaults to 0).
const INDEXED: [&str; 7] = ["cuda", "npu", "xpu", "xla", "mlu", "musa", "hpu"];

/// Where tensors go.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Mps,
    /// An accelerator by kind and index, e.g. `cuda:1`.
    Indexed(&'static str, usize),
    /// A bare integer: a CUDA device index, shown as the integer.
    Anonymous(usize),
}

impl Device {
    /// torch's spelling of the device: "cpu", "mps", "cuda:1"...
    fn torch(self) -> String {
        match self {
            Device::Cpu => "cpu".into(),
            Device::Mps => "mps".into(),
            Device::Indexed(kind, n) => format!("{kind}:{n}"),
            Device::Anonymous(n) => format!("cuda:{n}"),
        }
    }

    /// The name safetensors gives it in messages.
    fn shown(self) -> String {
        match self {
            Device::Anonymous(n) => n.to_string(),
            other => other.torch(),
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Mps => "mps",
            Device::Indexed(kind, _) => kind,
            Device::Anonymous(_) => "cuda",
        }
    }
}

impl<'py> FromPyObject<'py> for Device {
    fn extract_bound(ob: &Bound<'py, PyAny>) -> PyResult<Self> {
        if let Ok(name) = ob.extract::<String>() {
            let invalid = || SafetensorError::new_err(format!("device {name} is invalid"));
            match name.as_str() {
                "cpu" => return Ok(Device::Cpu),
                "mps" => return Ok(Device::Mps),
                _ => {}
            }
            if let Some(&kind) = INDEXED.iter().find(|&&k| k == name) {
                return Ok(Device::Indexed(kind, 0));
            }
            let mut parts = name.split(':');
            let (Some(kind), Some(n), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(invalid());
            };
            // Rust's own parse, as safetensors: its messages are the ValueError's.
            let index = |n: &str| {
                n.parse::<u64>()
                    .map_err(|e| PyValueError::new_err(e.to_string()))
            };
            if kind == "mps" {
                if index(n)? != 0 {
                    return Err(SafetensorError::new_err(format!(
                        "device {name} is invalid: only mps or mps:0 is supported"
                    )));
                }
                return Ok(Device::Mps);
            }
            let Some(&kind) = INDEXED.iter().find(|&&k| k == kind) else {
                return Err(invalid());
            };
            let n = usize::try_from(index(n)?).map_err(|_| invalid())?;
            return Ok(Device::Indexed(kind, n));
        }
        match ob.extract::<usize>() {
            Ok(n) => Ok(Device::Anonymous(n)),
            Err(_) => Err(SafetensorError::new_err(format!(
                "device {} is invalid",
                ob.repr()?
            ))),
        }
    }
}

/// How the file is read.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Mmap,
    Pread,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Mmap => "mmap",
            Backend::Pread => "pread",
        }
    }
}

impl<'py> FromPyObject<'py> for Backend {
    fn extract_bound(ob: &Bound<'py, PyAny>) -> PyResult<Self> {
        let Str(name) = ob.extract()?;
        match name.as_str() {
            "mmap" => Ok(Backend::Mmap),
            "pread" => Ok(Backend::Pread),
            _ => Err(SafetensorError::new_err(format!(
                "backend \"{name}\" is invalid (expected one of: \"mmap\", \"pread\")"
            ))),
        }
    }
}

/// `(framework, device, backend)` as the Python adapters key them: the
/// canonical framework name, torch's spelling of the device, the backend.
#[pyfunction]
#[pyo3(signature = (framework, device=None, backend=Backend::Mmap))]
pub fn load_target(
    framework: Framework,
    device: Option<Device>,
    backend: Backend,
) -> (&'static str, String, &'static str) {
    let device = device.unwrap_or(Device::Cpu);
    (framework.name(), device.torch(), backend.name())
}

/// Refuses a device the framework cannot load to: safetensors checks this
/// after the file is opened, so `safe_open` calls it then.
#[pyfunction]
#[pyo3(signature = (framework, device=None))]
pub fn check_device(framework: Framework, device: Option<Device>) -> PyResult<()> {
    let device = device.unwrap_or(Device::Cpu);
    let kind = device.kind();
    if kind == "cpu"
        || framework == Framework::Pytorch
        || (framework == Framework::Paddle && kind == "cuda")
    {
        return Ok(());
    }
    Err(SafetensorError::new_err(format!(
        "Device {} is not supported for framework {}",
        device.shown(),
        framework.label()
    )))
}

/// `TensorSpec`'s dtype names, in the order safetensors lists them when
/// refusing one.
const SPEC_ORDER: [Dtype; 20] = [
    Dtype::BOOL,
    Dtype::I8,
    Dtype::U8,
    Dtype::I16,
    Dtype::U16,
    Dtype::I32,
    Dtype::U32,
    Dtype::I64,
    Dtype::U64,
    Dtype::F16,
    Dtype::F32,
    Dtype::F64,
    Dtype::BF16,
    Dtype::F8_E4M3,
    Dtype::F8_E4M3FNUZ,
    Dtype::F8_E5M2,
    Dtype::F8_E5M2FNUZ,
    Dtype::F8_E8M0,
    Dtype::F4,
    Dtype::C64,
];

/// The header dtype of a `TensorSpec` dtype name ("float32" -> "F32").
#[pyfunction]
pub fn spec_dtype(dtype: Str) -> PyResult<&'static str> {
    let Str(dtype) = dtype;
    match Dtype::from_type_name(&dtype) {
        Some(d) => Ok(d.name()),
        None => {
            let names: Vec<&str> = SPEC_ORDER.iter().filter_map(|d| d.type_name()).collect();
            Err(SafetensorError::new_err(format!(
                "Unknown dtype \"{dtype}\". Supported dtypes: {}",
                names.join(", ")
            )))
        }
    }
}

/// An index converted for the core's slicer ([`crate::handle::Handle::select`]).
/// Opaque to Python: it is only handed back to `read_slice_into`.
#[pyclass(frozen, module = "cryptotensors._core")]
pub struct SliceIndex {
    pub index: Vec<Index>,
}

fn items<'py>(key: &Bound<'py, PyAny>) -> Vec<Bound<'py, PyAny>> {
    match key.downcast::<PyTuple>() {
        Ok(t) => t.iter().collect(),
        Err(_) => vec![key.clone()],
    }
}

/// An `i64` from an integer, `None` where the object is not one (a
/// `TypeError`); other failures (`OverflowError`) propagate.
fn int_or_none(ob: &Bound<'_, PyAny>) -> PyResult<Option<i64>> {
    match ob.extract::<i64>() {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_instance_of::<PyOverflowError>(ob.py()) => Err(e),
        Err(_) => Ok(None),
    }
}

/// The index under torch's basic indexing, as the core slices it (bounds
/// clamped, negatives from the end), or `None` where it uses what the core
/// does not slice (None, bools, arrays, negative steps): the caller indexes
/// the whole tensor then.
pub fn torch_index(key: &Bound<'_, PyAny>) -> PyResult<Option<Vec<Index>>> {
    let mut out = Vec::new();
    for it in items(key) {
        if it.is_instance_of::<PyEllipsis>() {
            out.push(Index::Ellipsis);
        } else if let Ok(s) = it.downcast::<PySlice>() {
            let bound = |attr: &str| -> PyResult<Option<Option<i64>>> {
                let v = s.getattr(attr)?;
                if v.is_none() {
                    return Ok(Some(None));
                }
                Ok(int_or_none(&v)?.map(Some))
            };
            let (Some(start), Some(stop), Some(step)) =
                (bound("start")?, bound("stop")?, bound("step")?)
            else {
                return Ok(None);
            };
            let step = step.unwrap_or(1);
            if step < 1 {
                return Ok(None);
            }
            out.push(Index::Range { start, stop, step });
        } else if it.is_none() || it.is_instance_of::<pyo3::types::PyBool>() {
            return Ok(None);
        } else {
            match int_or_none(&it)? {
                Some(i) => out.push(Index::Select(i)),
                None => return Ok(None),
            }
        }
    }
    Ok(Some(out))
}

/// One item of an index under safetensors' strict rules, before the shape
/// check: a position (made non-negative) or a range with unsigned bounds.
#[derive(Clone, Copy)]
enum Strict {
    At(u64),
    Range(Option<u64>, Option<u64>, i64),
}

impl std::fmt::Display for Strict {
    /// As safetensors prints an index item: `1`, `0:2`, `::2`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
        match *self {
            Strict::At(i) => write!(f, "{i}"),
            Strict::Range(start, stop, step) => {
                write!(f, "{}:{}", opt(start), opt(stop))?;
                if step != 1 {
                    write!(f, ":{step}")?;
                }
                Ok(())
            }
        }
    }
}

/// The index under safetensors 0.8's own slicer rules (its numpy framework
/// and its "pread" backend), raising what it raises:
///
/// * an item is an int (32-bit; negative counts from the end), a slice with
///   non-negative bounds (else `OverflowError`) and a positive step, or one
///   ellipsis, which stands for full slices of the dimensions not named;
///   None, floats, arrays and nested sequences are refused, a list only when
///   empty (it means `[0:0]`);
/// * an int must be inside its dimension; a slice must start inside it and
///   not stop past it (so nothing is selected from an empty dimension);
///   these are checked from the last dimension to the first;
/// * a slice stopping before it starts (where safetensors fails with a
///   `SystemError` or a panic) is refused too.
///
/// Items are checked one by one, in order, as safetensors does.
pub fn strict_index(key: &Bound<'_, PyAny>, shape: &[usize]) -> PyResult<Vec<Index>> {
    let items = match key.downcast::<PyList>() {
        Ok(l) if !l.is_empty() => {
            return Err(SafetensorError::new_err(
                "Non empty lists are not implemented",
            ))
        }
        Ok(_) => vec![PySlice::new(key.py(), 0, 0, 1).into_any()],
        Err(_) => items(key),
    };
    let ellipses = items
        .iter()
        .filter(|it| it.is_instance_of::<PyEllipsis>())
        .count();
    if ellipses > 1 {
        return Err(SafetensorError::new_err(
            "Only one ellipsis (...) is allowed in slice index",
        ));
    }
    let ndim = shape.len();
    let named = items.len() - ellipses;
    let mut spec: Vec<Strict> = Vec::with_capacity(items.len().max(ndim));
    for it in &items {
        let dim = spec.len(); // positions count the dimensions the ellipsis stands for
        if it.is_instance_of::<PyEllipsis>() {
            spec.extend(std::iter::repeat_n(
                Strict::Range(None, None, 1),
                ndim.saturating_sub(named),
            ));
        } else if let Ok(s) = it.downcast::<PySlice>() {
            let bound = |attr: &str| -> PyResult<Option<u64>> {
                let v = s.getattr(attr)?;
                if v.is_none() {
                    Ok(None)
                } else {
                    v.extract().map(Some)
                }
            };
            let (start, stop) = (bound("start")?, bound("stop")?);
            let step = s.getattr("step")?;
            let step = if step.is_none() {
                1
            } else {
                step.extract::<i64>().map_err(|e| {
                    if e.is_instance_of::<PyOverflowError>(it.py()) {
                        PyOverflowError::new_err("Python int too large to convert to C long")
                    } else {
                        e
                    }
                })?
            };
            if step <= 0 {
                return Err(SafetensorError::new_err(format!(
                    "Slice step must be a positive integer, got {step}"
                )));
            }
            spec.push(Strict::Range(start, stop, step));
        } else {
            let i = it
                .extract::<i64>()
                .ok()
                .and_then(|i| i32::try_from(i).ok())
                .ok_or_else(|| {
                    SafetensorError::new_err(format!(
                        "Unsupported slice index at position {dim}: expected slice, int, or ellipsis"
                    ))
                })?;
            let size = shape.get(dim).copied().unwrap_or(0) as i64;
            let mut i = i64::from(i);
            if i < 0 {
                if i + size < 0 {
                    return Err(SafetensorError::new_err(format!(
                        "Invalid index {i} for dimension {dim} of size {size}"
                    )));
                }
                i += size;
            }
            spec.push(Strict::At(i as u64));
        }
    }
    let fail = |reason: String| {
        let shown: Vec<String> = spec.iter().map(|s| s.to_string()).collect();
        SafetensorError::new_err(format!(
            "Error during slicing [{}] with shape {shape:?}: {reason}",
            shown.join(", ")
        ))
    };
    if spec.len() > ndim {
        return Err(fail(
            "more slicing indexes than dimensions in tensor".into(),
        ));
    }
    for (dim, (it, &size)) in spec.iter().zip(shape).enumerate().rev() {
        let size = size as u64;
        let bad = match *it {
            Strict::At(i) => (i >= size).then_some(i),
            Strict::Range(start, stop, _) => {
                let start = start.unwrap_or(0);
                let stop = stop.unwrap_or(size);
                if start >= size {
                    Some(start)
                } else {
                    (stop > size).then(|| stop - 1)
                }
            }
        };
        if let Some(bad) = bad {
            return Err(fail(format!(
                "index {bad} out of bounds for tensor dimension #{dim} of size {size}"
            )));
        }
    }
    for it in &spec {
        if let Strict::Range(Some(start), Some(stop), _) = *it {
            if stop < start {
                return Err(fail(format!(
                    "the slice {start}:{stop} stops before it starts"
                )));
            }
        }
    }
    // Every bound is now within its dimension (a dimension's size fits an
    // i64, as the header's byte size bounds it).
    let to_i64 = |v: u64| i64::try_from(v).map_err(|_| fail("index too large".into()));
    spec.iter()
        .map(|it| {
            Ok(match *it {
                Strict::At(i) => Index::Select(to_i64(i)?),
                Strict::Range(start, stop, step) => Index::Range {
                    start: start.map(to_i64).transpose()?,
                    stop: stop.map(to_i64).transpose()?,
                    step,
                },
            })
        })
        .collect()
}
