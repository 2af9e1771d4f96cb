//! The named figures of a result live in [`report::figures`], beside the gate
//! grammar that `loadgen --require` shares with `check`; re-exported here so the
//! analyzer's modules keep one short path to them.

pub use report::figures::*;
