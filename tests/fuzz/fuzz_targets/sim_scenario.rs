//! A simulator scenario file: a clear error or a scenario; never a panic.
#![no_main]

use ems_config::Source;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Err(e) = ems_sim::scenario::Scenario::from_source(&Source::embedded("s.toml", text)) {
        assert!(e.to_string().starts_with("s.toml"), "{e}");
    }
});
