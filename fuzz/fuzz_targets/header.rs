//! `header`: the length prefix and the JSON header on arbitrary bytes.
//!
//! The input is used twice: as a whole file (prefix, header, data; opened
//! with `Reader::open` and every tensor read when the layout allows), and
//! as bare header JSON; and inspected, which fails only on the length
//! prefix (too short, or over the cap). Nothing may panic; every header that parses must
//! satisfy the layout invariants and survive re-encoding unchanged.
#![no_main]

use std::sync::Arc;

use cryptotensors::envelope::{self, Layout};
use cryptotensors::header::{self, Header, PREFIX_LEN};
use cryptotensors::inspect::Inspection;
use cryptotensors::reader::{LoadOptions, Reader};
use fuzz_common::check_header;
use libfuzzer_sys::fuzz_target;

fn parsed(h: &Header) {
    check_header(h);
    // The canonical encodings and the envelope must not panic either.
    let _ = envelope::mac_input(h);
    let _ = envelope::signature_input(h);
    let _ = Layout::from_header(h);
}

fuzz_target!(|data: &[u8]| {
    // Inspected: it fails only where the length prefix does, else it
    // describes whatever it read (damaged or not).
    let inspected = Inspection::read(&data.to_vec());
    let prefix_ok = data.len() >= PREFIX_LEN && header::read_prefix(data, u64::MAX).is_ok();
    assert_eq!(inspected.is_ok(), prefix_ok, "{:?}", inspected.err());
    // As a file.
    if let Ok(n) = header::read_prefix(data, data.len() as u64) {
        assert!(PREFIX_LEN + n <= data.len());
        if let Ok(h) = Header::parse(&data[PREFIX_LEN..PREFIX_LEN + n]) {
            parsed(&h);
            if let Ok(r) = Reader::open(Arc::new(data.to_vec()), &LoadOptions::default()) {
                for (name, info) in r.header().tensors() {
                    let mut buf = vec![0u8; info.len()];
                    let res = r.read_into(name, &mut buf);
                    if r.layout().is_none() {
                        // A plain file: the bytes are the file's bytes.
                        res.expect("plain tensor reads");
                        let at = r.raw_offset(name).unwrap().unwrap() as usize;
                        assert_eq!(&data[at..at + buf.len()], &buf[..]);
                    }
                }
            }
        }
    }
    // As bare JSON.
    if let Ok(h) = Header::parse(data) {
        parsed(&h);
    }
});
