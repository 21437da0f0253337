//! The command line of createimage2 (`cli`) and the one-command local stack (`dev`).
//!
//! Invariant: `fakes` (the stand-ins) is used by `dev` only; the production roles never touch it.

pub mod cli;
pub mod dev;
