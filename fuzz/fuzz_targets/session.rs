//! A whole session through the I/O-free dialogue (first byte: the split into reads,
//! second: server options, then what the client sends; see server::fuzzing::session).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| server::fuzzing::session(data));
