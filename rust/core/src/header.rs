//! The safetensors header: an 8-byte little-endian length `N`, then `N` bytes
//! of JSON, then the data buffer. See FORMAT.md §2.
//!
//! Reading is the exact acceptance rule of safetensors 0.8: offsets are sorted
//! first, must start at 0 and tile the buffer with no hole or overlap, and every
//! byte size is checked against dtype × shape. Writing reproduces its bytes:
//! compact JSON, `__metadata__` first, tensors by dtype (widest first) then
//! name, padded with spaces to a multiple of 8.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::Deserialize;

use crate::dtype::Dtype;
use crate::envelope::RESERVED_PREFIX;
use crate::error::{Error, Result};

/// Size of the little-endian header length prefix.
pub const PREFIX_LEN: usize = 8;
/// Largest header accepted, as in safetensors.
pub(crate) const MAX_HEADER_SIZE: usize = 100_000_000;
/// The header key that holds string metadata instead of a tensor.
pub(crate) const METADATA_KEY: &str = "__metadata__";

/// Checks that no JSON object in `text`, at any depth, names a member twice
/// (names compared after unescaping, so `"a"` and `"\u0061"` are one name).
/// Protected headers, envelopes, stanzas and JWS headers must not: a MAC or
/// a signature covers what one parser read, and a parser that resolves a
/// repeated member differently must not read something else. Fails with the
/// repeated name, or with the JSON error if `text` is not one JSON value.
pub(crate) fn unique_members(text: &str) -> std::result::Result<(), String> {
    let mut de = serde_json::Deserializer::from_str(text);
    Unique::deserialize(&mut de).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())
}

/// A JSON value, walked only to find a repeated member name.
struct Unique;

impl<'de> Deserialize<'de> for Unique {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Unique;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_bool<E>(self, _: bool) -> std::result::Result<Unique, E> {
                Ok(Unique)
            }
            fn visit_i64<E>(self, _: i64) -> std::result::Result<Unique, E> {
                Ok(Unique)
            }
            fn visit_u64<E>(self, _: u64) -> std::result::Result<Unique, E> {
                Ok(Unique)
            }
            fn visit_f64<E>(self, _: f64) -> std::result::Result<Unique, E> {
                Ok(Unique)
            }
            fn visit_str<E>(self, _: &str) -> std::result::Result<Unique, E> {
                Ok(Unique)
            }
            fn visit_unit<E>(self) -> std::result::Result<Unique, E> {
                Ok(Unique)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Unique, A::Error> {
                while seq.next_element::<Unique>()?.is_some() {}
                Ok(Unique)
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Unique, A::Error> {
                let mut seen = std::collections::HashSet::new();
                while let Some(k) = map.next_key::<String>()? {
                    map.next_value::<Unique>()?;
                    if !seen.insert(k) {
                        return Err(de::Error::custom("an object repeats a member name"));
                    }
                }
                Ok(Unique)
            }
        }
        d.deserialize_any(V)
    }
}

/// User and format metadata: string keys to string values.
pub type Metadata = BTreeMap<String, String>;

/// Where one tensor lives and how to read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Element type.
    pub dtype: Dtype,
    /// Dimensions; empty for a scalar.
    pub shape: Vec<usize>,
    /// Byte range `[start, end)` relative to the start of the data buffer.
    pub data_offsets: (usize, usize),
}

impl TensorInfo {
    /// Length of the tensor's bytes.
    pub fn len(&self) -> usize {
        self.data_offsets.1 - self.data_offsets.0
    }

