//! Scan: walk folders in parallel, read and hash every file, and say for each
//! file whether it can be ingested.
//!
//! The walk is the `ignore` crate's parallel walker (the one ripgrep uses):
//! `.gitignore`, `.ignore` and `.git/info/exclude` are honoured even outside a
//! git repository. Hidden entries (names starting with `.`) are left out and
//! reported as [`SkipReason::Hidden`] unless `hidden` is set; `.git` and the
//! walk's own `.gitignore` / `.ignore` files are left out without a word. Each
//! walker thread reads and hashes the files it meets, so reading overlaps listing.
//!
//! Every problem with one file becomes an entry with a [`SkipReason`]; only a
//! root that cannot be opened, a bad glob or two files claiming the same key
//! fail the whole scan.
//!
//! Fast path: when a [`Known`] record for the key has the same size and mtime,
//! the file is `stat`ed but never opened; its hash comes from the record.

use crate::core::hash::{content_hash, ContentHasher, HASH_LEN};
use crate::core::{CoreError, CoreResult};
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use ignore::{DirEntry, ParallelVisitor, ParallelVisitorBuilder, WalkBuilder, WalkState};
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, Metadata};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Why a file is not ingested. The strings of [`SkipReason::as_str`] are stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// A NUL byte (in the first 8 KiB or later): not text.
    Binary,
    /// Not decodable as UTF-8 (a UTF-8 byte order mark is fine; UTF-16/32 is not).
    NotUtf8,
    /// Larger than the size cap.
    TooLarge,
    /// Zero bytes.
    Empty,
    /// Could not be opened, read or listed (permission denied, I/O error, broken link).
    Unreadable,
    /// Deleted between the walk and the read.
    Vanished,
    /// Size or mtime differ before and after reading: the hash would be of nothing real.
    ChangedDuringScan,
    /// A symbolic link that leads back into its own ancestors (or to itself).
    SymlinkLoop,
    /// A FIFO, socket, device (or an unfollowed symbolic link).
    NotAFile,
    /// A hidden file or folder (its name starts with `.`), left out unless `hidden` is set.
    Hidden,
    /// A path that is not valid UTF-8: it cannot be a document key, a payload or a state row.
    BadFilename,
}

impl SkipReason {
    pub const ALL: [SkipReason; 11] = [
        SkipReason::Binary,
        SkipReason::NotUtf8,
        SkipReason::TooLarge,
        SkipReason::Empty,
        SkipReason::Unreadable,
        SkipReason::Vanished,
        SkipReason::ChangedDuringScan,
        SkipReason::SymlinkLoop,
        SkipReason::NotAFile,
        SkipReason::Hidden,
        SkipReason::BadFilename,
    ];

    /// Reasons decided by the bytes alone: with size and mtime unchanged they
    /// still hold, so a [`Known`] record may carry them.
    pub fn is_content(self) -> bool {
        matches!(self, SkipReason::Binary | SkipReason::NotUtf8)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Binary => "binary",
            SkipReason::NotUtf8 => "not-utf8",
            SkipReason::TooLarge => "too-large",
            SkipReason::Empty => "empty",
            SkipReason::Unreadable => "unreadable",
            SkipReason::Vanished => "vanished",
            SkipReason::ChangedDuringScan => "changed-during-scan",
            SkipReason::SymlinkLoop => "symlink-loop",
            SkipReason::NotAFile => "not-a-file",
            SkipReason::Hidden => "hidden",
            SkipReason::BadFilename => "bad-filename",
        }
    }
}

/// What a previous scan recorded for a key: enough to skip reading it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    pub size: u64,
    pub mtime_ns: i64,
    /// The content hash of a file that was ingestible.
    pub hash: Option<[u8; HASH_LEN]>,
    /// Or the content-based skip it got ([`SkipReason::is_content`]), with its detail.
    pub skip: Option<(SkipReason, Option<String>)>,
}

impl Known {
    pub fn hashed(size: u64, mtime_ns: i64, hash: [u8; HASH_LEN]) -> Self {
        Known {
            size,
            mtime_ns,
            hash: Some(hash),
            skip: None,
        }
    }
}

/// One file seen by the scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanEntry {
    /// Path relative to the root it was found under, `/`-separated; the file
    /// name for a file given directly.
    pub key: OsString,
    /// Absolute path (symbolic links not resolved).
    pub path: PathBuf,
    pub size: u64,
    pub mtime_ns: i64,
    /// Content hash of the bytes; `None` when the file is skipped.
    pub hash: Option<[u8; HASH_LEN]>,
    pub skip: Option<SkipReason>,
    /// Human-readable explanation for a skip (the OS error, the byte offset ...).
    pub detail: Option<String>,
    /// True when the hash (or a content skip) came from [`Known`] without
    /// reading the file.
    pub unchanged: bool,
}

