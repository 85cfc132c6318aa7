//! The `validate_body` fuzz target (body: `portcullis_fuzz::validate_body`): libFuzzer's entry with the
//! `libfuzzer` feature, else a program that runs the body over the files it is given.
#![cfg_attr(feature = "libfuzzer", no_main)]

#[cfg(feature = "libfuzzer")]
libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis_fuzz::validate_body(data));

#[cfg(not(feature = "libfuzzer"))]
fn main() -> std::process::ExitCode {
    portcullis_fuzz::replay_args(portcullis_fuzz::validate_body)
}
