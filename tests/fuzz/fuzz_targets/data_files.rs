//! The coefficient and limit data files a plant replaces with its licensed figures: a clear
//! error or the table, never a panic.
#![no_main]

use ems_config::Source;
use ems_energy::coefficients::Coefficients;
use ems_energy::limits::Limits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (bool, &str)| {
    let (limits, text) = input;
    let src = Source::embedded("data.toml", text);
    let err = if limits {
        Limits::from_source(&src).err()
    } else {
        Coefficients::from_source(&src).err()
    };
    if let Some(e) = err {
        assert!(e.to_string().starts_with("data.toml"), "{e}");
    }
});
