//! A reader that stops reading (`tidekeeper validate | head -1`) ends the
//! command as it ends `cat` or `git log`: killed by SIGPIPE, silently (the
//! shell says 141), whichever command it was and whatever it was printing.
//!
//! Rust starts programs with SIGPIPE ignored, so a write to a closed pipe
//! fails with EPIPE instead, and `print!` panics on that failure. Ignored
//! it stays, for the pipes and sockets the commands use themselves (a
//! local host's `sh`, the planning worker, a forge's connection): there a
//! closed pipe is an error to report, never a reason to die. Only stdout
//! and stderr closing ends the process (as Go's runtime does): the panic of
//! `print!` and `eprint!` on EPIPE is caught by a panic hook, and writes
//! to stdout that return their errors go through [`write_stdout`].

use std::io::Write;

/// Install the hook: `print!`/`println!`/`eprint!`/`eprintln!` failing on a
/// closed pipe end the process by SIGPIPE, before any panic message or
/// backtrace is printed; every other panic is reported as before.
pub fn end_quietly_when_output_is_closed() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if printing_into_a_closed_pipe(info.payload_as_str().unwrap_or("")) {
            reader_gone();
        }
        report(info);
    }));
}

/// Whether a panic is std's "failed printing to stdout: Broken pipe
/// (os error 32)" (or to stderr).
fn printing_into_a_closed_pipe(message: &str) -> bool {
    let epipe = std::io::Error::from_raw_os_error(libc::EPIPE).to_string();
    (message.starts_with("failed printing to stdout")
        || message.starts_with("failed printing to stderr"))
        && message.ends_with(&epipe)
}

/// `bytes` on stdout, flushed. The reader gone: the process ends as
/// [`end_quietly_when_output_is_closed`] says; other failures (a full disk)
/// are returned.
pub(crate) fn write_stdout(bytes: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => reader_gone(),
        r => r,
    }
}

/// End the process as a closed pipe ends any filter: by SIGPIPE, its
/// default action restored (the exit status 128 + 13 should it be blocked).
fn reader_gone() -> ! {
    // SAFETY: signal and raise are async-signal-safe and take no pointers.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    std::process::exit(128 + libc::SIGPIPE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_printing_into_a_closed_pipe_is_caught() {
        let epipe = std::io::Error::from_raw_os_error(libc::EPIPE);
        let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let caught = |m: String| printing_into_a_closed_pipe(&m);
        assert!(caught(format!("failed printing to stdout: {epipe}")));
        assert!(caught(format!("failed printing to stderr: {epipe}")));
        assert!(!caught(format!("failed printing to stdout: {full}")));
        assert!(!caught(format!("writing the state: {epipe}")));
        assert!(!printing_into_a_closed_pipe("index out of bounds"));
    }
}
