//! Why xvsd cannot start: one error type for every step of the start, each variant saying what
//! was being done and with which file, interface or resource.

use std::io;
use std::path::PathBuf;

use xvs_xdp::bpf::BpfError;
use xvs_xdp::xsk::XskError;

/// An error that stops xvsd's start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A command-line value is invalid.
    #[error("{0}")]
    Argument(String),
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A line of the rules, the state file or a sysctl file was refused.
    #[error("{}:{line}: {text}: {message}", path.display())]
    Line {
        /// The file.
        path: PathBuf,
        /// Its line number (from 1).
        line: usize,
        /// The line.
        text: String,
        /// Why it was refused.
        message: String,
    },
    /// The state file cannot be trusted (cut short or altered).
    #[error("{0}")]
    State(String),
    /// The state file cannot be written (no change could be saved).
    #[error("saving state to {}: {source}", path.display())]
    Save {
        /// The state file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A sysctl setting was refused.
    #[error("{0}")]
    Sysctl(String),
    /// An interface cannot be balanced on.
    #[error("interface {name}: {reason}")]
    Interface {
        /// The interface.
        name: String,
        /// Why.
        reason: String,
    },
    /// Loading or attaching the XDP program, or its maps.
    #[error(transparent)]
    Bpf(#[from] BpfError),
    /// Creating an AF_XDP socket or its UMEM.
    #[error(transparent)]
    Xsk(#[from] XskError),
    /// The control socket.
    #[error("{0}")]
    Control(String),
    /// The operating system refused something the daemon needs (a thread, a signal handler,
    /// random numbers, the routing tables).
    #[error("{what}: {source}")]
    Os {
        /// What xvsd was doing.
        what: String,
        /// Why it failed.
        source: io::Error,
    },
}

impl StartError {
    /// An operating-system error while doing `what`.
    pub fn os(what: impl Into<String>) -> impl FnOnce(io::Error) -> StartError {
        let what = what.into();
        move |source| StartError::Os { what, source }
    }
}
