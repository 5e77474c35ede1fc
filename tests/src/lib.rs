//! Cross-crate tests live beside this crate (`tests/*.rs`); this library is empty.
