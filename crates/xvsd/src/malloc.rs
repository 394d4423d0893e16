//! The C library's allocator settings xvsd runs with: transparent huge pages for the heap.
//!
//! A connection table of a million entries spreads over about 120 MB. Looked up at random on
//! 4 KiB pages, nearly every packet misses the TLB, and on a virtual machine a page walk is a
//! two-dimensional one (guest and host tables), dearer than the cache miss for the entry itself.
//! On 2 MiB pages the whole table fits in the TLB.
//!
//! glibc (2.35 and later) gives its main heap huge pages with the tunable
//! `glibc.malloc.hugetlb=1`: it advises the kernel (`madvise(MADV_HUGEPAGE)`, which works with
//! the kernel's default THP mode `madvise`) and grows the heap in aligned 2 MiB steps. Two
//! limits, and what xvs does about them:
//! - A block over the mmap threshold (128 KiB at first) is mapped on its own and fills no
//!   aligned 2 MiB page unless it is larger: the table keeps its entries in chunks of 24 KiB
//!   (`xvs_core::chunks`), which come from the heap.
//! - Memory from other threads' arenas gets no huge pages (the arenas grow in small steps, so an
//!   aligned 2 MiB page is likely never wholly mapped when first touched).
//!   `glibc.malloc.arena_max=1` keeps every thread on the main heap. Workers allocate seldom (a
//!   chunk per 256 new connections, an index growth) and small blocks come from per-thread
//!   caches, so the one arena's lock is not a bottleneck.
//!
//! Tunables are read only when a program starts: xvsd sets them and executes itself again,
//! once, before it does anything else. A tunable the environment already names is left as it
//! is (`GLIBC_TUNABLES=glibc.malloc.hugetlb=0 xvsd …` turns huge pages off); a C library that
//! does not know one ignores it.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// The tunables and their values.
const TUNABLES: [(&str, &str); 2] = [
    ("glibc.malloc.hugetlb", "1"),
    ("glibc.malloc.arena_max", "1"),
];

/// Set in the environment of the second execution, so that there is never a third.
const MARK: &str = "XVSD_MALLOC_TUNED";

/// `current` (a `GLIBC_TUNABLES` value) with the tunables it does not name appended; None when
/// it names them all.
fn tuned(current: &str) -> Option<String> {
    let named = |name: &str| {
        current
            .split(':')
            .any(|t| t.split('=').next().map(str::trim) == Some(name))
    };
    let mut out = current.to_string();
    let mut changed = false;
    for (name, value) in TUNABLES {
        if !named(name) {
            if !out.is_empty() {
                out.push(':');
            }
            out.push_str(&format!("{name}={value}"));
            changed = true;
        }
    }
    changed.then_some(out)
}

/// Execute this program again with the tunables set, unless they are set already or this is
/// the second execution. Returns only when it did not execute: with the reason when it tried
/// and failed (xvsd then runs as it is, on 4 KiB pages).
pub fn apply() -> Option<String> {
    if std::env::var_os(MARK).is_some() {
        std::env::remove_var(MARK);
        return None;
    }
    let current = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    let value = tuned(&current)?;
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return Some(format!("cannot find its own executable: {e}")),
    };
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| OsString::from("xvsd"));
    let e = Command::new(exe)
        .arg0(arg0)
        .args(args)
        .env("GLIBC_TUNABLES", value)
        .env(MARK, "1")
        .exec();
    Some(format!("cannot execute itself again: {e}"))
}

#[cfg(test)]
mod tests {
    use super::tuned;

    #[test]
    fn missing_tunables_are_appended_and_named_ones_kept() {
        assert_eq!(
            tuned("").as_deref(),
            Some("glibc.malloc.hugetlb=1:glibc.malloc.arena_max=1")
        );
        assert_eq!(
            tuned("glibc.malloc.arena_max=2").as_deref(),
            Some("glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")
        );
        assert_eq!(
            tuned("glibc.malloc.hugetlb=0").as_deref(),
            Some("glibc.malloc.hugetlb=0:glibc.malloc.arena_max=1")
        );
        assert_eq!(
            tuned("glibc.malloc.arena_max=4: glibc.malloc.hugetlb=0"),
            None
        );
        assert_eq!(
            tuned("glibc.malloc.hugetlbx=0:glibc.malloc.arena_max=1").as_deref(),
            Some("glibc.malloc.hugetlbx=0:glibc.malloc.arena_max=1:glibc.malloc.hugetlb=1")
        );
    }
}