impl ScanEntry {
    fn skipped(
        key: OsString,
        path: PathBuf,
        reason: SkipReason,
        detail: impl Into<String>,
    ) -> Self {
        ScanEntry {
            key,
            path,
            size: 0,
            mtime_ns: 0,
            hash: None,
            skip: Some(reason),
            detail: Some(detail.into()),
            unchanged: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ScanOptions {
    /// Gitignore-style patterns, matched against keys: only files matching one
    /// (or lying in a folder matching one) are kept. Empty keeps all.
    pub include: Vec<String>,
    /// Gitignore-style patterns, matched against keys; wins over `include`.
    pub exclude: Vec<String>,
    pub max_file_size: u64,
    pub follow_links: bool,
    /// Also walk hidden files and folders (`.git` folders are always left out); without it
    /// each hidden entry the filters would keep is reported as [`SkipReason::Hidden`].
    pub hidden: bool,
    /// Honour `.gitignore`, `.ignore` and `.git/info/exclude`.
    pub ignore_files: bool,
    /// Walker threads; 0 means the current Rayon pool's size.
    pub threads: usize,
    /// File name extensions (lowercase, without the dot) whose files are hashed as raw bytes
    /// and never checked for text (a document reader decodes them: PDF, HTML, DOCX ...).
    pub raw_extensions: Vec<String>,
}

impl Default for ScanOptions {
    fn default() -> Self {
        ScanOptions {
            include: Vec::new(),
            exclude: Vec::new(),
            max_file_size: 64 << 20,
            follow_links: true,
            hidden: false,
            ignore_files: true,
            threads: 0,
            raw_extensions: Vec::new(),
        }
    }
}

/// Bytes checked for NUL before anything else is decided.
const BINARY_PROBE: usize = 8 << 10;
/// Read buffer per walker thread.
const READ_BUF: usize = 256 << 10;

pub type KnownMap = HashMap<OsString, Known>;

/// Scans `roots` (folders walked recursively, files taken as they are) and
/// returns one entry per file, sorted by key.
pub fn scan(roots: &[PathBuf], opts: &ScanOptions, known: &KnownMap) -> CoreResult<Vec<ScanEntry>> {
    let include = build_globs(&opts.include, "include")?;
    let exclude = build_globs(&opts.exclude, "exclude")?;
    let matcher = Arc::new(Filters { include, exclude });
    let threads = if opts.threads == 0 {
        rayon::current_num_threads()
    } else {
        opts.threads
    };

    // (entry, depth of the root it came from)
    let mut all: Vec<(ScanEntry, usize)> = Vec::new();
    let mut buf = Vec::new();
    for given in roots {
        let root = absolute(given)?;
        let depth = root.components().count();
        let md = fs::metadata(&root).map_err(|e| CoreError::io(&root, e))?;
        if md.is_dir() {
            fs::read_dir(&root).map_err(|e| CoreError::io(&root, e))?;
            let entries = walk(&root, opts, known, &matcher, threads);
            all.extend(entries.into_iter().map(|e| (e, depth)));
        } else {
            let key = root
                .file_name()
                .map(OsStr::to_os_string)
                .unwrap_or_else(|| root.as_os_str().to_os_string());
            let entry = scan_file(&root, key, opts, known, &mut buf);
            all.push((entry, depth));
        }
    }

    if roots.len() > 1 {
        // A file reachable from nested roots is listed once, under the outermost root.
        all.sort_unstable_by(|a, b| a.0.path.cmp(&b.0.path).then(a.1.cmp(&b.1)));
        all.dedup_by(|later, first| later.0.path == first.0.path);
    }
    let mut out: Vec<ScanEntry> = all.into_iter().map(|(e, _)| e).collect();
    out.sort_unstable_by(|a, b| a.key.cmp(&b.key).then_with(|| a.path.cmp(&b.path)));
    if let Some(w) = out.windows(2).find(|w| w[0].key == w[1].key) {
        return Err(CoreError::InvalidArgument(format!(
            "two files have the same key {:?}: {} and {}; scan their common folder instead \
             (keys are paths relative to the root given)",
            w[0].key,
            w[0].path.display(),
            w[1].path.display()
        )));
    }
    Ok(out)
}

fn absolute(path: &Path) -> CoreResult<PathBuf> {
    if path.as_os_str().is_empty() {
        return Err(CoreError::InvalidArgument(
            "scan: an empty path was given; use \".\" for the current folder".into(),
        ));
    }
    std::path::absolute(path).map_err(|e| CoreError::io(path, e))
}

fn build_globs(patterns: &[String], what: &str) -> CoreResult<Option<Gitignore>> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut b = GitignoreBuilder::new("");
    for p in patterns {
        b.add_line(None, p).map_err(|e| {
            CoreError::InvalidArgument(format!("{what} pattern {p:?} is not a valid glob: {e}"))
        })?;
    }
    b.build()
        .map(Some)
        .map_err(|e| CoreError::InvalidArgument(format!("{what} patterns {patterns:?}: {e}")))
}

struct Filters {
    include: Option<Gitignore>,
    exclude: Option<Gitignore>,
}

impl Filters {
    /// Whether the walker should yield (or, for a folder, descend into) `rel`.
    fn keep(&self, rel: &Path, is_dir: bool) -> bool {
        if let Some(ex) = &self.exclude {
            if ex.matched(rel, is_dir).is_ignore() {
                return false;
            }
        }
        if is_dir {
            return true;
        }
        match &self.include {
            Some(inc) => inc.matched_path_or_any_parents(rel, false).is_ignore(),
            None => true,
        }
    }

    /// Whether a problem found at `rel` concerns what the caller asked for.
    fn keep_problem(&self, rel: &Path, is_dir: bool) -> bool {
        if let Some(ex) = &self.exclude {
            if ex.matched_path_or_any_parents(rel, is_dir).is_ignore() {
                return false;
            }
        }
        match &self.include {
            Some(inc) => inc.matched_path_or_any_parents(rel, is_dir).is_ignore(),
            None => true,
        }
    }
}

/// `/`-separated key of `path` under `root`.
fn key_of(root: &Path, path: &Path) -> OsString {
    let rel = path.strip_prefix(root).unwrap_or(path);
    #[cfg(unix)]
    {
        let k = rel.as_os_str();
        if k.is_empty() {
            OsString::from(".")
        } else {
            k.to_os_string()
        }
    }
    #[cfg(not(unix))]
    {
        let parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if parts.is_empty() {
            OsString::from(".")
        } else {
            OsString::from(parts.join("/"))
        }
    }
}

fn walk(
    root: &Path,
    opts: &ScanOptions,
    known: &KnownMap,
    filters: &Arc<Filters>,
    threads: usize,
) -> Vec<ScanEntry> {
    // A root that is a symbolic link to a folder is walked even with
    // follow_links off: it was named explicitly (tested below).
    let mut wb = WalkBuilder::new(root);
    let ig = opts.ignore_files;
    wb.follow_links(opts.follow_links)
        // Hidden entries are filtered below, so that they can be reported.
        .hidden(false)
        .ignore(ig)
        .git_ignore(ig)
        .git_exclude(ig)
        .parents(ig)
        // A user's global excludes file would make scans differ between machines.
        .git_global(false)
        .require_git(false)
        .threads(threads.max(1));
    let f = Arc::clone(filters);
    let root_owned = root.to_path_buf();
    let hidden = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&hidden);
    let report_hidden = !opts.hidden;
    wb.filter_entry(move |dent| {
        let is_dir = dent.file_type().is_some_and(|t| t.is_dir());
        let name = dent.file_name();
        if name == ".git" {
            return false;
        }
        let rel = dent.path().strip_prefix(&root_owned).unwrap_or(dent.path());
        if !f.keep(rel, is_dir) {
            return false;
        }
        if report_hidden && dent.depth() > 0 && name.as_encoded_bytes().starts_with(b".") {
            let config = !is_dir && WALK_FILES.iter().any(|w| name == *w);
            if !config && (!is_dir || f.keep_problem(rel, true)) {
                let what = if is_dir {
                    "hidden folder, not walked"
                } else {
                    "hidden file"
                };
                let e = ScanEntry::skipped(
                    key_of(&root_owned, dent.path()),
                    dent.path().to_path_buf(),
                    SkipReason::Hidden,
                    format!(
                        "{what} (its name starts with '.'; scan with hidden=True to include it)"
                    ),
                );
                seen.lock().unwrap_or_else(|p| p.into_inner()).push(e);
            }
            return false;
        }
        true
    });
    let results = Mutex::new(Vec::new());
    let mut builder = Builder {
        root,
        filters,
        opts,
        known,
        results: &results,
    };
    wb.build_parallel().visit(&mut builder);
    let mut out: Vec<ScanEntry> = results
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .into_iter()
        .flatten()
        .collect();
    out.append(&mut hidden.lock().unwrap_or_else(|p| p.into_inner()));
    out
}

/// The walk's own configuration files: read by the walker, never reported as hidden.
const WALK_FILES: [&str; 2] = [".gitignore", ".ignore"];

struct Builder<'a> {
    root: &'a Path,
    filters: &'a Filters,
    opts: &'a ScanOptions,
    known: &'a KnownMap,
    results: &'a Mutex<Vec<Vec<ScanEntry>>>,
}

