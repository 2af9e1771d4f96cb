//! The command parser on arbitrary bytes (see server::fuzzing::command_line).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| server::fuzzing::command_line(data));
