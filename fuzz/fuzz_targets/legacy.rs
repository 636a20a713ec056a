//! `legacy`: the reader of cryptotensors 0.2.3 files on arbitrary bytes.
//!
//! The input is a whole file, opened with the vectors' real keys and the
//! signature check skipped (the most a hostile file can reach), then every
//! tensor read. Nothing may panic; a read that fails must leave its output
//! zeroed; a file that opens must hold tensors that tile its data.
#![no_main]

use std::sync::{Arc, OnceLock};

use cryptotensors::legacy::{LegacyKeys, LegacyReader, LegacyVerify};
use libfuzzer_sys::fuzz_target;

fn keys() -> &'static LegacyKeys {
    static KEYS: OnceLock<LegacyKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        LegacyKeys::parse(include_str!("../../tests/vectors/legacy/keys.json")).expect("the vectors' keys parse")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(reader) = LegacyReader::open(Arc::new(data.to_vec()), keys(), &LegacyVerify::Skip) else {
        return;
    };
    for (name, info) in reader.header().tensors() {
        // Bounded by the input: the tensors tile the data the file holds.
        assert!(info.len() <= data.len());
        let mut out = vec![0xA5u8; info.len()];
        if reader.read_into(name, &mut out).is_err() {
            assert!(out.iter().all(|&b| b == 0), "a failed read of {name:?} left bytes behind");
        }
    }
});
