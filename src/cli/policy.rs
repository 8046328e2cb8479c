//! `tidekeeper policy test`: the policies' own tests.

use super::*;

pub(super) fn policy_test(repo: &RepoArgs) -> u8 {
    let results = crate::policy::run_tests(&repo_policies(repo));
    if results.is_empty() {
        println!("No policy tests (test_* rules in policies/*.rego).");
        return EXIT_OK;
    }
    let mut failed = 0;
    for (name, r) in &results {
        match r {
            Ok(()) => println!("PASS {name}"),
            Err(e) => {
                failed += 1;
                println!("FAIL {name}: {e}");
            }
        }
    }
    println!("{} passed, {failed} failed", results.len() - failed);
    if failed > 0 { EXIT_INVALID } else { EXIT_OK }
}
