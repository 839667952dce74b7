//! Every NetworkPolicy case of tests/netpol/cases through `weftctl lab
//! netpol` on one kernel lab, once on the directory store and once on
//! Kubernetes (`lab up --kubernetes`: namespaces, Pods and policies
//! applied with kubectl to a real API server, the agents reading it):
//! real pods wired by weft-cni, real agents compiling and programming the
//! policies, real TCP, UDP and SCTP from inside the pods. Each probe's
//! answer must be its `expected` (upstream's reachability matrix for the
//! translated e2e tests, the author's for the hand-written smoke cases).
//! All differences of all cases are reported together. Needs root.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use weft_model::policy_case::{CaseResults, PolicyCase, parse_case};
use weft_tests::*;

fn case_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("netpol/cases");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no cases in {}", dir.display());
    files
}

/// What went wrong with one case: its probes whose answer is not the
/// expected one, or why it did not run.
fn judge(name: &str, case: &PolicyCase, out: &std::process::Output) -> Vec<String> {
    let results: CaseResults = match serde_json::from_slice(&out.stdout) {
        Ok(results) => results,
        Err(e) => return vec![format!("{name}: did not run ({e}):\n{}", show(out))],
    };
    if results.results.len() != case.probes.len() {
        return vec![format!(
            "{name}: {} answers to {} probes",
            results.results.len(),
            case.probes.len()
        )];
    }
    let mut wrong = Vec::new();
    for (i, (probe, result)) in case.probes.iter().zip(&results.results).enumerate() {
        assert_eq!(
            (&probe.from, &probe.to, probe.port),
            (&result.from, &result.to, result.port),
            "{name}: answers in probe order"
        );
        let Some(expected) = probe.expected else {
            wrong.push(format!("{name}: probes[{i}] has no expected answer"));
            continue;
        };
        if result.allowed != expected {
            wrong.push(format!(
                "{name}: probes[{i}] {} -> {} {}/{}: allowed {}, expected {expected}",
                probe.from,
                probe.to,
                probe.port,
                probe.protocol.name(),
                result.allowed
            ));
        }
    }
    wrong
}

#[test]
fn every_policy_case_gets_its_expected_answers_on_a_kernel_lab() {
    // Three nodes: the upstream cases' three /24s; the lab is reused by
    // every case and torn down when `lab` drops, also on failure.
    run_every_case(&Lab::up("netpol", 3, 0));
}

#[test]
fn every_policy_case_gets_its_expected_answers_on_kubernetes() {
    let options = UpOptions {
        kubernetes: true,
        ..up_options(3, 0)
    };
    let lab = Lab::build("netpolk", options);
    run_every_case(&lab);
    // What the agents enforced came through the API: the last case's
    // policies are NetworkPolicy objects there.
    let last = parse_case(&std::fs::read_to_string(case_files().last().unwrap()).unwrap()).unwrap();
    let listed = lab.kubectl(&["get", "networkpolicies", "-A", "-o", "name"]);
    assert_eq!(
        listed.lines().count(),
        last.policies.len(),
        "the API server holds the last case's policies: {listed}"
    );
}

/// Runs every case on `lab` with `lab netpol`, reports the time each
/// took, and fails listing every answer that differs from its expected.
fn run_every_case(lab: &Lab) {
    let files = case_files();
    let mut wrong = Vec::new();
    let mut timings = Vec::new();
    for file in &files {
        let name = file.file_stem().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(file).unwrap();
        let case = parse_case(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let started = Instant::now();
        let out = lab.ctl(&["lab", "netpol", "--input", file.to_str().unwrap(), "--json"]);
        let took = started.elapsed();
        eprintln!(
            "{name}: {} probes in {:.2} s; {}",
            case.probes.len(),
            took.as_secs_f64(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        timings.push((name.clone(), case.probes.len(), took));
        wrong.extend(judge(&name, &case, &out));
    }
    let total: Duration = timings.iter().map(|t| t.2).sum();
    let slowest = timings.iter().max_by_key(|t| t.2).expect("a case ran");
    eprintln!(
        "{} cases in {:.1} s (mean {:.2} s, slowest {} {:.2} s for {} probes)",
        timings.len(),
        total.as_secs_f64(),
        total.as_secs_f64() / timings.len() as f64,
        slowest.0,
        slowest.2.as_secs_f64(),
        slowest.1
    );
    // The lab was the test's: `lab netpol` left it up.
    assert_eq!(lab.status().nodes.len(), 3, "the lab is still up");
    assert!(
        wrong.is_empty(),
        "{} answers differ from the cases' expected ones:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}
