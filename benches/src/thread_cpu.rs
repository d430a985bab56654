//! CPU time of an engine process split by thread group (committer, storage applier,
//! subscription threads, async runtime, the rest), read from `/proc/<pid>/task/*/schedstat`.
//! Per unit of work this gives CPU per commit or transfer, which load on the machine skews
//! far less than latency. Threads that exited are not counted.

/// Thread groups reported apart, in the order of the arrays below.
pub const CPU_GROUPS: [&str; 5] = ["committer", "applier", "subscriptions", "runtime", "other"];

/// CPU time (ns) consumed so far by the threads of `pid`, summed per `CPU_GROUPS` entry by
/// thread name (`tokio-rt-worker` is "runtime"; names are cut at 15 bytes, so subscription
/// re-run helpers show as "subscriptions-r"); zeros where `/proc` is unreadable.
pub fn thread_cpu_ns(pid: u32) -> [u64; 5] {
    let mut out = [0u64; 5];
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let p = t.path();
        let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        let ns: u64 = std::fs::read_to_string(p.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse().ok()))
            .unwrap_or(0);
        let comm = comm.trim();
        let group = match comm {
            "committer" => 0,
            "applier" => 1,
            _ if comm.starts_with("subscriptions") => 2,
            "tokio-rt-worker" => 3,
            _ => 4,
        };
        out[group] += ns;
    }
    out
}

/// CPU µs per unit of work, per thread group, between two `thread_cpu_ns` readings.
pub fn cpu_us_per_unit(before: [u64; 5], after: [u64; 5], units: u64) -> [f64; 5] {
    let mut out = [0.0; 5];
    for (i, o) in out.iter_mut().enumerate() {
        *o = after[i].saturating_sub(before[i]) as f64 / 1e3 / units.max(1) as f64;
    }
    out
}
