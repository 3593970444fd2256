//! Integration tests: a real client (HTTP and WebSocket) against the Worker
//! served by `wrangler dev` (workerd with local SQLite for D1 and objects).
//!
//! One server is shared by the tests that do not need their own; tests that
//! crash or reconfigure the runtime start their own. The harness is
//! libtest-mimic so that the shared server is started once, before the
//! tests, and stopped after them whatever they did.

#[cfg(not(target_arch = "wasm32"))]
mod client;
#[cfg(not(target_arch = "wasm32"))]
mod client_e2e;
#[cfg(not(target_arch = "wasm32"))]
mod console;
// The one checker of every answer and frame against the API documents.
#[cfg(not(target_arch = "wasm32"))]
mod documents;
#[cfg(not(target_arch = "wasm32"))]
mod faults;
#[cfg(not(target_arch = "wasm32"))]
mod gateway;
#[cfg(not(target_arch = "wasm32"))]
mod hardening;
#[cfg(not(target_arch = "wasm32"))]
mod harness;
#[cfg(not(target_arch = "wasm32"))]
mod history;
#[cfg(not(target_arch = "wasm32"))]
mod lifecycle;
#[cfg(not(target_arch = "wasm32"))]
mod members;
#[cfg(not(target_arch = "wasm32"))]
mod presence;
#[cfg(not(target_arch = "wasm32"))]
mod quota;
#[cfg(not(target_arch = "wasm32"))]
mod sessions;

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    use libtest_mimic::{Arguments, Trial};

    let args = Arguments::from_args();
    let mut trials: Vec<Trial> = Vec::new();
    let all = [
        gateway::TESTS,
        sessions::TESTS,
        presence::TESTS,
        quota::TESTS,
        faults::TESTS,
        lifecycle::TESTS,
        history::TESTS,
        client_e2e::TESTS,
        console::TESTS,
        hardening::TESTS,
        members::TESTS,
    ];
    for (name, test) in all.into_iter().flatten() {
        trials.push(Trial::test(*name, move || {
            client::block_on(test());
            Ok(())
        }));
    }
    let wanted = trials
        .iter()
        .any(|t| args.filter.as_deref().is_none_or(|f| t.name().contains(f)));
    // Start the shared server only when some test will run (`--list` and
    // filters that match nothing need none).
    let server =
        (wanted && !args.list).then(|| harness::Server::start(&[("PRESENCE_TTL_MS", "2000")]));
    if let Some(s) = &server {
        client::set_base(&s.base);
    }
    let conclusion = libtest_mimic::run(&args, trials);
    if conclusion.has_failed() {
        if let Some(s) = &server {
            eprintln!("--- shared server log (tail) ---\n{}", s.log_tail());
        }
    }
    drop(server);
    conclusion.exit_code()
}

#[cfg(target_arch = "wasm32")]
fn main() {}
