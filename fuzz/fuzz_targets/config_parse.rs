//! Fuzz the config loader: any text is either a valid config or a one-line
//! error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = shardline::Config::from_toml_str(text) {
            assert!(!e.0.contains('\n'), "config errors are one line: {}", e.0);
        }
    }
});
