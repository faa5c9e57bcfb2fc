//! The memory budget: a hard ceiling on the process's resident memory that zinferd enforces itself, on purpose and
//! gracefully, so that the kernel's OOM killer never has to.
//!
//! - [`budget_bytes`] resolves the ceiling: `daemon.memory_mb`, else the cgroup's limit (systemd's `MemoryMax=`).
//! - [`probe`] measures at start-up what each model costs: RSS before loading it, after loading it, and after a
//!   warm-up run at the largest shape it will ever see (`max_batch` × its longest input). If the budget cannot hold
//!   the process as measured plus `memory_reserve_mb` for the runtime, zinferd refuses to start and says why.
//! - [`Governor`] turns cheap periodic RSS samples into a [`Pressure`]: above the soft threshold workers shrink
//!   their batches and queues; above the hard limit they shed new messages (`dropped: memory`) until it is back
//!   under.

use std::path::Path;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

/// Where the process stands against its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pressure {
    /// Under the soft threshold (or no budget).
    Normal,
    /// Above the soft threshold: batch size 1, a quarter of the queue.
    Soft,
    /// Above the budget: new messages are shed.
    Hard,
}

/// The process's resident set size in bytes, from `/proc/self/status` (tens of microseconds).
pub fn rss_bytes() -> u64 {
    process_memory("self").map_or(0, |(rss, _)| rss)
}

/// (VmRSS, VmHWM) in bytes of process `pid` (a number, or `self`), from `/proc/<pid>/status`.
pub fn process_memory(pid: &str) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    };
    Some((field("VmRSS:"), field("VmHWM:")))
}

/// The budget in bytes: the configured one, else the cgroup's memory limit, else none.
pub fn budget_bytes(configured_mb: Option<u64>) -> Option<u64> {
    configured_mb
        .map(|mb| mb * 1024 * 1024)
        .or_else(|| cgroup_limit(Path::new("/proc/self/cgroup"), Path::new("/sys/fs/cgroup")))
}

/// The memory limit of this process's cgroup (v2 `memory.max`, or v1 `memory.limit_in_bytes`), if it has one.
pub fn cgroup_limit(proc_cgroup: &Path, root: &Path) -> Option<u64> {
    let membership = std::fs::read_to_string(proc_cgroup).ok()?;
    let mut candidates = Vec::new();
    for line in membership.lines() {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let path = path.trim_start_matches('/');
        if controllers.is_empty() {
            candidates.push(root.join(path).join("memory.max"));
            candidates.push(root.join("memory.max"));
        } else if controllers.split(',').any(|controller| controller == "memory") {
            candidates.push(root.join("memory").join(path).join("memory.limit_in_bytes"));
            candidates.push(root.join("memory/memory.limit_in_bytes"));
        }
    }
    candidates.iter().find_map(|file| {
        let text = std::fs::read_to_string(file).ok()?;
        let limit = text.trim().parse::<u64>().ok()?;
        // cgroup v1 reports "no limit" as a number near 2^63.
        (limit < 1 << 60).then_some(limit)
    })
}

/// What the start-up probe measured for one pipeline's model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModelMemory {
    /// RSS growth from loading the model (weights, session).
    pub load_bytes: u64,
    /// Further RSS growth from a warm-up run at the largest shape (activations, arena).
    pub working_bytes: u64,
}

impl ModelMemory {
    /// Everything the model needs.
    pub fn total(&self) -> u64 {
        self.load_bytes + self.working_bytes
    }
}

/// Measures RSS around `load`, then around `warm_up`.
pub fn probe<T, E>(load: impl FnOnce() -> Result<T, E>, warm_up: impl FnOnce(&mut T)) -> Result<(T, ModelMemory), E> {
    let before = rss_bytes();
    let mut loaded = load()?;
    let after_load = rss_bytes();
    warm_up(&mut loaded);
    let after_warm_up = rss_bytes();
    let memory = ModelMemory {
        load_bytes: after_load.saturating_sub(before),
        working_bytes: after_warm_up.saturating_sub(after_load),
    };
    Ok((loaded, memory))
}

/// Tracks RSS against the budget.
#[derive(Debug)]
pub struct Governor {
    budget: Option<u64>,
    soft: Option<u64>,
    rss: AtomicU64,
    pressure: AtomicU8,
}

