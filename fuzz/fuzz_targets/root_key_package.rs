#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| sandstep::fuzzing::root_key_package(data));
