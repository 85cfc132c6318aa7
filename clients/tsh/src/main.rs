//! `tsh` binary: everything happens in the library; this only hands over the arguments.
#![forbid(unsafe_code)]

#[tokio::main]
async fn main() {
    // exit() right away: a pending read of standard input must not hold the process open.
    std::process::exit(tsh::run(std::env::args_os()).await)
}
