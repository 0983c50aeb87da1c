//! A request line -> `parse_op` -> `format_reply`: never panics, keys re-parse.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    distkv_fuzz::check_parse_op(data);
});
