//! Handing back the pages that only loading a model touched.
//!
//! ONNX Runtime's library is 22 MiB of code. Creating a session walks its kernel registry and graph optimisers, and
//! the kernel maps the 64 KiB around every page a fault touches, so about 18 MiB of the library is resident once a
//! model is loaded, and about 11 MiB of zinferd's own binary. Serving touches little of it: over 30 messages
//! after the referenced bits were cleared, smaps counted 1.0 MiB of the library as referenced. These pages are clean
//! copies of files, so `MADV_PAGEOUT` (Linux 5.4) lets the kernel reclaim them now rather than under pressure,
//! and the few that serving needs fault back in on first use. The resident memory the budget, telemetry and a
//! cgroup see then is what the daemon uses, not what its start-up left behind.
//!
//! Only file mappings that are not writable are advised. The kernel leaves pages that another process maps, and
//! swaps rather than discards private copies (relocated data), so the advice never changes what the process
//! computes. Kernels before 5.4 (or other systems) refuse it: then nothing happens but a debug line.

use std::io;

/// What [`page_out_loaded_code`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PagedOut {
    /// Mappings advised.
    pub mappings: usize,
    /// Their size.
    pub bytes: u64,
}

/// Advises the kernel to reclaim the resident pages of every read-only file mapping of this process (its code, its
/// libraries' code, read-only data). Errors only if the kernel refuses the advice or `/proc/self/maps` is unreadable.
pub fn page_out_loaded_code() -> io::Result<PagedOut> {
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut done = PagedOut { mappings: 0, bytes: 0 };
    for (start, end) in read_only_file_mappings(&maps) {
        sys::page_out(start, end - start)?;
        done.mappings += 1;
        done.bytes += (end - start) as u64;
    }
    Ok(done)
}

/// The address ranges of the mappings in `maps` (the format of `/proc/<pid>/maps`) that map a file by path and are
/// not writable.
fn read_only_file_mappings(maps: &str) -> Vec<(usize, usize)> {
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (range, perms) = (fields.next()?, fields.next()?);
            let path = fields.nth(3)?;
            if !path.starts_with('/') || perms.contains('w') {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            let (start, end) = (usize::from_str_radix(start, 16).ok()?, usize::from_str_radix(end, 16).ok()?);
            (end > start).then_some((start, end))
        })
        .collect()
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod sys {
    use std::ffi::c_void;
    use std::io;

    /// From the kernel's uapi mman-common.h (Linux 5.4); the same number on every architecture.
    const MADV_PAGEOUT: i32 = 21;

    unsafe extern "C" {
        fn madvise(addr: *mut c_void, len: usize, advice: i32) -> i32;
    }

    pub fn page_out(start: usize, len: usize) -> io::Result<()> {
        // SAFETY: the range is a whole mapping of this process as /proc/self/maps listed it (page-aligned).
        // MADV_PAGEOUT only reclaims: a later access faults the same content back in, from the file or from swap,
        // and a range unmapped meanwhile makes the call fail with ENOMEM rather than touch anything else.
        let done = unsafe { madvise(start as *mut c_void, len, MADV_PAGEOUT) };
        if done == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
    }
}

#[cfg(not(target_os = "linux"))]
mod sys {
    pub fn page_out(_start: usize, _len: usize) -> std::io::Result<()> {
        Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_read_only_file_mappings_are_chosen() {
        let maps = "\
55d0a0000000-55d0a0100000 r--p 00000000 fe:01 123 /usr/bin/zinferd
55d0a0100000-55d0a0c00000 r-xp 00100000 fe:01 123 /usr/bin/zinferd
55d0a0c00000-55d0a0d00000 rw-p 00c00000 fe:01 123 /usr/bin/zinferd
55d0a0d00000-55d0a0e00000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f0000001000 r-xp 00000000 00:00 0 [vdso]
7f0000002000-7f0000003000 rw-p 00000000 00:00 0
7f0000004000-7f0000006000 r-xp 00000000 fe:01 456 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000006000-7f0000007000 r--s 00000000 fe:01 789 /tmp/some file with spaces
";
        assert_eq!(
            read_only_file_mappings(maps),
            [
                (0x55d0_a000_0000, 0x55d0_a010_0000),
                (0x55d0_a010_0000, 0x55d0_a0c0_0000),
                (0x7f00_0000_4000, 0x7f00_0000_6000),
                (0x7f00_0000_6000, 0x7f00_0000_7000),
            ]
        );
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn this_process_pages_out_its_code_and_keeps_running() {
        // What it hands back is measured from outside, on a daemon run alone (`e2e_alone`): here the test harness's
        // other threads fault code back in at any time. The code that runs after the call faults back in.
        let done = page_out_loaded_code().expect("MADV_PAGEOUT on Linux 5.4 or later");
        assert!(done.mappings > 0 && done.bytes > 0, "{done:?}");
        assert_eq!(read_only_file_mappings("7f00-7f01 r-xp 0 0 0 /lib/x.so\n"), [(0x7f00, 0x7f01)]);
    }
}
