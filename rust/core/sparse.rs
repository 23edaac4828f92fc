//! Sparse vectors in CSR form: BM25 term weights that match FastEmbed's `Qdrant/bm25`
//! token for token, and SPLADE pooling over a masked-LM's logits.
//!
//! BM25 follows FastEmbed's published algorithm: split into runs of word characters
//! (Python's `\w`: Unicode letters, numbers, `_`), lowercase (full Unicode mapping),
//! drop the token `_`, stopwords and tokens longer than 40 characters, Snowball-stem,
//! then hash each stem with MurmurHash3 x86_32 (seed 0) as a signed int and take its
//! absolute value. Documents get `tf*(k+1) / (tf + k*(1-b+b*len/avg_len))`; Qdrant adds
//! the IDF (the collection's sparse vector uses the `idf` modifier). Queries get 1.0
//! per distinct token.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::prelude::*;
use rust_stemmers::{Algorithm, Stemmer};
use unicode_general_category::{get_general_category, GeneralCategory as Gc};

use super::error::{CoreError, CoreResult};

/// FastEmbed's `token_max_length` default: longer tokens are dropped.
pub const TOKEN_MAX_LENGTH: usize = 40;

/// The English stopwords of FastEmbed's `Qdrant/bm25` (NLTK's English list, the same one
/// Qdrant's own full-text index uses). Entries with an apostrophe can never match a token
/// (tokens are runs of word characters) but are kept so the list reads as published.
pub const ENGLISH_STOPWORDS: &[&str] = &[
    "i",
    "me",
    "my",
    "myself",
    "we",
    "our",
    "ours",
    "ourselves",
    "you",
    "you're",
    "you've",
    "you'll",
    "you'd",
    "your",
    "yours",
    "yourself",
    "yourselves",
    "he",
    "him",
    "his",
    "himself",
    "she",
    "she's",
    "her",
    "hers",
    "herself",
    "it",
    "it's",
    "its",
    "itself",
    "they",
    "them",
    "their",
    "theirs",
    "themselves",
    "what",
    "which",
    "who",
    "whom",
    "this",
    "that",
    "that'll",
    "these",
    "those",
    "am",
    "is",
    "are",
    "was",
    "were",
    "be",
    "been",
    "being",
    "have",
    "has",
    "had",
    "having",
    "do",
    "does",
    "did",
    "doing",
    "a",
    "an",
    "the",
    "and",
    "but",
    "if",
    "or",
    "because",
    "as",
    "until",
    "while",
    "of",
    "at",
    "by",
    "for",
    "with",
    "about",
    "against",
    "between",
    "into",
    "through",
    "during",
    "before",
    "after",
    "above",
    "below",
    "to",
    "from",
    "up",
    "down",
    "in",
    "out",
    "on",
    "off",
    "over",
    "under",
    "again",
    "further",
    "then",
    "once",
    "here",
    "there",
    "when",
    "where",
    "why",
    "how",
    "all",
    "any",
    "both",
    "each",
    "few",
    "more",
    "most",
    "other",
    "some",
    "such",
    "no",
    "nor",
    "not",
    "only",
    "own",
    "same",
    "so",
    "than",
    "too",
    "very",
    "s",
    "t",
    "can",
    "will",
    "just",
    "don",
    "don't",
    "should",
    "should've",
    "now",
    "d",
    "ll",
    "m",
    "o",
    "re",
    "ve",
    "y",
    "ain",
    "aren",
    "aren't",
    "couldn",
    "couldn't",
    "didn",
    "didn't",
    "doesn",
    "doesn't",
    "hadn",
    "hadn't",
    "hasn",
    "hasn't",
    "haven",
    "haven't",
    "isn",
    "isn't",
    "ma",
    "mightn",
    "mightn't",
    "mustn",
    "mustn't",
    "needn",
    "needn't",
    "shan",
    "shan't",
    "shouldn",
    "shouldn't",
    "wasn",
    "wasn't",
    "weren",
    "weren't",
    "won",
    "won't",
    "wouldn",
    "wouldn't",
];

