//! `xvsd`: the xvs daemon. `xvsd [--interface IF ...] [--rules FILE] [--state FILE]` holds the
//! tables, serves the control socket for `xvsadm` and, with interfaces, balances live traffic
//! on AF_XDP; `xvsd replay` feeds a pcap through the same data path offline.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod control;
mod daemon;
mod error;
mod malloc;
mod names;
mod replay;
mod state;
mod sync;
mod sysctl;

#[derive(Debug, Parser)]
#[command(
    name = "xvsd",
    version,
    about = "XDP Virtual Server daemon",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    daemon: daemon::DaemonArgs,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Feed the frames of a pcap through the data path and write the frames xvs would send.
    Replay(replay::ReplayArgs),
}

fn main() -> ExitCode {
    // Before anything else (no thread, no allocation of note yet): it may execute xvsd again.
    let malloc_note = malloc::apply();
    let cli = Cli::parse();
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    if let Some(why) = malloc_note {
        tracing::warn!("huge pages for the heap not set: {why}");
    }
    match cli.cmd {
        Some(Cmd::Replay(args)) => match replay::run(&args) {
            Ok(summary) => {
                print!("{summary}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("xvsd replay: {e}");
                ExitCode::from(1)
            }
        },
        None if cli.daemon.detach => match daemon::detach(&cli.daemon) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("xvsd: {e}");
                ExitCode::from(1)
            }
        },
        None => match daemon::run(&cli.daemon) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("xvsd: {e}");
                ExitCode::from(1)
            }
        },
    }
}
