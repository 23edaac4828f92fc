//! Thin PyO3 bindings over `crate::core`: convert arguments, release the GIL,
//! call the core, convert back. One file per core capability.

use pyo3::prelude::*;

mod chunk;
mod cpu;
mod diff;
mod error;
mod hash;
mod pack;
mod scan;
mod sparse;
mod threads;

#[allow(unused_imports)]
pub(crate) use error::CoreErrorExt;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    threads::register(m)?;
    hash::register(m)?;
    chunk::register(m)?;
    cpu::register(m)?;
    diff::register(m)?;
    scan::register(m)?;
    pack::register(m)?;
    sparse::register(m)?;
    Ok(())
}