impl<'s> ParallelVisitorBuilder<'s> for Builder<'s> {
    fn build(&mut self) -> Box<dyn ParallelVisitor + 's> {
        Box::new(Visitor {
            root: self.root,
            filters: self.filters,
            opts: self.opts,
            known: self.known,
            results: self.results,
            out: Vec::new(),
            buf: Vec::new(),
        })
    }
}

struct Visitor<'a> {
    root: &'a Path,
    filters: &'a Filters,
    opts: &'a ScanOptions,
    known: &'a KnownMap,
    results: &'a Mutex<Vec<Vec<ScanEntry>>>,
    out: Vec<ScanEntry>,
    buf: Vec<u8>,
}

impl Drop for Visitor<'_> {
    fn drop(&mut self) {
        let out = std::mem::take(&mut self.out);
        if !out.is_empty() {
            self.results
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(out);
        }
    }
}

impl ParallelVisitor for Visitor<'_> {
    fn visit(&mut self, entry: Result<DirEntry, ignore::Error>) -> WalkState {
        match entry {
            Ok(dent) => self.visit_entry(dent),
            Err(err) => {
                if let Some((e, is_dir)) = self.error_entry(err) {
                    let rel = e.path.strip_prefix(self.root).unwrap_or(&e.path);
                    if self.filters.keep_problem(rel, is_dir) {
                        self.out.push(e);
                    }
                }
            }
        }
        WalkState::Continue
    }
}

