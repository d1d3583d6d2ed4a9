//! Memory and CPU of a process tree, from /proc: the root and every descendant (found by
//! walking parent pids), RSS summed in MB and CPU time turned into a percentage between samples.

use std::collections::HashMap;
use std::time::Instant;

/// Kernel clock ticks per second (USER_HZ); 100 on every Linux architecture we run on.
const TICKS_PER_SEC: f64 = 100.0;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TreeUsage {
    pub processes: usize,
    pub memory_mb: f64,
    /// CPU ticks (user + system) of the tree.
    pub cpu_ticks: u64,
}

struct ProcInfo {
    ppid: i32,
    ticks: u64,
}

/// Parses `/proc/<pid>/stat`: the command may contain spaces and parentheses, so fields are
/// counted after the last ')'.
fn parse_stat(text: &str) -> Option<ProcInfo> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state(0) ppid(1) ... utime(11) stime(12)
    Some(ProcInfo {
        ppid: f.get(1)?.parse().ok()?,
        ticks: f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?,
    })
}

fn rss_kb(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

/// Usage of the trees rooted at each of `roots` (one /proc scan for all of them).
pub fn sample(roots: &[i32]) -> HashMap<i32, TreeUsage> {
    let mut procs: HashMap<i32, ProcInfo> = HashMap::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            if let Some(info) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .as_deref()
                .and_then(parse_stat)
            {
                procs.insert(pid, info);
            }
        }
    }
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for (pid, info) in &procs {
        children.entry(info.ppid).or_default().push(*pid);
    }
    let mut out = HashMap::new();
    for &root in roots {
        if !procs.contains_key(&root) {
            continue;
        }
        let mut usage = TreeUsage {
            processes: 0,
            memory_mb: 0.0,
            cpu_ticks: 0,
        };
        let mut stack = vec![root];
        let mut ticks = 0;
        let mut rss = 0;
        while let Some(p) = stack.pop() {
            if let Some(pi) = procs.get(&p) {
                usage.processes += 1;
                ticks += pi.ticks;
                rss += rss_kb(p);
            }
            if let Some(c) = children.get(&p) {
                stack.extend(c.iter().copied().filter(|c| *c != p));
            }
        }
        usage.cpu_ticks = ticks;
        usage.memory_mb = rss as f64 / 1024.0;
        out.insert(root, usage);
    }
    out
}

/// Turns successive tick counts into CPU% (100 = one core fully busy).
#[derive(Default)]
pub struct CpuMeter {
    last: HashMap<String, (u64, Instant)>,
}

impl CpuMeter {
    pub fn percent(&mut self, key: &str, ticks: u64, now: Instant) -> f64 {
        let pct = match self.last.get(key) {
            Some((t0, at)) if ticks >= *t0 => {
                let wall = now.duration_since(*at).as_secs_f64();
                if wall > 0.0 {
                    (ticks - t0) as f64 / TICKS_PER_SEC / wall * 100.0
                } else {
                    0.0
                }
            }
            _ => 0.0,
        };
        self.last.insert(key.to_string(), (ticks, now));
        (pct * 10.0).round() / 10.0
    }

    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.last.retain(|k, _| keep(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let s = "1234 (my (weird) cmd) S 99 1234 1234 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 100 1000 50";
        let p = parse_stat(s).unwrap();
        assert_eq!(p.ppid, 99);
        assert_eq!(p.ticks, 10);
    }

    #[test]
    fn samples_a_real_tree() {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & sleep 30 & wait"])
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let mut seen = 0;
        for _ in 0..100 {
            seen = sample(&[pid]).get(&pid).map(|u| u.processes).unwrap_or(0);
            if seen == 3 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let usage = sample(&[pid])[&pid];
        nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .ok();
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(seen, 3, "sh and its two sleeps");
        assert!(usage.memory_mb > 0.0);
    }

    #[test]
    fn cpu_percent_from_ticks() {
        let mut m = CpuMeter::default();
        let t0 = Instant::now();
        assert_eq!(m.percent("a", 100, t0), 0.0);
        let pct = m.percent("a", 150, t0 + std::time::Duration::from_secs(1));
        assert!((pct - 50.0).abs() < 0.01, "{pct}");
    }
}
