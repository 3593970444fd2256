//! CPU use over a generator's window, from `/proc` (as loadgen.mjs and
//! quotagen.mjs report it): per process name of the server's PIDs, the
//! generator itself (`loadgen`) and the whole machine (`machine`). 100 = one
//! core.

use std::collections::BTreeMap;
use std::time::Instant;

use super::summary::round_to;

const CLK_TCK: f64 = 100.0;

/// `(name, utime + stime ticks)` of a process. wrangler runs two `workerd`
/// processes: the one listening on the public `port` is `workerd_proxy`.
fn proc_cpu(pid: u32, port: u16) -> Option<(String, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let mut comm = s[open + 1..close].to_owned();
    let f: Vec<&str> = s.get(close + 2..)?.split(' ').collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    if comm == "workerd" {
        let args = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let needle = format!("entry=127.0.0.1:{port}");
        if String::from_utf8_lossy(&args).contains(&needle) {
            comm = "workerd_proxy".into();
        }
    }
    Some((comm, ticks))
}

/// `[busy, total]` ticks of all cores from the first line of `/proc/stat`
/// (busy = total minus idle and iowait).
fn machine_ticks() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let f: Vec<u64> = s
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let total: u64 = f.iter().sum();
    Some((total - f.get(3)? - f.get(4)?, total))
}

pub struct CpuSnapshot {
    at: Instant,
    procs: BTreeMap<u32, (String, u64)>,
    own: u64,
    machine: Option<(u64, u64)>,
}

pub fn cpu_snapshot(pids: &[u32], port: u16) -> CpuSnapshot {
    let procs = pids
        .iter()
        .filter_map(|&p| proc_cpu(p, port).map(|c| (p, c)))
        .collect();
    let own = proc_cpu(std::process::id(), 0).map_or(0, |c| c.1);
    CpuSnapshot {
        at: Instant::now(),
        procs,
        own,
        machine: machine_ticks(),
    }
}

pub fn cpu_report(a: &CpuSnapshot, b: &CpuSnapshot) -> BTreeMap<String, f64> {
    let secs = (b.at - a.at).as_secs_f64().max(1e-9);
    let pct = |ticks: u64| ticks as f64 / CLK_TCK / secs * 100.0;
    let mut out: BTreeMap<String, f64> = BTreeMap::new();
    for (pid, (comm, t1)) in &b.procs {
        if let Some((_, t0)) = a.procs.get(pid) {
            *out.entry(comm.clone()).or_default() += pct(t1.saturating_sub(*t0));
        }
    }
    for v in out.values_mut() {
        *v = round_to(*v, 1);
    }
    out.insert(
        "loadgen".into(),
        round_to(pct(b.own.saturating_sub(a.own)), 1),
    );
    if let (Some((busy0, _)), Some((busy1, _))) = (a.machine, b.machine) {
        out.insert(
            "machine".into(),
            round_to(pct(busy1.saturating_sub(busy0)), 1),
        );
    }
    out
}
