//! One module per `tsh` subcommand.

pub mod clusters;
pub mod login;
pub mod ls;
pub mod ssh;
pub mod status;
