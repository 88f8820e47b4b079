#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ward_proxy::fuzzing::strict_h1(data));
