//! Writes upstream's NetworkPolicy e2e tests as policy cases
//! (`tests/netpol/cases/upstream-*.json`, or into the directory given):
//! run it after changing `weft_tests::netpol_cases`; the
//! `netpol_simulate` test fails while the committed files differ.

use std::process::ExitCode;

fn main() -> ExitCode {
    let dir = std::env::args_os()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(weft_tests::netpol_cases::cases_dir);
    match weft_tests::netpol_cases::write_upstream_cases(&dir) {
        Ok(n) => {
            println!("wrote {n} cases into {}", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: writing cases into {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}
