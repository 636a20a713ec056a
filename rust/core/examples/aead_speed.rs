//! Measures single-core segment decryption throughput (AES-256-GCM and
//! ChaCha20-Poly1305 through ring) for the speed notes in benches/RESULTS.md.
//! Run: cargo run --release -p cryptotensors --example aead_speed

use std::time::Instant;

use cryptotensors::crypto::{Algorithm, Binding, DataKey, PayloadKey};
use cryptotensors::Dtype;

fn main() {
    let seg = 1 << 20;
    let total = 256usize << 20;
    for alg in [Algorithm::Aes256Gcm, Algorithm::ChaCha20Poly1305] {
        let dk = DataKey::generate().unwrap();
        let pk = PayloadKey::for_writing(&dk, alg, seg, &[0u8; 32]);
        let shape = [total];
        let key = pk.tensor_key(&Binding {
            name: "t",
            dtype: Dtype::U8,
            shape: &shape,
            offsets: (0, total),
        });
        let mut buf = vec![7u8; total];
        let tags: Vec<[u8; 16]> = buf
            .chunks_mut(seg)
            .enumerate()
            .map(|(i, c)| key.seal(i as u64, c).unwrap())
            .collect();
        let src = buf.clone();
        let start = Instant::now();
        for (i, (c, s)) in buf.chunks_mut(seg).zip(src.chunks(seg)).enumerate() {
            c.copy_from_slice(s);
            key.open(i as u64, &tags[i], c).unwrap();
        }
        let dt = start.elapsed().as_secs_f64();
        println!(
            "{}: copy+open {:.2} GB/s on one core",
            alg.name(),
            total as f64 / dt / 1e9
        );
        let start = Instant::now();
        for (i, c) in buf.chunks_mut(seg).enumerate() {
            let _ = key.seal(i as u64, c);
        }
        let dt = start.elapsed().as_secs_f64();
        println!(
            "{}: seal in place {:.2} GB/s on one core",
            alg.name(),
            total as f64 / dt / 1e9
        );
    }
}
