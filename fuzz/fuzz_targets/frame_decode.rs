//! Bytes from the network -> `decode_frame` -> `decode_msg`: never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    distkv_fuzz::check_frame_decode(data);
});
