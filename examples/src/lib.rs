//! Runnable programs live beside this crate as examples (`cargo run --example <name>`).
