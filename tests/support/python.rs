//! A real non-Rust gRPC peer: `tests/python/interop_server.py` on grpcio's C-core server.
//!
//! Calls to it are scripted with request metadata (`x-key`, `x-fail-times`, `x-fail-code`,
//! `x-pushback-ms`, `x-headers-then-fail`, `x-delay-ms`, `x-set-health`); see the script's
//! docstring for the contract. Needs `python3` (or `$TONIC_BALANCER_PYTHON`) with
//! `pip install -r tests/python/requirements.txt`.

use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// How long the peer may take to generate its stubs and start serving.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The exit code of the script when grpcio / grpcio-tools / grpcio-health-checking is missing.
const EXIT_MISSING_PACKAGES: i32 = 3;

const INSTALL_HINT: &str = "run `pip install -r tests/python/requirements.txt`";

/// A running `interop_server.py`; killed when dropped.
///
/// Its stdin stays open (a pipe held by `child`): the script also stops on stdin EOF, so it
/// does not outlive the test process even if `drop` never runs.
pub struct PythonPeer {
    child: Child,
    addr: SocketAddr,
}

impl PythonPeer {
    /// Starts `tests/python/interop_server.py --server-id <server_id>` and waits for it to
    /// serve. Panics, saying how to install them, if python3 or the grpcio packages are missing.
    pub fn start(server_id: &str) -> PythonPeer {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let script = root.join("tests/python/interop_server.py");
        let python = std::env::var_os("TONIC_BALANCER_PYTHON").unwrap_or_else(|| "python3".into());
        let mut child = Command::new(&python)
            .arg(&script)
            .args(["--server-id", server_id])
            .current_dir(root)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} ({e}): the Python gRPC peer needs python3 with grpcio; {INSTALL_HINT}",
                    python.to_string_lossy()
                )
            });

        // The server's stderr goes to the test's stderr. Lines are forwarded with eprintln! from
        // a thread spawned here, which inherits libtest's output capture: they are shown with
        // the test's failure (or with --nocapture) rather than interleaved with passing tests.
        let stderr = child.stderr.take().expect("piped stderr");
        let stderr_forwarder = forward_lines(stderr, format!("[python peer {server_id}]"));

        // Read stdout on a thread so the wait for `PORT <n>` can time out.
        let stdout = child.stdout.take().expect("piped stdout");
        let (port_tx, port_rx) = mpsc::channel();
        let tag = format!("[python peer {server_id} stdout]");
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref() {
                let Ok(line) = line else { break };
                if let Some(port) = line.strip_prefix("PORT ") {
                    let _ = port_tx.send(
                        port.trim()
                            .parse::<u16>()
                            .map_err(|e| format!("{line:?}: {e}")),
                    );
                    break;
                }
                eprintln!("{tag} {line}");
            }
            drop(port_tx); // EOF before PORT: the receiver sees a disconnect
            // Keep draining so the server can never block on a full stdout pipe.
            for line in lines.map_while(Result::ok) {
                eprintln!("{tag} {line}");
            }
        });

        match port_rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(port)) => PythonPeer {
                child,
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            },
            Ok(Err(bad_line)) => {
                stop(&mut child, stderr_forwarder, Duration::ZERO);
                panic!("python peer printed a bad PORT line: {bad_line}")
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                stop(&mut child, stderr_forwarder, Duration::ZERO);
                panic!(
                    "python peer did not print `PORT <n>` within {START_TIMEOUT:?} ({})",
                    script.display()
                )
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // Stdout closed: it is exiting; give it a moment to report why.
                let status = stop(&mut child, stderr_forwarder, Duration::from_secs(5));
                if status.and_then(|s| s.code()) == Some(EXIT_MISSING_PACKAGES) {
                    panic!("python peer: grpcio packages are missing; {INSTALL_HINT}")
                }
                panic!(
                    "python peer exited before serving ({}; its stderr is above); \
                     if grpcio is missing, {INSTALL_HINT}",
                    status.map_or_else(|| "unknown status".to_owned(), |s| s.to_string())
                )
            }
        }
    }

    /// The peer's address, on 127.0.0.1: connect to `http://{addr}`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for PythonPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Forwards each line of `from` to this process's stderr, prefixed with `tag`. The
/// returned receiver hears when `from` closes, which for a child's stderr is when the
/// child has exited.
fn forward_lines(from: impl Read + Send + 'static, tag: String) -> (JoinHandle<()>, Receiver<()>) {
    let (closed_tx, closed_rx) = mpsc::channel();
    let thread = thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            eprintln!("{tag} {line}");
        }
        let _ = closed_tx.send(());
    });
    (thread, closed_rx)
}

/// Reaps the child, killing it if it has not exited within `grace`, and flushes its stderr.
fn stop(
    child: &mut Child,
    (stderr_forwarder, stderr_closed): (JoinHandle<()>, Receiver<()>),
    grace: Duration,
) -> Option<std::process::ExitStatus> {
    // Its stderr closing is its exit: wait for that event, up to the grace period.
    let _ = stderr_closed.recv_timeout(grace);
    let _ = child.kill();
    let status = child.wait().ok();
    let _ = stderr_forwarder.join();
    status
}
