//! The memory budget: a hard ceiling on the process's resident memory that zinferd enforces itself, on purpose and
//! gracefully, so that the kernel's OOM killer never has to.
//!
//! - [`budget`] resolves the ceiling and what it is compared with: `daemon.memory_mb` against the process's RSS,
//!   else the cgroup's limit (systemd's `MemoryMax=`) against the cgroup's working set (its charged memory less the
//!   inactive page cache the kernel reclaims first), which is what the kernel's OOM killer acts on: the cgroup
//!   charges page cache and kernel memory that RSS does not show.
//! - [`probe`] measures at start-up what each model costs: anonymous memory before loading it, after loading it,
//!   and after a warm-up run at the largest shape it will ever see (for text, the rows of its longest input that
//!   `max_batch` and `max_batch_tokens` allow; `max_batch` windows of a sensor model). If the budget cannot hold the
//!   process as measured (its whole RSS) plus `memory_reserve_mb` for the runtime, zinferd refuses to start and says
//!   why.
//! - [`Governor`] turns cheap periodic RSS samples into a [`Pressure`]: above the soft threshold workers shrink
//!   their batches and queues; above the hard limit they shed new messages (`dropped: memory`) until it is back
//!   under. A level is left only [`HYSTERESIS_PERCENT`] of the budget below where it was entered, so usage that
//!   hovers at a threshold does not flip the pressure (and log) on every sample.
//! - [`allocator`] keeps reloads from ratcheting RSS up: glibc's malloc tuned so that a retired generation's
//!   models go back to the kernel.
//! - [`pages`] hands back the code that only loading models touched (ONNX Runtime's session creation walks most of
//!   its library), once they are loaded.

pub mod allocator;
pub mod pages;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

/// Where the process stands against its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pressure {
    /// Under the soft threshold (or no budget).
    Normal,
    /// Above the soft threshold: batch size 1, a quarter of the queue.
    Soft,
    /// Above the budget: new messages are shed.
    Hard,
}

/// Once models were loaded (at start-up, and when a reload's old generation has retired): returns malloc's free
/// pages to the kernel and, with `page_out`, the pages of code and read-only data that loading touched
/// ([`pages`]). Takes a few milliseconds; not for the message path.
pub fn settle_after_load(page_out: bool) {
    allocator::release_free_memory();
    let before = rss_bytes();
    if let Some(done) = page_out_after_session(page_out) {
        tracing::info!(
            mappings = done.mappings,
            mapped_mib = format!("{:.1}", done.bytes as f64 / MIB),
            rss_before_mib = format!("{:.1}", before as f64 / MIB),
            rss_after_mib = format!("{:.1}", rss_bytes() as f64 / MIB),
            "paged out the code that loading touched; serving faults back what it uses"
        );
    }
}

/// With `page_out`, hands back the pages of code and read-only data that loading touched ([`pages`]) and says what
/// it advised; `None` if off or refused (logged at debug). Called on its own right after a model's session was
/// created, so that the code its creation touched (graph optimisers, the kernel registry) is gone before the
/// warm-up grows the arena: the start-up peak is then one session's creation, not that plus the working memory.
pub fn page_out_after_session(page_out: bool) -> Option<pages::PagedOut> {
    if !page_out {
        return None;
    }
    pages::page_out_loaded_code()
        .map_err(|error| {
            tracing::debug!(
                %error,
                "the kernel refused MADV_PAGEOUT (it needs Linux 5.4): the code that loading touched stays resident"
            );
        })
        .ok()
}

const MIB: f64 = 1024.0 * 1024.0;

/// The process's resident set size in bytes, from `/proc/self/status` (tens of microseconds).
pub fn rss_bytes() -> u64 {
    process_memory("self").map_or(0, |(rss, _)| rss)
}

/// The anonymous part of this process's resident memory (RssAnon: heap, arenas, stacks), in bytes.
fn anon_bytes() -> u64 {
    status_bytes("self", "RssAnon").unwrap_or(0)
}

/// A size line of `/proc/<pid>/status` (`VmRSS`, `VmHWM`, `RssAnon`, `RssFile`…) of process `pid` (a number, or
/// `self`), in bytes; `None` if the file cannot be read (0 if it lacks the line).
pub fn status_bytes(pid: &str, name: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(status_field(&status, name))
}

