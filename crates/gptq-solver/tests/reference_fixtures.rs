//! Parity with the reference implementation on every fixture in ../shared (skipped with a
//! message when the folder is absent, as in a fresh clone without the shared data).

use gptq_solver::CpuBackend;
use gptq_solver::parity::{ReferenceCase, Thresholds, check_case, list_cases};

#[test]
fn every_reference_case_passes_in_parity_and_default_mode() {
    let Some(dir) = gptq_solver::testing::workspace_fixture_dir() else {
        return;
    };
    let cases = list_cases(&dir).unwrap();
    assert!(!cases.is_empty(), "no fixtures in {}", dir.display());
    let backend = CpuBackend::new();
    let mut failures = Vec::new();
    for path in &cases {
        let case = ReferenceCase::load(path).unwrap();
        let outcome = check_case(&backend, &case, &Thresholds::default()).unwrap();
        println!("{}", outcome.summary());
        println!(
            "    hessian error {:?}, scales within 1e-5: {:.3}% (max rel. error {:.1e}), zeros equal {:.3}%, packed identical {:?}",
            outcome.hessian_error,
            100.0 * outcome.scale_agreement,
            outcome.max_scale_error,
            100.0 * outcome.zero_agreement,
            outcome.packed_identical
        );
        if !outcome.passed() {
            failures.push(outcome.summary());
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn the_checker_catches_a_wrong_result() {
    let Some(dir) = gptq_solver::testing::workspace_fixture_dir() else {
        return;
    };
    let path = list_cases(&dir).unwrap().into_iter().next().unwrap();
    let mut case = ReferenceCase::load(&path).unwrap();
    // Pretend the reference had used other weights: the checker must notice.
    case.weight.mapv_inplace(|w| w * 1.5);
    let outcome = check_case(&CpuBackend::new(), &case, &Thresholds::default()).unwrap();
    assert!(!outcome.passed(), "{}", outcome.summary());
}