impl Governor {
    /// A governor for `budget` bytes with the soft threshold at `soft_percent` of it.
    pub fn new(budget: Option<u64>, soft_percent: u8) -> Self {
        let soft = budget.map(|budget| budget / 100 * u64::from(soft_percent.min(100)));
        let governor = Self { budget, soft, rss: AtomicU64::new(0), pressure: AtomicU8::new(0) };
        governor.observe(rss_bytes());
        governor
    }

    /// Records an RSS sample and returns the pressure it implies.
    pub fn observe(&self, rss: u64) -> Pressure {
        self.rss.store(rss, Ordering::Relaxed);
        let pressure = match (self.budget, self.soft) {
            (Some(budget), _) if rss > budget => Pressure::Hard,
            (_, Some(soft)) if rss > soft => Pressure::Soft,
            _ => Pressure::Normal,
        };
        self.pressure.store(pressure as u8, Ordering::Relaxed);
        pressure
    }

    /// Samples the process's RSS now.
    pub fn sample(&self) -> Pressure {
        self.observe(rss_bytes())
    }

    /// The pressure as of the last sample.
    pub fn pressure(&self) -> Pressure {
        match self.pressure.load(Ordering::Relaxed) {
            2 => Pressure::Hard,
            1 => Pressure::Soft,
            _ => Pressure::Normal,
        }
    }

    /// The budget in bytes, if any.
    pub fn budget(&self) -> Option<u64> {
        self.budget
    }

    /// The soft threshold in bytes, if any.
    pub fn soft_threshold(&self) -> Option<u64> {
        self.soft
    }

    /// The last RSS sample.
    pub fn rss(&self) -> u64 {
        self.rss.load(Ordering::Relaxed)
    }
}

/// Samples RSS every `interval` on tokio (reading /proc takes microseconds).
pub fn spawn_sampler(governor: std::sync::Arc<Governor>, interval: std::time::Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut last = governor.pressure();
        loop {
            ticker.tick().await;
            let pressure = governor.sample();
            if pressure != last {
                let rss_mib = governor.rss() / (1024 * 1024);
                match pressure {
                    Pressure::Hard => {
                        tracing::error!(rss_mib, ?pressure, "over the memory budget: shedding new messages")
                    }
                    _ => tracing::warn!(rss_mib, ?pressure, "memory pressure changed"),
                }
                last = pressure;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_follows_the_thresholds() {
        let governor = Governor::new(Some(1000), 80);
        assert_eq!(governor.observe(500), Pressure::Normal);
        assert_eq!(governor.observe(850), Pressure::Soft);
        assert_eq!(governor.pressure(), Pressure::Soft);
        assert_eq!(governor.observe(1001), Pressure::Hard);
        assert_eq!(governor.observe(100), Pressure::Normal);
        let unlimited = Governor::new(None, 80);
        assert_eq!(unlimited.observe(u64::MAX), Pressure::Normal);
    }

    #[test]
    fn cgroup_limits_are_read_for_v1_and_v2() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("system.slice/zinferd.service")).expect("mkdir");
        std::fs::write(root.join("system.slice/zinferd.service/memory.max"), "268435456\n").expect("write");
        let v2 = root.join("cgroup-v2");
        std::fs::write(&v2, "0::/system.slice/zinferd.service\n").expect("write");
        assert_eq!(cgroup_limit(&v2, root), Some(268_435_456));

        std::fs::write(root.join("system.slice/zinferd.service/memory.max"), "max\n").expect("write");
        assert_eq!(cgroup_limit(&v2, root), None, "`max` means no limit");

        std::fs::create_dir_all(root.join("memory/box")).expect("mkdir");
        std::fs::write(root.join("memory/box/memory.limit_in_bytes"), "9223372036854771712\n").expect("write");
        let v1 = root.join("cgroup-v1");
        std::fs::write(&v1, "4:memory:/box\n0::/\n").expect("write");
        assert_eq!(cgroup_limit(&v1, root), None, "v1's huge number means no limit");
        std::fs::write(root.join("memory/box/memory.limit_in_bytes"), "104857600\n").expect("write");
        assert_eq!(cgroup_limit(&v1, root), Some(104_857_600));
    }

    #[test]
    fn rss_is_read_from_proc() {
        assert!(rss_bytes() > 1 << 20);
    }
}
