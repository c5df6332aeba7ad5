//! What /proc says: CPU time of a process and of the machine, the CPU model, kernel and load.

use std::time::Duration;

/// USER_HZ, the unit of /proc's CPU times: 100 on every Linux architecture this runs on
/// (the kernel fixes it for user space, whatever CONFIG_HZ is).
const USER_HZ: u64 = 100;

/// User + system CPU time of process `pid`, all its threads, dead ones included.
pub fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: split after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 1000 / USER_HZ))
}

/// The machine's aggregate CPU counters (the `cpu` line of /proc/stat), in USER_HZ ticks.
#[derive(Clone, Copy, Debug)]
pub struct CpuTime {
    busy: u64,
    total: u64,
}

impl CpuTime {
    /// Share of CPU time that was busy between two readings, 0–1.
    pub fn busy_between(a: CpuTime, b: CpuTime) -> Option<f64> {
        let total = b.total.checked_sub(a.total)?;
        let busy = b.busy.checked_sub(a.busy)?;
        (total > 0).then(|| busy as f64 / total as f64)
    }
}

/// Reads the `cpu` line of /proc/stat.
pub fn machine_cpu() -> Option<CpuTime> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal guest guest_nice; guest time is already
    // counted in user, so only the first eight add up to the total.
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3)? + ticks.get(4).unwrap_or(&0);
    Some(CpuTime {
        busy: total - idle,
        total,
    })
}

/// The machine a report was measured on.
#[derive(Clone, Debug)]
pub struct Machine {
    /// Cores available to this process.
    pub cores: usize,
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: String,
    /// `uname -r`.
    pub kernel: String,
    /// Memory, from /proc/meminfo.
    pub memory: String,
}

impl Machine {
    /// Reads the machine's description.
    pub fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or_else(
                || "unknown".to_owned(),
                |kb| format!("{:.0} GiB", kb as f64 / 1048576.0),
            );
        Machine {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            kernel,
            memory,
        }
    }
}

/// The 1-, 5- and 15-minute load averages, as /proc/loadavg prints them.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}