    /// Whether the tensor holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A parsed and validated header.
#[derive(Debug, Clone)]
pub struct Header {
    metadata: Option<Metadata>,
    /// Tensors in file order (by offset).
    tensors: Vec<(String, TensorInfo)>,
    index: HashMap<String, usize>,
    data_len: usize,
    duplicate_keys: bool,
}

/// Reads the length prefix and checks it against the file length.
/// Returns the JSON length `N`.
pub fn read_prefix(prefix: &[u8], file_len: u64) -> Result<usize> {
    let n = declared_len(prefix)?;
    let end = (n as u64)
        .checked_add(PREFIX_LEN as u64)
        .ok_or(Error::InvalidHeaderLength)?;
    if end > file_len {
        return Err(Error::InvalidHeaderLength);
    }
    Ok(n)
}

/// The header length `N` the prefix declares, under the cap, before it
/// is checked against the file (which [`read_prefix`] does too).
pub(crate) fn declared_len(prefix: &[u8]) -> Result<usize> {
    let Some(bytes) = prefix.get(..PREFIX_LEN) else {
        return Err(Error::HeaderTooSmall);
    };
    let n = u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
    let n = usize::try_from(n).map_err(|_| Error::HeaderTooLarge)?;
    if n > MAX_HEADER_SIZE {
        return Err(Error::HeaderTooLarge);
    }
    Ok(n)
}

/// A header's JSON read as the format's object of tensor entries and
/// `__metadata__`, before its offsets are validated: what an inspection
/// of a header with bad offsets can still learn (its metadata).
pub(crate) struct Unvalidated<'a> {
    text: &'a str,
    raw: RawHeader,
}

impl Unvalidated<'_> {
    /// The `__metadata__` map, if the JSON has one.
    pub(crate) fn metadata(&self) -> Option<&Metadata> {
        self.raw.metadata.as_ref()
    }
}

impl Header {
    /// Parses the JSON part of a header and checks that the tensors tile a
    /// buffer with no hole or overlap. The caller checks the buffer length
    /// against [`Header::data_len`].
    pub fn parse(json: &[u8]) -> Result<Header> {
        Header::validate(Header::parse_json(json)?)
    }

    /// The first half of [`Header::parse`]: UTF-8, then the JSON object.
    pub(crate) fn parse_json(json: &[u8]) -> Result<Unvalidated<'_>> {
        let text = std::str::from_utf8(json).map_err(|_| Error::InvalidHeader)?;
        let raw: RawHeader = serde_json::from_str(text)
            .map_err(|e| Error::InvalidHeaderDeserialization(e.to_string()))?;
        Ok(Unvalidated { text, raw })
    }

    /// The second half of [`Header::parse`]: offsets, sizes, and repeated
    /// members of a protected header.
    pub(crate) fn validate(parsed: Unvalidated<'_>) -> Result<Header> {
        let Unvalidated { text, raw } = parsed;
        let mut h = Header::from_parts(raw.metadata, raw.tensors.into_iter().collect())?;
        // The parse above notes repeated top-level and metadata keys (which
        // safetensors resolves last-one-wins) and refuses repeated fields of
        // a tensor entry (as safetensors does). A protected file must repeat
        // no member in any object (FORMAT.md §2): the whole text is walked
        // once more, which plain files, read as safetensors reads them, skip.
        let protected = h
            .metadata()
            .is_some_and(|m| m.keys().any(|k| k.starts_with(RESERVED_PREFIX)));
        h.duplicate_keys = raw.duplicates || (protected && unique_members(text).is_err());
        Ok(h)
    }

    /// Builds a header from its parts, validating the offsets.
    pub fn from_parts(
        metadata: Option<Metadata>,
        mut tensors: Vec<(String, TensorInfo)>,
    ) -> Result<Header> {
        tensors.sort_by(|a, b| {
            a.1.data_offsets
                .cmp(&b.1.data_offsets)
                .then_with(|| a.0.cmp(&b.0))
        });
        let mut end = 0usize;
        for (name, info) in &tensors {
            let (s, e) = info.data_offsets;
            if s != end || e < s {
                return Err(Error::InvalidOffset(name.clone()));
            }
            let nbytes = info.dtype.byte_size(&info.shape)?;
            if e - s != nbytes {
                return Err(Error::TensorInvalidInfo(name.clone()));
            }
            end = e;
        }
        let index = tensors
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.clone(), i))
            .collect();
        Ok(Header {
            metadata,
            tensors,
            index,
            data_len: end,
            duplicate_keys: false,
        })
    }

    /// The `__metadata__` map, if the file has one.
    pub fn metadata(&self) -> Option<&Metadata> {
        self.metadata.as_ref()
    }

    /// One metadata value.
    pub fn metadata_value(&self, key: &str) -> Option<&str> {
        self.metadata.as_ref()?.get(key).map(String::as_str)
    }

    /// Tensors in file order.
    pub fn tensors(&self) -> &[(String, TensorInfo)] {
        &self.tensors
    }

    /// One tensor's info.
    pub fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.index
            .get(name)
            .map(|&i| &self.tensors[i].1)
            .ok_or_else(|| Error::TensorNotFound(name.to_owned()))
    }

    /// Position of a tensor in file order.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// Whether the JSON repeated a key (safetensors keeps the last one;
    /// protected files refuse this, FORMAT.md §2).
    pub fn has_duplicate_keys(&self) -> bool {
        self.duplicate_keys
    }

    /// End of the last tensor: the length of the data the tensors cover.
    pub fn data_len(&self) -> usize {
        self.data_len
    }
}

