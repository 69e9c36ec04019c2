#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| commission_host_fuzz::webhook_json(data));
