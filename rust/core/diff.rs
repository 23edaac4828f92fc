//! The chunk diff of one document: its new chunks against the version the state committed.
//!
//! Fed block by block (a document streamed from disk arrives in blocks; a small one is one
//! block), it decides per chunk: the first chunk with a given text is the document's (a text
//! repeated is one point), and of those, which are to be sent (new, or all when the whole
//! document is re-sent), which were committed but moved (other chunk index or offsets: a
//! payload update), which were committed with other structural metadata (a page or a heading:
//! the metadata is restated); at the end, which committed or written-ahead chunks are lost.

use crate::core::hash::HASH_LEN;
use std::collections::{HashMap, HashSet};

pub type Hash = [u8; HASH_LEN];
/// (chunk index, start, end) of a chunk in its document.
pub type Row = [i64; 3];
/// A digest of a chunk's structural metadata (zeros: none).
pub type Digest = [u8; 8];

/// The rows of one block that need work, as indices into the block.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BlockDiff {
    pub send: Vec<u32>,
    pub moved: Vec<u32>,
    pub restated: Vec<u32>,
}

/// What a document's diff leaves for its new state row.
#[derive(Debug, Default)]
pub struct Finished {
    /// Distinct chunk hashes in order, their rows and digests (concatenated).
    pub chunks: Vec<u8>,
    pub rows: Vec<i64>,
    pub digests: Vec<u8>,
    pub any_digest: bool,
    /// Hashes committed or written ahead that the document no longer has, sorted.
    pub lost: Vec<Hash>,
}

pub struct DocDiff {
    committed: HashMap<Hash, u32>,
    prev_rows: Vec<Row>,
    prev_digests: Vec<Digest>,
    pending: Vec<Hash>,
    resend_all: bool,
    seen: HashSet<Hash>,
    out: Finished,
}

impl DocDiff {
    /// `prev_rows` / `prev_digests` may be empty (a state written before they were kept):
    /// every kept chunk then counts as moved / as having no metadata before.
    pub fn new(
        prev_chunks: &[Hash],
        prev_rows: &[Row],
        prev_digests: &[Digest],
        pending: &[Hash],
        resend_all: bool,
    ) -> Self {
        let committed = prev_chunks
            .iter()
            .enumerate()
            .map(|(i, h)| (*h, i as u32))
            .collect();
        let rows_ok = prev_rows.len() == prev_chunks.len();
        let digests_ok = prev_digests.len() == prev_chunks.len();
        Self {
            committed,
            prev_rows: if rows_ok {
                prev_rows.to_vec()
            } else {
                Vec::new()
            },
            prev_digests: if digests_ok {
                prev_digests.to_vec()
            } else {
                Vec::new()
            },
            pending: pending.to_vec(),
            resend_all,
            seen: HashSet::new(),
            out: Finished::default(),
        }
    }

    /// Distinct chunks taken so far.
    pub fn count(&self) -> usize {
        self.seen.len()
    }

    /// The next block: `hashes[i]` at `spans[i]` (start, end) is chunk `j0 + i`, with
    /// `digests[i]` (or none).
    pub fn take(
        &mut self,
        hashes: &[Hash],
        spans: &[[i64; 2]],
        j0: i64,
        digests: Option<&[Digest]>,
    ) -> BlockDiff {
        let mut d = BlockDiff::default();
        for (i, h) in hashes.iter().enumerate() {
            if !self.seen.insert(*h) {
                continue; // the same text earlier in the document: one point
            }
            let row = [j0 + i as i64, spans[i][0], spans[i][1]];
            let dg = digests.map(|g| g[i]).unwrap_or([0; 8]);
            self.out.chunks.extend_from_slice(h);
            self.out.rows.extend_from_slice(&row);
            self.out.digests.extend_from_slice(&dg);
            self.out.any_digest |= dg != [0; 8];
            let at = self.committed.get(h).copied();
            match at {
                Some(c) if !self.resend_all => {
                    let c = c as usize;
                    let was = self.prev_digests.get(c).copied().unwrap_or([0; 8]);
                    if was != dg {
                        d.restated.push(i as u32);
                    } else if self.prev_rows.get(c) != Some(&row) {
                        d.moved.push(i as u32);
                    }
                }
                _ => d.send.push(i as u32),
            }
        }
        d
    }

    /// The new row and the lost hashes.
    pub fn finish(mut self) -> Finished {
        let mut lost: Vec<Hash> = self
            .committed
            .keys()
            .chain(self.pending.iter())
            .filter(|h| !self.seen.contains(*h))
            .copied()
            .collect();
        lost.sort_unstable();
        lost.dedup();
        self.out.lost = lost;
        self.out
    }

    /// The distinct chunks taken so far that were not committed (sent, and to be taken back
    /// if the document is abandoned).
    pub fn uncommitted(&self) -> Vec<Hash> {
        self.out
            .chunks
            .chunks_exact(HASH_LEN)
            .filter_map(|c| {
                let h: Hash = c.try_into().ok()?;
                (!self.committed.contains_key(&h)).then_some(h)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u8) -> Hash {
        [n; HASH_LEN]
    }

    #[test]
    fn new_kept_moved_lost_and_repeated() {
        let prev = [h(1), h(2), h(3)];
        let rows = [[0, 0, 5], [1, 6, 10], [2, 11, 15]];
        let mut d = DocDiff::new(&prev, &rows, &[], &[h(9)], false);
        // 1 stays, 2 moves, 4 is new, 1 again is a repeat, 3 and the pending 9 are lost
        let b = d.take(
            &[h(1), h(4), h(2), h(1)],
            &[[0, 5], [6, 9], [10, 14], [15, 20]],
            0,
            None,
        );
        assert_eq!(b.send, vec![1]);
        assert_eq!(b.moved, vec![2]);
        assert!(b.restated.is_empty());
        assert_eq!(d.count(), 3);
        assert_eq!(d.uncommitted(), vec![h(4)]);
        let f = d.finish();
        assert_eq!(f.lost, vec![h(3), h(9)]);
        assert_eq!(f.chunks.len(), 3 * HASH_LEN);
        assert_eq!(f.rows, vec![0, 0, 5, 1, 6, 9, 2, 10, 14]);
        assert!(!f.any_digest);
    }

    #[test]
    fn resend_all_and_restated_and_blocks() {
        let prev = [h(1), h(2)];
        let rows = [[0, 0, 5], [1, 6, 10]];
        let digests = [[0; 8], [7; 8]];
        let mut d = DocDiff::new(&prev, &rows, &digests, &[], false);
        let b1 = d.take(&[h(1)], &[[0, 5]], 0, Some(&[[1; 8]]));
        assert_eq!(b1.restated, vec![0]); // another page now
        let b2 = d.take(
            &[h(2), h(1)],
            &[[6, 10], [11, 12]],
            1,
            Some(&[[7; 8], [0; 8]]),
        );
        assert_eq!(b2, BlockDiff::default()); // kept in place; the repeat is dropped
        assert!(d.finish().any_digest);
        let mut all = DocDiff::new(&prev, &rows, &[], &[], true);
        assert_eq!(
            all.take(&[h(1), h(2)], &[[0, 5], [6, 10]], 0, None).send,
            vec![0, 1]
        );
    }
}