#[derive(Deserialize)]
struct RawInfo {
    dtype: Dtype,
    shape: Vec<usize>,
    data_offsets: (usize, usize),
}

struct RawHeader {
    metadata: Option<Metadata>,
    tensors: HashMap<String, TensorInfo>,
    duplicates: bool,
}

/// A metadata map that notes whether a key appeared twice.
struct StrictMetadata(Metadata, bool);

impl<'de> Deserialize<'de> for StrictMetadata {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StrictMetadata;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of string values")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<StrictMetadata, A::Error> {
                let mut m = Metadata::new();
                let mut duplicates = false;
                while let Some((k, v)) = map.next_entry::<String, String>()? {
                    duplicates |= m.insert(k, v).is_some();
                }
                Ok(StrictMetadata(m, duplicates))
            }
        }
        d.deserialize_map(V)
    }
}

impl<'de> Deserialize<'de> for RawHeader {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawHeader;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object of tensor entries")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<RawHeader, A::Error> {
                let mut metadata = None;
                let mut seen_metadata = false;
                let mut duplicates = false;
                let mut tensors = HashMap::new();
                // Duplicate keys: the last one wins, as in safetensors 0.8;
                // they are noted so that protected files can refuse them.
                while let Some(key) = map.next_key::<String>()? {
                    if key == METADATA_KEY {
                        // safetensors refuses a repeated __metadata__ (serde's
                        // duplicate-field check), while repeated tensors and
                        // metadata entries are last-one-wins.
                        if seen_metadata {
                            return Err(de::Error::duplicate_field(METADATA_KEY));
                        }
                        seen_metadata = true;
                        let m = map.next_value::<Option<StrictMetadata>>()?;
                        duplicates |= m.as_ref().is_some_and(|m| m.1);
                        metadata = m.map(|m| m.0);
                    } else {
                        let raw: RawInfo = map.next_value()?;
                        let info = TensorInfo {
                            dtype: raw.dtype,
                            shape: raw.shape,
                            data_offsets: raw.data_offsets,
                        };
                        duplicates |= tensors.insert(key, info).is_some();
                    }
                }
                Ok(RawHeader {
                    metadata,
                    tensors,
                    duplicates,
                })
            }
        }
        d.deserialize_map(V)
    }
}

/// One tensor to lay out for writing.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Dimensions.
    pub shape: Vec<usize>,
}

/// Orders entries as safetensors 0.8 writes them: by dtype, widest first, then
/// by name; returns them with their offsets.
pub(crate) fn layout(mut entries: Vec<Entry>) -> Result<Vec<(Entry, TensorInfo)>> {
    entries.sort_by(|a, b| b.dtype.cmp(&a.dtype).then_with(|| a.name.cmp(&b.name)));
    let mut offset = 0usize;
    entries
        .into_iter()
        .map(|e| {
            let n = e.dtype.byte_size(&e.shape)?;
            let end = offset.checked_add(n).ok_or(Error::ValidationOverflow)?;
            let info = TensorInfo {
                dtype: e.dtype,
                shape: e.shape.clone(),
                data_offsets: (offset, end),
            };
            offset = end;
            Ok((e, info))
        })
        .collect()
}

