//! Qdrant gRPC request bodies (`qdrant.UpsertPoints`, `DeletePoints`,
//! `SetPayloadPoints`) encoded straight from ids, vector slices and payload
//! trees, split so that no message exceeds a byte budget or a point count.
//!
//! The encoder is hand-written protobuf: every message size is computed
//! exactly first, so each request is written once into a buffer of its final
//! size, with no intermediate message objects (prost would need one struct per
//! point, a `HashMap` per payload and a `Vec<f32>` copy per vector).
//! Field numbers follow points.proto / json_with_int.proto / qdrant_common.proto
//! as shipped in qdrant-client; benches/bench_pack.py compares the result with
//! qdrant-client's own path and the Python tests decode every message with the
//! generated classes.

use crate::core::hash::{uuid_string, HASH_LEN};
use crate::core::{CoreError, CoreResult};
use rayon::prelude::*;

/// Default byte budget of one request: well under Qdrant's 32 MiB limit.
pub const DEFAULT_MAX_BYTES: usize = 8 * 1024 * 1024;
/// Qdrant's default request size limit (`service.max_request_size_mb = 32`).
pub const HARD_LIMIT_BYTES: usize = 32 * 1024 * 1024;
/// Default number of points per request.
pub const DEFAULT_MAX_POINTS: usize = 256;

/// The top-level payload key of a chunk's text (python/qflume/payload.py: TEXT).
pub const TEXT_KEY: &str = "page_content";
/// The top-level payload key of a chunk's metadata object (payload.py: METADATA).
pub const METADATA_KEY: &str = "metadata";
/// Keys of a chunk's metadata written by the packer itself, in the order it
/// writes them (payload.py: CHUNK_KEYS); a document's own metadata keys with
/// these names are left out (the chunk's value wins).
pub const CHUNK_KEYS: [&str; 4] = [CHUNK_INDEX_KEY, START_KEY, END_KEY, CONTENT_HASH_KEY];
const CHUNK_INDEX_KEY: &str = "chunk_index";
const START_KEY: &str = "start";
const END_KEY: &str = "end";
const CONTENT_HASH_KEY: &str = "content_hash";

// ----------------------------------------------------------------------------
// Payload values (json_with_int.proto `Value`)
// ----------------------------------------------------------------------------

/// A payload value, the tree form of a Python/JSON value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Double(f64),
    Str(String),
    List(Vec<Value>),
    Struct(Vec<(String, Value)>),
}

/// Write ordering of Qdrant update requests (`qdrant.WriteOrderingType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ordering {
    Weak = 0,
    Medium = 1,
    Strong = 2,
}

impl Ordering {
    pub fn parse(name: &str) -> CoreResult<Self> {
        match name.to_ascii_lowercase().as_str() {
            "weak" => Ok(Ordering::Weak),
            "medium" => Ok(Ordering::Medium),
            "strong" => Ok(Ordering::Strong),
            _ => Err(CoreError::InvalidArgument(format!(
                "ordering must be 'weak', 'medium' or 'strong', not {name:?}"
            ))),
        }
    }
}

/// What every request carries besides its points, and how to split.
#[derive(Debug, Clone)]
pub struct RequestOptions {
    pub collection: String,
    pub wait: Option<bool>,
    pub ordering: Option<Ordering>,
    /// Byte budget of one message; a single point larger than it gets a message of its own.
    pub max_bytes: usize,
    /// Most points (or ids, or sources) in one message.
    pub max_points: usize,
    /// No message may exceed this; a point that would is an error naming it.
    pub hard_limit: usize,
}

impl RequestOptions {
    pub fn new(collection: impl Into<String>) -> Self {
        Self {
            collection: collection.into(),
            wait: None,
            ordering: None,
            max_bytes: DEFAULT_MAX_BYTES,
            max_points: DEFAULT_MAX_POINTS,
            hard_limit: HARD_LIMIT_BYTES,
        }
    }

    fn check(&self) -> CoreResult<()> {
        if self.max_points == 0 {
            return Err(CoreError::InvalidArgument(
                "max_points must be at least 1".into(),
            ));
        }
        if self.max_bytes < 1024 {
            return Err(CoreError::InvalidArgument(format!(
                "max_bytes must be at least 1024, got {}",
                self.max_bytes
            )));
        }
        if self.hard_limit < self.max_bytes {
            return Err(CoreError::InvalidArgument(format!(
                "hard_limit ({}) must not be below max_bytes ({})",
                self.hard_limit, self.max_bytes
            )));
        }
        Ok(())
    }
}

// ----------------------------------------------------------------------------
// Wire primitives
// ----------------------------------------------------------------------------

const LEN: u32 = 2;
const VARINT: u32 = 0;
const I64: u32 = 1;

