//! (chunk: under construction)
