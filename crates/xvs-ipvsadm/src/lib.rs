//! xvs-ipvsadm: ipvsadm's language without IO. [`parse::parse_command`] turns a command line into
//! a typed [`parse::Command`] (or ipvsadm's exact error text and exit status);
//! [`apply::apply`] runs it against a [`xvs_core::Director`]; [`save::save`] writes `-S` output.

#![forbid(unsafe_code)]

pub mod addr;
pub mod apply;
pub mod control;
pub mod exec;
pub mod list;
pub mod marks;
pub mod parse;
pub mod save;
pub mod state;

pub use parse::{parse_command, restore_line, Command, ParseError};
