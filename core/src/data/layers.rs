//! The data layer's order (the module documentation of `crate::data`),
//! checked on its source files: every `crate::` path in a module's file
//! (its doc links and inline tests included) names `crate::data::M` only
//! for an `M` before it, and no core or lifecycle module at all. The
//! separate test files (`history/tests.rs`, `rollup/tests.rs`) are not
//! checked: a test may compare a query with a step above it (the stats a
//! retired session's points give in D1 and in its archive).

/// The modules in order: each may use only those before it.
const ORDER: [(&str, &str); 4] = [
    ("partition", include_str!("partition.rs")),
    ("history", include_str!("history.rs")),
    ("d1", include_str!("d1.rs")),
    ("rollup", include_str!("rollup.rs")),
];

/// Top-level modules of `sesh_core` the data layer never uses.
const ABOVE: [&str; 5] = ["session", "presence", "quota", "lifecycle", "calls"];

/// The identifier at the start of `s`.
fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// What the `crate::` paths of `source` name: `(top module, data module)`,
/// the latter for `crate::data::M`. A path that goes on with `{` names a
/// group this check cannot read, so it is given as `("{", "")`.
fn crate_paths(source: &str) -> Vec<(&str, &str)> {
    source
        .match_indices("crate::")
        .map(|(i, m)| {
            let rest = &source[i + m.len()..];
            if rest.starts_with('{') {
                return ("{", "");
            }
            let top = ident(rest);
            let after = &rest[top.len()..];
            match after.strip_prefix("::") {
                Some(next) if top == "data" && next.starts_with('{') => ("{", ""),
                Some(next) if top == "data" => (top, ident(next)),
                _ => (top, ""),
            }
        })
        .collect()
}

/// The breaches of the order in `files` (name and source, in order), each
/// as "file: path": a `crate::data` module after the file's own, or a
/// top-level module in `above`. A module may name itself. (Also fit for
/// other folders, e.g. the lifecycle steps with `above` = `["session"]`.)
fn breaches(files: &[(&str, &str)], above: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for (pos, (name, source)) in files.iter().enumerate() {
        let below: Vec<&str> = files[..pos].iter().map(|(n, _)| *n).collect();
        for (top, data) in crate_paths(source) {
            let ok = match top {
                "{" => false,
                "data" => data == *name || below.contains(&data),
                t => !above.contains(&t),
            };
            if !ok {
                let path = match (top, data) {
                    ("{", _) => "crate::{..} (write one path per use)".to_owned(),
                    (t, "") => format!("crate::{t}"),
                    (t, d) => format!("crate::{t}::{d}"),
                };
                out.push(format!("{name}: {path}"));
            }
        }
        // `super::` could name a sibling without `crate::`; only the glob
        // of an inline test module (its own file) is allowed.
        for (i, m) in source.match_indices("super::") {
            if !source[i + m.len()..].starts_with('*') {
                out.push(format!("{name}: super::{}", ident(&source[i + m.len()..])));
            }
        }
    }
    out
}

#[test]
fn the_data_layer_only_looks_down() {
    assert_eq!(breaches(&ORDER, &ABOVE), Vec::<String>::new());
}

#[test]
fn the_check_finds_upward_and_core_imports() {
    let files = [
        ("partition", "use crate::time::Millis;"),
        (
            "history",
            "use crate::data::partition::Statement;\nuse crate::data::rollup::x;",
        ),
        (
            "rollup",
            "use crate::data::history::{a, b};\nfn f() { crate::session::Meta::new(); }",
        ),
        (
            "d1",
            "use crate::{data, quota};\nuse crate::data::{history, d1};",
        ),
        (
            "x",
            "use super::history::write;\nmod tests { use super::*; }",
        ),
    ];
    assert_eq!(
        breaches(&files, &ABOVE),
        vec![
            "history: crate::data::rollup",
            "rollup: crate::session",
            "d1: crate::{..} (write one path per use)",
            "d1: crate::{..} (write one path per use)",
            "x: super::history",
        ]
    );
    assert_eq!(
        breaches(&[("history", "crate::data::history::f")], &ABOVE),
        Vec::<String>::new(),
        "a module may name itself"
    );
}

/// The lifecycle comes after the whole data layer and before no core: its
/// steps read and write D1 and R2 through the data layer and never use the
/// objects' cores or the calls between them.
#[test]
fn the_lifecycle_uses_the_data_layer_and_no_core() {
    let mut files = ORDER.to_vec();
    files.extend([
        ("store", include_str!("../lifecycle/store.rs")),
        ("format", include_str!("../lifecycle/format.rs")),
        ("reads", include_str!("../lifecycle/reads.rs")),
        ("moves", include_str!("../lifecycle/moves.rs")),
        ("archive", include_str!("../lifecycle/archive.rs")),
        ("prune", include_str!("../lifecycle/prune.rs")),
        ("export", include_str!("../lifecycle/export.rs")),
        ("mod", include_str!("../lifecycle/mod.rs")),
    ]);
    let lifecycle: Vec<String> = breaches(&files, &["session", "presence", "quota", "calls"])
        .into_iter()
        .filter(|b| !ORDER.iter().any(|(n, _)| b.starts_with(&format!("{n}:"))))
        // `store`'s in-memory test backend names its own parent module.
        .filter(|b| !b.contains(": super::"))
        .collect();
    assert_eq!(lifecycle, Vec::<String>::new());
}
