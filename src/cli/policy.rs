//! `tidekeeper policy test`: the policies' own tests.

use super::*;

pub(super) fn policy_test(repo: &RepoArgs) -> CliResult {
    let results = crate::policy::run_tests(&repo_policies(repo));
    if results.is_empty() {
        println!("No policy tests (test_* rules in policies/*.rego).");
        return Ok(Outcome::Done);
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
    Ok(Outcome::failed_if(failed > 0))
}