/// A size line of a `/proc/<pid>/status` text, by its name without the colon, in bytes (0 if absent).
fn status_field(status: &str, name: &str) -> u64 {
    status
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// (VmRSS, VmHWM) in bytes of process `pid` (a number, or `self`), from `/proc/<pid>/status`.
pub fn process_memory(pid: &str) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some((status_field(&status, "VmRSS"), status_field(&status, "VmHWM")))
}

/// A pressure level is left only this far (in percent of the budget) below the threshold that entered it.
pub const HYSTERESIS_PERCENT: u64 = 5;

/// The ceiling and what is measured against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// The ceiling in bytes.
    pub bytes: u64,
    /// What is compared with it.
    pub usage: Usage,
}

/// What a budget is compared with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Usage {
    /// The process's RSS (`daemon.memory_mb`).
    ProcessRss,
    /// The cgroup's working set (the budget is its limit).
    Cgroup(CgroupFiles),
}

/// Where a cgroup reports its charged memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupFiles {
    /// v2 `memory.current`, v1 `memory.usage_in_bytes`.
    pub current: PathBuf,
    /// `memory.stat`.
    pub stat: PathBuf,
    /// The inactive page cache's line in `memory.stat`: v2 `inactive_file`, v1 `total_inactive_file`.
    pub inactive_file: &'static str,
}

impl Usage {
    /// The usage now, in bytes (reads /proc or the cgroup's files: microseconds).
    pub fn read(&self) -> u64 {
        match self {
            Self::ProcessRss => rss_bytes(),
            // A cgroup file that cannot be read (moved, unmounted) falls back to RSS rather than to zero.
            Self::Cgroup(files) => files.working_set().unwrap_or_else(rss_bytes),
        }
    }

    /// How the usage is named in messages.
    pub fn describe(&self) -> &'static str {
        match self {
            Self::ProcessRss => "RSS",
            Self::Cgroup(_) => "the cgroup's working set (charged memory less inactive page cache)",
        }
    }
}

impl CgroupFiles {
    /// Charged memory less the inactive page cache, as container runtimes compute a working set.
    pub fn working_set(&self) -> Option<u64> {
        let current: u64 = std::fs::read_to_string(&self.current).ok()?.trim().parse().ok()?;
        let stat = std::fs::read_to_string(&self.stat).ok()?;
        let inactive = stat
            .lines()
            .find_map(|line| line.strip_prefix(self.inactive_file)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse::<u64>().ok())
            .unwrap_or(0);
        Some(current.saturating_sub(inactive))
    }
}

/// The budget: the configured one against RSS, else the cgroup's memory limit against its working set, else none.
pub fn budget(configured_mb: Option<u64>) -> Option<Budget> {
    match configured_mb {
        Some(mb) => Some(Budget { bytes: mb * 1024 * 1024, usage: Usage::ProcessRss }),
        None => cgroup_limit(Path::new("/proc/self/cgroup"), Path::new("/sys/fs/cgroup"))
            .map(|(bytes, files)| Budget { bytes, usage: Usage::Cgroup(files) }),
    }
}

/// The memory limit of this process's cgroup (v2 `memory.max`, or v1 `memory.limit_in_bytes`), if it has one, with
/// the files that report what the cgroup is charged.
pub fn cgroup_limit(proc_cgroup: &Path, root: &Path) -> Option<(u64, CgroupFiles)> {
    let membership = std::fs::read_to_string(proc_cgroup).ok()?;
    let mut candidates = Vec::new();
    for line in membership.lines() {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let path = path.trim_start_matches('/');
        if controllers.is_empty() {
            for dir in [root.join(path), root.to_owned()] {
                candidates.push((
                    dir.join("memory.max"),
                    dir.join("memory.current"),
                    dir.join("memory.stat"),
                    "inactive_file",
                ));
            }
        } else if controllers.split(',').any(|controller| controller == "memory") {
            for dir in [root.join("memory").join(path), root.join("memory")] {
                candidates.push((
                    dir.join("memory.limit_in_bytes"),
                    dir.join("memory.usage_in_bytes"),
                    dir.join("memory.stat"),
                    "total_inactive_file",
                ));
            }
        }
    }
    candidates.into_iter().find_map(|(limit_file, current, stat, inactive_file)| {
        let text = std::fs::read_to_string(limit_file).ok()?;
        let limit = text.trim().parse::<u64>().ok()?;
        // cgroup v1 reports "no limit" as a number near 2^63.
        (limit < 1 << 60).then_some((limit, CgroupFiles { current, stat, inactive_file }))
    })
}

