//! Every policy case of `tests/netpol/cases` through the built
//! `weftctl policy simulate --json` (the twin; no root needed): each
//! probe's verdict must be the case's `expected`. Also checks that the
//! committed `upstream-*.json` cases are what the generator
//! (`weft_tests::netpol_cases`) writes today.

use std::path::PathBuf;
use std::time::Instant;

use weft_model::policy_case::{CaseResults, parse_case};
use weft_tests::netpol_cases::{case_text, cases_dir, upstream_cases};
use weft_tests::weftctl;

fn case_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(cases_dir())
        .expect("tests/netpol/cases exists")
        .map(|e| e.expect("a readable directory").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_case_gets_its_expected_verdicts_from_the_twin() {
    let started = Instant::now();
    let files = case_files();
    assert!(!files.is_empty(), "no cases in {}", cases_dir().display());
    let (mut probes, mut mismatches) = (0, Vec::new());
    for file in &files {
        let name = file.file_stem().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(file).expect("a readable case");
        let case = parse_case(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let input = file.to_string_lossy();
        let out = weftctl(&["policy", "simulate", "--input", &input, "--json"]);
        // Exit status 1: it ran, and some answer differs from `expected`.
        assert!(
            matches!(out.status.code(), Some(0 | 1)),
            "{name}: weftctl policy simulate failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let results: CaseResults = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{name}: not a results document: {e}"));
        assert_eq!(
            results.results.len(),
            case.probes.len(),
            "{name}: one result per probe"
        );
        for (probe, result) in case.probes.iter().zip(&results.results) {
            assert_eq!(
                (&result.from, &result.to, result.port, &result.protocol),
                (&probe.from, &probe.to, probe.port, &probe.protocol),
                "{name}: results in the probes' order"
            );
            let Some(expected) = probe.expected else {
                continue;
            };
            probes += 1;
            if result.allowed != expected {
                mismatches.push(format!(
                    "{name}: {} -> {} {}/{}: expected {}, got {}",
                    probe.from,
                    probe.to,
                    probe.port,
                    probe.protocol.name(),
                    verdict(expected),
                    verdict(result.allowed)
                ));
            }
        }
    }
    println!(
        "{} cases, {probes} probes with an expectation, {} mismatches, in {:.1?}",
        files.len(),
        mismatches.len(),
        started.elapsed()
    );
    for m in &mismatches {
        println!("MISMATCH {m}");
    }
    assert!(
        mismatches.is_empty(),
        "{} probes differ from their expected verdict:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

fn verdict(allowed: bool) -> &'static str {
    if allowed { "allowed" } else { "denied" }
}

#[test]
fn the_upstream_cases_are_up_to_date_with_their_generator() {
    let generated = upstream_cases();
    let mut stale = Vec::new();
    for (name, case) in &generated {
        let path = cases_dir().join(format!("{name}.json"));
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if committed != case_text(case) {
            stale.push(format!("{name}.json differs or is missing"));
        }
        // What the generator writes is a case the runners accept.
        parse_case(&case_text(case)).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    for file in case_files() {
        let stem = file.file_stem().unwrap().to_string_lossy().into_owned();
        if stem.starts_with("upstream-") && !generated.iter().any(|(n, _)| *n == stem) {
            stale.push(format!("{stem}.json is no test's any more"));
        }
    }
    assert!(
        stale.is_empty(),
        "the committed cases are stale; run `cargo run --release -p weft-tests --bin netpol-cases`:\n{}",
        stale.join("\n")
    );
}
