//! The command line of createimage2 (`cli`) and the one-command local stack (`dev`).
//!
//! Invariant: `fakes` (the stand-ins) is used by `dev` only, and `dev` exists only with the `dev` feature (on by
//! default, off in the release build): the production binary cannot start a stand-in.

pub mod cli;
#[cfg(feature = "dev")]
pub mod dev;