/// Languages with a Snowball stemmer (the set FastEmbed's Bm25 accepts).
pub const LANGUAGES: &[&str] = &[
    "arabic",
    "danish",
    "dutch",
    "english",
    "finnish",
    "french",
    "german",
    "greek",
    "hungarian",
    "italian",
    "norwegian",
    "portuguese",
    "romanian",
    "russian",
    "spanish",
    "swedish",
    "tamil",
    "turkish",
];

fn algorithm(language: &str) -> Option<Algorithm> {
    Some(match language {
        "arabic" => Algorithm::Arabic,
        "danish" => Algorithm::Danish,
        "dutch" => Algorithm::Dutch,
        "english" => Algorithm::English,
        "finnish" => Algorithm::Finnish,
        "french" => Algorithm::French,
        "german" => Algorithm::German,
        "greek" => Algorithm::Greek,
        "hungarian" => Algorithm::Hungarian,
        "italian" => Algorithm::Italian,
        "norwegian" => Algorithm::Norwegian,
        "portuguese" => Algorithm::Portuguese,
        "romanian" => Algorithm::Romanian,
        "russian" => Algorithm::Russian,
        "spanish" => Algorithm::Spanish,
        "swedish" => Algorithm::Swedish,
        "tamil" => Algorithm::Tamil,
        "turkish" => Algorithm::Turkish,
        _ => return None,
    })
}

/// Sparse vectors of n rows: row i owns `indices/values[indptr[i]..indptr[i+1]]`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Csr {
    pub indptr: Vec<i64>,
    pub indices: Vec<u32>,
    pub values: Vec<f32>,
}

impl Csr {
    pub fn rows(&self) -> usize {
        self.indptr.len().saturating_sub(1)
    }

    /// Row i as (indices, values).
    pub fn row(&self, i: usize) -> (&[u32], &[f32]) {
        let (a, b) = (self.indptr[i] as usize, self.indptr[i + 1] as usize);
        (&self.indices[a..b], &self.values[a..b])
    }
}

/// MurmurHash3 x86_32 (Austin Appleby's reference algorithm), the hash of `mmh3.hash`.
pub fn murmur3_x86_32(data: &[u8], seed: u32) -> u32 {
    const C1: u32 = 0xcc9e_2d51;
    const C2: u32 = 0x1b87_3593;
    #[inline(always)]
    fn mix(k: u32) -> u32 {
        k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2)
    }
    let mut h = seed;
    let mut blocks = data.chunks_exact(4);
    for block in &mut blocks {
        let k = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        h ^= mix(k);
        h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
    }
    let tail = blocks.remainder();
    if !tail.is_empty() {
        let mut k = 0u32;
        for (i, &byte) in tail.iter().enumerate() {
            k |= (byte as u32) << (8 * i);
        }
        h ^= mix(k);
    }
    // The reference mixes the length in as a 32-bit value.
    h ^= data.len() as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The sparse index of a stemmed token: `abs(mmh3.hash(token))` (2**31 for i32::MIN).
#[inline]
pub fn token_id(token: &str) -> u32 {
    (murmur3_x86_32(token.as_bytes(), 0) as i32).unsigned_abs()
}

/// Python's `\w` for str patterns: letters (L*), numbers (N*) and `_`.
#[inline]
fn is_word(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphanumeric() || c == '_';
    }
    matches!(
        get_general_category(c),
        Gc::UppercaseLetter
            | Gc::LowercaseLetter
            | Gc::TitlecaseLetter
            | Gc::ModifierLetter
            | Gc::OtherLetter
            | Gc::DecimalNumber
            | Gc::LetterNumber
            | Gc::OtherNumber
    )
}