#[inline]
fn varint_len(v: u64) -> usize {
    // 1 byte per started group of 7 bits, at least 1.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Where encoded bytes go: a growing `Vec` or a pre-sized buffer.
pub trait Out {
    fn push(&mut self, b: u8);
    fn extend_from_slice(&mut self, s: &[u8]);
}

impl Out for Vec<u8> {
    #[inline]
    fn push(&mut self, b: u8) {
        Vec::push(self, b);
    }
    #[inline]
    fn extend_from_slice(&mut self, s: &[u8]) {
        Vec::extend_from_slice(self, s);
    }
}

/// A writer into a buffer of exactly the planned size. Writing past its end
/// is recorded (and reported by `finish`), never a panic.
pub struct Cursor<'a> {
    buf: &'a mut [u8],
    pos: usize,
    overflow: bool,
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a mut [u8]) -> Self {
        Self {
            buf,
            pos: 0,
            overflow: false,
        }
    }

    fn finish(self) -> CoreResult<()> {
        if self.overflow || self.pos != self.buf.len() {
            return Err(CoreError::InvalidArgument(format!(
                "internal error: a packed message did not match its planned size ({} of {} bytes)",
                self.pos,
                self.buf.len()
            )));
        }
        Ok(())
    }
}

impl Out for Cursor<'_> {
    #[inline]
    fn push(&mut self, b: u8) {
        match self.buf.get_mut(self.pos) {
            Some(slot) => {
                *slot = b;
                self.pos += 1;
            }
            None => self.overflow = true,
        }
    }
    #[inline]
    fn extend_from_slice(&mut self, s: &[u8]) {
        match self.buf.get_mut(self.pos..self.pos + s.len()) {
            Some(dst) => {
                dst.copy_from_slice(s);
                self.pos += s.len();
            }
            None => self.overflow = true,
        }
    }
}

#[inline]
fn put_varint(buf: &mut impl Out, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

#[inline]
fn tag_len(field: u32) -> usize {
    varint_len(u64::from(field << 3))
}

#[inline]
fn put_tag(buf: &mut impl Out, field: u32, wire: u32) {
    put_varint(buf, u64::from((field << 3) | wire));
}

/// Size of a length-delimited field whose content is `len` bytes.
#[inline]
fn len_field(field: u32, len: usize) -> usize {
    tag_len(field) + varint_len(len as u64) + len
}

#[inline]
fn put_len(buf: &mut impl Out, field: u32, len: usize) {
    put_tag(buf, field, LEN);
    put_varint(buf, len as u64);
}

#[inline]
fn put_bytes(buf: &mut impl Out, field: u32, data: &[u8]) {
    put_len(buf, field, data.len());
    buf.extend_from_slice(data);
}

#[inline]
fn put_f32s(buf: &mut impl Out, data: &[f32]) {
    #[cfg(target_endian = "little")]
    {
        // SAFETY: f32 has no padding and any bit pattern is a valid u8
        // sequence; the byte slice covers exactly the memory of `data`, which
        // stays borrowed for the duration of the copy. Protobuf floats are
        // little-endian, the native order on this target.
        let bytes = unsafe {
            std::slice::from_raw_parts(data.as_ptr().cast::<u8>(), std::mem::size_of_val(data))
        };
        buf.extend_from_slice(bytes);
    }
    #[cfg(not(target_endian = "little"))]
    for v in data {
        buf.extend_from_slice(&v.to_le_bytes());
    }
}

// ----------------------------------------------------------------------------
// Value encoding
// ----------------------------------------------------------------------------

/// Size of the content of a `Value` message.
fn value_len(v: &Value) -> usize {
    match v {
        Value::Null => 2,
        Value::Bool(_) => 2,
        Value::Int(i) => 1 + varint_len(*i as u64),
        Value::Double(_) => 9,
        Value::Str(s) => len_field(4, s.len()),
        Value::Struct(fields) => len_field(6, struct_len(fields)),
        Value::List(items) => len_field(7, list_len(items)),
    }
}

/// Size of the content of a `Struct` (its `fields` map entries).
fn struct_len(fields: &[(String, Value)]) -> usize {
    fields.iter().map(|(k, v)| entry_len(k, v)).sum()
}

fn list_len(items: &[Value]) -> usize {
    items.iter().map(|v| len_field(1, value_len(v))).sum()
}

/// Size of one map entry field (`map<string, Value>`, field number 1 or 3).
#[inline]
fn entry_len_with(field: u32, key: &str, value_len: usize) -> usize {
    len_field(field, len_field(1, key.len()) + len_field(2, value_len))
}

fn entry_len(key: &str, v: &Value) -> usize {
    entry_len_with(1, key, value_len(v))
}

fn put_value(buf: &mut impl Out, v: &Value) {
    match v {
        Value::Null => {
            put_tag(buf, 1, VARINT);
            buf.push(0);
        }
        Value::Bool(b) => {
            put_tag(buf, 5, VARINT);
            buf.push(u8::from(*b));
        }
        Value::Int(i) => {
            put_tag(buf, 3, VARINT);
            put_varint(buf, *i as u64);
        }
        Value::Double(d) => {
            put_tag(buf, 2, I64);
            buf.extend_from_slice(&d.to_le_bytes());
        }
        Value::Str(s) => put_bytes(buf, 4, s.as_bytes()),
        Value::Struct(fields) => {
            put_len(buf, 6, struct_len(fields));
            put_struct_fields(buf, 1, fields);
        }
        Value::List(items) => {
            put_len(buf, 7, list_len(items));
            for item in items {
                put_len(buf, 1, value_len(item));
                put_value(buf, item);
            }
        }
    }
}

/// Writes map entries `field { key: k, value: v }` for each pair.
fn put_struct_fields(buf: &mut impl Out, field: u32, fields: &[(String, Value)]) {
    for (k, v) in fields {
        put_entry(buf, field, k, v);
    }
}

fn put_entry(buf: &mut impl Out, field: u32, key: &str, v: &Value) {
    let vl = value_len(v);
    put_len(buf, field, len_field(1, key.len()) + len_field(2, vl));
    put_bytes(buf, 1, key.as_bytes());
    put_len(buf, 2, vl);
    put_value(buf, v);
}

/// Map entries (field `field`) of a payload, encoded once.
pub fn encode_fields(field: u32, fields: &[(String, Value)]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(
        fields
            .iter()
            .map(|(k, v)| entry_len_with(field, k, value_len(v)))
            .sum(),
    );
    put_struct_fields(&mut buf, field, fields);
    buf
}

// ----------------------------------------------------------------------------
// Points
// ----------------------------------------------------------------------------

/// One named sparse vector of every point, in CSR form.
#[derive(Debug, Clone, Copy)]
pub struct SparseCsr<'a> {
    pub name: &'a str,
    pub indptr: &'a [i64],
    pub indices: &'a [u32],
    pub values: &'a [f32],
}

