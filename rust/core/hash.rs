//! Content hashes and deterministic point ids.
//!
//! XXH3-128 is the content hash: measured in benches/bench_hash.py and
//! `cargo bench`-free unit timings, it hashes documents at memory speed on one
//! core and costs tens of nanoseconds per ~1 KB chunk, where BLAKE3 (a
//! cryptographic hash) pays several times more per small input because it
//! cannot use its SIMD tree on inputs under a few KB. Content hashes here only
//! detect change; they are not a security boundary.

use crate::core::{CoreError, CoreResult};
use xxhash_rust::xxh3::{xxh3_128, Xxh3};

/// Length of a content hash and of a point id, in bytes.
pub const HASH_LEN: usize = 16;

/// Namespace mixed into every point id, so qflume ids never equal a plain hash.
const POINT_NAMESPACE: &[u8; 16] = b"qflume.point.v1\0";

/// XXH3-128 of `data`, big-endian bytes (so the hex form reads like the u128).
#[inline]
pub fn content_hash(data: &[u8]) -> [u8; HASH_LEN] {
    xxh3_128(data).to_be_bytes()
}

/// Streaming form of [`content_hash`] for data read in pieces.
#[derive(Default, Clone)]
pub struct ContentHasher(Xxh3);

impl ContentHasher {
    pub fn new() -> Self {
        Self(Xxh3::new())
    }
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
    pub fn finish(&self) -> [u8; HASH_LEN] {
        self.0.digest128().to_be_bytes()
    }
}

/// The point id of a chunk: an RFC 9562 version-8 UUID derived from the
/// document key and the chunk's content hash. The same chunk of the same
/// document always gets the same id; the key is length-prefixed so that
/// ("ab", h) and ("a", "b"+h) cannot meet.
#[inline]
pub fn point_id(doc_key: &[u8], chunk_hash: &[u8; HASH_LEN]) -> [u8; HASH_LEN] {
    let mut h = Xxh3::new();
    h.update(POINT_NAMESPACE);
    h.update(&(doc_key.len() as u64).to_le_bytes());
    h.update(doc_key);
    h.update(chunk_hash);
    let mut id = h.digest128().to_be_bytes();
    id[6] = (id[6] & 0x0f) | 0x80; // version 8
    id[8] = (id[8] & 0x3f) | 0x80; // RFC 9562 variant
    id
}

/// The point ids of many chunks of one document: `hashes` is n * 16 content
/// hash bytes, the answer n * 16 id bytes (row i is `point_id(doc_key, hash i)`).
pub fn point_ids(doc_key: &[u8], hashes: &[u8]) -> CoreResult<Vec<u8>> {
    if hashes.len() % HASH_LEN != 0 {
        return Err(CoreError::Shape(format!(
            "chunk hashes must be a multiple of {HASH_LEN} bytes (one content hash per chunk), \
             got {} bytes",
            hashes.len()
        )));
    }
    let mut out = Vec::with_capacity(hashes.len());
    for h in hashes.chunks_exact(HASH_LEN) {
        let mut one = [0u8; HASH_LEN];
        one.copy_from_slice(h);
        out.extend_from_slice(&point_id(doc_key, &one));
    }
    Ok(out)
}

/// Canonical 36-character UUID text of 16 id bytes.
pub fn uuid_string(id: &[u8; HASH_LEN]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(36);
    for (i, b) in id.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 0xf) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_hash_is_stable_and_streaming_agrees() {
        let data = b"hello world, hello qflume".repeat(1000);
        let one = content_hash(&data);
        let mut h = ContentHasher::new();
        for piece in data.chunks(777) {
            h.update(piece);
        }
        assert_eq!(one, h.finish());
        assert_ne!(one, content_hash(&data[1..]));
    }

    #[test]
    fn point_id_is_a_v8_uuid_and_separates_keys() {
        let ch = content_hash(b"chunk");
        let a = point_id(b"docs/a.md", &ch);
        assert_eq!(a, point_id(b"docs/a.md", &ch));
        assert_ne!(a, point_id(b"docs/b.md", &ch));
        assert_eq!(a[6] >> 4, 8);
        assert_eq!(a[8] >> 6, 0b10);
        let s = uuid_string(&a);
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "8");
    }

    #[test]
    fn point_ids_are_point_id_row_by_row() {
        let (a, b) = (content_hash(b"one"), content_hash(b"two"));
        let got = point_ids(b"k.md", &[a, b].concat()).unwrap();
        assert_eq!(got, [point_id(b"k.md", &a), point_id(b"k.md", &b)].concat());
        assert!(point_ids(b"k.md", &[]).unwrap().is_empty());
        assert!(matches!(
            point_ids(b"k.md", &[0u8; 17]),
            Err(CoreError::Shape(_))
        ));
    }
}
