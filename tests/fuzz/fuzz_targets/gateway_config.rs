//! The gateway's configuration file: a clear error naming the file, or a plant; never a panic.
//! Seeded best with gateway/examples/demo.toml.
#![no_main]

use ems_config::Source;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    match ems_gateway::Plant::from_source(&Source::embedded("gw.toml", text)) {
        Ok(plant) => {
            let _ = ems_gateway::write_rules(&plant);
        }
        Err(e) => assert!(e.to_string().starts_with("gw.toml"), "{e}"),
    }
});