/// A header rewritten in place is written by one `pwrite` inside the file's
/// first page, which a killed process never leaves half done (the kernel
/// checks for fatal signals between pages, not within one).
pub(crate) const IN_PLACE_END: usize = 4096;

/// The JSON that opens a header with metadata: `{"__metadata__":{...}`.
pub(crate) fn metadata_json(metadata: &Metadata) -> Result<Vec<u8>> {
    let mut json = Vec::with_capacity(256);
    json.extend_from_slice(b"{\"__metadata__\":");
    serde_json::to_writer(&mut json, metadata)
        .map_err(|e| Error::InvalidArgument(e.to_string()))?;
    Ok(json)
}

/// The spaces after the metadata that end its slot at [`IN_PLACE_END`] in
/// the file, when at least `reserve` of them fit there; else `reserve`.
pub(crate) fn slot_padding(metadata: &Metadata, reserve: usize) -> Result<usize> {
    let used = PREFIX_LEN + metadata_json(metadata)?.len();
    Ok(match IN_PLACE_END.checked_sub(used) {
        Some(room) if room >= reserve => room,
        _ => reserve,
    })
}

/// Encodes a header: the length prefix, the compact JSON and the space padding
/// to a multiple of 8. `padding` more spaces follow the metadata (JSON ignores
/// whitespace between tokens): room for a later in-place rewrite of the
/// metadata that leaves the tensor table where it is.
pub fn encode<'a>(
    metadata: Option<&Metadata>,
    tensors: impl IntoIterator<Item = (&'a str, &'a TensorInfo)>,
    padding: usize,
) -> Result<Vec<u8>> {
    let mut json = Vec::with_capacity(256);
    let mut first = true;
    match metadata {
        Some(m) => {
            json = metadata_json(m)?;
            let n = json
                .len()
                .checked_add(padding)
                .ok_or(Error::ValidationOverflow)?;
            if n > MAX_HEADER_SIZE {
                return Err(Error::HeaderTooLarge);
            }
            json.resize(n, b' ');
            first = false;
        }
        None => json.push(b'{'),
    }
    for (name, info) in tensors {
        if !first {
            json.push(b',');
        }
        first = false;
        serde_json::to_writer(&mut json, name)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        json.extend_from_slice(b":{\"dtype\":\"");
        json.extend_from_slice(info.dtype.name().as_bytes());
        json.extend_from_slice(b"\",\"shape\":");
        serde_json::to_writer(&mut json, &info.shape).expect("integers serialize");
        json.extend_from_slice(b",\"data_offsets\":");
        serde_json::to_writer(&mut json, &[info.data_offsets.0, info.data_offsets.1])
            .expect("integers serialize");
        json.push(b'}');
    }
    json.push(b'}');
    let padded = json
        .len()
        .checked_add(if metadata.is_none() { padding } else { 0 })
        .and_then(|n| n.checked_add(7))
        .ok_or(Error::ValidationOverflow)?
        / 8
        * 8;
    if padded > MAX_HEADER_SIZE {
        return Err(Error::HeaderTooLarge);
    }
    json.resize(padded, b' ');
    let mut out = Vec::with_capacity(PREFIX_LEN + padded);
    out.extend_from_slice(&(padded as u64).to_le_bytes());
    out.extend_from_slice(&json);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Header> {
        Header::parse(s.as_bytes())
    }

    #[test]
    fn prefix_errors() {
        assert!(matches!(
            read_prefix(b"1234", 4),
            Err(Error::HeaderTooSmall)
        ));
        let big = (MAX_HEADER_SIZE as u64 + 1).to_le_bytes();
        assert!(matches!(
            read_prefix(&big, u64::MAX),
            Err(Error::HeaderTooLarge)
        ));
        let n = 100u64.to_le_bytes();
        assert!(matches!(
            read_prefix(&n, 50),
            Err(Error::InvalidHeaderLength)
        ));
        assert_eq!(read_prefix(&n, 108).unwrap(), 100);
    }

    #[test]
    fn parse_errors() {
        assert!(matches!(
            Header::parse(b"\xff{}"),
            Err(Error::InvalidHeader)
        ));
        assert!(matches!(
            parse("[]"),
            Err(Error::InvalidHeaderDeserialization(_))
        ));
        assert!(matches!(
            parse(r#"{"a":{"dtype":"X","shape":[],"data_offsets":[0,4]}}"#),
            Err(Error::InvalidHeaderDeserialization(_))
        ));
        assert!(matches!(
            parse(r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#),
            Err(Error::TensorInvalidInfo(_))
        ));
        assert!(matches!(
            parse(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#),
            Err(Error::InvalidOffset(_))
        ));
        assert!(matches!(
            parse(r#"{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,1]}}"#),
            Err(Error::MisalignedSlice)
        ));
        assert!(matches!(
            parse(r#"{"__metadata__":{"a":1}}"#),
            Err(Error::InvalidHeaderDeserialization(_))
        ));
    }

    #[test]
    fn parse_quirks_of_safetensors() {
        // Leading whitespace, unknown fields, null metadata, last duplicate wins.
        let h = parse(
            r#"  {"__metadata__":null,"a":{"dtype":"F32","shape":[1],"data_offsets":[0,8],"x":1},
                 "a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}}"#,
        )
        .unwrap();
        assert!(h.metadata().is_none());
        assert_eq!(h.data_len(), 4);
    }

    #[test]
    fn repeated_members_are_found_at_any_depth() {
        assert!(unique_members(r#"{"a":[1,{"b":{"c":null,"d":"x"}}],"e":1.5}"#).is_ok());
        for text in [
            r#"{"a":1,"a":1}"#,
            r#"{"a":[{"b":1,"b":2}]}"#,
            r#"{"x":{"y":{"z":true,"\u007a":false}}}"#,
        ] {
            assert!(unique_members(text).is_err(), "{text}");
        }
        assert!(unique_members("{} {}").is_err(), "two values");
        assert!(unique_members("{").is_err());
    }

    /// What serde does with repeated members of a tensor entry (refused, for
    /// every file, as in safetensors 0.8), and what protected files add:
    /// a repeat anywhere, even of an ignored member, is noted.
    #[test]
    fn repeated_members_in_tensor_entries() {
        let e = parse(r#"{"a":{"dtype":"U8","dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#);
        assert!(
            matches!(e, Err(Error::InvalidHeaderDeserialization(m)) if m.contains("duplicate field"))
        );
        let plain = r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":1,"x":2}}"#;
        assert!(
            !parse(plain).unwrap().has_duplicate_keys(),
            "plain: ignored, as in safetensors"
        );
        let protected = format!(
            r#"{{"__metadata__":{{"__cryptotensors__":"{{}}"}},{}"#,
            &plain[1..]
        );
        assert!(parse(&protected).unwrap().has_duplicate_keys());
        let clean = protected.replace(r#","x":2"#, "");
        assert!(!parse(&clean).unwrap().has_duplicate_keys());
    }

    #[test]
    fn encode_pads_and_orders() {
        let entries = vec![
            Entry {
                name: "b".into(),
                dtype: Dtype::U8,
                shape: vec![3],
            },
            Entry {
                name: "a".into(),
                dtype: Dtype::F32,
                shape: vec![1],
            },
        ];
        let laid = layout(entries).unwrap();
        assert_eq!(laid[0].0.name, "a");
        let bytes = encode(None, laid.iter().map(|(e, i)| (e.name.as_str(), i)), 0).unwrap();
        assert_eq!((bytes.len() - PREFIX_LEN) % 8, 0);
        let n = read_prefix(&bytes, bytes.len() as u64).unwrap();
        let h = Header::parse(&bytes[PREFIX_LEN..PREFIX_LEN + n]).unwrap();
        assert_eq!(h.data_len(), 7);
        assert_eq!(h.tensors()[1].0, "b");
    }
}
