//! Structure-aware, size-bounded chunking with offsets.
//!
//! A chunk is a span of the input, trimmed of surrounding whitespace, whose
//! length (in characters, or in tokens of a Hugging Face tokenizer counted
//! without special tokens) never exceeds the limit. Chunks are cut greedily:
//! from a chunk's start, the window reaches as far as the limit allows, and the
//! cut goes at the last boundary of the best kind inside the window. Kinds, best
//! first: a section heading (Markdown ATX `#` outside ``` fences, or a
//! reStructuredText title: a text line under/overlined by one repeated
//! punctuation character), a blank line, a line end, a sentence end, other
//! whitespace. A word is split only when a single word exceeds the window, and
//! never inside a UTF-8 character.
//!
//! The work is O(n) over UTF-8 bytes: one forward pass (memchr) classifies the
//! newlines (heading detection needs the fence state, hence forward), windows
//! in character mode are found by counting non-continuation bytes (free for
//! ASCII), and in token mode the document is tokenized once and cut on the
//! token offsets.

use crate::core::error::{CoreError, CoreResult};
use crate::core::hash::{content_hash, point_id, HASH_LEN};
use std::io::Read;
use std::path::{Path, PathBuf};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::Tokenizer;

/// Boundary kinds, weakest first (so `max` picks the best).
const LVL_LINE: u8 = 1;
const LVL_BLANK: u8 = 2;
/// A blank line before a line that starts at column 0 or further left than
/// the text before it (a top-level definition, the end of an indented block),
/// or two blank lines: entries that documents separate more strongly than
/// paragraphs.
const LVL_BREAK: u8 = 3;
const LVL_HEADING: u8 = 4;

/// Whitespace as Python's `str.isspace` sees it (Unicode White_Space plus the
/// ASCII separators 0x1C..0x1F), so Python's `strip()` agrees with the trimming.
#[inline]
pub fn is_ws(c: char) -> bool {
    if c.is_ascii() {
        is_ws_byte(c as u8)
    } else {
        c.is_whitespace()
    }
}

#[inline]
fn is_ws_byte(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c | 0x1c..=0x1f)
}

#[inline]
fn is_char_start(b: u8) -> bool {
    (b as i8) >= -0x40
}

/// The char starting at byte `i` (a char boundary < len).
#[inline]
fn char_at(text: &str, i: usize) -> char {
    text[i..].chars().next().unwrap_or('\0')
}

const LO7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
const ONES: u64 = 0x0101_0101_0101_0101;

#[inline]
fn load_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Number of chars in `bytes`: all bytes minus UTF-8 continuation bytes
/// (0b10xx_xxxx), counted eight at a time.
#[inline]
fn count_chars(bytes: &[u8]) -> usize {
    let mut cont = 0usize;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let v = load_u64(w);
        // bit 7 set and bit 6 clear, moved to bit 0 of each byte
        cont += ((v >> 7) & !(v >> 6) & ONES).count_ones() as usize;
    }
    cont += words
        .remainder()
        .iter()
        .filter(|&&b| !is_char_start(b))
        .count();
    bytes.len() - cont
}

/// Positions of b'\n' in `bytes`, found eight bytes at a time (lines are
/// short, so a SIMD search restarted per line costs more).
struct Newlines<'a> {
    bytes: &'a [u8],
    base: usize,
    mask: u64,
}

impl<'a> Newlines<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            base: 0,
            mask: 0,
        }
    }
}

impl Iterator for Newlines<'_> {
    type Item = usize;
    #[inline]
    fn next(&mut self) -> Option<usize> {
        loop {
            if self.mask != 0 {
                let bit = self.mask.trailing_zeros() as usize;
                self.mask &= self.mask - 1;
                return Some(self.base - 8 + bit / 8);
            }
            let n = self.bytes.len();
            if self.base + 8 <= n {
                let x = load_u64(&self.bytes[self.base..]) ^ (ONES * b'\n' as u64);
                // Exact zero-byte mask: 0x80 in each byte of x that is zero.
                self.mask = !(((x & LO7).wrapping_add(LO7)) | x | LO7);
                self.base += 8;
            } else {
                while self.base < n {
                    let i = self.base;
                    self.base += 1;
                    if self.bytes[i] == b'\n' {
                        self.mask = 0;
                        // Keep `base - 8 + bit / 8` arithmetic out of the tail.
                        return Some(i);
                    }
                }
                return None;
            }
        }
    }
}

/// How a chunk's size is measured.
enum Limit {
    Chars(usize),
    Tokens(Box<TokenLimit>),
}

struct TokenLimit {
    tokenizer: Tokenizer,
    max: usize,
    source_name: String,
    /// The tokenizer splits words on whitespace with context-free
    /// normalization: a span cut at whitespace re-encodes to exactly its own
    /// tokens, so only chunks cut inside a word need re-counting.
    whitespace_exact: bool,
    /// Native path for BERT WordPiece tokenizers on plain-ASCII text.
    fast: Option<FastWordPiece>,
}

/// A native re-implementation of HF's BERT pipeline (BertNormalizer,
/// BertPreTokenizer, WordPiece) for plain-ASCII text (printable ASCII, tab,
/// CR, LF) that holds none of the added tokens. On that text it yields exactly
/// HF's tokens and offsets (tests compare the two on real documents), several
/// times faster: HF allocates alignment buffers per char. Any other text goes
/// through HF tokenizers itself.
struct FastWordPiece {
    /// Vocabulary entries that start a word, and continuation entries with
    /// their prefix stripped.
    heads: std::collections::HashSet<Vec<u8>, FnvBuild>,
    tails: std::collections::HashSet<Vec<u8>, FnvBuild>,
    lowercase: bool,
    max_word_chars: usize,
    longest: usize,
    /// Added tokens (lowercased); a segment holding one goes to HF.
    added: Vec<Vec<u8>>,
}

#[derive(Default, Clone, Copy)]
struct FnvBuild;

struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
}

