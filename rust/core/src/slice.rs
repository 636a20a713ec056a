//! Partial reads: numpy-style indexing reduced to contiguous byte runs.
//!
//! An index is a tuple of integers, slices with a positive step and at most
//! one ellipsis, as in safetensors' slicing. [`SliceRuns::new`] resolves it
//! against a shape and yields the byte runs of the selection in row-major
//! order, merging the trailing dimensions that are taken whole.

use crate::dtype::Dtype;
use crate::error::{Error, Result};

/// One component of an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Index {
    /// A single position; the dimension is dropped. Negative counts from the end.
    Select(i64),
    /// A Python-style slice; `step` must be at least 1.
    Range {
        /// First position, `None` for the start.
        start: Option<i64>,
        /// One past the last position, `None` for the end.
        stop: Option<i64>,
        /// Stride, at least 1.
        step: i64,
    },
    /// Every remaining dimension not named by the other components.
    Ellipsis,
}

/// Resolved form of one dimension: `count` positions from `start` by `step`.
#[derive(Debug, Clone, Copy)]
struct Dim {
    start: usize,
    count: usize,
    step: usize,
    keep: bool,
}

/// The byte runs and output shape of an index applied to a tensor.
#[derive(Debug, Clone)]
pub struct SliceRuns {
    /// Shape of the result.
    pub shape: Vec<usize>,
    /// `(offset, len)` byte runs relative to the tensor's first byte, in
    /// output order. Empty when the selection is empty.
    pub runs: Vec<(usize, usize)>,
    /// Total bytes of the result.
    pub len: usize,
}

fn resolve(index: &[Index], shape: &[usize]) -> Result<Vec<Dim>> {
    let ellipses = index
        .iter()
        .filter(|i| matches!(i, Index::Ellipsis))
        .count();
    if ellipses > 1 {
        return Err(Error::InvalidSlice(
            "an index can only have a single ellipsis".into(),
        ));
    }
    let named = index.len() - ellipses;
    if named > shape.len() {
        return Err(Error::InvalidSlice(format!(
            "too many indices: tensor has {} dimensions but {} were indexed",
            shape.len(),
            named
        )));
    }
    const ALL: Index = Index::Range {
        start: None,
        stop: None,
        step: 1,
    };
    let mut expanded = Vec::with_capacity(shape.len());
    for ix in index {
        if let Index::Ellipsis = ix {
            expanded.extend(std::iter::repeat_n(ALL, shape.len() - named));
        } else {
            expanded.push(*ix);
        }
    }
    expanded.resize(shape.len(), ALL);
    expanded
        .iter()
        .zip(shape)
        .enumerate()
        .map(|(axis, (ix, &len))| resolve_one(*ix, len, axis))
        .collect()
}

fn resolve_one(ix: Index, len: usize, axis: usize) -> Result<Dim> {
    let n = i64::try_from(len).map_err(|_| Error::ValidationOverflow)?;
    match ix {
        Index::Select(i) => {
            let p = if i < 0 { i + n } else { i };
            if p < 0 || p >= n {
                return Err(Error::InvalidSlice(format!(
                    "index {i} is out of bounds for axis {axis} with size {len}"
                )));
            }
            Ok(Dim {
                start: p as usize,
                count: 1,
                step: 1,
                keep: false,
            })
        }
        Index::Range { start, stop, step } => {
            if step < 1 {
                return Err(Error::InvalidSlice(format!(
                    "slice step must be positive, got {step}"
                )));
            }
            // Python's slice.indices for a positive step: clamp into [0, n].
            let clamp = |v: Option<i64>, default: i64| -> i64 {
                match v {
                    None => default,
                    Some(v) if v < 0 => (v + n).max(0),
                    Some(v) => v.min(n),
                }
            };
            let s = clamp(start, 0);
            let e = clamp(stop, n);
            let count = if e > s {
                ((e - s - 1) / step + 1) as usize
            } else {
                0
            };
            Ok(Dim {
                start: s as usize,
                count,
                step: step as usize,
                keep: true,
            })
        }
        Index::Ellipsis => unreachable!("ellipsis expanded before resolving"),
    }
}

impl SliceRuns {
    /// Bytes `[offset, offset + len)` of a tensor, as one flat run.
    pub fn contiguous(offset: usize, len: usize) -> SliceRuns {
        SliceRuns {
            shape: vec![len],
            runs: vec![(offset, len)],
            len,
        }
    }