/// Calls `f` with each lowercased token of `text`, in order.
///
/// FastEmbed lowercases the whole text (after turning non-word characters into spaces)
/// and then splits on non-word characters. Lowercasing each run of word characters on
/// its own is the same: the context of a final sigma never crosses a space. A run's
/// lowercase can hold non-word characters (`İ` becomes `i` + U+0307), which split it.
fn for_each_token(text: &str, lower: &mut String, mut f: impl FnMut(&str)) {
    let bytes = text.as_bytes();
    let n = bytes.len();
    // The word character at byte i (a char boundary) and its length, if it is one.
    let word_at = |i: usize| -> Option<usize> {
        let b = bytes[i];
        if b < 0x80 {
            return ASCII_WORD[b as usize].then_some(1);
        }
        let c = text[i..].chars().next()?;
        is_word(c).then(|| c.len_utf8())
    };
    let mut i = 0;
    while i < n {
        let Some(len) = word_at(i) else {
            // Skip one non-word character.
            i += text[i..].chars().next().map_or(1, char::len_utf8);
            continue;
        };
        let start = i;
        let mut ascii = len == 1;
        i += len;
        while i < n {
            match word_at(i) {
                Some(len) => {
                    ascii &= len == 1;
                    i += len;
                }
                None => break,
            }
        }
        let run = &text[start..i];
        if ascii {
            lower.clear();
            lower.push_str(run);
            lower.make_ascii_lowercase();
            f(lower);
        } else {
            let lowered = run.to_lowercase();
            for piece in lowered.split(|c: char| !is_word(c)) {
                if !piece.is_empty() {
                    f(piece);
                }
            }
        }
    }
}

/// `\w` over ASCII: letters, digits and `_`.
static ASCII_WORD: [bool; 128] = {
    let mut t = [false; 128];
    let mut i = 0;
    while i < 128 {
        let c = i as u8;
        t[i] = c.is_ascii_alphanumeric() || c == b'_';
        i += 1;
    }
    t
};

/// FxHash (the rustc hasher): keys here are short words and 32-bit ids, where SipHash
/// costs more than the rest of the work.
#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes([
                c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7],
            ]));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut buf = [0u8; 8];
            buf[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(buf));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// A kept token: its stem is `arena[start..end]`, its sparse index `id`.
#[derive(Clone, Copy)]
struct Tok {
    start: u32,
    end: u32,
    id: u32,
}

/// Per-task reusable state. Words repeat (Zipf), so each lowercased word's fate (dropped,
/// or stem + id) is cached: most tokens cost one hash lookup instead of a Snowball run.
#[derive(Default)]
struct Scratch {
    lower: String,
    arena: String,
    cache: FxMap<Box<str>, Option<Tok>>,
    toks: Vec<Tok>,
    slots: FxMap<u32, usize>,
    entries: Vec<(u32, u32, u32)>, // (token id, index in toks of first occurrence, count)
}

/// The cache is dropped when it grows past these (between documents).
const CACHE_MAX_WORDS: usize = 200_000;
const CACHE_MAX_BYTES: usize = 8 << 20;

/// BM25 document/query encoder with FastEmbed `Qdrant/bm25` semantics.
pub struct Bm25 {
    language: String,
    stemmer: Stemmer,
    stopwords: HashSet<String>,
    k: f64,
    b: f64,
    avg_len: f64,
    token_max_length: usize,
}

/// The settings a [`Bm25`] encoder is built from.
pub struct Bm25Params<'a> {
    pub language: &'a str,
    pub k: f64,
    pub b: f64,
    pub avg_len: f64,
    /// `None` uses the English list for English and fails for other languages (qflume ships
    /// only the English list; pass the list FastEmbed uses for that language).
    pub stopwords: Option<Vec<String>>,
    pub token_max_length: usize,
}