impl Visitor<'_> {
    fn visit_entry(&mut self, dent: DirEntry) {
        let Some(ft) = dent.file_type() else { return };
        if ft.is_dir() {
            return;
        }
        let key = key_of(self.root, dent.path());
        if ft.is_symlink() {
            // Only reached when links are not followed.
            self.out.push(ScanEntry::skipped(
                key,
                dent.into_path(),
                SkipReason::NotAFile,
                "symbolic link not followed (follow_links=False)",
            ));
            return;
        }
        let entry = scan_file(dent.path(), key, self.opts, self.known, &mut self.buf);
        self.out.push(entry);
    }

    /// Turns a walker error into an entry for the path it names, if any.
    fn error_entry(&self, err: ignore::Error) -> Option<(ScanEntry, bool)> {
        let mut path: Option<PathBuf> = None;
        let mut cur = err;
        loop {
            match cur {
                ignore::Error::WithPath { path: p, err } => {
                    path.get_or_insert(p);
                    cur = *err;
                }
                ignore::Error::WithDepth { err, .. } => cur = *err,
                ignore::Error::Loop { ancestor, child } => {
                    let detail = format!("symbolic link loops back to {}", ancestor.display());
                    let e = ScanEntry::skipped(
                        key_of(self.root, &child),
                        child,
                        SkipReason::SymlinkLoop,
                        detail,
                    );
                    return Some((e, true));
                }
                ignore::Error::Io(e) => {
                    let path = path?;
                    let (reason, detail) = classify_io(&path, &e, "cannot list or open");
                    let is_dir = fs::metadata(&path).is_ok_and(|m| m.is_dir());
                    let e = ScanEntry::skipped(key_of(self.root, &path), path, reason, detail);
                    return Some((e, is_dir));
                }
                // Bad lines in ignore files are dropped, as git does.
                _ => return None,
            }
        }
    }
}

#[cfg(unix)]
fn is_eloop(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ELOOP)
}
#[cfg(not(unix))]
fn is_eloop(_: &io::Error) -> bool {
    false
}