impl std::hash::BuildHasher for FnvBuild {
    type Hasher = Fnv;
    fn build_hasher(&self) -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl FastWordPiece {
    fn from_tokenizer(tok: &Tokenizer) -> Option<Self> {
        use tokenizers::models::ModelWrapper;
        use tokenizers::Model;
        let lowercase = match tok.get_normalizer() {
            Some(NormalizerWrapper::BertNormalizer(n)) => n.lowercase,
            _ => return None,
        };
        if !matches!(
            tok.get_pre_tokenizer(),
            Some(PreTokenizerWrapper::BertPreTokenizer(_))
        ) {
            return None;
        }
        let ModelWrapper::WordPiece(wp) = tok.get_model() else {
            return None;
        };
        let prefix = wp.continuing_subword_prefix.as_bytes();
        let mut heads = std::collections::HashSet::with_hasher(FnvBuild);
        let mut tails = std::collections::HashSet::with_hasher(FnvBuild);
        let mut longest = 0;
        for (piece, _) in wp.get_vocab() {
            let b = piece.as_bytes();
            if !prefix.is_empty() && b.starts_with(prefix) {
                longest = longest.max(b.len() - prefix.len());
                tails.insert(b[prefix.len()..].to_vec());
            } else {
                longest = longest.max(b.len());
                heads.insert(b.to_vec());
            }
            // With an empty prefix both kinds are the same entries.
            if prefix.is_empty() {
                tails.insert(b.to_vec());
            }
        }
        let added = tok
            .get_added_tokens_decoder()
            .values()
            .map(|t| t.content.to_ascii_lowercase().into_bytes())
            .filter(|c| !c.is_empty())
            .collect();
        Some(Self {
            heads,
            tails,
            lowercase,
            max_word_chars: wp.max_input_chars_per_word,
            longest,
            added,
        })
    }

    /// Whether `seg` is text this path handles exactly.
    fn handles(&self, seg: &[u8]) -> bool {
        if !seg
            .iter()
            .all(|&b| (0x20..0x7f).contains(&b) || matches!(b, b'\t' | b'\n' | b'\r'))
        {
            return false;
        }
        if self.added.is_empty() {
            return true;
        }
        let lower = seg.to_ascii_lowercase();
        !self
            .added
            .iter()
            .any(|a| memchr::memmem::find(&lower, a).is_some())
    }

    /// Appends the token offsets of plain-ASCII `seg` (shifted by `base`).
    fn tokenize(&self, seg: &[u8], base: usize, out: &mut Vec<(usize, usize)>) {
        let mut word = Vec::with_capacity(64);
        let mut i = 0;
        let n = seg.len();
        while i < n {
            let b = seg[i];
            if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                i += 1;
            } else if b.is_ascii_punctuation() {
                // Every ASCII punctuation char is a word of its own; all are
                // in BERT vocabularies, else [UNK]: one token either way.
                out.push((base + i, base + i + 1));
                i += 1;
            } else {
                let start = i;
                while i < n
                    && !matches!(seg[i], b' ' | b'\t' | b'\n' | b'\r')
                    && !seg[i].is_ascii_punctuation()
                {
                    i += 1;
                }
                word.clear();
                word.extend_from_slice(&seg[start..i]);
                if self.lowercase {
                    word.make_ascii_lowercase();
                }
                self.word_pieces(&word, base + start, out);
            }
        }
    }

    fn word_pieces(&self, word: &[u8], base: usize, out: &mut Vec<(usize, usize)>) {
        let n = word.len();
        if n > self.max_word_chars {
            out.push((base, base + n));
            return;
        }
        let mark = out.len();
        let mut start = 0;
        while start < n {
            let mut end = n.min(start + self.longest);
            let set = if start == 0 { &self.heads } else { &self.tails };
            while end > start && !set.contains(&word[start..end]) {
                end -= 1;
            }
            if end == start {
                // No piece matches: the whole word is one [UNK].
                out.truncate(mark);
                out.push((base, base + n));
                return;
            }
            out.push((base + start, base + end));
            start = end;
        }
    }
}

/// A configured chunker. Cheap to share between threads.
pub struct Chunker {
    limit: Limit,
    overlap: usize,
}

/// Carried from one block of a stream to the next.
#[derive(Clone, Copy, Default, Debug)]
pub struct StreamState {
    /// Inside a ``` fence at the start of the text.
    pub in_fence: bool,
    /// What the line before the text opened (its option lines continue a directive).
    header: Header,
}

/// The result of chunking part of a stream.
pub struct Partial {
    /// Byte spans, trimmed.
    pub spans: Vec<(usize, usize)>,
    /// Where the next block must start (a line start at or before the next chunk).
    pub keep_from: usize,
    /// Where, inside the kept text, the next chunk starts.
    pub next_start: usize,
    /// End of the last chunk, relative to the text (overlap must pass it).
    pub prev_end: usize,
    /// State at `keep_from`.
    pub state: StreamState,
}

/// One newline and the kind of boundary it is.
#[derive(Clone, Copy)]
struct Nl {
    /// The cut: the newline, or the CR of a CRLF.
    pos: usize,
    /// Start of the following line.
    next_line: usize,
    level: u8,
    /// Fence state of the line that follows this newline.
    fence_after: bool,
    /// Header state the line that follows this newline starts with.
    header_after: Header,
}

#[derive(Clone, Copy, Default)]
struct LineInfo {
    text: bool, // starts at column 0 with a non-space char and is no adornment
    blank: bool,
    indent: usize,   // bytes of leading whitespace
    directive: bool, // reST explicit markup: `.. ` after the indent
    adorn: u8,       // the repeated punctuation char, 0 if none
}

fn classify_line(line: &[u8]) -> LineInfo {
    let mut info = LineInfo::default();
    let first_non_ws = line.iter().position(|&b| !is_ws_byte(b));
    let Some(first) = first_non_ws else {
        info.blank = true;
        return info;
    };
    if first == 0 && line[0].is_ascii_punctuation() {
        let c = line[0];
        let mut end = line.len();
        while end > 0 && is_ws_byte(line[end - 1]) {
            end -= 1;
        }
        if end >= 3 && line[..end].iter().all(|&b| b == c) {
            info.adorn = c;
            return info;
        }
    }
    info.text = first == 0;
    info.indent = first;
    info.directive = line[first..].starts_with(b".. ");
    info
}

fn is_atx(line: &[u8]) -> bool {
    let hashes = line.iter().take_while(|&&b| b == b'#').count();
    (1..=6).contains(&hashes)
        && line
            .get(hashes)
            .is_none_or(|&b| matches!(b, b' ' | b'\t' | b'\r'))
}

fn is_fence(line: &[u8]) -> bool {
    line.starts_with(b"```") || line.starts_with(b"~~~")
}

/// What the last non-blank line opened.
#[derive(Clone, Copy, Default, Debug)]
enum Header {
    #[default]
    None,
    Heading,
    /// reST explicit markup at this indent.
    Directive(usize),
}

