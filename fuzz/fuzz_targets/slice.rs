//! `slice`: `SliceRuns::new` on arbitrary dtypes, bounded shapes and
//! arbitrary index lists, checked against a brute-force model.
//!
//! When `new` succeeds: every run lies inside the tensor's bytes, the runs
//! sum to `len`, `len` is the output shape's element count × bits / 8, and
//! the runs cover exactly the bits of the selected elements, in row-major
//! order (numpy's basic indexing, computed element by element). When it
//! fails, the model must fail too, except that a sub-byte dtype may be
//! refused as misaligned.
#![no_main]

use arbitrary::Arbitrary;
use cryptotensors::slice::{Index, SliceRuns};
use cryptotensors::{Dtype, Error};
use libfuzzer_sys::fuzz_target;

/// Tensors of at most this many elements.
const MAX_ELEMS: usize = 1 << 14;

#[derive(Debug, Arbitrary)]
enum Ix {
    Select(i8),
    SelectWide(i64),
    Range(Option<i8>, Option<i8>, u8),
    RangeWide(Option<i64>, Option<i64>, i64),
    Ellipsis,
}

impl Ix {
    fn index(&self) -> Index {
        match *self {
            Ix::Select(i) => Index::Select(i.into()),
            Ix::SelectWide(i) => Index::Select(i),
            Ix::Range(a, b, s) => Index::Range {
                start: a.map(Into::into),
                stop: b.map(Into::into),
                step: i64::from(s % 8),
            },
            Ix::RangeWide(a, b, s) => Index::Range {
                start: a,
                stop: b,
                step: s,
            },
            Ix::Ellipsis => Index::Ellipsis,
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Input {
    dtype: u8,
    shape: Vec<u8>,
    index: Vec<Ix>,
}

/// The model: positions selected along each axis (`None`: the axis is
/// dropped), or an error.
fn model(shape: &[usize], index: &[Index]) -> Option<Vec<(Vec<usize>, bool)>> {
    let ell = index
        .iter()
        .filter(|i| matches!(i, Index::Ellipsis))
        .count();
    if ell > 1 || index.len() - ell > shape.len() {
        return None;
    }
    let mut full = Vec::new();
    for ix in index {
        if let Index::Ellipsis = ix {
            for _ in 0..shape.len() - (index.len() - ell) {
                full.push(None);
            }
        } else {
            full.push(Some(*ix));
        }
    }
    while full.len() < shape.len() {
        full.push(None);
    }
    let mut axes = Vec::new();
    for (ix, &n) in full.iter().zip(shape) {
        let n = n as i128;
        match ix {
            None => axes.push(((0..n as usize).collect(), true)),
            Some(Index::Select(i)) => {
                let i = *i as i128;
                let p = if i < 0 { i + n } else { i };
                if !(0..n).contains(&p) {
                    return None;
                }
                axes.push((vec![p as usize], false));
            }
            Some(Index::Range { start, stop, step }) => {
                if *step <= 0 {
                    return None;
                }
                // Python's slice.indices(n) for a positive step.
                let norm = |v: Option<i64>, d: i128| match v {
                    None => d,
                    Some(v) => {
                        let v = v as i128;
                        if v < 0 {
                            (v + n).max(0)
                        } else {
                            v.min(n)
                        }
                    }
                };
                let (s, e) = (norm(*start, 0), norm(*stop, n));
                let mut pos = Vec::new();
                let mut p = s;
                while p < e {
                    pos.push(p as usize);
                    p += *step as i128;
                }
                axes.push((pos, true));
            }
            Some(Index::Ellipsis) => unreachable!(),
        }
    }
    Some(axes)
}

fuzz_target!(|input: Input| {
    let dtype = Dtype::all()[input.dtype as usize % Dtype::all().len()];
    let shape: Vec<usize> = input
        .shape
        .iter()
        .take(6)
        .map(|&d| (d % 24) as usize)
        .collect();
    let elems: usize = shape.iter().product();
    if elems > MAX_ELEMS {
        return;
    }
    let Ok(nbytes) = dtype.byte_size(&shape) else {
        // Not a valid tensor (misaligned sub-byte size): headers refuse it.
        return;
    };
    let index: Vec<Index> = input.index.iter().take(8).map(Ix::index).collect();
    let bits = dtype.bits();
    let result = SliceRuns::new(dtype, &shape, &index);
    let Some(axes) = model(&shape, &index) else {
        assert!(
            result.is_err(),
            "model refuses {index:?} on {shape:?}, got {result:?}"
        );
        return;
    };
    let out_shape: Vec<usize> = axes.iter().filter(|a| a.1).map(|a| a.0.len()).collect();
    let count: usize = axes.iter().map(|a| a.0.len()).product();
    // Bit ranges of the selection in row-major order, merged when adjacent.
    let mut strides = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    let mut want: Vec<(usize, usize)> = Vec::new();
    if count > 0 {
        let mut ctr = vec![0usize; axes.len()];
        'outer: loop {
            let elem: usize = ctr
                .iter()
                .zip(&axes)
                .zip(&strides)
                .map(|((&c, a), &s)| a.0[c] * s)
                .sum();
            let (b, l) = (elem * bits, bits);
            match want.last_mut() {
                Some((s, n)) if *s + *n == b => *n += l,
                _ => want.push((b, l)),
            }
            let mut ax = axes.len();
            loop {
                if ax == 0 {
                    break 'outer;
                }
                ax -= 1;
                ctr[ax] += 1;
                if ctr[ax] < axes[ax].0.len() {
                    break;
                }
                ctr[ax] = 0;
            }
        }
    }
    let runs = match result {
        Ok(r) => r,
        Err(Error::MisalignedSlice) if bits % 8 != 0 => return,
        Err(e) => panic!("model accepts {index:?} on {dtype:?}{shape:?}, got {e:?}"),
    };
    // The properties asked of every successful resolution.
    let mut sum = 0usize;
    for &(o, l) in &runs.runs {
        assert!(l > 0, "empty run in {runs:?}");
        assert!(
            o.checked_add(l).is_some_and(|e| e <= nbytes),
            "run past the tensor: {runs:?}"
        );
        sum += l;
    }
    assert_eq!(sum, runs.len);
    let out_elems: usize = runs.shape.iter().product();
    assert_eq!(out_elems * bits / 8, runs.len);
    assert_eq!((out_elems * bits) % 8, 0);
    // Against the model.
    assert_eq!(
        runs.shape, out_shape,
        "output shape of {index:?} on {shape:?}"
    );
    let mut got: Vec<(usize, usize)> = Vec::new();
    for &(o, l) in &runs.runs {
        match got.last_mut() {
            Some((s, n)) if *s + *n == o * 8 => *n += l * 8,
            _ => got.push((o * 8, l * 8)),
        }
    }
    assert_eq!(
        got, want,
        "selected bits of {index:?} on {dtype:?}{shape:?}"
    );
});
