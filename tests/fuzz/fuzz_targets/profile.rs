//! A meter profile (register map): a clear error or a profile the planner can use; never a panic.
#![no_main]

use ems_config::Source;
use ems_edge::profile::Library;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let mut lib = Library::built_in();
    if let Err(e) = lib.add(&Source::embedded("meter.toml", text)) {
        assert!(e.to_string().starts_with("meter.toml"), "{e}");
    }
});
