//! (scan: under construction)