impl SparseCsr<'_> {
    #[inline]
    fn row(&self, i: usize) -> (&[u32], &[f32]) {
        // Bounds were checked by `validate`.
        let (a, b) = (self.indptr[i] as usize, self.indptr[i + 1] as usize);
        (&self.indices[a..b], &self.values[a..b])
    }
}

/// Payloads of the points: none, one tree per point, or the columnar chunk form.
pub enum Payloads<'a, S: AsRef<str> + Sync> {
    None,
    /// One payload (top-level fields) per point.
    Dicts(&'a [Vec<(String, Value)>]),
    /// `{"page_content": texts[i], "metadata": {**docs[doc_index[i]], chunk_index, start, end,
    /// content_hash}}`: each document's metadata is encoded once.
    Chunks(ChunkColumns<'a, S>),
}

/// The columnar chunk payload form.
pub struct ChunkColumns<'a, S: AsRef<str> + Sync> {
    pub texts: &'a [S],
    pub doc_index: &'a [i64],
    pub docs: &'a [Vec<(String, Value)>],
    pub chunk_index: &'a [i64],
    pub start: &'a [i64],
    pub end: &'a [i64],
    /// n * 16 bytes.
    pub chunk_hash: &'a [u8],
}

/// Points to upsert: ids are n * 16 UUID bytes, `dense` is n * dim floats (row-major).
pub struct Points<'a, S: AsRef<str> + Sync> {
    pub ids: &'a [u8],
    pub dense: Option<(&'a [f32], usize)>,
    pub sparse: Vec<SparseCsr<'a>>,
    pub payloads: Payloads<'a, S>,
}

impl<S: AsRef<str> + Sync> Points<'_, S> {
    /// Number of points, after checking that every column agrees.
    pub fn validate(&self) -> CoreResult<usize> {
        if self.ids.len() % HASH_LEN != 0 {
            return Err(CoreError::Shape(format!(
                "ids must be an (n, {HASH_LEN}) uint8 array of UUID bytes; got {} bytes",
                self.ids.len()
            )));
        }
        let n = self.ids.len() / HASH_LEN;
        if let Some((data, dim)) = self.dense {
            if dim == 0 || data.len() != n * dim {
                return Err(CoreError::Shape(format!(
                    "dense has {} rows of {dim} floats but there are {n} ids",
                    data.len().checked_div(dim).unwrap_or(0)
                )));
            }
        }
        for s in &self.sparse {
            let nm = s.name;
            if s.indptr.len() != n + 1 {
                return Err(CoreError::Shape(format!(
                    "sparse vector {nm:?}: indptr has {} entries, expected {} (ids + 1)",
                    s.indptr.len(),
                    n + 1
                )));
            }
            if s.indices.len() != s.values.len() {
                return Err(CoreError::Shape(format!(
                    "sparse vector {nm:?}: {} indices but {} values",
                    s.indices.len(),
                    s.values.len()
                )));
            }
            let mut prev = 0i64;
            for (i, &p) in s.indptr.iter().enumerate() {
                if p < prev || p as usize > s.indices.len() {
                    return Err(CoreError::Shape(format!(
                        "sparse vector {nm:?}: indptr[{i}] = {p} is out of order or past the {} \
                         stored values",
                        s.indices.len()
                    )));
                }
                prev = p;
            }
            if self.dense.is_some() && nm.is_empty() {
                return Err(CoreError::InvalidArgument(
                    "a sparse vector cannot use the empty name: it is the dense vector's".into(),
                ));
            }
        }
        let mut names: Vec<&str> = self.sparse.iter().map(|s| s.name).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(CoreError::InvalidArgument(format!(
                "sparse vector {:?} given twice",
                w[0]
            )));
        }
        match &self.payloads {
            Payloads::None => {}
            Payloads::Dicts(p) => {
                if p.len() != n {
                    return Err(CoreError::Shape(format!(
                        "{} payloads for {n} ids",
                        p.len()
                    )));
                }
            }
            Payloads::Chunks(c) => {
                for (name, len) in [
                    ("texts", c.texts.len()),
                    ("doc_index", c.doc_index.len()),
                    ("chunk_index", c.chunk_index.len()),
                    ("start", c.start.len()),
                    ("end", c.end.len()),
                ] {
                    if len != n {
                        return Err(CoreError::Shape(format!(
                            "{name} has {len} entries for {n} ids"
                        )));
                    }
                }
                if c.chunk_hash.len() != n * HASH_LEN {
                    return Err(CoreError::Shape(format!(
                        "chunk_hash must be ({n}, {HASH_LEN}) bytes, got {} bytes",
                        c.chunk_hash.len()
                    )));
                }
                if let Some((i, d)) = c
                    .doc_index
                    .iter()
                    .enumerate()
                    .find(|(_, &d)| d < 0 || d as usize >= c.docs.len())
                {
                    return Err(CoreError::Shape(format!(
                        "doc_index[{i}] = {d} but there are {} documents' metadata",
                        c.docs.len()
                    )));
                }
            }
        }
        Ok(n)
    }
}

