//! Standard output for the commands that print a result (`plan`, `graph`, `runs`, ...).
//!
//! `println!` panics when stdout is a pipe whose reader has gone (`nerv plan big.toml | head`).
//! [`outln!`] writes the same line, and when the reader has gone the command ends there,
//! quietly and successfully, as Unix tools do: nothing more it prints can be read. Only for
//! output after which nothing else needs doing; the live display of a run ignores write errors
//! instead (a run goes on, and is recorded, whoever reads its display).

use std::io::Write;

/// Prints a line to stdout, like `println!`, but see the module doc for a closed pipe.
macro_rules! outln {
    () => {
        $crate::out::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::out::line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

/// Writes `args` and a newline to stdout; exits the process (status 0) if the reader has gone,
/// reports any other write error on stderr and exits with status 1.
pub(crate) fn line(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let r = out
        .write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    match r {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("nerv: cannot write to stdout: {e}");
            std::process::exit(1)
        }
    }
}