impl Bm25 {
    /// Checks `params` and builds the encoder.
    pub fn new(params: Bm25Params<'_>) -> CoreResult<Self> {
        let Bm25Params {
            language,
            k,
            b,
            avg_len,
            stopwords,
            token_max_length,
        } = params;
        let algo = algorithm(language).ok_or_else(|| {
            CoreError::InvalidArgument(format!(
                "Bm25 language {language:?} is not supported; use one of {}",
                LANGUAGES.join(", ")
            ))
        })?;
        if !(k.is_finite() && k >= 0.0) {
            return Err(CoreError::InvalidArgument(format!(
                "Bm25 k must be a finite number >= 0, got {k}"
            )));
        }
        if !(b.is_finite() && (0.0..=1.0).contains(&b)) {
            return Err(CoreError::InvalidArgument(format!(
                "Bm25 b must be between 0 and 1, got {b}"
            )));
        }
        if !(avg_len.is_finite() && avg_len > 0.0) {
            return Err(CoreError::InvalidArgument(format!(
                "Bm25 avg_len must be a finite number > 0, got {avg_len}"
            )));
        }
        if token_max_length == 0 {
            return Err(CoreError::InvalidArgument(
                "Bm25 token_max_length must be >= 1".into(),
            ));
        }
        let stopwords: HashSet<String> = match stopwords {
            Some(words) => words.iter().map(|w| w.to_lowercase()).collect(),
            None if language == "english" => {
                ENGLISH_STOPWORDS.iter().map(|w| w.to_string()).collect()
            }
            None => {
                return Err(CoreError::InvalidArgument(format!(
                    "Bm25 language {language:?}: qflume ships only the English stopword list; \
                     pass stopwords=[...] (the {language}.txt list of Qdrant/bm25 for FastEmbed \
                     parity) or stopwords=[] for none"
                )))
            }
        };
        Ok(Bm25 {
            language: language.to_string(),
            stemmer: Stemmer::create(algo),
            stopwords,
            k,
            b,
            avg_len,
            token_max_length,
        })
    }

    pub fn language(&self) -> &str {
        &self.language
    }

    pub fn params(&self) -> (f64, f64, f64) {
        (self.k, self.b, self.avg_len)
    }

    /// The stems of `text` that count, in order (what the weights are computed from).
    pub fn tokens(&self, text: &str) -> Vec<String> {
        let mut st = Scratch::default();
        self.stem_into(text, &mut st);
        st.toks
            .iter()
            .map(|t| st.arena[t.start as usize..t.end as usize].to_string())
            .collect()
    }

    /// What becomes of one lowercased token: None if dropped, else its stem and id.
    fn resolve(&self, token: &str, arena: &mut String) -> Option<Tok> {
        if token == "_" || self.stopwords.contains(token) {
            return None;
        }
        let too_long = if token.is_ascii() {
            token.len() > self.token_max_length
        } else {
            token.chars().count() > self.token_max_length
        };
        if too_long {
            return None;
        }
        let stem = self.stemmer.stem(token);
        if stem.is_empty() {
            return None;
        }
        let start = arena.len() as u32;
        arena.push_str(&stem);
        Some(Tok {
            start,
            end: arena.len() as u32,
            id: token_id(&stem),
        })
    }

    fn stem_into(&self, text: &str, st: &mut Scratch) {
        st.toks.clear();
        if st.cache.len() > CACHE_MAX_WORDS || st.arena.len() > CACHE_MAX_BYTES {
            st.cache.clear();
            st.arena.clear();
        }
        let Scratch {
            lower,
            arena,
            cache,
            toks,
            ..
        } = st;
        for_each_token(text, lower, |token| {
            let tok = match cache.get(token) {
                Some(hit) => *hit,
                None => {
                    let tok = self.resolve(token, arena);
                    cache.insert(token.into(), tok);
                    tok
                }
            };
            if let Some(tok) = tok {
                toks.push(tok);
            }
        });
    }

    #[inline]
    fn weight(&self, count: u32, doc_len: usize) -> f32 {
        // The operations in FastEmbed's order, in f64, so the f32 result is identical.
        let tf = count as f64;
        let mut w = tf * (self.k + 1.0);
        w /= tf + self.k * (1.0 - self.b + self.b * doc_len as f64 / self.avg_len);
        w as f32
    }

