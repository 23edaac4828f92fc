//! (pack: under construction)
