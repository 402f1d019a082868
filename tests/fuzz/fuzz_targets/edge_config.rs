//! The edge's site file: a clear error naming the file, or the site; never a panic.
#![no_main]

use ems_config::Source;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Err(e) = ems_edge::config::Site::from_source(&Source::embedded("edge.toml", text)) {
        assert!(e.to_string().starts_with("edge.toml"), "{e}");
    }
});
