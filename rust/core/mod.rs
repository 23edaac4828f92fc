//! Pure-Rust capabilities, one module each. Nothing here knows about Python.

pub mod chunk;
pub mod cpu;
pub mod diff;
pub mod error;
pub mod hash;
pub mod pack;
pub mod scan;
pub mod sparse;

pub use error::{CoreError, CoreResult};