/// Classifies every newline of `text` (one forward pass).
fn classify_newlines(text: &[u8], state: StreamState) -> Vec<Nl> {
    let mut nls: Vec<Nl> = Vec::with_capacity(text.len() / 40 + 1);
    let mut in_fence = state.in_fence;
    // The last three lines (most recent last) for title detection.
    let mut hist: [LineInfo; 3] = [LineInfo::default(); 3];
    let mut hist_fence = [true; 3]; // "no line" counts as not a title candidate
    let mut line_start = 0usize;
    let mut line_no = 0usize;
    // The newline ending the last non-blank line, and the blank lines since.
    // Their lookahead stays within two lines, as the title rule's does.
    let mut content_nl: Option<usize> = None;
    let mut content_indent = 0usize;
    let mut blank_run = 0usize;
    let mut header = state.header;
    let mut iter = Newlines::new(text);
    loop {
        let nl = iter.next();
        let line_end = nl.unwrap_or(text.len());
        let line = &text[line_start..line_end];
        let info = classify_line(line);
        let fence_line = is_fence(line);
        let in_code = in_fence || fence_line;
        let atx = !in_code && is_atx(line);
        // The newline ending the previous line gets its level from this line.
        if line_no > 0 {
            let level = if atx {
                LVL_HEADING
            } else if info.blank {
                LVL_BLANK
            } else {
                LVL_LINE
            };
            if let Some(last) = nls.last_mut() {
                last.level = level;
            }
        }
        if info.blank {
            blank_run += 1;
        }
        let is_break = if info.blank {
            blank_run == 2
        } else {
            blank_run == 1 && (info.indent == 0 || info.indent < content_indent)
        };
        if is_break && !in_code {
            if let Some(j) = content_nl {
                nls[j].level = nls[j].level.max(LVL_BREAK);
            }
        }
        if !info.blank {
            // A heading, or a directive before its indented body, keeps with
            // what follows: a cut there would leave a chunk of one line.
            let keep = match header {
                Header::None => false,
                Header::Heading => true,
                Header::Directive(indent) => info.indent > indent,
            };
            if keep && blank_run == 1 && !in_code {
                if let Some(j) = content_nl {
                    nls[j].level = LVL_LINE;
                }
            }
            header = match header {
                _ if in_code => Header::None,
                _ if atx => Header::Heading,
                _ if info.directive => Header::Directive(info.indent),
                // Deeper lines right under a directive (option lines such as
                // `:maxdepth: 2`, a signature's next line) belong to it.
                Header::Directive(indent) if blank_run == 0 && info.indent > indent => header,
                _ => Header::None,
            };
            blank_run = 0;
            content_indent = info.indent;
        }
        // A reStructuredText title: this line is an adornment, the previous one
        // text, and before that a blank line, the start, or an overline.
        if info.adorn != 0 && !in_code && line_no >= 1 && hist[2].text && !hist_fence[2] {
            let before = if line_no >= 2 { Some(hist[1]) } else { None };
            let overline = before.is_some_and(|b| b.adorn == info.adorn);
            let ok = overline || before.is_none_or(|b| b.blank);
            if ok {
                // nls[k] ends line k; the title is line_no-1, its overline line_no-2.
                let title_line = if overline { line_no - 2 } else { line_no - 1 };
                if title_line >= 1 {
                    nls[title_line - 1].level = LVL_HEADING;
                }
                header = Header::Heading;
            }
        }
        if fence_line {
            in_fence = !in_fence;
        }
        hist = [hist[1], hist[2], info];
        hist_fence = [hist_fence[1], hist_fence[2], in_code];
        match nl {
            Some(p) => {
                // With CRLF the cut goes before the CR.
                let cut = if p > 0 && text[p - 1] == b'\r' {
                    p - 1
                } else {
                    p
                };
                if !info.blank {
                    content_nl = Some(nls.len());
                }
                nls.push(Nl {
                    pos: cut,
                    next_line: p + 1,
                    level: LVL_LINE,
                    fence_after: in_fence,
                    // After a blank line nothing continues a directive.
                    header_after: if info.blank { Header::None } else { header },
                });
                line_start = p + 1;
                line_no += 1;
            }
            None => break,
        }
    }
    nls
}

/// One document being chunked.
struct Doc<'a> {
    text: &'a str,
    bytes: &'a [u8],
    ascii: bool,
    nls: Vec<Nl>,
    /// Token byte offsets (token mode).
    tokens: Vec<(usize, usize)>,
}

impl<'a> Doc<'a> {
    fn skip_ws(&self, mut i: usize) -> usize {
        let n = self.bytes.len();
        while i < n {
            let b = self.bytes[i];
            if b < 0x80 {
                if !is_ws_byte(b) {
                    return i;
                }
                i += 1;
            } else {
                let c = char_at(self.text, i);
                if !c.is_whitespace() {
                    return i;
                }
                i += c.len_utf8();
            }
        }
        n
    }

    /// End of the content of `[s, c)` with trailing whitespace removed.
    fn trim_end(&self, s: usize, c: usize) -> usize {
        let t = self.text[s..c].trim_end_matches(is_ws);
        s + t.len()
    }

    /// Byte position `k` chars after `s` (or the end).
    fn advance_chars(&self, s: usize, k: usize) -> usize {
        let n = self.bytes.len();
        if self.ascii {
            return (s + k).min(n);
        }
        let mut i = s;
        let mut left = k;
        // Whole blocks while they surely fit.
        while left >= 64 && i + 64 <= n {
            let c = count_chars(&self.bytes[i..i + 64]);
            if c > left {
                break;
            }
            left -= c;
            i += 64;
            // Stay on a char boundary: count_chars of the next block counts
            // chars starting in it, so continuation bytes at its head belong
            // to a char already counted.
        }
        while i < n {
            if is_char_start(self.bytes[i]) {
                if left == 0 {
                    return i;
                }
                left -= 1;
            }
            i += 1;
        }
        n
    }

    /// Byte position `k` chars before `e`, not before `floor`.
    fn back_chars(&self, e: usize, k: usize, floor: usize) -> usize {
        if self.ascii {
            return e.saturating_sub(k).max(floor);
        }
        let mut i = e;
        let mut left = k;
        while i > floor && left > 0 {
            i -= 1;
            if is_char_start(self.bytes[i]) {
                left -= 1;
            }
        }
        while i > floor && !is_char_start(self.bytes[i]) {
            i -= 1;
        }
        i
    }

    /// First word start in `[t, e)`: a non-space char preceded by a space.
    fn word_start_from(&self, t: usize, e: usize) -> Option<usize> {
        let mut prev_ws = t == 0 || {
            let before = self.text[..t].chars().next_back().unwrap_or(' ');
            is_ws(before)
        };
        for (i, c) in self.text[t..e].char_indices() {
            let ws = is_ws(c);
            if !ws && prev_ws {
                return Some(t + i);
            }
            prev_ws = ws;
        }
        None
    }

    /// Best cut in `(lo, w]`: heading, blank line, line end, sentence end, space,
    /// else `w` itself (a word longer than the window).
    fn find_cut(&self, lo: usize, w: usize) -> (usize, bool) {
        let first = self.nls.partition_point(|nl| nl.pos <= lo);
        let mut best_level = 0u8;
        let mut best_pos = 0usize;
        for nl in &self.nls[first..] {
            if nl.pos > w {
                break;
            }
            if nl.level >= best_level {
                best_level = nl.level;
                best_pos = nl.pos;
            }
        }
        if best_level > 0 {
            return (best_pos, true);
        }
        // No newline: scan back from w for a sentence end, noting the last space.
        let n = self.bytes.len();
        let mut ws_cut: Option<usize> = None;
        let mut p = w.min(n);
        // `p` is a candidate cut: text[p] is whitespace (or p == n).
        let mut next_is_ws = p == n || is_ws(char_at(self.text, p));
        while p > lo {
            // Step to the char before p.
            let mut q = p - 1;
            while q > lo && !is_char_start(self.bytes[q]) {
                q -= 1;
            }
            if !is_char_start(self.bytes[q]) {
                break;
            }
            let c = char_at(self.text, q);
            if next_is_ws && p < n && ws_cut.is_none() && !is_ws(c) {
                ws_cut = Some(p);
            }
            if matches!(c, '。' | '！' | '？') && p <= w {
                return (p, true);
            }
            if next_is_ws && matches!(c, '.' | '!' | '?') && p < n {
                return (p, true);
            }
            next_is_ws = is_ws(c);
            p = q;
        }
        match ws_cut {
            Some(c) => (c, true),
            None => (w, false),
        }
    }
}

/// Texts are tokenized in segments of about this many bytes, split at
/// whitespace: HF tokenizers slow down on long inputs (their per-char
/// alignment buffers grow with the input), measured ~1.8x faster on the
/// python3.11-doc corpus.
const TOKEN_SEGMENT: usize = 8 * 1024;

