//! `xvsd`: the xvs daemon. This build has one subcommand, `replay`, which feeds a pcap through
//! the same data path the AF_XDP workers use and writes what xvs would transmit.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod replay;

#[derive(Debug, Parser)]
#[command(name = "xvsd", version, about = "XDP Virtual Server daemon")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Feed the frames of a pcap through the data path and write the frames xvs would send.
    Replay(replay::ReplayArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Replay(args) => match replay::run(&args) {
            Ok(summary) => {
                print!("{summary}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("xvsd replay: {e}");
                ExitCode::from(1)
            }
        },
    }
}
