//! Element types: the one table of the format's dtypes, with the names and
//! bit widths of safetensors 0.8 and the name frameworks give each type.

use crate::error::{Error, Result};

/// The element type of a tensor. Names match the `dtype` strings of the format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(non_camel_case_types, missing_docs)]
pub enum Dtype {
    BOOL,
    F4,
    F6_E2M3,
    F6_E3M2,
    U8,
    I8,
    F8_E5M2,
    F8_E4M3,
    F8_E8M0,
    F8_E4M3FNUZ,
    F8_E5M2FNUZ,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    C64,
    F64,
    I64,
    U64,
}

const ALL: [Dtype; 22] = [
    Dtype::BOOL,
    Dtype::F4,
    Dtype::F6_E2M3,
    Dtype::F6_E3M2,
    Dtype::U8,
    Dtype::I8,
    Dtype::F8_E5M2,
    Dtype::F8_E4M3,
    Dtype::F8_E8M0,
    Dtype::F8_E4M3FNUZ,
    Dtype::F8_E5M2FNUZ,
    Dtype::I16,
    Dtype::U16,
    Dtype::F16,
    Dtype::BF16,
    Dtype::I32,
    Dtype::U32,
    Dtype::F32,
    Dtype::C64,
    Dtype::F64,
    Dtype::I64,
    Dtype::U64,
];

impl Dtype {
    /// Every dtype the format knows.
    pub fn all() -> &'static [Dtype] {
        &ALL
    }

    /// Width of one element in bits (sub-byte types are packed).
    pub fn bits(self) -> usize {
        use Dtype::*;
        match self {
            F4 => 4,
            F6_E2M3 | F6_E3M2 => 6,
            BOOL | U8 | I8 | F8_E5M2 | F8_E4M3 | F8_E8M0 | F8_E4M3FNUZ | F8_E5M2FNUZ => 8,
            I16 | U16 | F16 | BF16 => 16,
            I32 | U32 | F32 => 32,
            C64 | F64 | I64 | U64 => 64,
        }
    }

    /// The name written in headers, e.g. `"F32"`.
    pub fn name(self) -> &'static str {
        use Dtype::*;
        match self {
            BOOL => "BOOL",
            F4 => "F4",
            F6_E2M3 => "F6_E2M3",
            F6_E3M2 => "F6_E3M2",
            U8 => "U8",
            I8 => "I8",
            F8_E5M2 => "F8_E5M2",
            F8_E4M3 => "F8_E4M3",
            F8_E8M0 => "F8_E8M0",
            F8_E4M3FNUZ => "F8_E4M3FNUZ",
            F8_E5M2FNUZ => "F8_E5M2FNUZ",
            I16 => "I16",
            U16 => "U16",
            F16 => "F16",
            BF16 => "BF16",
            I32 => "I32",
            U32 => "U32",
            F32 => "F32",
            C64 => "C64",
            F64 => "F64",
            I64 => "I64",
            U64 => "U64",
        }
    }

    /// The type's conventional name in the frameworks, shared by torch
    /// (`torch.float8_e4m3fn`), numpy and ml_dtypes, and safetensors'
    /// `TensorSpec` (`dtype="float32"`); `None` where no framework has one
    /// (the F6 types).
    pub fn type_name(self) -> Option<&'static str> {
        use Dtype::*;
        Some(match self {
            BOOL => "bool",
            F4 => "float4_e2m1fn_x2",
            F6_E2M3 | F6_E3M2 => return None,
            U8 => "uint8",
            I8 => "int8",
            F8_E5M2 => "float8_e5m2",
            F8_E4M3 => "float8_e4m3fn",
            F8_E8M0 => "float8_e8m0fnu",
            F8_E4M3FNUZ => "float8_e4m3fnuz",
            F8_E5M2FNUZ => "float8_e5m2fnuz",
            I16 => "int16",
            U16 => "uint16",
            F16 => "float16",
            BF16 => "bfloat16",
            I32 => "int32",
            U32 => "uint32",
            F32 => "float32",
            C64 => "complex64",
            F64 => "float64",
            I64 => "int64",
            U64 => "uint64",
        })
    }

    /// The dtype a framework type name stands for (see [`Dtype::type_name`]).
    pub fn from_type_name(name: &str) -> Option<Dtype> {
        ALL.iter().copied().find(|d| d.type_name() == Some(name))
    }

    /// Parses a header dtype name.
    pub fn parse(name: &str) -> Result<Dtype> {
        ALL.iter()
            .copied()
            .find(|d| d.name() == name)
            .ok_or_else(|| Error::InvalidDtype(name.to_owned()))
    }

    /// Byte size of a tensor of this dtype and shape, with overflow and
    /// bit-packing checks.
    pub fn byte_size(self, shape: &[usize]) -> Result<usize> {
        let elements = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or(Error::ValidationOverflow)?;
        let bits = elements
            .checked_mul(self.bits())
            .ok_or(Error::ValidationOverflow)?;
        if !bits.is_multiple_of(8) {
            return Err(Error::MisalignedSlice);
        }
        Ok(bits / 8)
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl serde::Serialize for Dtype {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Dtype {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Dtype::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for d in Dtype::all() {
            assert_eq!(Dtype::parse(d.name()).unwrap(), *d);
        }
        assert!(matches!(Dtype::parse("F128"), Err(Error::InvalidDtype(_))));
    }

    #[test]
    fn type_names_round_trip() {
        let mut named = 0;
        for d in Dtype::all() {
            if let Some(n) = d.type_name() {
                assert_eq!(Dtype::from_type_name(n), Some(*d));
                named += 1;
            }
        }
        assert_eq!(named, Dtype::all().len() - 2); // every type but F6_E2M3, F6_E3M2
        assert_eq!(Dtype::from_type_name("F32"), None);
    }

    #[test]
    fn sizes_are_checked() {
        assert_eq!(Dtype::F32.byte_size(&[2, 3]).unwrap(), 24);
        assert_eq!(Dtype::F32.byte_size(&[]).unwrap(), 4);
        assert_eq!(Dtype::F4.byte_size(&[2]).unwrap(), 1);
        assert!(matches!(
            Dtype::F4.byte_size(&[3]),
            Err(Error::MisalignedSlice)
        ));
        assert!(matches!(
            Dtype::F64.byte_size(&[usize::MAX, 2]),
            Err(Error::ValidationOverflow)
        ));
    }
}