/// Encoded token offsets of `text` (bytes), without special tokens.
fn token_offsets(tl: &TokenLimit, text: &str) -> CoreResult<Vec<(usize, usize)>> {
    let bytes = text.as_bytes();
    let mut offs: Vec<(usize, usize)> = Vec::with_capacity(text.len() / 4 + 1);
    let mut start = 0usize;
    while start < bytes.len() {
        let end = segment_end(bytes, start);
        match &tl.fast {
            Some(fast) if fast.handles(&bytes[start..end]) => {
                fast.tokenize(&bytes[start..end], start, &mut offs);
            }
            Some(fast) => {
                // Line by line: plain lines natively, the others through HF
                // (lines end at whitespace, so the tokens are the same).
                let mut ls = start;
                while ls < end {
                    let le = memchr::memchr(b'\n', &bytes[ls..end]).map_or(end, |p| ls + p + 1);
                    if fast.handles(&bytes[ls..le]) {
                        fast.tokenize(&bytes[ls..le], ls, &mut offs);
                    } else {
                        hf_offsets(tl, text, ls, le, &mut offs)?;
                    }
                    ls = le;
                }
            }
            None => hf_offsets(tl, text, start, end, &mut offs)?,
        }
        start = end;
    }
    // Offsets are monotone for real tokenizers; make sure of it so binary
    // searches hold.
    let mut last = 0usize;
    for o in offs.iter_mut() {
        o.0 = o.0.max(last).min(text.len());
        o.1 = o.1.max(o.0).min(text.len());
        last = o.0;
    }
    Ok(offs)
}

/// Appends HF tokenizers' offsets of `text[start..end]`.
fn hf_offsets(
    tl: &TokenLimit,
    text: &str,
    start: usize,
    end: usize,
    offs: &mut Vec<(usize, usize)>,
) -> CoreResult<()> {
    let enc = tl
        .tokenizer
        .encode(&text[start..end], false)
        .map_err(|e| CoreError::Tokenizer {
            source_name: tl.source_name.clone(),
            detail: e.to_string(),
        })?;
    offs.extend(
        enc.get_offsets()
            .iter()
            .map(|&(a, b)| (a + start, b + start)),
    );
    Ok(())
}

/// End of the segment starting at `start`: just after a newline (else a
/// space) near `start + TOKEN_SEGMENT`, or the end of the text. Segments
/// never split a word, so whitespace-splitting tokenizers give the same
/// tokens as on the whole text.
fn segment_end(bytes: &[u8], start: usize) -> usize {
    let n = bytes.len();
    if n - start <= 2 * TOKEN_SEGMENT {
        return n;
    }
    let lo = start + TOKEN_SEGMENT / 2;
    let hi = start + TOKEN_SEGMENT;
    if let Some(p) = memchr::memrchr(b'\n', &bytes[lo..hi]) {
        return lo + p + 1;
    }
    let far = (start + 2 * TOKEN_SEGMENT).min(n);
    match bytes[lo..far].iter().position(|&b| b == b' ' || b == b'\n') {
        Some(p) => lo + p + 1,
        None => far_whitespace(bytes, far),
    }
}

/// The first position after ASCII whitespace at or after `from` (or the end).
fn far_whitespace(bytes: &[u8], from: usize) -> usize {
    match bytes[from..].iter().position(|&b| b == b' ' || b == b'\n') {
        Some(p) => from + p + 1,
        None => bytes.len(),
    }
}

fn token_count(tl: &TokenLimit, text: &str) -> CoreResult<usize> {
    if let Some(fast) = tl.fast.as_ref().filter(|f| f.handles(text.as_bytes())) {
        let mut offs = Vec::new();
        fast.tokenize(text.as_bytes(), 0, &mut offs);
        return Ok(offs.len());
    }
    tl.tokenizer
        .encode_fast(text, false)
        .map(|e| e.len())
        .map_err(|e| CoreError::Tokenizer {
            source_name: tl.source_name.clone(),
            detail: e.to_string(),
        })
}

fn whitespace_exact(tok: &Tokenizer) -> bool {
    fn norm_ok(n: &NormalizerWrapper) -> bool {
        match n {
            NormalizerWrapper::BertNormalizer(_)
            | NormalizerWrapper::StripAccents(_)
            | NormalizerWrapper::NFC(_)
            | NormalizerWrapper::NFD(_)
            | NormalizerWrapper::NFKC(_)
            | NormalizerWrapper::NFKD(_)
            | NormalizerWrapper::Lowercase(_) => true,
            NormalizerWrapper::Sequence(seq) => seq.as_ref().iter().all(norm_ok),
            _ => false,
        }
    }
    let pre_ok = matches!(
        tok.get_pre_tokenizer(),
        Some(
            PreTokenizerWrapper::BertPreTokenizer(_)
                | PreTokenizerWrapper::Whitespace(_)
                | PreTokenizerWrapper::WhitespaceSplit(_)
        )
    );
    let norm_ok = tok.get_normalizer().is_none_or(norm_ok);
    pre_ok && norm_ok
}

/// Loads a tokenizer from its JSON text; `source_name` names it in errors.
pub fn tokenizer_from_json(json: &str, source_name: &str) -> CoreResult<Tokenizer> {
    json.parse::<Tokenizer>().map_err(|e| CoreError::Tokenizer {
        source_name: source_name.to_string(),
        detail: format!("cannot load tokenizer JSON: {e}"),
    })
}

/// Loads a tokenizer.json file.
pub fn tokenizer_from_file(path: &Path) -> CoreResult<Tokenizer> {
    let json = std::fs::read_to_string(path).map_err(|e| CoreError::io(path, e))?;
    tokenizer_from_json(&json, &path.display().to_string())
}

/// Checks a chunk size limit (argument `name` = `max`) and an overlap smaller than it.
fn check_limit(name: &str, max: usize, overlap: usize) -> CoreResult<()> {
    if max == 0 {
        return Err(CoreError::InvalidArgument(format!(
            "{name} must be at least 1"
        )));
    }
    if overlap >= max {
        return Err(CoreError::InvalidArgument(format!(
            "overlap ({overlap}) must be smaller than {name} ({max})"
        )));
    }
    Ok(())
}

impl Chunker {
    /// Chunks of at most `max_chars` characters, overlapping by at most `overlap`.
    pub fn chars(max_chars: usize, overlap: usize) -> CoreResult<Self> {
        check_limit("max_chars", max_chars, overlap)?;
        Ok(Self {
            limit: Limit::Chars(max_chars),
            overlap,
        })
    }

    /// Chunks of at most `max_tokens` tokens of `tokenizer` (no special tokens).
    pub fn tokens(
        mut tokenizer: Tokenizer,
        source_name: &str,
        max_tokens: usize,
        overlap: usize,
    ) -> CoreResult<Self> {
        check_limit("max_tokens", max_tokens, overlap)?;
        tokenizer
            .with_truncation(None)
            .map_err(|e| CoreError::Tokenizer {
                source_name: source_name.to_string(),
                detail: format!("cannot turn truncation off: {e}"),
            })?;
        tokenizer.with_padding(None);
        let whitespace_exact = whitespace_exact(&tokenizer);
        let fast = FastWordPiece::from_tokenizer(&tokenizer);
        Ok(Self {
            limit: Limit::Tokens(Box::new(TokenLimit {
                tokenizer,
                max: max_tokens,
                source_name: source_name.to_string(),
                whitespace_exact,
                fast,
            })),
            overlap,
        })
    }