const ID_FIELD_LEN: usize = 2 + 2 + 36; // PointStruct.id { uuid: 36 chars }

#[inline]
fn hex32(hash: &[u8]) -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    for (i, b) in hash.iter().enumerate() {
        out[2 * i] = HEX[(b >> 4) as usize];
        out[2 * i + 1] = HEX[(b & 0xf) as usize];
    }
    out
}

#[inline]
fn uuid_text(id: &[u8]) -> [u8; 36] {
    let hex = hex32(id);
    let mut out = [b'-'; 36];
    out[0..8].copy_from_slice(&hex[0..8]);
    out[9..13].copy_from_slice(&hex[8..12]);
    out[14..18].copy_from_slice(&hex[12..16]);
    out[19..23].copy_from_slice(&hex[16..20]);
    out[24..36].copy_from_slice(&hex[20..32]);
    out
}

/// Content sizes of a `SparseVector { values, indices }`.
#[inline]
fn sparse_len(idx: &[u32], vals: &[f32]) -> usize {
    let mut n = 0;
    if !vals.is_empty() {
        n += len_field(1, vals.len() * 4);
    }
    if !idx.is_empty() {
        n += len_field(2, indices_len(idx));
    }
    n
}

#[inline]
fn indices_len(idx: &[u32]) -> usize {
    idx.iter().map(|&i| varint_len(u64::from(i))).sum()
}

/// Pre-encoded per-point state that is shared by the size and write passes.
struct Encoder<'a, 'p, S: AsRef<str> + Sync> {
    points: &'p Points<'a, S>,
    /// Dicts form: each point's payload entries, encoded.
    dict_payloads: Vec<Vec<u8>>,
    /// Chunks form: each document's metadata entries (without the chunk keys), encoded.
    doc_fields: Vec<Vec<u8>>,
}

impl<S: AsRef<str> + Sync> Encoder<'_, '_, S> {
    /// Content size of the `Vector` of point i's dense vector.
    #[inline]
    fn dense_vector_len(&self) -> Option<usize> {
        self.points
            .dense
            .map(|(_, dim)| len_field(101, len_field(1, dim * 4)))
    }

    /// Size of the content of point i's `Vectors` message (None: no vectors at all).
    fn vectors_len(&self, i: usize) -> Option<usize> {
        let p = self.points;
        let dense = self.dense_vector_len();
        if p.sparse.is_empty() {
            return dense.map(|d| len_field(1, d));
        }
        Some(len_field(2, self.named_len(i)))
    }

    /// Size of the content of point i's `NamedVectors` ("" = dense, then each sparse name).
    fn named_len(&self, i: usize) -> usize {
        let mut named = 0;
        if let Some(d) = self.dense_vector_len() {
            named += entry_len_sized(1, 0, d);
        }
        for s in &self.points.sparse {
            let (idx, vals) = s.row(i);
            named += entry_len_sized(1, s.name.len(), len_field(102, sparse_len(idx, vals)));
        }
        named
    }

    #[inline]
    fn chunk_meta_len(&self, c: &ChunkColumns<'_, S>, i: usize) -> usize {
        let doc = &self.doc_fields[c.doc_index[i] as usize];
        doc.len()
            + entry_len_with(1, CHUNK_INDEX_KEY, 1 + varint_len(c.chunk_index[i] as u64))
            + entry_len_with(1, START_KEY, 1 + varint_len(c.start[i] as u64))
            + entry_len_with(1, END_KEY, 1 + varint_len(c.end[i] as u64))
            + entry_len_with(1, CONTENT_HASH_KEY, len_field(4, 32))
    }

    /// Size of the payload entries of point i (PointStruct field 3, repeated).
    fn payload_len(&self, i: usize) -> usize {
        match &self.points.payloads {
            Payloads::None => 0,
            Payloads::Dicts(_) => self.dict_payloads[i].len(),
            Payloads::Chunks(c) => {
                let text = c.texts[i].as_ref();
                entry_len_with(3, TEXT_KEY, len_field(4, text.len()))
                    + entry_len_with(3, METADATA_KEY, len_field(6, self.chunk_meta_len(c, i)))
            }
        }
    }

    /// Size of the content of point i's `PointStruct`.
    fn point_len(&self, i: usize) -> usize {
        let mut n = ID_FIELD_LEN + self.payload_len(i);
        if let Some(v) = self.vectors_len(i) {
            n += len_field(4, v);
        }
        n
    }