/// What the start-up probe measured for one pipeline's model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModelMemory {
    /// Growth of anonymous memory from loading the model (weights, session). Not all RSS: the code pages that
    /// loading touches come and go (`page_out_after_load` hands them back right after the load), and they are the
    /// shared library's, not the model's.
    pub load_bytes: u64,
    /// Further growth of anonymous memory from a warm-up run at the largest shape (activations, arena).
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
    let before = anon_bytes();
    let mut loaded = load()?;
    let after_load = anon_bytes();
    warm_up(&mut loaded);
    let after_warm_up = anon_bytes();
    let memory = ModelMemory {
        load_bytes: after_load.saturating_sub(before),
        working_bytes: after_warm_up.saturating_sub(after_load),
    };
    Ok((loaded, memory))
}

/// Tracks usage against the budget.
#[derive(Debug)]
pub struct Governor {
    budget: Option<Budget>,
    soft: Option<u64>,
    rss: AtomicU64,
    pressure: AtomicU8,
}

impl Governor {
    /// A governor for `budget` with the soft threshold at `soft_percent` of it.
    pub fn new(budget: Option<Budget>, soft_percent: u8) -> Self {
        let soft = budget.as_ref().map(|budget| budget.bytes / 100 * u64::from(soft_percent.min(100)));
        let governor = Self { budget, soft, rss: AtomicU64::new(0), pressure: AtomicU8::new(0) };
        governor.sample();
        governor
    }

    /// Records a usage sample and returns the pressure it implies: a level is entered above its threshold and left
    /// only [`HYSTERESIS_PERCENT`] of the budget below it.
    pub fn observe(&self, usage: u64) -> Pressure {
        self.rss.store(usage, Ordering::Relaxed);
        let Some(budget) = self.budget.as_ref().map(|budget| budget.bytes) else { return Pressure::Normal };
        let soft = self.soft.unwrap_or(budget);
        let margin = budget / 100 * HYSTERESIS_PERCENT;
        let now = self.pressure();
        let above = |threshold: u64, level: Pressure| {
            usage > threshold || (now >= level && usage > threshold.saturating_sub(margin))
        };
        let pressure = if above(budget, Pressure::Hard) {
            Pressure::Hard
        } else if above(soft, Pressure::Soft) {
            Pressure::Soft
        } else {
            Pressure::Normal
        };
        self.pressure.store(pressure as u8, Ordering::Relaxed);
        pressure
    }

    /// Samples the usage now.
    pub fn sample(&self) -> Pressure {
        self.observe(self.usage_now())
    }

    /// Reads the usage the budget is compared with (RSS without a budget).
    pub fn usage_now(&self) -> u64 {
        self.budget.as_ref().map_or_else(rss_bytes, |budget| budget.usage.read())
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
        self.budget.as_ref().map(|budget| budget.bytes)
    }

    /// What the budget is compared with, if there is one.
    pub fn usage(&self) -> Option<&Usage> {
        self.budget.as_ref().map(|budget| &budget.usage)
    }

    /// The soft threshold in bytes, if any.
    pub fn soft_threshold(&self) -> Option<u64> {
        self.soft
    }

    /// The last usage sample (RSS, or the cgroup's working set when the budget is the cgroup's).
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
                let usage_mib = governor.rss() / (1024 * 1024);
                match pressure {
                    Pressure::Hard => {
                        tracing::error!(usage_mib, ?pressure, "over the memory budget: shedding new messages")
                    }
                    _ => tracing::warn!(usage_mib, ?pressure, "memory pressure changed"),
                }
                last = pressure;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn governor(budget: u64, soft_percent: u8) -> Governor {
        Governor::new(Some(Budget { bytes: budget, usage: Usage::ProcessRss }), soft_percent)
    }