    /// The size limit (chars or tokens).
    pub fn max_size(&self) -> usize {
        match &self.limit {
            Limit::Chars(m) => *m,
            Limit::Tokens(t) => t.max,
        }
    }

    pub fn overlap(&self) -> usize {
        self.overlap
    }

    pub fn is_token_mode(&self) -> bool {
        matches!(self.limit, Limit::Tokens(_))
    }

    /// How many tokens `text` has (token mode), without special tokens.
    pub fn count_tokens(&self, text: &str) -> CoreResult<Option<usize>> {
        match &self.limit {
            Limit::Chars(_) => Ok(None),
            Limit::Tokens(tl) => token_count(tl, text).map(Some),
        }
    }

    /// Chunks `text`: trimmed byte spans, in order.
    pub fn chunk_bytes(&self, text: &str) -> CoreResult<Vec<(usize, usize)>> {
        Ok(self
            .chunk_block(text, 0, 0, StreamState::default(), true)?
            .spans)
    }

    /// Chunks `text`: spans in char (code point) offsets.
    pub fn chunk_chars(&self, text: &str) -> CoreResult<Vec<[i64; 2]>> {
        let spans = self.chunk_bytes(text)?;
        Ok(byte_spans_to_chars(text, &spans, 0))
    }

    /// Chunks a block of a stream starting at `start` (a chunk start found by
    /// the previous call, or 0). Unless `last`, chunks whose window could
    /// still change with more text are left for the next call.
    pub fn chunk_block(
        &self,
        text: &str,
        start: usize,
        prev_end: usize,
        state: StreamState,
        last: bool,
    ) -> CoreResult<Partial> {
        let bytes = text.as_bytes();
        let n = bytes.len();
        let nls = classify_newlines(bytes, state);
        let tokens = match &self.limit {
            Limit::Tokens(tl) => token_offsets(tl, text)?,
            Limit::Chars(_) => Vec::new(),
        };
        let doc = Doc {
            text,
            bytes,
            ascii: text.is_ascii(),
            nls,
            tokens,
        };
        // In a block of a stream, decisions must not depend on text past the
        // block: stop where the window or the lookahead of the newline
        // classification (two lines for a title) may reach past the end.
        let safe_end = if last {
            n
        } else {
            let k = doc.nls.len();
            let line_safe = if k >= 3 { doc.nls[k - 3].pos } else { 0 };
            // A block with hardly any newlines still has to make progress.
            line_safe.max(n.saturating_sub(n / 4))
        };
        let mut spans = Vec::new();
        let mut s = doc.skip_ws(start);
        let mut prev_end = prev_end.min(n);
        let mut pending_state_pos = s;
        while s < n {
            pending_state_pos = s;
            let w = match self.window_end(&doc, s)? {
                Some(w) => w,
                None => {
                    // The rest fits.
                    if !last {
                        break;
                    }
                    let e = doc.trim_end(s, n);
                    if e <= prev_end {
                        // Only overlap is left: the previous chunk ends the text.
                        pending_state_pos = n;
                        break;
                    }
                    let (s2, e2) = if self.exact_at_ws(&doc, s, e) {
                        (s, e)
                    } else {
                        self.verify(&doc, s, e)?
                    };
                    spans.push((s2, e2));
                    prev_end = e2;
                    if e2 >= e {
                        pending_state_pos = n;
                        break;
                    }
                    s = doc.skip_ws(e2);
                    continue;
                }
            };
            if !last && w >= safe_end {
                break;
            }
            let mut lo = s.max(doc.skip_ws(prev_end));
            if lo >= w {
                // The overlap reaches back over a long whitespace run: restart.
                s = doc.skip_ws(prev_end);
                prev_end = 0;
                if s >= w {
                    continue;
                }
                lo = s;
            }
            let (mut c, at_ws) = doc.find_cut(lo, w);
            if !at_ws && c <= lo {
                c = w;
            }
            let mut e = doc.trim_end(s, c);
            if e <= lo && !at_ws {
                e = c;
            }
            // Token mode: make sure the chunk's own count is within the limit.
            if self.is_token_mode() && !(at_ws && self.exact_at_ws(&doc, s, e)) {
                let (_, e2) = self.verify(&doc, s, e)?;
                if e2 < e {
                    e = e2;
                    c = e2;
                }
            }
            spans.push((s, e));
            let next = if self.overlap > 0 {
                self.overlap_start(&doc, s, e)
                    .unwrap_or_else(|| doc.skip_ws(c))
            } else {
                doc.skip_ws(c)
            };
            prev_end = e;
            s = if next > s {
                next
            } else {
                doc.skip_ws(e.max(s + 1))
            };
            pending_state_pos = s;
        }
        let next_start = pending_state_pos.min(n);
        // Keep from the start of the line holding the next chunk start, so
        // line-start rules see whole lines.
        let idx = doc.nls.partition_point(|nl| nl.pos < next_start);
        let (line_start, state) = if idx == 0 {
            (0, state)
        } else {
            let nl = doc.nls[idx - 1];
            (
                nl.next_line,
                StreamState {
                    in_fence: nl.fence_after,
                    header: nl.header_after,
                },
            )
        };
        // A line longer than this is kept from the chunk start instead, or a
        // file without newlines would never let go of its buffer.
        const MAX_LINE_KEEP: usize = 64 * 1024;
        let keep_from = if next_start - line_start <= MAX_LINE_KEEP {
            line_start
        } else {
            next_start
        };
        Ok(Partial {
            spans,
            keep_from,
            next_start,
            prev_end,
            state,
        })
    }

    /// Whether a span starting at `s` and cut at whitespace surely re-encodes
    /// to the document's own tokens (true in char mode).
    fn exact_at_ws(&self, doc: &Doc<'_>, s: usize, e: usize) -> bool {
        match &self.limit {
            Limit::Chars(_) => true,
            Limit::Tokens(tl) => {
                // Plain ASCII spacing only: other Unicode spaces may be
                // control chars or joiners to the tokenizer's normalizer.
                tl.whitespace_exact
                    && (s == 0 || matches!(doc.bytes[s - 1], b' ' | b'\t' | b'\n' | b'\r'))
                    && (e >= doc.bytes.len()
                        || matches!(doc.bytes[e], b' ' | b'\t' | b'\n' | b'\r'))
            }
        }
    }

    /// Window end from `s`: the byte position the chunk may reach, or None
    /// when the whole rest fits.
    fn window_end(&self, doc: &Doc<'_>, s: usize) -> CoreResult<Option<usize>> {
        let n = doc.bytes.len();
        match &self.limit {
            Limit::Chars(m) => {
                let w = doc.advance_chars(s, *m);
                if w >= n {
                    Ok(None)
                } else {
                    Ok(Some(w))
                }
            }
            Limit::Tokens(tl) => {
                // Count from the token that reaches past `s` (a token may
                // straddle a char the chunker sees as a space).
                let i = doc.tokens.partition_point(|t| t.1 <= s);
                if i + tl.max >= doc.tokens.len() {
                    return Ok(None);
                }
                // The first token that does not fit starts the excluded part.
                let mut w = doc.tokens[i + tl.max].0;
                if w <= s {
                    // One char split into more tokens than the limit.
                    w = s + char_at(doc.text, s).len_utf8();
                }
                Ok(Some(w))
            }
        }
    }

