#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ward_proxy::fuzzing::mux_frames(data));
