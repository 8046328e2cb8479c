//! `tidekeeper plan`: what would change, as text, JSON or Markdown, and for untrusted proposals.

use super::*;

/// Plan the selected hosts and their servers (the whole fleet when no
/// `--host` is given: only then are servers of removed hosts planned for deletion).
#[allow(clippy::too_many_arguments)]
pub(super) fn plan_fleet(
    rt: &tokio::runtime::Runtime,
    fleet: Fleet,
    names: Vec<String>,
    args: &HostArgs,
    opts: &std::sync::Arc<engine::Options>,
    clouds: &crate::cloud::Clouds,
    quiet: bool,
    pool: &engine::Pool,
) -> reconcile::FleetPlan {
    let total = names.len();
    rt.block_on(reconcile::plan(
        std::sync::Arc::new(fleet),
        names,
        args.selects_all(),
        opts.clone(),
        clouds,
        crate::cloud::plan::PlanOptions {
            allow_destroy: args.allow_destroy,
        },
        progress(total, quiet),
        pool,
    ))
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum PlanFormat {
    Text,
    Json,
    Markdown,
}

impl PlanFormat {
    /// From `-o`.
    pub(super) fn of(o: Output) -> PlanFormat {
        match o {
            Output::Text => PlanFormat::Text,
            Output::Json => PlanFormat::Json,
            Output::Markdown => PlanFormat::Markdown,
        }
    }

    /// `-o` as the older `--json` and `--markdown` (which clap keeps apart) say.
    pub(super) fn legacy(json: bool, markdown: bool) -> Output {
        if json {
            Output::Json
        } else if markdown {
            Output::Markdown
        } else {
            Output::Text
        }
    }
}

/// Plan a proposal (`repo.refname`) under the trusted `base` branch.
pub(super) fn plan_untrusted(
    rt: &tokio::runtime::Runtime,
    repo: &RepoArgs,
    args: &HostArgs,
    base: &str,
) -> Result<reconcile::ProposalPlan, CliError> {
    let base_args = RepoArgs {
        repo: repo.repo.clone(),
        refname: base.to_string(),
    };
    let all_hosts = HostArgs {
        hosts: vec![],
        labels: vec![],
        ..args.clone()
    };
    let (base_fleet, _, opts, base_policies) = prepare(&base_args, &all_hosts)?;
    let tree = read_tree(repo)?;
    // Nothing of a proposal is decrypted.
    let proposal = load(&tree, Format::Human)?;
    let names = if args.selects_all() {
        None
    } else {
        Some(choose(&proposal, args)?)
    };
    Ok(rt.block_on(reconcile::plan_proposal(
        &base_fleet,
        &base_policies,
        proposal,
        &tree.policies(),
        names,
        opts,
        None,
    )))
}

pub(super) fn plan(
    repo: &RepoArgs,
    args: &HostArgs,
    untrusted_base: Option<&str>,
    format: PlanFormat,
    detailed: bool,
    changed_files_only: bool,
    out: Option<&Path>,
) -> CliResult {
    let json = format != PlanFormat::Text;
    let rt = runtime();
    let pool = engine::Pool::new();
    let (fp, verdict, after_merge, opts) = match untrusted_base {
        Some(base) => {
            let p = plan_untrusted(&rt, repo, args, base)?;
            let opts = engine::Options {
                redactions: p.plan.fleet.redactions.clone(),
                ..Default::default()
            };
            (p.plan, p.verdict, p.after_merge, opts)
        }
        None => {
            let (fleet, names, mut opts, policies) = prepare(repo, args)?;
            // A saved plan names the hosts chosen, whatever chose them.
            let chosen = match args.selects_all() {
                true => args.clone(),
                false => HostArgs {
                    hosts: names.clone(),
                    labels: vec![],
                    ..args.clone()
                },
            };
            opts.changed_files_only = changed_files_only;
            opts.record_file_stats = changed_files_only;
            opts.digest_observed = out.is_some();
            let opts = std::sync::Arc::new(opts);
            let clouds = crate::cloud::Clouds::from_env(&fleet);
            let fp = plan_fleet(&rt, fleet, names, args, &opts, &clouds, json, &pool);
            let gate = fp.gate(&policies);
            if let Some(path) = out {
                super::saved::write(&super::saved::of(&fp, &gate, &chosen, &opts), path)?;
            }
            (fp, gate.verdict, vec![], (*opts).clone())
        }
    };
    let results = fp.results();
    if !after_merge.is_empty() && format == PlanFormat::Text {
        println!("Planned as a proposal: these of its settings take effect only after merge:");
        for a in &after_merge {
            println!("  - {a}");
        }
        println!();
    }
    let commit = fp.fleet.commit.clone().unwrap_or_default();
    let review = crate::report::Review {
        fleet: &fp.fleet.name,
        commit: &commit,
        cloud: fp.cloud.as_ref(),
        results: &results,
        verdict: &verdict,
        after_merge: &after_merge,
    };
    if format == PlanFormat::Markdown {
        let md = crate::report::markdown(&review, crate::report::GITHUB_LIMIT);
        print!("{}", opts.redact(&md));
    } else if json {
        let doc = crate::report::plan_json(&review, untrusted_base.is_some());
        let text = serde_json::to_string_pretty(&doc).expect("json");
        println!("{}", opts.redact(&text));
    } else {
        print!(
            "{}",
            opts.redact(&reconcile::text(fp.cloud.as_ref(), &results, color()))
        );
        if fp.has_changes() {
            print!("\n{}", opts.redact(&verdict.render()));
        }
    }
    if let (Some(path), PlanFormat::Text) = (out, format) {
        println!(
            "\nSaved this plan to {}; `tidekeeper apply {}` applies exactly it.",
            path.display(),
            path.display()
        );
    }
    let t = reconcile::totals(fp.cloud.as_ref(), &results);
    rt.block_on(reconcile::finish(fp, pool.clone()));
    Ok(if t.errors > 0 || t.blocked > 0 || verdict.blocks() {
        Outcome::Failed
    } else if detailed && t.add + t.change + t.destroy + t.run > 0 {
        Outcome::Changes
    } else {
        Outcome::Done
    })
}