    /// Token mode: shrink `[s, e)` until its own token
    /// count is within the limit. Returns the (possibly shorter) span.
    fn verify(&self, doc: &Doc<'_>, s: usize, e: usize) -> CoreResult<(usize, usize)> {
        let Limit::Tokens(tl) = &self.limit else {
            return Ok((s, e));
        };
        let mut e = e;
        loop {
            let count = token_count(tl, &doc.text[s..e])?;
            if count <= tl.max {
                return Ok((s, e));
            }
            // Tokens of the document inside [s, e): drop the excess and cut again.
            let i = doc.tokens.partition_point(|t| t.0 < s);
            let j = doc.tokens.partition_point(|t| t.0 < e);
            let have = j.saturating_sub(i);
            let excess = count - tl.max;
            let keep = have.saturating_sub(excess.max(1));
            let mut w2 = if keep == 0 || i + keep >= doc.tokens.len() {
                s
            } else {
                doc.tokens[i + keep].0
            };
            if w2 >= e {
                w2 = doc.back_chars(e, 1, s);
            }
            if w2 <= s {
                // Fall back to dropping one char at a time.
                let back = doc.back_chars(e, 1, s);
                if back <= s {
                    // A single char over the limit: nothing smaller exists.
                    return Ok((s, e));
                }
                e = back;
                continue;
            }
            let (c, at_ws) = doc.find_cut(s, w2);
            let e2 = if at_ws { doc.trim_end(s, c) } else { c };
            e = if e2 > s && e2 < e { e2 } else { w2 };
        }
    }

    /// Where the chunk after `[s, e)` starts with overlap: the first word start
    /// at or after `overlap` units before `e`.
    fn overlap_start(&self, doc: &Doc<'_>, s: usize, e: usize) -> Option<usize> {
        let t = match &self.limit {
            Limit::Chars(_) => doc.back_chars(e, self.overlap, s + 1),
            Limit::Tokens(_) => {
                let j = doc.tokens.partition_point(|t| t.0 < e);
                if j < self.overlap {
                    return None;
                }
                doc.tokens[j - self.overlap].0.max(s + 1)
            }
        };
        if t >= e || !doc.text.is_char_boundary(t) {
            return None;
        }
        doc.word_start_from(t, e).filter(|&q| q > s && q < e)
    }
}

/// Converts ascending byte spans into char offsets (plus `base`).
pub fn byte_spans_to_chars(text: &str, spans: &[(usize, usize)], base: i64) -> Vec<[i64; 2]> {
    let bytes = text.as_bytes();
    if text.is_ascii() {
        return spans
            .iter()
            .map(|&(s, e)| [base + s as i64, base + e as i64])
            .collect();
    }
    // Starts and ends are each monotone: two cursors.
    let (mut sb, mut sc) = (0usize, 0usize);
    let (mut eb, mut ec) = (0usize, 0usize);
    spans
        .iter()
        .map(|&(s, e)| {
            sc += count_chars(&bytes[sb..s]);
            sb = s;
            if e >= eb {
                ec += count_chars(&bytes[eb..e]);
            } else {
                ec -= count_chars(&bytes[e..eb]);
            }
            eb = e;
            [base + sc as i64, base + ec as i64]
        })
        .collect()
}

/// Chunks, content hashes and point ids of many documents, flat.
#[derive(Default)]
pub struct ChunkBatch {
    /// `doc_indptr[d]..doc_indptr[d+1]` are document d's chunks.
    pub doc_indptr: Vec<i64>,
    /// (start, end) char offsets, flat pairs.
    pub offsets: Vec<i64>,
    pub hashes: Vec<u8>,
    pub ids: Vec<u8>,
}

/// One document's chunks with hashes and ids.
pub struct DocChunks {
    pub offsets: Vec<[i64; 2]>,
    pub hashes: Vec<[u8; HASH_LEN]>,
    pub ids: Vec<[u8; HASH_LEN]>,
}

impl Chunker {
    /// Chunks `text` and hashes every chunk (UTF-8 bytes) and derives its point id.
    pub fn chunk_hashed(&self, key: &[u8], text: &str) -> CoreResult<DocChunks> {
        let spans = self.chunk_bytes(text)?;
        let hashes: Vec<[u8; HASH_LEN]> = spans
            .iter()
            .map(|&(s, e)| content_hash(&text.as_bytes()[s..e]))
            .collect();
        let ids = hashes.iter().map(|h| point_id(key, h)).collect();
        Ok(DocChunks {
            offsets: byte_spans_to_chars(text, &spans, 0),
            hashes,
            ids,
        })
    }
}

impl ChunkBatch {
    /// Concatenates per-document results in order.
    pub fn from_docs(docs: Vec<DocChunks>) -> Self {
        let total: usize = docs.iter().map(|d| d.offsets.len()).sum();
        let mut b = ChunkBatch {
            doc_indptr: Vec::with_capacity(docs.len() + 1),
            offsets: Vec::with_capacity(total * 2),
            hashes: Vec::with_capacity(total * HASH_LEN),
            ids: Vec::with_capacity(total * HASH_LEN),
        };
        b.doc_indptr.push(0);
        let mut count = 0i64;
        for d in docs {
            count += d.offsets.len() as i64;
            b.doc_indptr.push(count);
            b.offsets.extend(d.offsets.iter().flatten());
            b.hashes.extend(d.hashes.iter().flatten());
            b.ids.extend(d.ids.iter().flatten());
        }
        b
    }
}

/// Chunks a file (or any reader) block by block in bounded memory.
pub struct FileChunker<R: Read> {
    reader: R,
    name: PathBuf,
    block: usize,
    /// Undecoded and unchunked text, starting at a line start.
    buf: Vec<u8>,
    /// Where the next chunk starts inside `buf`.
    next_start: usize,
    prev_end: usize,
    state: StreamState,
    /// Char offset of `buf[0]` in the whole stream; byte offset likewise.
    char_base: i64,
    byte_base: u64,
    eof: bool,
    done: bool,
    started: bool,
    /// The document key point ids are derived from, when wanted.
    key: Option<Vec<u8>>,
}

/// A batch of chunks from a stream: char offsets into the whole stream, texts, content
/// hashes and (with a key) point ids.
pub struct StreamBatch {
    pub offsets: Vec<[i64; 2]>,
    pub texts: Vec<String>,
    pub hashes: Vec<[u8; HASH_LEN]>,
    pub ids: Vec<[u8; HASH_LEN]>,
}

impl<R: Read> FileChunker<R> {
    pub fn new(reader: R, name: impl Into<PathBuf>, block: usize) -> Self {
        Self {
            reader,
            name: name.into(),
            block: block.max(4096),
            buf: Vec::new(),
            next_start: 0,
            prev_end: 0,
            state: StreamState::default(),
            char_base: 0,
            byte_base: 0,
            eof: false,
            done: false,
            started: false,
            key: None,
        }
    }