    fn doc_row(&self, text: &str, st: &mut Scratch, out: &mut Piece) {
        self.stem_into(text, st);
        let doc_len = st.toks.len();
        st.slots.clear();
        st.entries.clear();
        let mut collided = false;
        for (ti, tok) in st.toks.iter().enumerate() {
            match st.slots.entry(tok.id) {
                Entry::Occupied(e) => {
                    let entry = &mut st.entries[*e.get()];
                    let first = st.toks[entry.1 as usize];
                    // Same cached stem, or a different stem text with the same id.
                    if first.start == tok.start
                        || st.arena[first.start as usize..first.end as usize]
                            == st.arena[tok.start as usize..tok.end as usize]
                    {
                        entry.2 += 1;
                    } else {
                        collided = true;
                    }
                }
                Entry::Vacant(e) => {
                    e.insert(st.entries.len());
                    st.entries.push((tok.id, ti as u32, 1));
                }
            }
        }
        if collided {
            return self.doc_row_colliding(st, out);
        }
        for &(id, _, count) in &st.entries {
            out.indices.push(id);
            out.values.push(self.weight(count, doc_len));
        }
        out.end_row();
    }

    /// Two different stems of one document share a token id (rare: ids are 31-bit hashes).
    /// FastEmbed counts stems, then writes id -> weight into a dict in first-occurrence
    /// order of the stems, so the later stem's weight wins at the earlier stem's place.
    fn doc_row_colliding(&self, st: &Scratch, out: &mut Piece) {
        let doc_len = st.toks.len();
        let mut order: Vec<(&str, u32)> = Vec::new();
        let mut counts: HashMap<&str, u32> = HashMap::new();
        for tok in &st.toks {
            let stem = &st.arena[tok.start as usize..tok.end as usize];
            let c = counts.entry(stem).or_insert(0);
            if *c == 0 {
                order.push((stem, tok.id));
            }
            *c += 1;
        }
        let mut pos: HashMap<u32, usize> = HashMap::new();
        for (stem, id) in order {
            let w = self.weight(counts[stem], doc_len);
            match pos.entry(id) {
                Entry::Occupied(e) => out.values[*e.get()] = w,
                Entry::Vacant(e) => {
                    e.insert(out.indices.len());
                    out.indices.push(id);
                    out.values.push(w);
                }
            }
        }
        out.end_row();
    }

    fn query_row(&self, text: &str, st: &mut Scratch, out: &mut Piece) {
        self.stem_into(text, st);
        st.slots.clear();
        for tok in &st.toks {
            if let Entry::Vacant(e) = st.slots.entry(tok.id) {
                e.insert(0);
                out.indices.push(tok.id);
                out.values.push(1.0);
            }
        }
        out.end_row();
    }

    /// Document vectors (term-frequency weights), in parallel over at most `threads`
    /// tasks of the current Rayon pool (0 = the whole pool).
    pub fn embed_documents<S: AsRef<str> + Sync>(&self, texts: &[S], threads: usize) -> Csr {
        par_rows(texts.len(), threads, |i, st, out| {
            self.doc_row(texts[i].as_ref(), st, out)
        })
    }

    /// Query vectors: weight 1.0 for each distinct token.
    pub fn embed_queries<S: AsRef<str> + Sync>(&self, texts: &[S], threads: usize) -> Csr {
        par_rows(texts.len(), threads, |i, st, out| {
            self.query_row(texts[i].as_ref(), st, out)
        })
    }
}

/// A contiguous block of rows built by one task.
#[derive(Default)]
struct Piece {
    lens: Vec<i64>,
    indices: Vec<u32>,
    values: Vec<f32>,
    row_start: usize,
}

impl Piece {
    fn end_row(&mut self) {
        self.lens.push((self.indices.len() - self.row_start) as i64);
        self.row_start = self.indices.len();
    }
}

const BLOCK: usize = 32;