/// Skip reason and detail for an I/O error on `path`.
fn classify_io(path: &Path, e: &io::Error, doing: &str) -> (SkipReason, String) {
    if is_eloop(e) {
        return (SkipReason::SymlinkLoop, format!("{doing}: {e}"));
    }
    if e.kind() == io::ErrorKind::NotFound {
        if let Ok(lmd) = fs::symlink_metadata(path) {
            if lmd.file_type().is_symlink() {
                let target = fs::read_link(path)
                    .map(|t| t.display().to_string())
                    .unwrap_or_default();
                return (
                    SkipReason::Unreadable,
                    format!("broken symbolic link (target {target:?} does not exist)"),
                );
            }
        }
        return (SkipReason::Vanished, format!("{doing}: {e}"));
    }
    (SkipReason::Unreadable, format!("{doing}: {e}"))
}

#[cfg(unix)]
fn mtime_ns(md: &Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt;
    md.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(md.mtime_nsec())
}
#[cfg(not(unix))]
fn mtime_ns(md: &Metadata) -> i64 {
    match md.modified() {
        Ok(t) => match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
        },
        Err(_) => 0,
    }
}

fn file_kind(md: &Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let ft = md.file_type();
        if ft.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if ft.is_socket() {
            return "a socket";
        }
        if ft.is_char_device() {
            return "a character device";
        }
        if ft.is_block_device() {
            return "a block device";
        }
    }
    if md.is_dir() {
        "a folder"
    } else {
        "not a regular file"
    }
}

fn open_nonblocking(path: &Path) -> io::Result<File> {
    let mut o = fs::OpenOptions::new();
    o.read(true);
    // A file swapped for a FIFO after the stat must not block the scan.
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    }
    o.open(path)
}

/// Stats, and unless `known` says it is unchanged, reads and hashes one file; a key that is
/// not valid UTF-8 is a [`SkipReason::BadFilename`] entry that names the bytes (the file is
/// never opened).
pub fn scan_file(
    path: &Path,
    key: OsString,
    opts: &ScanOptions,
    known: &KnownMap,
    buf: &mut Vec<u8>,
) -> ScanEntry {
    if key.to_str().is_none() {
        let detail = format!(
            "file name is not valid UTF-8: {}",
            key.as_encoded_bytes().escape_ascii()
        );
        return ScanEntry::skipped(key, path.to_path_buf(), SkipReason::BadFilename, detail);
    }
    let md = match fs::metadata(path) {
        Ok(md) => md,
        Err(e) => {
            let (reason, detail) = classify_io(path, &e, "cannot stat");
            return ScanEntry::skipped(key, path.to_path_buf(), reason, detail);
        }
    };
    let mut entry = ScanEntry {
        key,
        path: path.to_path_buf(),
        size: md.len(),
        mtime_ns: mtime_ns(&md),
        hash: None,
        skip: None,
        detail: None,
        unchanged: false,
    };
    let skip = |mut e: ScanEntry, reason: SkipReason, detail: String| {
        e.skip = Some(reason);
        e.detail = Some(detail);
        e
    };
    if !md.is_file() {
        let kind = file_kind(&md);
        return skip(entry, SkipReason::NotAFile, format!("{kind}, not a file"));
    }
    if entry.size == 0 {
        return skip(entry, SkipReason::Empty, "0 bytes".into());
    }
    if entry.size > opts.max_file_size {
        let d = format!(
            "{} bytes, over max_file_size={}",
            entry.size, opts.max_file_size
        );
        return skip(entry, SkipReason::TooLarge, d);
    }
    let raw = is_raw(path, &opts.raw_extensions);
    if let Some(k) = known.get(&entry.key) {
        if k.size == entry.size && k.mtime_ns == entry.mtime_ns {
            if let Some(hash) = k.hash {
                entry.hash = Some(hash);
                entry.unchanged = true;
                return entry;
            }
            if let Some((reason, detail)) = &k.skip {
                if reason.is_content() && !raw {
                    entry.skip = Some(*reason);
                    entry.detail = detail.clone();
                    entry.unchanged = true;
                    return entry;
                }
            }
        }
    }
    let mut file = match open_nonblocking(path) {
        Ok(f) => f,
        Err(e) => {
            let (reason, detail) = classify_io(path, &e, "cannot open");
            return skip(entry, reason, detail);
        }
    };
    match read_and_check(&mut file, entry.size, opts.max_file_size, buf, raw) {
        Ok(Checked::Text(hash, read)) => {
            let after = file.metadata();
            match after {
                Ok(a)
                    if a.len() == entry.size
                        && mtime_ns(&a) == entry.mtime_ns
                        && read == entry.size =>
                {
                    entry.hash = Some(hash);
                    entry
                }
                Ok(a) => {
                    let d = format!(
                        "size/mtime {}/{} before reading, {}/{} after, {} bytes read",
                        entry.size,
                        entry.mtime_ns,
                        a.len(),
                        mtime_ns(&a),
                        read
                    );
                    skip(entry, SkipReason::ChangedDuringScan, d)
                }
                Err(e) => skip(
                    entry,
                    SkipReason::Unreadable,
                    format!("cannot stat after reading: {e}"),
                ),
            }
        }
        Ok(Checked::Skip(reason, detail)) => skip(entry, reason, detail),
        Err(e) => {
            let (reason, detail) = classify_io(path, &e, "cannot read");
            skip(entry, reason, detail)
        }
    }
}

