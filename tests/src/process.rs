//! Binaries the tests start as an operator would: killed when the test ends, passed or failed
//! (a leftover would hold the test harness's output open), and stopped with SIGTERM.

use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// A child process that is killed when it goes out of scope.
#[derive(Debug)]
pub struct Running(pub Child);

impl std::ops::Deref for Running {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends SIGTERM to `child`, as an orchestrator stopping it does.
pub fn sigterm(child: &Child) {
    signal(child, "-TERM");
}

/// Sends `child` the signal `flag` names (`-TERM`, `-STOP`, ...); panics if it cannot.
pub fn signal(child: &Child, flag: &str) {
    let ok = Command::new("kill").args([flag, &child.id().to_string()]).status().expect("kill").success();
    assert!(ok, "kill {flag} {}", child.id());
}

/// Waits for `child` to exit; panics when it is still running after `within`.
pub fn exit_status(child: &mut Child, within: Duration) -> ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(started.elapsed() < within, "process {} still runs after {within:?}", child.id());
        std::thread::sleep(Duration::from_millis(50));
    }
}