    fn put_dense(&self, buf: &mut impl Out, i: usize) {
        if let Some((data, dim)) = self.points.dense {
            put_len(buf, 101, len_field(1, dim * 4));
            put_len(buf, 1, dim * 4);
            put_f32s(buf, &data[i * dim..(i + 1) * dim]);
        }
    }

    fn put_point(&self, buf: &mut impl Out, i: usize, len: usize) {
        let p = self.points;
        put_len(buf, 3, len); // UpsertPoints.points
                              // id
        put_len(buf, 1, 38);
        put_len(buf, 2, 36);
        buf.extend_from_slice(&uuid_text(&p.ids[i * HASH_LEN..(i + 1) * HASH_LEN]));
        // payload
        match &p.payloads {
            Payloads::None => {}
            Payloads::Dicts(_) => buf.extend_from_slice(&self.dict_payloads[i]),
            Payloads::Chunks(c) => {
                let text = c.texts[i].as_ref().as_bytes();
                put_entry_head(buf, 3, TEXT_KEY, len_field(4, text.len()));
                put_bytes(buf, 4, text);

                let meta = self.chunk_meta_len(c, i);
                put_entry_head(buf, 3, METADATA_KEY, len_field(6, meta));
                put_len(buf, 6, meta);
                buf.extend_from_slice(&self.doc_fields[c.doc_index[i] as usize]);
                put_int_entry(buf, CHUNK_INDEX_KEY, c.chunk_index[i]);
                put_int_entry(buf, START_KEY, c.start[i]);
                put_int_entry(buf, END_KEY, c.end[i]);
                let hex = hex32(&c.chunk_hash[i * HASH_LEN..(i + 1) * HASH_LEN]);
                put_entry_head(buf, 1, CONTENT_HASH_KEY, len_field(4, 32));
                put_bytes(buf, 4, &hex);
            }
        }
        // vectors
        if let Some(vlen) = self.vectors_len(i) {
            put_len(buf, 4, vlen);
            if p.sparse.is_empty() {
                // Vectors.vector = Vector { dense }
                put_len(buf, 1, self.dense_vector_len().unwrap_or(0));
                self.put_dense(buf, i);
            } else {
                put_len(buf, 2, self.named_len(i));
                self.put_named(buf, i);
            }
        }
    }

    fn put_named(&self, buf: &mut impl Out, i: usize) {
        if let Some(d) = self.dense_vector_len() {
            put_len(buf, 1, len_field(1, 0) + len_field(2, d));
            put_bytes(buf, 1, b"");
            put_len(buf, 2, d);
            self.put_dense(buf, i);
        }
        for s in &self.points.sparse {
            let (idx, vals) = s.row(i);
            let sl = sparse_len(idx, vals);
            let vl = len_field(102, sl);
            put_len(buf, 1, len_field(1, s.name.len()) + len_field(2, vl));
            put_bytes(buf, 1, s.name.as_bytes());
            put_len(buf, 2, vl);
            put_len(buf, 102, sl);
            if !vals.is_empty() {
                put_len(buf, 1, vals.len() * 4);
                put_f32s(buf, vals);
            }
            if !idx.is_empty() {
                put_len(buf, 2, indices_len(idx));
                for &ix in idx {
                    put_varint(buf, u64::from(ix));
                }
            }
        }
    }
}

/// Size of a map entry whose key is `key_len` bytes and whose value message is `value_len` bytes.
#[inline]
fn entry_len_sized(field: u32, key_len: usize, value_len: usize) -> usize {
    len_field(field, len_field(1, key_len) + len_field(2, value_len))
}

/// The head of a map entry `key -> Value` (field `field` of its message) whose
/// Value message is `value_len` bytes: the Value's fields follow.
fn put_entry_head(buf: &mut impl Out, field: u32, key: &str, value_len: usize) {
    put_len(
        buf,
        field,
        len_field(1, key.len()) + len_field(2, value_len),
    );
    put_bytes(buf, 1, key.as_bytes());
    put_len(buf, 2, value_len);
}

fn put_int_entry(buf: &mut impl Out, key: &str, v: i64) {
    put_entry_head(buf, 1, key, 1 + varint_len(v as u64));
    put_tag(buf, 3, VARINT);
    put_varint(buf, v as u64);
}

/// The fields every update request starts with: collection_name, wait, ordering.
fn header(opts: &RequestOptions, ordering_field: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(opts.collection.len() + 16);
    put_bytes(&mut h, 1, opts.collection.as_bytes());
    if let Some(w) = opts.wait {
        put_tag(&mut h, 2, VARINT);
        h.push(u8::from(w));
    }
    if let Some(o) = opts.ordering {
        if o == Ordering::Weak {
            put_len(&mut h, ordering_field, 0);
        } else {
            put_len(&mut h, ordering_field, 2);
            put_tag(&mut h, 1, VARINT);
            h.push(o as u8);
        }
    }
    h
}

/// Groups consecutive items of the given encoded sizes into messages of at most
/// `max_bytes` (after `header` bytes) and `max_points` items; an item too big
/// for the budget gets a message of its own.
fn split(
    sizes: &[usize],
    header: usize,
    max_bytes: usize,
    max_points: usize,
) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = header;
    for (i, &s) in sizes.iter().enumerate() {
        let count = i - start;
        if count > 0 && (count >= max_points || bytes + s > max_bytes) {
            out.push((start, i));
            start = i;
            bytes = header;
        }
        bytes += s;
    }
    if start < sizes.len() {
        out.push((start, sizes.len()));
    }
    out
}