    /// Derive point ids of document `key` for every chunk (`StreamBatch::ids`).
    pub fn with_key(mut self, key: &[u8]) -> Self {
        self.key = Some(key.to_vec());
        self
    }

    fn fill(&mut self, want: usize) -> CoreResult<()> {
        while !self.eof && self.buf.len() < want {
            let old = self.buf.len();
            let grow = want - old;
            self.buf.resize(old + grow, 0);
            let mut filled = old;
            while filled < self.buf.len() {
                match self.reader.read(&mut self.buf[filled..]) {
                    Ok(0) => {
                        self.eof = true;
                        break;
                    }
                    Ok(k) => filled += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        self.buf.truncate(filled);
                        return Err(CoreError::io(&self.name, e));
                    }
                }
            }
            self.buf.truncate(filled);
        }
        Ok(())
    }

    /// The next batch of chunks, or None at the end.
    pub fn next_batch(&mut self, chunker: &Chunker) -> CoreResult<Option<StreamBatch>> {
        loop {
            if self.done {
                return Ok(None);
            }
            // One more block; when nothing could be decided the buffer grows
            // until a whole window fits (bounded by the chunk size).
            let want = self.buf.len() + self.block;
            self.fill(want)?;
            if !self.started {
                // A leading byte order mark is not text (as `read_text` drops it).
                self.started = true;
                if self.buf.starts_with(&[0xEF, 0xBB, 0xBF]) {
                    self.buf.drain(..3);
                    self.byte_base = 3;
                }
            }
            let (valid, tail_ok) = match std::str::from_utf8(&self.buf) {
                Ok(_) => (self.buf.len(), true),
                Err(e) => (e.valid_up_to(), e.error_len().is_none() && !self.eof),
            };
            if !tail_ok {
                return Err(CoreError::Decode {
                    input: self.name.display().to_string(),
                    detail: format!("invalid UTF-8 at byte {}", self.byte_base + valid as u64),
                });
            }
            let last = self.eof && valid == self.buf.len();
            let text = std::str::from_utf8(&self.buf[..valid]).map_err(|e| CoreError::Decode {
                input: self.name.display().to_string(),
                detail: e.to_string(),
            })?;
            let part =
                chunker.chunk_block(text, self.next_start, self.prev_end, self.state, last)?;
            let offsets = byte_spans_to_chars(text, &part.spans, self.char_base);
            let texts: Vec<String> = part
                .spans
                .iter()
                .map(|&(s, e)| text[s..e].to_string())
                .collect();
            let hashes: Vec<[u8; HASH_LEN]> =
                texts.iter().map(|t| content_hash(t.as_bytes())).collect();
            let ids = match &self.key {
                Some(k) => hashes.iter().map(|h| point_id(k, h)).collect(),
                None => Vec::new(),
            };
            if last {
                self.done = true;
            } else {
                let keep = part.keep_from;
                self.char_base += count_chars(&self.buf[..keep]) as i64;
                self.byte_base += keep as u64;
                self.next_start = part.next_start - keep;
                self.prev_end = part.prev_end.saturating_sub(keep);
                self.state = part.state;
                self.buf.drain(..keep);
            }
            if offsets.is_empty() {
                continue;
            }
            return Ok(Some(StreamBatch {
                offsets,
                texts,
                hashes,
                ids,
            }));
        }
    }
}