    #[test]
    fn pressure_follows_the_thresholds() {
        let governor = governor(1000, 80);
        assert_eq!(governor.observe(500), Pressure::Normal);
        assert_eq!(governor.observe(850), Pressure::Soft);
        assert_eq!(governor.pressure(), Pressure::Soft);
        assert_eq!(governor.observe(1001), Pressure::Hard);
        assert_eq!(governor.observe(100), Pressure::Normal);
        let unlimited = Governor::new(None, 80);
        assert_eq!(unlimited.observe(u64::MAX), Pressure::Normal);
    }

    #[test]
    fn pressure_has_hysteresis() {
        // Budget 1000, soft 800, margin 50: usage hovering at a threshold keeps the level it reached.
        let governor = governor(1000, 80);
        governor.observe(0);
        let levels: Vec<Pressure> = [790, 810, 790, 760, 751, 749, 790, 1001, 990, 960, 951, 949, 800, 700]
            .map(|usage| governor.observe(usage))
            .into();
        use Pressure::{Hard, Normal, Soft};
        let expected = [Normal, Soft, Soft, Soft, Soft, Normal, Normal, Hard, Hard, Hard, Hard, Soft, Soft, Normal];
        assert_eq!(levels, expected);
    }

    #[test]
    fn cgroup_limits_are_read_for_v1_and_v2() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        let unit = root.join("system.slice/zinferd.service");
        std::fs::create_dir_all(&unit).expect("mkdir");
        std::fs::write(unit.join("memory.max"), "268435456\n").expect("write");
        let v2 = root.join("cgroup-v2");
        std::fs::write(&v2, "0::/system.slice/zinferd.service\n").expect("write");
        let (limit, files) = cgroup_limit(&v2, root).expect("a v2 limit");
        assert_eq!(limit, 268_435_456);
        // The working set: charged memory less inactive page cache (a cache-heavy cgroup is not near its limit).
        std::fs::write(unit.join("memory.current"), "200000000\n").expect("write");
        std::fs::write(unit.join("memory.stat"), "anon 60000000\nfile 140000000\ninactive_file 120000000\n")
            .expect("write");
        assert_eq!(files.working_set(), Some(80_000_000));
        assert_eq!(Usage::Cgroup(files).read(), 80_000_000);

        std::fs::write(unit.join("memory.max"), "max\n").expect("write");
        assert_eq!(cgroup_limit(&v2, root), None, "`max` means no limit");

        std::fs::create_dir_all(root.join("memory/box")).expect("mkdir");
        std::fs::write(root.join("memory/box/memory.limit_in_bytes"), "9223372036854771712\n").expect("write");
        let v1 = root.join("cgroup-v1");
        std::fs::write(&v1, "4:memory:/box\n0::/\n").expect("write");
        assert_eq!(cgroup_limit(&v1, root), None, "v1's huge number means no limit");
        std::fs::write(root.join("memory/box/memory.limit_in_bytes"), "104857600\n").expect("write");
        std::fs::write(root.join("memory/box/memory.usage_in_bytes"), "50000000\n").expect("write");
        std::fs::write(root.join("memory/box/memory.stat"), "cache 1\ntotal_inactive_file 20000000\n").expect("write");
        let (limit, files) = cgroup_limit(&v1, root).expect("a v1 limit");
        assert_eq!((limit, files.working_set()), (104_857_600, Some(30_000_000)));
    }

    #[test]
    fn rss_is_read_from_proc() {
        assert!(rss_bytes() > 1 << 20);
        let anon = anon_bytes();
        assert!(anon > 0 && anon <= rss_bytes(), "{anon}");
        assert_eq!(status_field("Name:\tzinferd\nRssAnon:\t  1234 kB\n", "RssAnon"), 1234 * 1024);
        assert_eq!(status_field("VmRSS:\t1 kB\n", "RssAnon"), 0);
        assert_eq!(status_field("VmHWMx:\t1 kB\nVmHWM:\t2 kB\n", "VmHWM"), 2048);
    }
}