enum Checked {
    /// Valid text: its hash and how many bytes were read.
    Text([u8; HASH_LEN], u64),
    Skip(SkipReason, String),
}

/// Whether `path`'s extension is one of `raw` (lowercase, no dot), case-insensitively.
fn is_raw(path: &Path, raw: &[String]) -> bool {
    if raw.is_empty() {
        return false;
    }
    path.extension()
        .and_then(OsStr::to_str)
        .is_some_and(|ext| raw.iter().any(|r| r.eq_ignore_ascii_case(ext)))
}

/// Reads and hashes the whole file, checking nothing but its size.
fn read_raw(file: &mut File, max: u64, buf: &mut Vec<u8>) -> io::Result<Checked> {
    if buf.len() < READ_BUF {
        buf.resize(READ_BUF, 0);
    }
    let mut hasher = ContentHasher::new();
    let mut total: u64 = 0;
    loop {
        let n = read_full(file, &mut buf[..READ_BUF])?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > max {
            return Ok(Checked::Skip(
                SkipReason::ChangedDuringScan,
                format!("grew past max_file_size={max} while being read"),
            ));
        }
        hasher.update(&buf[..n]);
    }
    Ok(Checked::Text(hasher.finish(), total))
}

/// Reads the whole file once: hashes it, rejects binary and non-UTF-8 content
/// as soon as it shows (unless `raw`), and stops if the file grows past the cap.
fn read_and_check(
    file: &mut File,
    expected: u64,
    max: u64,
    buf: &mut Vec<u8>,
    raw: bool,
) -> io::Result<Checked> {
    if raw {
        return read_raw(file, max, buf);
    }
    // Small files are read whole and hashed in one call (cheaper than streaming).
    let cap = if expected < READ_BUF as u64 {
        (expected as usize) + 1
    } else {
        READ_BUF
    };
    if buf.len() < cap.max(4) {
        buf.resize(cap.max(4), 0);
    }
    let mut hasher: Option<ContentHasher> = None;
    let mut total: u64 = 0;
    // Bytes of an unfinished UTF-8 sequence carried to the front of `buf`.
    let mut carry = 0usize;
    let mut first = true;
    loop {
        let n = read_full(file, &mut buf[carry..cap.max(carry + 1)])?;
        if n == 0 {
            break;
        }
        let start = carry;
        let end = carry + n;
        let fresh = &buf[start..end];
        if first {
            first = false;
            if let Some(r) = utf16_bom(fresh) {
                return Ok(Checked::Skip(SkipReason::NotUtf8, r.into()));
            }
            let probe = &fresh[..fresh.len().min(BINARY_PROBE)];
            if let Some(i) = memchr::memchr(0, probe) {
                return Ok(Checked::Skip(
                    SkipReason::Binary,
                    format!("NUL byte at offset {i}"),
                ));
            }
            if end < cap && hasher.is_none() && total == 0 {
                // Whole file in one read: check it and hash it in one go.
                return Ok(match check_text(&buf[..end], 0) {
                    Some(s) => s,
                    None => Checked::Text(content_hash(&buf[..end]), end as u64),
                });
            }
        }
        if let Some(i) = memchr::memchr(0, fresh) {
            return Ok(Checked::Skip(
                SkipReason::Binary,
                format!("NUL byte at offset {}", total + i as u64),
            ));
        }
        hasher.get_or_insert_with(ContentHasher::new).update(fresh);
        // Validate carried prefix + fresh bytes; keep an incomplete tail for later.
        let window = &buf[..end];
        let offset = total - start as u64;
        total += n as u64;
        if total > max {
            return Ok(Checked::Skip(
                SkipReason::ChangedDuringScan,
                format!("grew past max_file_size={max} while being read"),
            ));
        }
        carry = match std::str::from_utf8(window) {
            Ok(_) => 0,
            Err(e) if e.error_len().is_none() => window.len() - e.valid_up_to(),
            Err(e) => {
                return Ok(Checked::Skip(
                    SkipReason::NotUtf8,
                    format!("invalid UTF-8 at byte {}", offset + e.valid_up_to() as u64),
                ));
            }
        };
        if carry > 0 {
            buf.copy_within(end - carry..end, 0);
        }
    }
    if carry > 0 {
        return Ok(Checked::Skip(
            SkipReason::NotUtf8,
            format!("truncated UTF-8 sequence at byte {}", total - carry as u64),
        ));
    }
    let hash = match hasher {
        Some(h) => h.finish(),
        None => content_hash(&[]),
    };
    Ok(Checked::Text(hash, total))
}