/// Opens `path` for [`FileChunker`].
pub fn open_file(path: &Path, block: usize) -> CoreResult<FileChunker<std::fs::File>> {
    let f = std::fs::File::open(path).map_err(|e| CoreError::io(path, e))?;
    Ok(FileChunker::new(f, path, block))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(c: &Chunker, text: &str) -> Vec<String> {
        c.chunk_bytes(text)
            .unwrap()
            .into_iter()
            .map(|(s, e)| text[s..e].to_string())
            .collect()
    }

    fn check_props(c: &Chunker, text: &str) {
        let spans = c.chunk_bytes(text).unwrap();
        let max = c.max_size();
        let mut covered = vec![false; text.len()];
        let mut prev = (0usize, 0usize);
        for (k, &(s, e)) in spans.iter().enumerate() {
            assert!(s < e, "empty chunk {k}");
            let t = &text[s..e];
            assert_eq!(t, t.trim_matches(is_ws));
            assert!(t.chars().count() <= max, "chunk {k} too long");
            if k > 0 {
                assert!(
                    s > prev.0 && e > prev.1,
                    "{text:?} {spans:?} {:?}",
                    (max, c.overlap())
                );
                if c.overlap() == 0 {
                    assert!(s >= prev.1);
                }
            }
            covered[s..e].iter_mut().for_each(|x| *x = true);
            prev = (s, e);
        }
        for (i, ch) in text.char_indices() {
            if !is_ws(ch) {
                assert!(covered[i], "char {i} {ch:?} not covered");
            }
        }
    }

    #[test]
    fn prefers_headings_then_blank_lines() {
        let text = "# A\n\naaaa aaaa.\nbbbb bbbb\n\ncccc\n# B\ndddd";
        let c = Chunker::chars(31, 0).unwrap();
        let got = chunks(&c, text);
        assert_eq!(
            got,
            vec!["# A\n\naaaa aaaa.\nbbbb bbbb\n\ncccc", "# B\ndddd"]
        );
        let c = Chunker::chars(30, 0).unwrap();
        let got = chunks(&c, text);
        assert_eq!(got, vec!["# A\n\naaaa aaaa.\nbbbb bbbb", "cccc\n# B\ndddd"]);
        // Only the heading's own blank line is in reach: the heading keeps
        // with its text, cut at a line end rather than left alone.
        let c = Chunker::chars(22, 0).unwrap();
        assert_eq!(chunks(&c, text)[0], "# A\n\naaaa aaaa.");
    }

    fn levels(text: &str) -> Vec<u8> {
        classify_newlines(text.as_bytes(), StreamState::default())
            .iter()
            .map(|n| n.level)
            .collect()
    }

    #[test]
    fn entries_break_more_strongly_than_paragraphs() {
        // A blank line before a dedent or column 0, or two blank lines, ends an
        // entry; a blank line between indented paragraphs is weaker.
        let text = ".. function:: f(x)\n\n   Para one.\n\n   Para two.\n\n.. function:: g(y)\n\n   Body.\n";
        let lv = levels(text);
        // Newlines: after the directive (keeps with its body), after "Para
        // one." (paragraph), after "Para two." (entry), after the second
        // directive (keeps), after "Body.".
        let content: Vec<u8> = [0, 2, 4, 6].iter().map(|&i| lv[i]).collect();
        assert_eq!(content, vec![LVL_LINE, LVL_BLANK, LVL_BREAK, LVL_LINE]);
        // Nested entries: a method at indent 3 after a body at indent 6.
        let text = "   .. method:: a()\n\n      Does a.\n\n   .. method:: b()\n\n      Does b.";
        assert_eq!(levels(text)[2], LVL_BREAK);
        // Two blank lines.
        assert_eq!(levels("   one\n\n\n   two")[0], LVL_BREAK);
        // A note directive at its paragraph's indent stays with the entry.
        let text = ".. function:: f()\n\n   Text.\n\n   .. versionadded:: 3.5\n";
        assert_eq!(levels(text)[2], LVL_BLANK);
        // Inside a fence nothing is an entry break.
        assert!(levels("```\n    a\n\nb\n```\n")
            .iter()
            .all(|&l| l < LVL_BREAK));
    }

    #[test]
    fn headings_and_directives_keep_with_their_body() {
        // An rST title, a directive with an option line and an ATX heading:
        // none of them ends up alone when its body does not fit.
        let c = Chunker::chars(60, 0).unwrap();
        for text in [
            "Title\n=====\n\nA first line of the section body.\nA second line of it.\n",
            ".. toctree::\n   :maxdepth: 1\n\n   intro.rst\n   tutorial.rst\n   library.rst\n",
            "## Heading\n\nA first line of the section body.\nA second line of it.\n",
        ] {
            let got = chunks(&c, text);
            assert!(got[0].lines().count() >= 3, "{got:?}");
            check_props(&c, text);
        }
        // A directive without a body (the next line is no deeper) does not.
        let text = ".. _label:\n\nText.";
        assert_eq!(levels(text)[0], LVL_BREAK);
    }

    #[test]
    fn an_edit_stays_in_its_entry() {
        // Methods of a class on a reference page, one blank line apart, each
        // with a short and a longer paragraph: only the dedent back to the
        // methods' indent tells entries from paragraphs. Cut at paragraph ends
        // only, a window spills into the next entry (its directive line) and
        // an edit shifts every later cut.
        let mut text = String::from(".. class:: C\n\n");
        for i in 0..40 {
            let pad = " and then some".repeat(i % 4);
            text.push_str(&format!(
                "   .. method:: f{i}(x)\n\n      Return f{i} of *x*{pad}.\n\n      More text for f{i}.\n\n"
            ));
        }
        for cap in [50, 130, 150] {
            let c = Chunker::chars(cap, 0).unwrap();
            let old: std::collections::HashSet<String> = chunks(&c, &text).into_iter().collect();
            for i in 0..40 {
                let pad = " and then some".repeat(i % 4);
                let at = text.find(&format!("f{i} of *x*{pad}.")).unwrap()
                    + format!("f{i} of *x*{pad}.").len();
                let mut edited = text.clone();
                edited.insert_str(at, " Edited.");
                let changed = chunks(&c, &edited)
                    .into_iter()
                    .filter(|t| !old.contains(t))
                    .count();
                assert!(
                    changed <= 2,
                    "cap {cap}, entry {i}: {changed} chunks changed"
                );
            }
        }
    }

    #[test]
    fn rst_titles_and_fences() {
        let text = "Intro text here\n\nTitle\n=====\n\nbody body body\n";
        let c = Chunker::chars(40, 0).unwrap();
        assert_eq!(chunks(&c, text)[0], "Intro text here");
        // `#` inside a fence is no heading: the blank line wins.
        let text = "```\nx = 1\n# comment\ny = 2\n```\n\nafter";
        let nls = classify_newlines(text.as_bytes(), StreamState::default());
        assert!(nls.iter().all(|n| n.level < LVL_HEADING));
        check_props(&c, text);
    }

    #[test]
    fn sentence_then_space_then_split() {
        let c = Chunker::chars(20, 0).unwrap();
        assert_eq!(
            chunks(&c, "One two. Three four five six"),
            vec!["One two.", "Three four five six"]
        );
        assert_eq!(
            chunks(&c, "aaaaaaaaaaaaaaaaaaaaaaaaa b"),
            vec!["aaaaaaaaaaaaaaaaaaaa", "aaaaa b"]
        );
        assert_eq!(
            chunks(&c, "中文句子。再来一个句子。更多的中文文字在这里面了。"),
            vec!["中文句子。再来一个句子。", "更多的中文文字在这里面了。"]
        );
    }

    #[test]
    fn overlap_is_bounded_and_at_word_starts() {
        let text = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu";
        let c = Chunker::chars(25, 10).unwrap();
        let spans = c.chunk_bytes(text).unwrap();
        for w in spans.windows(2) {
            let ov = w[0].1.saturating_sub(w[1].0);
            assert!(ov <= 10);
            assert_eq!(&text[w[1].0 - 1..w[1].0], " ");
        }
        check_props(&c, text);
    }

    #[test]
    fn whitespace_only_and_unicode() {
        let c = Chunker::chars(5, 0).unwrap();
        assert!(c.chunk_bytes("  \n\t \r\n ").unwrap().is_empty());
        assert!(c.chunk_bytes("").unwrap().is_empty());
        let text = "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 tëxt\r\nwith ✓ astral 😀😀😀😀😀😀😀 chars";
        check_props(&c, text);
        let offs = c.chunk_chars(text).unwrap();
        let chars: Vec<char> = text.chars().collect();
        for [s, e] in offs {
            let t: String = chars[s as usize..e as usize].iter().collect();
            assert!(t.chars().count() <= 5);
        }
    }

    #[test]
    fn stream_matches_properties() {
        let para = "Some words in a sentence. Another one here!\nline two\n\n## Head\n";
        let text = para.repeat(500);
        let c = Chunker::chars(100, 0).unwrap();
        let mut fc = FileChunker::new(text.as_bytes(), "mem", 4096);
        let mut all = Vec::new();
        while let Some(b) = fc.next_batch(&c).unwrap() {
            for (o, t) in b.offsets.iter().zip(&b.texts) {
                assert_eq!(&text[o[0] as usize..o[1] as usize], t);
                assert!(t.chars().count() <= 100);
            }
            all.extend(b.offsets);
        }
        let whole = c.chunk_chars(&text).unwrap();
        assert_eq!(all, whole);
    }

    #[test]
    fn random_like_inputs_hold_properties() {
        let mut seed = 12345u64;
        let alphabet: Vec<char> = "ab c\n\n#.!? 😀é\r\t=```".chars().collect();
        for round in 0..300 {
            let len = (round * 7) % 200;
            let mut s = String::new();
            for _ in 0..len {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                s.push(alphabet[(seed >> 33) as usize % alphabet.len()]);
            }
            for (m, o) in [(1, 0), (3, 0), (10, 0), (10, 4), (37, 12)] {
                check_props(&Chunker::chars(m, o).unwrap(), &s);
            }
        }
    }
}

#[cfg(test)]
mod swar_tests {
    use super::*;

    #[test]
    fn newlines_and_char_counts_agree_with_std() {
        let text = "a\nbc\n\n😀é\n\n\nxxxxxxxxxxxxxxxxxx\nyy\nzzzzzzzzzzzzzzzzzzzzzzzzz😀😀\n\n\n\n\n\n\n\n\n\n\nq";
        for start in 0..text.len() {
            for end in start..text.len() {
                if !text.is_char_boundary(start) || !text.is_char_boundary(end) {
                    continue;
                }
                let b = &text.as_bytes()[start..end];
                let want: Vec<usize> = b
                    .iter()
                    .enumerate()
                    .filter(|(_, &c)| c == b'\n')
                    .map(|(i, _)| i)
                    .collect();
                assert_eq!(Newlines::new(b).collect::<Vec<_>>(), want);
                assert_eq!(count_chars(b), text[start..end].chars().count());
            }
        }
    }
}
