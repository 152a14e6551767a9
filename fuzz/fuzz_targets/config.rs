#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| sandstep::fuzzing::config(data));
