//! The state file (`--state`): the whole configuration as `ipvsadm -R` input, written after
//! every change so that a restart comes back with it.
//!
//! The file is sealed (`xvs_ipvsadm::state`): a header line, and a last line with the CRC-32 and
//! length of the rest, so that a file cut short or altered is refused at start with the reason.
//! Writes are atomic and durable (a temporary file of a unique name, fsync, rename, fsync of the
//! directory), and the copy they replace is kept as `FILE.prev`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use xvs_ipvsadm::state::{seal, unseal};

/// The state file's configuration: the `-R` input of the tables, the sync daemons and `--set`,
/// then the sysctls.
pub fn text(
    engine: &xvs_core::Engine,
    director: &xvs_core::Director,
    daemons: &[xvs_ipvsadm::parse::DaemonConfig],
) -> String {
    let mut t = xvs_ipvsadm::exec::state_text(director, daemons);
    t.push_str(&crate::sysctl::state_lines(engine, director));
    // The firewall-mark rules, one `iptables-save` rule line each.
    for line in xvs_ipvsadm::marks::to_text(director.marks()).lines() {
        if line.starts_with("-A ") {
            t.push_str(MARK_LINE);
            t.push_str(line);
            t.push('\n');
        }
    }
    t
}

/// How a firewall-mark rule's line of the state file starts (not ipvsadm's syntax).
pub const MARK_LINE: &str = "--fwmark-rule ";

/// The copy a save replaced.
pub fn previous(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".prev");
    path.with_file_name(name)
}

/// Read a state file: its configuration, or why it cannot be used (naming the previous copy).
pub fn load(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    match unseal(&text) {
        Ok(body) => Ok(body.to_string()),
        Err(why) => Err(format!(
            "{}: {why}; xvsd will not start from it. The previous copy is {} (if it exists): check it and copy it over, or remove the state file to start from --rules",
            path.display(),
            previous(path).display()
        )),
    }
}

/// Write the configuration to `path` atomically and durably, keeping the replaced copy.
pub fn save(path: &Path, text: &str) -> std::io::Result<()> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        SEQ.fetch_add(1, Relaxed)
    ));
    let written = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(seal(text).as_bytes())?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if path.exists() {
        // The copy being replaced stays as FILE.prev (a second name for the same file).
        let prev = previous(path);
        let prev_tmp = dir.join(format!(".{name}.prev.{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&prev_tmp);
        if std::fs::hard_link(path, &prev_tmp).is_ok() {
            let _ = std::fs::rename(&prev_tmp, &prev);
        }
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    File::open(&dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: &str = "-C\n-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.1.0.1:80 -m -w 1\n";

    #[test]
    fn save_keeps_the_previous_copy_and_leaves_no_temporary_files() {
        let dir = std::env::temp_dir().join(format!("xvs-state-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state");
        save(&path, "-C\n").unwrap();
        save(&path, RULES).unwrap();
        assert_eq!(load(&path).unwrap(), RULES);
        assert_eq!(
            unseal(&std::fs::read_to_string(previous(&path)).unwrap()).unwrap(),
            "-C\n"
        );
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["state", "state.prev"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn save_into_a_missing_directory_fails() {
        let path = std::env::temp_dir()
            .join(format!("xvs-no-such-dir-{}", std::process::id()))
            .join("state");
        assert!(save(&path, RULES).is_err());
    }
}