    /// Resolves `index` against a tensor of `dtype` and `shape`.
    pub fn new(dtype: Dtype, shape: &[usize], index: &[Index]) -> Result<SliceRuns> {
        let dims = resolve(index, shape)?;
        let out_shape: Vec<usize> = dims.iter().filter(|d| d.keep).map(|d| d.count).collect();
        let total: usize = dims.iter().map(|d| d.count).product();
        let bits = dtype.bits();
        let to_bytes = |elems: usize| -> Result<usize> {
            let b = elems.checked_mul(bits).ok_or(Error::ValidationOverflow)?;
            if !b.is_multiple_of(8) {
                return Err(Error::MisalignedSlice);
            }
            Ok(b / 8)
        };
        let len = to_bytes(total)?;
        if total == 0 {
            return Ok(SliceRuns {
                shape: out_shape,
                runs: Vec::new(),
                len: 0,
            });
        }
        // Element strides of the source.
        let mut strides = vec![1usize; shape.len()];
        for i in (0..shape.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * shape[i + 1];
        }
        // Trailing dimensions taken whole merge into one contiguous block.
        let mut k = dims.len();
        while k > 0
            && dims[k - 1].start == 0
            && dims[k - 1].step == 1
            && dims[k - 1].count == shape[k - 1]
        {
            k -= 1;
        }
        let mut block: usize = shape[k..].iter().product();
        let mut base = 0usize;
        let outer_end = if k > 0 && dims[k - 1].step == 1 {
            // The first partial dimension is contiguous too when its step is 1.
            block *= dims[k - 1].count;
            base = dims[k - 1].start * strides[k - 1];
            k - 1
        } else {
            k
        };
        let outer = &dims[..outer_end];
        let run_len = to_bytes(block)?;
        let mut runs = Vec::with_capacity(outer.iter().map(|d| d.count).product());
        let mut counter = vec![0usize; outer.len()];
        loop {
            let elem = outer
                .iter()
                .zip(&counter)
                .zip(&strides)
                .fold(base, |acc, ((d, &c), &s)| acc + (d.start + c * d.step) * s);
            let start = to_bytes(elem)?;
            match runs.last_mut() {
                Some((s, l)) if *s + *l == start => *l += run_len,
                _ => runs.push((start, run_len)),
            }
            // Odometer over the outer dimensions, last fastest.
            let mut axis = outer.len();
            loop {
                if axis == 0 {
                    return Ok(SliceRuns {
                        shape: out_shape,
                        runs,
                        len,
                    });
                }
                axis -= 1;
                counter[axis] += 1;
                if counter[axis] < outer[axis].count {
                    break;
                }
                counter[axis] = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Index::*;

    fn r(start: Option<i64>, stop: Option<i64>, step: i64) -> Index {
        Range { start, stop, step }
    }

    #[test]
    fn whole_tensor_is_one_run() {
        let s = SliceRuns::new(Dtype::F32, &[4, 5], &[]).unwrap();
        assert_eq!(s.shape, vec![4, 5]);
        assert_eq!(s.runs, vec![(0, 80)]);
    }

    #[test]
    fn rows_are_contiguous() {
        let s = SliceRuns::new(Dtype::F32, &[8, 5], &[r(Some(2), Some(4), 1)]).unwrap();
        assert_eq!(s.shape, vec![2, 5]);
        assert_eq!(s.runs, vec![(40, 40)]);
    }

    #[test]
    fn columns_and_steps() {
        let s = SliceRuns::new(Dtype::U8, &[3, 4], &[Ellipsis, r(None, None, 2)]).unwrap();
        assert_eq!(s.shape, vec![3, 2]);
        assert_eq!(
            s.runs,
            vec![(0, 1), (2, 1), (4, 1), (6, 1), (8, 1), (10, 1)]
        );
        let s = SliceRuns::new(Dtype::U8, &[3, 4], &[Select(-1), Select(1)]).unwrap();
        assert!(s.shape.is_empty());
        assert_eq!(s.runs, vec![(9, 1)]);
    }

    #[test]
    fn errors() {
        assert!(SliceRuns::new(Dtype::U8, &[3], &[Select(3)]).is_err());
        assert!(SliceRuns::new(Dtype::U8, &[3], &[Select(0), Select(0)]).is_err());
        assert!(SliceRuns::new(Dtype::U8, &[3], &[r(None, None, 0)]).is_err());
        assert!(SliceRuns::new(Dtype::U8, &[3], &[Ellipsis, Ellipsis]).is_err());
        assert!(matches!(
            SliceRuns::new(Dtype::F4, &[4], &[r(Some(1), Some(2), 1)]),
            Err(Error::MisalignedSlice)
        ));
    }

    #[test]
    fn empty_selection() {
        let s = SliceRuns::new(Dtype::F32, &[3, 2], &[r(Some(2), Some(1), 1)]).unwrap();
        assert_eq!(s.shape, vec![0, 2]);
        assert!(s.runs.is_empty());
    }
}
