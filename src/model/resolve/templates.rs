//! Stage 3: the templates under templates/, loaded once into one
//! environment with limits; rendered per host with its variables.

use super::*;

impl Loader<'_> {
    pub(super) fn templates(&mut self, secrets: &BTreeSet<String>) -> Templates {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        // Templates render config files, not web pages: never escape implicitly
        // (minijinja would JSON-escape `*.json.j2`); use `|tojson` where wanted.
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .keep_trailing_newline(true)
            .build();
        env.set_syntax(syntax.expect("default delimiters are valid"));
        // Bound the work one render may do, so a runaway loop is an error, not a hang.
        env.set_fuel(Some(TEMPLATE_FUEL));
        let used_secret = Arc::new(AtomicBool::new(false));
        let flag = used_secret.clone();
        let known = secrets.clone();
        let plain = self.plain.clone();
        let closed = self.undecryptable.clone();
        env.add_function(
            "secret",
            move |name: String| -> Result<String, minijinja::Error> {
                flag.store(true, Ordering::Relaxed);
                if let Some(p) = plain.get(&name) {
                    Ok(p.clone())
                } else if let Some(why) = closed.get(&name) {
                    Err(minijinja::Error::new(
                        minijinja::ErrorKind::InvalidOperation,
                        format!("secret {name:?} is used but secrets/{name}.age cannot be decrypted: {why}"),
                    ))
                } else if known.contains(&name) {
                    // No identity here (validate): the value stays hidden.
                    Ok(SENSITIVE.to_string())
                } else {
                    Err(minijinja::Error::new(
                        minijinja::ErrorKind::InvalidOperation,
                        format!(
                            "secret {name:?} is referenced but secrets/{name}.age does not exist"
                        ),
                    ))
                }
            },
        );
        let mut paths = HashMap::new();
        let sources: Vec<(String, String, Option<Vec<u8>>)> = self
            .tree
            .under("templates")
            .map(|(p, e)| {
                (
                    p["templates/".len()..].to_string(),
                    p.to_string(),
                    entry_bytes(e),
                )
            })
            .chain(
                self.tree
                    .under("stacks")
                    .filter(|(p, _)| p.ends_with(".j2"))
                    .map(|(p, e)| (p.to_string(), p.to_string(), entry_bytes(e))),
            )
            .collect();
        for (name, path, bytes) in sources {
            let Some(bytes) = bytes else { continue };
            let Ok(text) = String::from_utf8(bytes) else {
                self.err(Origin::file(&path).error("not-utf8", "the template is not valid UTF-8"));
                continue;
            };
            paths.insert(name.clone(), path.clone());
            if let Err(e) = env.add_template_owned(name, text.clone()) {
                let d = template_diagnostic(&path, &text, &e);
                self.err(d);
            }
        }
        Templates {
            env,
            used_secret,
            paths,
        }
    }

    pub(super) fn template_context(&self, host: &Host, fleet_name: &str) -> minijinja::Value {
        let mut ctx = host.vars.clone();
        ctx.insert(
            "host".into(),
            serde_json::json!({
                "name": host.name,
                "group": host.group,
                "index": host.index,
                "provider": provider_name(host.provider),
                "address": host.address,
                "private_address": host.private_address,
                "labels": host.labels,
                "roles": host.roles,
            }),
        );
        ctx.insert("fleet".into(), serde_json::json!({ "name": fleet_name }));
        // `facts`: this host's discovered facts (see `model::facts`).
        // `hosts`: every host's facts, shared (not copied) by all renders;
        // a variable of that name wins (the later map wins a merge).
        minijinja::value::merge_maps([
            minijinja::context! {
                hosts => self.host_facts.clone(),
                facts => crate::model::facts::FactsValue::value(host.facts.as_ref(), self.facts_seen.clone()),
            },
            minijinja::Value::from(minijinja::value::Serde(serde_json::Value::Object(ctx))),
        ])
    }

    /// Render template `name` for a host; errors are reported once per template location.
    pub(super) fn render(
        &mut self,
        t: &Templates,
        name: &str,
        ctx: &minijinja::Value,
        host: &str,
    ) -> Option<(Vec<u8>, bool)> {
        let tmpl = t.env.get_template(name).ok()?; // syntax errors were reported when loading
        if self.over_budget() {
            return None;
        }
        t.used_secret.store(false, Ordering::Relaxed);
        match tmpl.render(ctx) {
            Ok(s) => {
                let path = t
                    .paths
                    .get(name)
                    .cloned()
                    .unwrap_or_else(|| format!("templates/{name}"));
                self.spend_rendered(&path, s.len())
                    .then(|| (s.into_bytes(), t.used_secret.load(Ordering::Relaxed)))
            }
            Err(e) => {
                let tname = e.name().unwrap_or(name).to_string();
                let path = t
                    .paths
                    .get(&tname)
                    .cloned()
                    .unwrap_or_else(|| format!("templates/{tname}"));
                let text = self.tree.text(&path).unwrap_or_default();
                let mut d = template_diagnostic(&path, &text, &e);
                d.message = format!("{} (rendering for host {host})", d.message);
                self.err_once(format!("render:{}:{}:{}", d.file, d.line, d.column), d);
                None
            }
        }
    }

    /// Whether a `when:` condition holds for a host (None: it is not a
    /// valid expression, reported at its place).
    pub(super) fn holds(
        &mut self,
        t: &Templates,
        condition: &str,
        ctx: &minijinja::Value,
        origin: &Origin,
        host: &str,
    ) -> Option<bool> {
        match t
            .env
            .compile_expression(condition)
            .and_then(|e| e.eval(ctx))
        {
            Ok(v) => Some(v.is_true()),
            Err(e) => {
                let detail = e.detail().map(|d| format!(": {d}")).unwrap_or_default();
                let d = origin
                    .error("template", format!("{}{detail} (when: {condition:?} for host {host})", e.kind()))
                    .with_help("when: is a minijinja expression over the host's variables, host.*, fleet.* and facts.*, e.g. facts.arch == \"aarch64\"");
                self.err_once(format!("when:{origin}"), d);
                None
            }
        }
    }

    /// Render an inline template string (a YAML value) for a host.
    pub(super) fn render_str(
        &mut self,
        t: &Templates,
        src: &str,
        ctx: &minijinja::Value,
        origin: &Origin,
        host: &str,
    ) -> Option<String> {
        if self.over_budget() {
            return None;
        }
        match t.env.render_str(src, ctx) {
            Ok(s) => self.spend_rendered(&origin.file, s.len()).then_some(s),
            Err(e) => {
                let detail = e.detail().map(|d| format!(": {d}")).unwrap_or_default();
                let d = origin
                    .error("template", format!("{}{detail} (rendering {src:?} for host {host})", e.kind()))
                    .with_help("variables come from vars in tidekeeper.yaml, roles and hosts, plus host.*, fleet.* and facts.*");
                self.err_once(format!("render-str:{origin}"), d);
                None
            }
        }
    }
}

/// A template error as a located diagnostic in the template's own file.
pub(super) fn template_diagnostic(path: &str, text: &str, e: &minijinja::Error) -> Diagnostic {
    let line = e.line().unwrap_or(0) as u64;
    let column = e
        .range()
        .and_then(|r| text.get(..r.start))
        .map(|before| before.rsplit('\n').next().unwrap_or("").chars().count() as u64 + 1)
        .unwrap_or(if line > 0 { 1 } else { 0 });
    let detail = e.detail().map(|d| format!(": {d}")).unwrap_or_default();
    Origin::new(path, line, column)
        .error("template", format!("{}{detail}", e.kind()))
        .with_help("templates are minijinja (Jinja2) syntax; variables come from vars in tidekeeper.yaml, roles and hosts, plus host.*, fleet.* and facts.*")
}

/// Whether a YAML string value is a minijinja expression to render per host.
pub(super) fn is_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%")
}