/// Fills `buf` as far as the file allows; returns the bytes read (0 at end).
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn utf16_bom(head: &[u8]) -> Option<&'static str> {
    if head.starts_with(&[0xFF, 0xFE, 0, 0]) || head.starts_with(&[0, 0, 0xFE, 0xFF]) {
        Some("UTF-32 text (byte order mark), not UTF-8")
    } else if head.starts_with(&[0xFF, 0xFE]) || head.starts_with(&[0xFE, 0xFF]) {
        Some("UTF-16 text (byte order mark), not UTF-8")
    } else {
        None
    }
}

fn check_text(data: &[u8], offset: u64) -> Option<Checked> {
    if let Some(i) = memchr::memchr(0, data) {
        return Some(Checked::Skip(
            SkipReason::Binary,
            format!("NUL byte at offset {}", offset + i as u64),
        ));
    }
    match std::str::from_utf8(data) {
        Ok(_) => None,
        Err(e) => Some(Checked::Skip(
            SkipReason::NotUtf8,
            format!("invalid UTF-8 at byte {}", offset + e.valid_up_to() as u64),
        )),
    }
}

/// Reads a file as text the way [`scan`] accepts it: UTF-8, a leading byte
/// order mark dropped.
pub fn read_text(path: &Path) -> CoreResult<String> {
    let mut bytes = fs::read(path).map_err(|e| CoreError::io(path, e))?;
    let bom = if bytes.starts_with(b"\xEF\xBB\xBF") {
        3
    } else {
        0
    };
    bytes.drain(..bom);
    String::from_utf8(bytes).map_err(|e| CoreError::Decode {
        input: path.display().to_string(),
        detail: format!(
            "invalid byte at offset {}",
            e.utf8_error().valid_up_to() + bom
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);
    impl TempDir {
        fn new(name: &str) -> Self {
            let p = std::env::temp_dir().join(format!("qflume-scan-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
        fn write(&self, rel: &str, data: &[u8]) {
            let p = self.0.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, data).unwrap();
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn run(root: &Path, opts: &ScanOptions, known: &KnownMap) -> Vec<ScanEntry> {
        scan(&[root.to_path_buf()], opts, known).unwrap()
    }

    #[test]
    fn hashes_match_content_hash_and_streaming_handles_split_characters() {
        let t = TempDir::new("hash");
        let mut big = b"xxxxxx".to_vec();
        big.extend("é中😀abc\n".repeat(60_000).as_bytes());
        t.write("big.txt", &big);
        t.write("a/small.md", b"# hi\n");
        let mut bad = vec![b'a'; 300_000];
        bad.extend_from_slice(b"\xe9t\xe9");
        t.write("bad.txt", &bad);
        t.write(".gitignore", b"ignored/\n");
        t.write("ignored/x.txt", b"x");
        let got = run(&t.0, &ScanOptions::default(), &KnownMap::new());
        let keys: Vec<_> = got
            .iter()
            .map(|e| e.key.to_string_lossy().into_owned())
            .collect();
        assert_eq!(keys, ["a/small.md", "bad.txt", "big.txt"]);
        assert_eq!(got[0].hash, Some(content_hash(b"# hi\n")));
        assert_eq!(got[1].skip, Some(SkipReason::NotUtf8));
        assert_eq!(
            got[1].detail.as_deref(),
            Some("invalid UTF-8 at byte 300000")
        );
        assert_eq!(got[2].hash, Some(content_hash(&big)));
        assert_eq!(got[2].size, big.len() as u64);
    }

    #[test]
    fn known_files_are_not_read() {
        let t = TempDir::new("known");
        t.write("a.txt", b"aaa");
        let first = run(&t.0, &ScanOptions::default(), &KnownMap::new());
        let fake = [7u8; HASH_LEN];
        let mut known = KnownMap::new();
        known.insert(
            OsString::from("a.txt"),
            Known::hashed(first[0].size, first[0].mtime_ns, fake),
        );
        let again = run(&t.0, &ScanOptions::default(), &known);
        assert!(again[0].unchanged);
        assert_eq!(again[0].hash, Some(fake));
    }

    #[test]
    fn raw_extensions_are_hashed_unchecked() {
        let t = TempDir::new("raw");
        let bytes = b"%PDF-1.4\0\xff\xfe binary";
        t.write("a.PDF", bytes);
        t.write("b.bin", bytes);
        let opts = ScanOptions {
            raw_extensions: vec!["pdf".into()],
            ..ScanOptions::default()
        };
        let got = run(&t.0, &opts, &KnownMap::new());
        assert_eq!(got[0].skip, None);
        assert_eq!(got[0].hash, Some(content_hash(bytes)));
        assert_eq!(got[1].skip, Some(SkipReason::Binary));
        let big = vec![0u8; 3 * READ_BUF + 5];
        t.write("c.pdf", &big);
        let got = run(&t.0, &opts, &KnownMap::new());
        assert_eq!(got[2].hash, Some(content_hash(&big)));
    }

    #[test]
    fn skip_reasons_and_filters() {
        let t = TempDir::new("skip");
        t.write("e.txt", b"");
        t.write("n.bin", b"ab\0cd");
        t.write("big.txt", &[b'z'; 100]);
        t.write("docs/keep.md", b"k");
        let opts = ScanOptions {
            max_file_size: 99,
            ..ScanOptions::default()
        };
        let got = run(&t.0, &opts, &KnownMap::new());
        let reasons: Vec<_> = got.iter().map(|e| e.skip.map(SkipReason::as_str)).collect();
        assert_eq!(
            reasons,
            [Some("too-large"), None, Some("empty"), Some("binary")]
        );
        let opts = ScanOptions {
            include: vec!["docs/".into(), "*.txt".into()],
            exclude: vec!["big.*".into()],
            ..ScanOptions::default()
        };
        let got = run(&t.0, &opts, &KnownMap::new());
        let keys: Vec<_> = got
            .iter()
            .map(|e| e.key.to_string_lossy().into_owned())
            .collect();
        assert_eq!(keys, ["docs/keep.md", "e.txt"]);
        #[cfg(unix)]
        {
            let link = t.0.with_extension("link");
            let _ = fs::remove_file(&link);
            std::os::unix::fs::symlink(&t.0, &link).unwrap();
            let nofollow = ScanOptions {
                follow_links: false,
                ..ScanOptions::default()
            };
            let got = run(&link, &nofollow, &KnownMap::new());
            let _ = fs::remove_file(&link);
            assert_eq!(got.len(), 4);
            assert!(got[0].path.starts_with(&link));
        }
        let missing = scan(&[t.0.join("missing")], &opts, &KnownMap::new());
        assert!(matches!(missing, Err(CoreError::Io { .. })));
    }
}

#[cfg(test)]
mod timing {
    use super::*;

    /// `QFLUME_SCAN_TIMING=/some/folder cargo test --profile ci --no-default-features --lib scan::timing -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn time_scan_of_a_folder() {
        let Ok(root) = std::env::var("QFLUME_SCAN_TIMING") else {
            return;
        };
        let opts = ScanOptions {
            ignore_files: false,
            exclude: vec!["site-packages/".into()],
            ..ScanOptions::default()
        };
        for threads in [1, 2] {
            let opts = ScanOptions {
                threads,
                ..opts.clone()
            };
            let t = std::time::Instant::now();
            let got = scan(&[PathBuf::from(&root)], &opts, &KnownMap::new()).unwrap();
            let full = t.elapsed();
            let known: KnownMap = got
                .iter()
                .filter_map(|e| {
                    e.hash
                        .map(|hash| (e.key.clone(), Known::hashed(e.size, e.mtime_ns, hash)))
                })
                .collect();
            let t = std::time::Instant::now();
            let again = scan(&[PathBuf::from(&root)], &opts, &known).unwrap();
            let fast = t.elapsed();
            println!(
                "threads={threads} files={} full={full:?} fast={fast:?} unchanged={}",
                got.len(),
                again.iter().filter(|e| e.unchanged).count()
            );
        }
    }
}
