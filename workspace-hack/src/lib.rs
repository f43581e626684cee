//! Feature unification only: see this crate's `Cargo.toml` for why it exists. It has no code.