/// A planned upsert: every message's exact size is known before any byte is
/// written, so callers can allocate the final buffers (e.g. Python `bytes`)
/// and have [`UpsertPlan::write`] fill them in place.
pub struct UpsertPlan<'a, 'p, S: AsRef<str> + Sync> {
    enc: Encoder<'a, 'p, S>,
    head: Vec<u8>,
    /// Content size of each point's `PointStruct`.
    bodies: Vec<usize>,
    /// Point ranges and total size of each message.
    groups: Vec<(usize, usize, usize)>,
}

impl<S: AsRef<str> + Sync> UpsertPlan<'_, '_, S> {
    /// Exact byte size of each message, in order.
    pub fn message_sizes(&self) -> Vec<usize> {
        self.groups.iter().map(|g| g.2).collect()
    }

    /// Number of points in each message, in order.
    pub fn message_points(&self) -> Vec<usize> {
        self.groups.iter().map(|g| g.1 - g.0).collect()
    }

    /// Writes message `m` into `out`, which must be exactly `message_sizes()[m]` bytes.
    pub fn write(&self, m: usize, out: &mut [u8]) -> CoreResult<()> {
        let mut cur = Cursor::new(out);
        self.write_into(m, &mut cur);
        cur.finish()
    }

    fn write_into(&self, m: usize, out: &mut impl Out) {
        let (a, b, _) = self.groups[m];
        out.extend_from_slice(&self.head);
        for i in a..b {
            self.enc.put_point(out, i, self.bodies[i]);
        }
    }

    /// All messages as owned buffers, encoded in parallel on the current Rayon pool.
    pub fn to_vecs(&self) -> Vec<Vec<u8>> {
        (0..self.groups.len())
            .into_par_iter()
            .map(|m| {
                let mut buf = Vec::with_capacity(self.groups[m].2);
                self.write_into(m, &mut buf);
                buf
            })
            .collect()
    }
}

/// Plans the `qdrant.UpsertPoints` messages for `points`: checks shapes,
/// encodes shared payload parts once and sizes every point (in parallel on the
/// current Rayon pool).
pub fn plan_upsert<'a, 'p, S: AsRef<str> + Sync>(
    points: &'p Points<'a, S>,
    opts: &RequestOptions,
) -> CoreResult<UpsertPlan<'a, 'p, S>> {
    opts.check()?;
    let n = points.validate()?;
    let mut enc = Encoder {
        points,
        dict_payloads: Vec::new(),
        doc_fields: Vec::new(),
    };
    match &points.payloads {
        Payloads::None => {}
        Payloads::Dicts(p) => {
            enc.dict_payloads = p.par_iter().map(|f| encode_fields(3, f)).collect()
        }
        Payloads::Chunks(c) => {
            enc.doc_fields = c
                .docs
                .par_iter()
                .map(|fields| {
                    let own: Vec<(String, Value)> = fields
                        .iter()
                        .filter(|(k, _)| !CHUNK_KEYS.contains(&k.as_str()))
                        .cloned()
                        .collect();
                    encode_fields(1, &own)
                })
                .collect();
        }
    }
    let head = header(opts, 4);
    let bodies: Vec<usize> = (0..n).into_par_iter().map(|i| enc.point_len(i)).collect();
    let sizes: Vec<usize> = bodies.iter().map(|&b| len_field(3, b)).collect();
    if let Some((i, s)) = sizes
        .iter()
        .enumerate()
        .find(|(_, &s)| head.len() + s > opts.hard_limit)
    {
        let mut id = [0u8; HASH_LEN];
        id.copy_from_slice(&points.ids[i * HASH_LEN..(i + 1) * HASH_LEN]);
        return Err(CoreError::Shape(format!(
            "point {i} (id {}) encodes to {s} bytes, over the {} byte request limit; \
             shorten its payload or raise the server's max_request_size_mb",
            uuid_string(&id),
            opts.hard_limit
        )));
    }
    let groups = split(&sizes, head.len(), opts.max_bytes, opts.max_points)
        .into_iter()
        .map(|(a, b)| (a, b, head.len() + sizes[a..b].iter().sum::<usize>()))
        .collect();
    Ok(UpsertPlan {
        enc,
        head,
        bodies,
        groups,
    })
}

/// Serialized `qdrant.UpsertPoints` messages for `points`, in order.
///
/// Runs on the current Rayon pool (the caller decides how many threads).
pub fn pack_upsert<S: AsRef<str> + Sync>(
    points: &Points<'_, S>,
    opts: &RequestOptions,
) -> CoreResult<Vec<Vec<u8>>> {
    Ok(plan_upsert(points, opts)?.to_vecs())
}

/// `PointsSelector { points: PointsIdsList { ids } }` content size for these ids.
fn ids_selector(ids: &[u8]) -> Vec<u8> {
    let n = ids.len() / HASH_LEN;
    let list = n * len_field(1, 38);
    let mut buf = Vec::with_capacity(len_field(1, list));
    put_len(&mut buf, 1, list);
    for id in ids.chunks_exact(HASH_LEN) {
        put_len(&mut buf, 1, 38);
        put_bytes(&mut buf, 2, &uuid_text(id));
    }
    buf
}

