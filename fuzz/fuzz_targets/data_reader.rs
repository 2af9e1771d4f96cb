//! The DATA reader on an arbitrary stream split into arbitrary reads (first byte:
//! the split), against a byte-by-byte reference (see server::fuzzing::data_reader).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| server::fuzzing::data_reader(data));
