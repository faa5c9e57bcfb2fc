//! Process and board resource sampling with `sysinfo`: RSS, CPU, available memory, temperatures.
//!
//! Only what telemetry publishes is refreshed (this process, memory, thermal sensors), so a sample costs well under
//! a millisecond even on a small board.

use sysinfo::{Components, Pid, ProcessRefreshKind, ProcessesToUpdate, System};
use zinfer_proto as proto;

/// The machine's host name; empty if unreadable.
pub fn host_name() -> String {
    System::host_name().unwrap_or_default()
}

/// The board's model as the board states it: the device tree's (ARM boards: "NVIDIA Jetson Orin Nano Developer
/// Kit", "Raspberry Pi 5 Model B Rev 1.0"), else the firmware's DMI product name (PCs, servers, VMs); empty if
/// neither is readable.
pub fn board_model() -> String {
    ["/proc/device-tree/model", "/sys/class/dmi/id/product_name"]
        .iter()
        .filter_map(|path| std::fs::read(path).ok())
        .map(|bytes| String::from_utf8_lossy(&bytes).trim_matches(|c: char| c == '\0' || c.is_whitespace()).to_owned())
        .find(|model| !model.is_empty())
        .unwrap_or_default()
}

/// Samples the daemon's process and the machine.
///
/// On a platform `sysinfo` does not support, the sampler reports zeros rather than failing the daemon.
pub struct SystemSampler {
    system: Option<System>,
    components: Option<Components>,
    pid: Option<Pid>,
}

impl Default for SystemSampler {
    fn default() -> Self {
        Self::new()
    }
}

impl SystemSampler {
    /// A sampler for the current process.
    pub fn new() -> Self {
        let mut sampler = Self {
            system: System::new().ok(),
            components: Components::new_with_refreshed_list().ok(),
            pid: sysinfo::get_current_pid().ok(),
        };
        // CPU usage is a difference between two refreshes: take the first one now.
        sampler.refresh();
        sampler
    }

    fn refresh(&mut self) {
        if let Some(system) = self.system.as_mut() {
            if let Some(pid) = self.pid {
                system.refresh_processes_specifics(
                    ProcessesToUpdate::Some(&[pid]),
                    true,
                    ProcessRefreshKind::nothing().with_memory().with_cpu(),
                );
            }
            system.refresh_memory();
        }
        if let Some(components) = self.components.as_mut() {
            components.refresh(false);
        }
    }

    /// Refreshes and returns the process and system stats.
    pub fn sample(&mut self) -> (proto::ProcessStats, proto::SystemStats) {
        self.refresh();
        let system = self.system.as_ref();
        let process = self.pid.and_then(|pid| system.and_then(|system| system.process(pid)));
        let process = proto::ProcessStats {
            rss_bytes: process.map_or(0, |process| process.memory()),
            cpu_percent: process.map_or(0.0, |process| process.cpu_usage()),
        };
        let temperatures = self
            .components
            .iter()
            .flat_map(|components| components.iter())
            .filter_map(|component| {
                let celsius = component.temperature().filter(|celsius| celsius.is_finite())?;
                Some(proto::Temperature { label: component.label().to_owned(), celsius })
            })
            .collect();
        let system = proto::SystemStats {
            total_memory_bytes: system.map_or(0, System::total_memory),
            available_memory_bytes: system.map_or(0, System::available_memory),
            temperatures,
        };
        (process, system)
    }
}

/// The machine's physical core count (the default intra-op thread count), falling back to logical CPUs.
pub fn physical_cores() -> usize {
    System::physical_core_count()
        .ok()
        .filter(|&cores| cores > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |cpus| cpus.get()))
}
