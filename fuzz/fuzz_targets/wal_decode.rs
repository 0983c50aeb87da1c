//! Bytes from a log segment or snapshot file -> `decode_record`,
//! `decode_segment_header`, `decode_snapshot`, and `Wal::open` on a log
//! directory holding them: never panics; what decodes re-encodes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    distkv_fuzz::check_wal_decode(data);
    distkv_fuzz::check_wal_open(data);
});
