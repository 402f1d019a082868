//! The gateway's configuration file: a clear error naming the file, or a plant; never a panic.
//! Seeded best with gateway/examples/demo.toml.
#![no_main]

use ems_config::Source;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    match ems_gateway::Config::from_source(&Source::embedded("gw.toml", text)) {
        Ok(config) => {
            let _ = config.write_rules();
        }
        Err(e) => assert!(e.to_string().starts_with("gw.toml"), "{e}"),
    }
});
