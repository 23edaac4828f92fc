//! (sparse: under construction)
