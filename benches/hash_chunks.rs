//! Per-chunk cost of the content-hash candidates, in Rust (no Python call in
//! the loop): XXH3-128 (qflume's choice, rust/core/hash.rs) vs BLAKE3, for
//! chunk-sized inputs and for whole documents. Run by benches/bench_hash.py:
//! `cargo bench --no-default-features --bench hash_chunks`.
//! Prints one `RESULT name size ns_per_call gb_per_s` line per case.

use std::hint::black_box;
use std::time::Instant;

fn measure(name: &str, size: usize, data: &[u8], f: impl Fn(&[u8]) -> [u8; 16]) {
    let pieces: Vec<&[u8]> = data.chunks_exact(size).collect();
    let mut best = f64::INFINITY;
    let reps = (64 << 20) / data.len().max(1) + 1;
    for _ in 0..7 {
        let t = Instant::now();
        let mut acc = 0u8;
        for _ in 0..reps {
            for p in &pieces {
                acc ^= f(black_box(p))[0];
            }
        }
        black_box(acc);
        let per_call = t.elapsed().as_nanos() as f64 / (reps * pieces.len()) as f64;
        best = best.min(per_call);
    }
    println!("RESULT {name} {size} {best:.1} {:.2}", size as f64 / best);
}

fn main() {
    // Real text when given (benches/bench_hash.py passes the Python docs), else pseudo-text.
    let data = std::env::args()
        .nth(1)
        .filter(|a| !a.starts_with('-'))
        .and_then(|p| std::fs::read(p).ok())
        .unwrap_or_else(|| {
            (0..(16u32 << 20))
                .map(|i| b"abcdefgh ijklmnop\n"[(i.wrapping_mul(2654435761) >> 27) as usize % 18])
                .collect()
        });
    let xxh3 = |d: &[u8]| xxhash_rust::xxh3::xxh3_128(d).to_be_bytes();
    let blake3 = |d: &[u8]| {
        let mut out = [0u8; 16];
        out.copy_from_slice(&blake3::hash(d).as_bytes()[..16]);
        out
    };
    // What chunk_batch pays per chunk on top of chunking: qflume's content hash and point id.
    let hash_and_id = |d: &[u8]| {
        let h = _core::core::hash::content_hash(d);
        _core::core::hash::point_id(b"library/functions.rst.txt", &h)
    };
    for size in [512usize, 1024] {
        let slice = &data[..data.len().min(8 << 20)];
        measure("qflume_hash_and_point_id", size, slice, hash_and_id);
    }
    for size in [64usize, 256, 1024, 4096, 65536, 1 << 20] {
        let slice = &data[..data.len().min(8 << 20)];
        measure("xxh3_128", size, slice, xxh3);
        measure("blake3", size, slice, blake3);
    }
}