/// `unit(u, scratch)` for every u in 0..units, on at most `threads` Rayon tasks (0: the whole
/// pool) that each keep one scratch and take the next unit from an atomic counter; the results
/// in unit order.
fn par_units<S, T, F>(units: usize, threads: usize, unit: F) -> Vec<T>
where
    S: Default,
    T: Send,
    F: Fn(usize, &mut S) -> T + Sync,
{
    let pool = rayon::current_num_threads();
    let tasks = if threads == 0 {
        pool
    } else {
        threads.min(pool)
    }
    .min(units);
    let next = AtomicUsize::new(0);
    let work = |_| {
        let mut scratch = S::default();
        let mut done = Vec::new();
        loop {
            let u = next.fetch_add(1, Ordering::Relaxed);
            if u >= units {
                break;
            }
            done.push((u, unit(u, &mut scratch)));
        }
        done
    };
    let mut results: Vec<(usize, T)> = if tasks <= 1 {
        work(0)
    } else {
        (0..tasks).into_par_iter().flat_map_iter(work).collect()
    };
    results.sort_unstable_by_key(|(u, _)| *u);
    results.into_iter().map(|(_, t)| t).collect()
}

/// Builds n rows with `row(i, scratch, piece)`, in blocks of rows shared out by [`par_units`],
/// then joined in order.
fn par_rows<F>(n: usize, threads: usize, row: F) -> Csr
where
    F: Fn(usize, &mut Scratch, &mut Piece) + Sync,
{
    let pieces = par_units(n.div_ceil(BLOCK), threads, |blk, st: &mut Scratch| {
        let mut piece = Piece::default();
        for i in blk * BLOCK..((blk + 1) * BLOCK).min(n) {
            row(i, st, &mut piece);
        }
        piece
    });
    let nnz: usize = pieces.iter().map(|p| p.indices.len()).sum();
    let mut csr = Csr {
        indptr: Vec::with_capacity(n + 1),
        indices: Vec::with_capacity(nnz),
        values: Vec::with_capacity(nnz),
    };
    csr.indptr.push(0);
    let mut total = 0i64;
    for p in pieces {
        for len in p.lens {
            total += len;
            csr.indptr.push(total);
        }
        csr.indices.extend_from_slice(&p.indices);
        csr.values.extend_from_slice(&p.values);
    }
    csr
}

/// SPLADE pooling: for each of `batch` rows of `logits` (batch, seq, vocab), the weight of
/// vocabulary entry v is `log(1 + relu(max over unmasked positions of logits[s, v]))`.
/// Keeps weights above `threshold` (>= 0, so zeros never enter), then the `top_k` largest;
/// each row's indices come out ascending.
pub fn splade_pool(
    logits: &[f32],
    attention_mask: &[i64],
    shape: (usize, usize, usize),
    top_k: Option<usize>,
    threshold: f32,
    threads: usize,
) -> CoreResult<Csr> {
    let (batch, seq, vocab) = shape;
    let expected = batch
        .checked_mul(seq)
        .and_then(|x| x.checked_mul(vocab))
        .ok_or_else(|| CoreError::Shape(format!("SPLADE logits shape {shape:?} overflows")))?;
    if logits.len() != expected {
        return Err(CoreError::Shape(format!(
            "SPLADE logits hold {} values, shape {shape:?} needs {expected}",
            logits.len()
        )));
    }
    if attention_mask.len() != batch * seq {
        return Err(CoreError::Shape(format!(
            "SPLADE attention_mask holds {} values, logits of shape {shape:?} need ({batch}, {seq})",
            attention_mask.len()
        )));
    }
    if u32::try_from(vocab).is_err() {
        return Err(CoreError::Shape(format!(
            "SPLADE vocabulary of {vocab} entries does not fit u32 indices"
        )));
    }
    if !(threshold.is_finite() && threshold >= 0.0) {
        return Err(CoreError::InvalidArgument(format!(
            "SPLADE threshold must be a finite number >= 0, got {threshold}"
        )));
    }
    if top_k == Some(0) {
        return Err(CoreError::InvalidArgument(
            "SPLADE top_k must be >= 1 (or None for all)".into(),
        ));
    }
    Ok(par_rows_splade(batch, threads, |b, acc, cand, out| {
        acc.clear();
        acc.resize(vocab, f32::NEG_INFINITY);
        for s in 0..seq {
            if attention_mask[b * seq + s] == 0 {
                continue;
            }
            let off = (b * seq + s) * vocab;
            for (a, &x) in acc.iter_mut().zip(&logits[off..off + vocab]) {
                if x > *a {
                    *a = x;
                }
            }
        }
        cand.clear();
        for (v, &x) in acc.iter().enumerate() {
            if x > 0.0 {
                let w = x.ln_1p();
                if w > threshold {
                    cand.push((v as u32, w));
                }
            }
        }
        if let Some(k) = top_k {
            if cand.len() > k {
                cand.select_nth_unstable_by(k - 1, |x, y| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0)));
                cand.truncate(k);
                cand.sort_unstable_by_key(|c| c.0);
            }
        }
        for &(v, w) in cand.iter() {
            out.indices.push(v);
            out.values.push(w);
        }
        out.end_row();
    }))
}

