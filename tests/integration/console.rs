//! The live console (public/console/) in headless Chromium, driven by
//! tests/console/console.test.mjs with playwright-core against the shared
//! server. Screenshots go to target/console-artifacts/.

use std::path::PathBuf;
use std::process::Command;

use crate::client::{base, unique, TestFn};
use crate::harness::user_token;

/// The tests of this module, by name.
pub const TESTS: &[(&str, TestFn)] = crate::test_list!(
    "console",
    two_browsers_share_a_session_and_bad_tokens_show_errors
);

/// Chromium, or `None` when this machine has none and the run does not
/// require the browser tests (`cargo xtask test` sets `SESH_BROWSER_TESTS`).
fn chromium() -> Option<PathBuf> {
    let path =
        PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let ready = path.exists() && root.join("node_modules/playwright-core").exists();
    if !ready && std::env::var_os("SESH_BROWSER_TESTS").is_some() {
        panic!("SESH_BROWSER_TESTS is set but chromium or playwright-core is missing");
    }
    ready.then_some(path)
}

async fn two_browsers_share_a_session_and_bad_tokens_show_errors() {
    let Some(chromium) = chromium() else {
        eprintln!("console test skipped: no chromium or playwright-core here");
        return;
    };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let (a, b) = (unique("console-a"), unique("console-b"));
    let args = [
        base().to_owned(),
        user_token(&a, "pro"),
        user_token(&b, "pro"),
        b.clone(),
        root.join("target/console-artifacts").display().to_string(),
    ];
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(root.join("tests/console/console.test.mjs"))
            .args(args)
            .env("CHROMIUM", chromium)
            .current_dir(&root)
            .output()
    })
    .await
    .expect("join")
    .expect("run node");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "console test failed:\n{text}");
}