fn check_ids(ids: &[u8]) -> CoreResult<usize> {
    if ids.len() % HASH_LEN != 0 {
        return Err(CoreError::Shape(format!(
            "ids must be an (n, {HASH_LEN}) uint8 array of UUID bytes; got {} bytes",
            ids.len()
        )));
    }
    Ok(ids.len() / HASH_LEN)
}

/// Ids per message so that a list of 40-byte ids stays within the byte budget.
fn ids_per_message(opts: &RequestOptions) -> usize {
    let per_id = len_field(1, 38);
    opts.max_points
        .min((opts.max_bytes.saturating_sub(opts.collection.len() + 64)) / per_id)
        .max(1)
}

/// Serialized `qdrant.DeletePoints` messages deleting `ids` (n * 16 bytes).
pub fn pack_delete(ids: &[u8], opts: &RequestOptions) -> CoreResult<Vec<Vec<u8>>> {
    opts.check()?;
    check_ids(ids)?;
    Ok(id_messages(&header(opts, 4), 3, ids, opts))
}

/// One message per slice of `ids`: `head`, then the slice's `PointsSelector` as field
/// `field`.
fn id_messages(head: &[u8], field: u32, ids: &[u8], opts: &RequestOptions) -> Vec<Vec<u8>> {
    ids.chunks(ids_per_message(opts) * HASH_LEN)
        .map(|part| {
            let sel = ids_selector(part);
            let mut buf = Vec::with_capacity(head.len() + len_field(field, sel.len()));
            buf.extend_from_slice(head);
            put_bytes(&mut buf, field, &sel);
            buf
        })
        .collect()
}

/// `Filter { must: [ Condition { field: FieldCondition { key, match: { keywords } } } ] }`.
fn keywords_filter(key: &str, values: &[&str]) -> Vec<u8> {
    let strings: usize = values.iter().map(|s| len_field(1, s.len())).sum();
    let matched = len_field(5, strings);
    let field = len_field(1, key.len()) + len_field(2, matched);
    let cond = len_field(1, field);
    let mut buf = Vec::with_capacity(len_field(2, cond));
    put_len(&mut buf, 2, cond);
    put_len(&mut buf, 1, field);
    put_bytes(&mut buf, 1, key.as_bytes());
    put_len(&mut buf, 2, matched);
    put_len(&mut buf, 5, strings);
    for s in values {
        put_bytes(&mut buf, 1, s.as_bytes());
    }
    buf
}

/// Serialized `qdrant.DeletePoints` messages deleting every point whose payload
/// field `key` (e.g. "metadata.source") is one of `values`.
pub fn pack_delete_by_field<S: AsRef<str>>(
    key: &str,
    values: &[S],
    opts: &RequestOptions,
) -> CoreResult<Vec<Vec<u8>>> {
    opts.check()?;
    if key.is_empty() {
        return Err(CoreError::InvalidArgument(
            "the filter key must not be empty".into(),
        ));
    }
    let head = header(opts, 4);
    let budget = opts.max_bytes.saturating_sub(head.len() + key.len() + 32);
    let sizes: Vec<usize> = values
        .iter()
        .map(|s| len_field(1, s.as_ref().len()))
        .collect();
    if let Some((i, _)) = sizes.iter().enumerate().find(|(_, &s)| s > budget) {
        return Err(CoreError::Shape(format!(
            "value {i} of the delete filter is {} bytes, over the {} byte budget",
            values[i].as_ref().len(),
            opts.max_bytes
        )));
    }
    Ok(split(&sizes, 0, budget, opts.max_points)
        .into_iter()
        .map(|(a, b)| {
            let part: Vec<&str> = values[a..b].iter().map(|s| s.as_ref()).collect();
            let filter = keywords_filter(key, &part);
            let mut sel = Vec::with_capacity(len_field(2, filter.len()));
            put_bytes(&mut sel, 2, &filter);
            let mut buf = Vec::with_capacity(head.len() + len_field(3, sel.len()));
            buf.extend_from_slice(&head);
            put_bytes(&mut buf, 3, &sel);
            buf
        })
        .collect())
}