type Cand = Vec<(u32, f32)>;

fn par_rows_splade<F>(n: usize, threads: usize, row: F) -> Csr
where
    F: Fn(usize, &mut Vec<f32>, &mut Cand, &mut Piece) + Sync,
{
    // One row per unit: a row is seq * vocab values of work.
    let pieces = par_units(n, threads, |i, (acc, cand): &mut (Vec<f32>, Cand)| {
        let mut piece = Piece::default();
        row(i, acc, cand, &mut piece);
        piece
    });
    let mut csr = Csr {
        indptr: vec![0],
        ..Csr::default()
    };
    for p in pieces {
        csr.indices.extend_from_slice(&p.indices);
        csr.values.extend_from_slice(&p.values);
        csr.indptr.push(csr.indices.len() as i64);
    }
    csr
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Python defaults for `language`.
    fn params(language: &str) -> Bm25Params<'_> {
        Bm25Params {
            language,
            k: 1.2,
            b: 0.75,
            avg_len: 256.0,
            stopwords: None,
            token_max_length: TOKEN_MAX_LENGTH,
        }
    }

    fn bm25() -> Bm25 {
        Bm25::new(params("english")).unwrap()
    }

    #[test]
    fn murmur3_matches_reference_vectors() {
        // Values of mmh3.hash(s) (signed) from the reference implementation.
        let cases: &[(&str, i32)] = &[
            ("", 0),
            ("a", 1009084850),
            ("ab", -1681926305),
            ("abc", -1277324294),
            ("abcd", 1139631978),
            ("hello", 613153351),
            ("foo", -156908512),
            ("The quick brown fox jumps over the lazy dog", 776992547),
            ("naïve café", 1734666806),
        ];
        for &(s, want) in cases {
            assert_eq!(murmur3_x86_32(s.as_bytes(), 0) as i32, want, "{s:?}");
            assert_eq!(token_id(s), want.unsigned_abs(), "{s:?}");
        }
    }

    #[test]
    fn tokens_follow_fastembed_rules() {
        let m = bm25();
        assert_eq!(
            m.tokens("The quick brown foxes are RUNNING, aren't they? snake_case _ x__y"),
            vec!["quick", "brown", "fox", "run", "snake_cas", "x__i"]
        );
        // Final sigma, dotted capital I, and a 41-character token that is dropped.
        let long = "a".repeat(41);
        let t = m.tokens(&format!("ΟΔΟΣ İstanbul {long} {}", "b".repeat(40)));
        assert_eq!(t[0], "οδος");
        // "i" (from "İ") is a stopword.
        assert_eq!(t[1], "stanbul");
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn document_and_query_weights() {
        let m = bm25();
        let csr = m.embed_documents(&["fox fox dog", "", "the a an"], 1);
        assert_eq!(csr.indptr, vec![0, 2, 2, 2]);
        let (idx, val) = csr.row(0);
        assert_eq!(idx, &[token_id("fox"), token_id("dog")]);
        let norm = 1.2 * (1.0 - 0.75 + 0.75 * 3.0 / 256.0);
        assert_eq!(val[0], (2.0 * 2.2 / (2.0 + norm)) as f32);
        assert_eq!(val[1], (2.2 / (1.0 + norm)) as f32);
        let q = m.embed_queries(&["fox dog fox"], 1);
        assert_eq!(q.row(0).0, &[token_id("fox"), token_id("dog")]);
        assert_eq!(q.row(0).1, &[1.0, 1.0]);
    }

    #[test]
    fn parallel_equals_serial() {
        let texts: Vec<String> = (0..1000)
            .map(|i| {
                format!(
                    "document number {i} talks about item{} and item{}",
                    i % 7,
                    i % 13
                )
            })
            .collect();
        let m = bm25();
        let serial = m.embed_documents(&texts, 1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .unwrap();
        let par = pool.install(|| m.embed_documents(&texts, 0));
        assert_eq!(serial, par);
        assert_eq!(par.rows(), 1000);
    }

    #[test]
    fn colliding_ids_keep_the_later_stems_weight() {
        // Find two distinct tokens (unchanged by stemming) with the same id.
        let m = bm25();
        let mut seen: HashMap<u32, String> = HashMap::new();
        let (a, b) = (0..1_000_000u32)
            .find_map(|i| {
                let t = format!("q{i}z");
                let id = token_id(&t);
                seen.insert(id, t.clone()).map(|prev| (prev, t))
            })
            .unwrap();
        assert_eq!(m.tokens(&format!("{a} {b}")), vec![a.clone(), b.clone()]);
        let csr = m.embed_documents(&[format!("{a} {b} {b} fox")], 1);
        let (idx, val) = csr.row(0);
        assert_eq!(idx, &[token_id(&a), token_id("fox")]);
        let norm = 1.2 * (1.0 - 0.75 + 0.75 * 4.0 / 256.0);
        assert_eq!(val[0], (2.0 * 2.2 / (2.0 + norm)) as f32);
    }

    #[test]
    fn rejects_bad_arguments() {
        assert!(Bm25::new(params("klingon")).is_err());
        assert!(Bm25::new(params("german")).is_err());
        let mut german = params("german");
        german.stopwords = Some(vec![]);
        assert!(Bm25::new(german).is_ok());
        let mut avg_len = params("english");
        avg_len.avg_len = 0.0;
        assert!(Bm25::new(avg_len).is_err());
        let mut b = params("english");
        b.b = 1.5;
        assert!(Bm25::new(b).is_err());
    }

    #[test]
    fn splade_pools_over_the_mask() {
        // batch 2, seq 3, vocab 4; position 2 of row 0 is padding with big logits.
        let logits = vec![
            1.0, -1.0, 0.5, 0.0, //
            2.0, -3.0, 0.1, 0.0, //
            9.0, 9.0, 9.0, 9.0, //
            -1.0, 3.0, 0.0, 0.2, //
            -1.0, 1.0, 0.0, 0.1, //
            -1.0, 1.0, 0.0, 0.1,
        ];
        let mask = vec![1, 1, 0, 1, 1, 1];
        let csr = splade_pool(&logits, &mask, (2, 3, 4), None, 0.0, 1).unwrap();
        assert_eq!(csr.indptr, vec![0, 2, 4]);
        assert_eq!(csr.row(0).0, &[0, 2]);
        assert_eq!(csr.row(0).1, &[2f32.ln_1p(), 0.5f32.ln_1p()]);
        assert_eq!(csr.row(1).0, &[1, 3]);
        let top = splade_pool(&logits, &mask, (2, 3, 4), Some(1), 0.0, 1).unwrap();
        assert_eq!(top.indices, vec![0, 1]);
        let thr = splade_pool(&logits, &mask, (2, 3, 4), None, 0.5, 1).unwrap();
        assert_eq!(thr.indices, vec![0, 1]);
        assert!(splade_pool(&logits, &mask[..5], (2, 3, 4), None, 0.0, 1).is_err());
        assert!(splade_pool(&logits, &mask, (2, 3, 4), Some(0), 0.0, 1).is_err());
    }
}
