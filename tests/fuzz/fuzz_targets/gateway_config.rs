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
        // The configuration's own error, or one inside a file it names (a CSV or data file
        // that exists and is wrong: that file's line). A named file that cannot be read is the
        // configuration's error, at the key that names it.
        Err(e) => assert!(
            e.to_string().starts_with("gw.toml")
                || (e.line.is_some() && text.contains(&*e.file.to_string_lossy())),
            "{e}"
        ),
    }
});