/// Serialized `qdrant.SetPayloadPoints` messages merging `payload` into the
/// points `ids` (into the nested object at `key` if given).
pub fn pack_set_payload(
    payload: &[(String, Value)],
    ids: &[u8],
    key: Option<&str>,
    opts: &RequestOptions,
) -> CoreResult<Vec<Vec<u8>>> {
    opts.check()?;
    check_ids(ids)?;
    let mut head = header(opts, 6);
    head.extend_from_slice(&encode_fields(3, payload));
    if let Some(k) = key {
        put_bytes(&mut head, 8, k.as_bytes());
    }
    if head.len() > opts.hard_limit {
        return Err(CoreError::Shape(format!(
            "the payload to set encodes to {} bytes, over the {} byte request limit",
            head.len(),
            opts.hard_limit
        )));
    }
    Ok(id_messages(&head, 5, ids, opts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u8) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0] = i;
        b[15] = 0xab;
        b
    }

    #[test]
    fn varint_lengths() {
        for (v, n) in [
            (0u64, 1),
            (127, 1),
            (128, 2),
            (16383, 2),
            (16384, 3),
            (u64::MAX, 10),
        ] {
            assert_eq!(varint_len(v), n, "{v}");
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), n);
        }
        assert_eq!(tag_len(101), 2);
        assert_eq!(tag_len(15), 1);
    }

    #[test]
    fn uuid_text_matches_hash_module() {
        let b = id(7);
        assert_eq!(uuid_text(&b).as_slice(), uuid_string(&b).as_bytes());
    }

    #[test]
    fn value_sizes_are_exact() {
        let v = Value::Struct(vec![
            ("a".into(), Value::Int(-1)),
            (
                "b".into(),
                Value::List(vec![Value::Null, Value::Bool(true), Value::Double(0.5)]),
            ),
            ("c".into(), Value::Str("é".repeat(100))),
            ("d".into(), Value::Struct(vec![])),
        ]);
        let mut buf = Vec::new();
        put_value(&mut buf, &v);
        assert_eq!(buf.len(), value_len(&v));
    }

    fn points<'a>(
        ids: &'a [u8],
        dense: &'a [f32],
        dim: usize,
        sparse: Vec<SparseCsr<'a>>,
        payloads: Payloads<'a, &'a str>,
    ) -> Points<'a, &'a str> {
        Points {
            ids,
            dense: Some((dense, dim)),
            sparse,
            payloads,
        }
    }

    #[test]
    fn messages_have_the_computed_size_and_respect_the_budget() {
        let n = 50;
        let ids: Vec<u8> = (0..n as u8).flat_map(id).collect();
        let dim = 64;
        let dense: Vec<f32> = (0..n * dim).map(|i| i as f32).collect();
        let indptr: Vec<i64> = (0..=n as i64).map(|i| i * 3).collect();
        let indices: Vec<u32> = (0..n as u32 * 3).map(|i| i * 1000).collect();
        let values: Vec<f32> = indices.iter().map(|&i| i as f32 / 7.0).collect();
        let texts: Vec<&str> = (0..n)
            .map(|i| {
                if i % 2 == 0 {
                    "short"
                } else {
                    "a longer text é"
                }
            })
            .collect();
        let docs = vec![
            vec![
                ("source".to_string(), Value::Str("a.md".into())),
                ("start".into(), Value::Int(5)),
            ],
            vec![("source".to_string(), Value::Str("b.md".into()))],
        ];
        let doc_index: Vec<i64> = (0..n as i64).map(|i| i % 2).collect();
        let ci: Vec<i64> = (0..n as i64).collect();
        let hashes: Vec<u8> = (0..n * 16).map(|i| i as u8).collect();
        let p = points(
            &ids,
            &dense,
            dim,
            vec![SparseCsr {
                name: "bm25",
                indptr: &indptr,
                indices: &indices,
                values: &values,
            }],
            Payloads::Chunks(ChunkColumns {
                texts: &texts,
                doc_index: &doc_index,
                docs: &docs,
                chunk_index: &ci,
                start: &ci,
                end: &ci,
                chunk_hash: &hashes,
            }),
        );
        let mut opts = RequestOptions::new("c");
        opts.max_bytes = 4096;
        let msgs = pack_upsert(&p, &opts).unwrap();
        assert!(msgs.len() > 1);
        for m in &msgs {
            assert!(m.len() <= 4096, "{}", m.len());
        }
        let plan = plan_upsert(&p, &opts).unwrap();
        for (m, (size, want)) in plan.message_sizes().iter().zip(&msgs).enumerate() {
            let mut out = vec![0u8; *size];
            plan.write(m, &mut out).unwrap();
            assert_eq!(&out, want);
            let mut short = vec![0u8; size - 1];
            assert!(plan.write(m, &mut short).is_err());
        }
        assert_eq!(plan.message_points().iter().sum::<usize>(), n);
        opts.max_points = 7;
        opts.max_bytes = DEFAULT_MAX_BYTES;
        assert_eq!(pack_upsert(&p, &opts).unwrap().len(), 8);
    }

    #[test]
    fn shapes_are_checked() {
        let ids: Vec<u8> = (0..3).flat_map(id).collect();
        let dense = vec![0f32; 8];
        let p = points(&ids, &dense, 4, vec![], Payloads::None);
        let err = pack_upsert(&p, &RequestOptions::new("c"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("2 rows of 4") && err.contains("3 ids"),
            "{err}"
        );
    }

    #[test]
    fn oversized_point_is_named() {
        let ids: Vec<u8> = (0..2).flat_map(id).collect();
        let dense = vec![0f32; 2 * 1024];
        let p = points(&ids, &dense, 1024, vec![], Payloads::None);
        let mut opts = RequestOptions::new("c");
        opts.max_bytes = 1024;
        opts.hard_limit = 2048;
        let err = pack_upsert(&p, &opts).unwrap_err().to_string();
        assert!(
            err.contains("point 0") && err.contains(&uuid_string(&id(0))),
            "{err}"
        );
        opts.hard_limit = 8192;
        assert_eq!(pack_upsert(&p, &opts).unwrap().len(), 2);
    }

    #[test]
    fn split_groups() {
        assert_eq!(split(&[5, 5, 5], 0, 10, 10), vec![(0, 2), (2, 3)]);
        assert_eq!(split(&[50, 5], 0, 10, 10), vec![(0, 1), (1, 2)]);
        assert_eq!(split(&[1, 1, 1], 0, 10, 2), vec![(0, 2), (2, 3)]);
        assert!(split(&[], 0, 10, 2).is_empty());
    }
}
