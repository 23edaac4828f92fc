//! The one error type of the core. Every variant names the input it is about.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoreError {
    /// A caller passed an argument that cannot work (bad limits, wrong shapes ...).
    #[error("{0}")]
    InvalidArgument(String),
    /// A file or folder could not be read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Input that is not valid UTF-8 text.
    #[error("{input}: not valid UTF-8 text ({detail})")]
    Decode { input: String, detail: String },
    /// A tokenizer could not be loaded or failed on an input.
    #[error("tokenizer {source_name}: {detail}")]
    Tokenizer { source_name: String, detail: String },
    /// Vectors, ids or payloads that do not fit together or do not fit the target.
    #[error("{0}")]
    Shape(String),
}

pub type CoreResult<T> = Result<T, CoreError>;

impl CoreError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CoreError::Io {
            path: path.into(),
            source,
        }
    }
}
