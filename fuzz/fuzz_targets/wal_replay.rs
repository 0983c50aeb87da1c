//! Checksum-valid log records with arbitrary payloads -> `Storage::open`
//! (decode each entry, replay it through the state machine): never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    distkv_fuzz::check_log_replay(data);
});
