//! The state file's format (xvsd's `--state`): the whole configuration as `ipvsadm -R` input
//! ([`crate::exec::state_text`]) between a header line and a line that gives the CRC-32 and the
//! length of everything before it, so that a file cut short or altered is refused instead of
//! loading with another meaning. A file without the header (written before it existed) is taken
//! as it is. Reading and writing the file is xvsd's.

/// First line of a state file.
pub const HEADER: &str = "# xvs state file: ipvsadm -R input; the last line checks the rest";
const TRAILER: &str = "# end: crc32 ";

/// The file's text for a configuration: header, the configuration (its last line ended with a
/// newline if it has none, so that the integrity line stands on a line of its own), integrity
/// line.
pub fn seal(text: &str) -> String {
    let nl = if text.is_empty() || text.ends_with('\n') {
        ""
    } else {
        "\n"
    };
    let body = format!("{HEADER}\n{text}{nl}");
    let crc = crc32fast::hash(body.as_bytes());
    format!("{body}{TRAILER}{crc:08x} length {}\n", body.len())
}

/// The configuration in a state file's text, checked: Err says why it cannot be trusted.
pub fn unseal(text: &str) -> Result<&str, String> {
    let Some(rest) = text.strip_prefix(HEADER) else {
        // Written before the integrity line existed.
        return Ok(text);
    };
    let rest = rest
        .strip_prefix('\n')
        .ok_or("the header line is damaged")?;
    let body_end = text
        .trim_end_matches('\n')
        .rfind('\n')
        .map(|i| i + 1)
        .ok_or("no integrity line: the file is cut short")?;
    let last = text[body_end..].trim_end_matches('\n');
    let Some(check) = last.strip_prefix(TRAILER) else {
        return Err("no integrity line at the end: the file is cut short".into());
    };
    let (crc, len) = check
        .split_once(" length ")
        .ok_or("the integrity line is damaged")?;
    let crc = u32::from_str_radix(crc, 16).map_err(|_| "the integrity line is damaged")?;
    let len: usize = len.parse().map_err(|_| "the integrity line is damaged")?;
    let body = &text[..body_end];
    if len != body.len() || crc != crc32fast::hash(body.as_bytes()) {
        return Err("its contents do not match its integrity line (cut short or altered)".into());
    }
    Ok(&rest[..rest.len() - (text.len() - body_end)])
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: &str = "-C\n-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.1.0.1:80 -m -w 1\n";

    #[test]
    fn sealed_text_unseals_to_itself() {
        assert_eq!(unseal(&seal(RULES)).unwrap(), RULES);
        assert_eq!(unseal(&seal("")).unwrap(), "");
    }

    #[test]
    fn a_file_cut_anywhere_or_altered_is_refused() {
        let sealed = seal(RULES);
        // Every cut that leaves the header: refused (a cut inside the header reads as an old
        // file without one, whose first line is then no command; a cut of the last newline
        // alone loses nothing).
        for cut in HEADER.len() + 1..sealed.len() - 1 {
            assert!(unseal(&sealed[..cut]).is_err(), "cut at {cut} accepted");
        }
        let altered = sealed.replace("10.1.0.1", "10.1.0.2");
        assert!(unseal(&altered).is_err());
        let extended = format!("{sealed}-A -t 10.0.0.2:80\n");
        assert!(unseal(&extended).is_err());
    }

    #[test]
    fn a_last_line_without_newline_is_ended_before_the_integrity_line() {
        // Found by fuzzing: the integrity line was appended to it, and the file never unsealed.
        assert_eq!(unseal(&seal("-C")).unwrap(), "-C\n");
        let fake = "-C\n# end: crc32 0dc";
        assert_eq!(unseal(&seal(fake)).unwrap(), format!("{fake}\n"));
    }

    #[test]
    fn files_without_the_header_load_as_they_are() {
        assert_eq!(unseal(RULES).unwrap(), RULES);
    }
}
