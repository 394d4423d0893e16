//! Apply parsed commands to the engine's tables, and `-R` streams with ipvsadm's rules.

use xvs_core::director::{CtlError, Director};

use crate::parse::{parse_command, restore_line, Command, ParseError};

/// Outcome of one command against the tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Done.
    Ok,
    /// The command is not a table change (listing, save, daemon, help): the caller handles it.
    NotATableChange(Command),
    /// The kernel-side check failed: ipvsadm prints the message and exits 255.
    Failed(CtlError),
}

/// Apply one table-changing command.
pub fn apply(d: &mut Director, cmd: Command) -> Applied {
    let r = match cmd {
        Command::AddService(c) => d.add_service(c),
        Command::EditService(c) => d.edit_service(c),
        Command::DelService(k) => d.del_service(&k),
        Command::Clear => {
            d.clear();
            Ok(())
        }
        Command::AddDest(k, c) => d.add_dest(&k, c),
        Command::EditDest(k, c) => d.edit_dest(&k, c),
        Command::DelDest(k, a, p) => d.del_dest(&k, a, p),
        Command::Zero(k) => d.zero(k.as_ref()),
        Command::SetTimeouts(a, b, c) => d.set_timeouts(a, b, c),
        other => return Applied::NotATableChange(other),
    };
    match r {
        Ok(()) => Applied::Ok,
        Err(e) => Applied::Failed(e),
    }
}

/// The result of a `-R` stream.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RestoreReport {
    /// Lines applied.
    pub applied: usize,
    /// Kernel-side errors, printed and skipped (line number, message).
    pub errors: Vec<(usize, String)>,
    /// The syntax error that stopped the stream, if any (line number, error).
    pub stopped: Option<(usize, ParseError)>,
    /// ipvsadm's exit status: that of the last line processed.
    pub status: i32,
}

/// `ipvsadm -R`: each line is a command line; `ipvsadm` tokens are dropped, blank lines skipped;
/// a kernel error prints and continues, the first syntax error stops the stream (the lines
/// before it stay applied). `-R` inside `-R` is a syntax error.
pub fn restore(d: &mut Director, prog: &str, input: &str) -> RestoreReport {
    let mut rep = RestoreReport::default();
    for (n, line) in input.lines().enumerate() {
        let lineno = n + 1;
        let Some(args) = restore_line(line) else {
            continue;
        };
        let cmd = match parse_command(prog, &args) {
            Ok(Command::Restore) => Err(ParseError {
                message: crate::parse::try_help(prog),
                status: 255,
            }),
            other => other,
        };
        match cmd {
            Err(e) => {
                rep.status = e.status;
                rep.stopped = Some((lineno, e));
                return rep;
            }
            Ok(cmd) => match apply(d, cmd) {
                Applied::Ok | Applied::NotATableChange(_) => {
                    rep.applied += 1;
                    rep.status = 0;
                }
                Applied::Failed(e) => {
                    rep.errors.push((lineno, e.to_string()));
                    rep.status = 255;
                }
            },
        }
    }
    rep
}
