//! A real non-Rust gRPC peer: `python/interop_server.py` on grpcio's C-core server.
//!
//! Calls to it are scripted with request metadata (`x-key`, `x-fail-times`, `x-fail-code`,
//! `x-pushback-ms`, `x-headers-then-fail`, `x-delay-ms`, `x-set-health`); see the script's
//! docstring for the contract.
//!
//! # The Python environment
//!
//! The first [`PythonPeer::start`] of a build creates a virtual environment under the
//! cargo target directory (`target/testkit-python/`) and installs the pinned
//! `python/requirements.txt` into it: once, about a minute, with a message on stderr.
//! Later runs reuse it; a change to the requirements reinstalls. Concurrent test
//! processes share it safely (a file lock). All it needs is `python3` with its `venv`
//! module and access to PyPI.
//!
//! - `TONIC_BALANCER_PYTHON=/path/to/python`: use this interpreter as it is, with grpcio
//!   already installed; nothing is created or installed.
//! - `TONIC_BALANCER_PYTHON_ENV=/some/dir`: where to create the environment instead.
//! - `PYTHON3=/path/to/python3`: the interpreter that creates it (default `python3`).
//!
//! [`run_xds_client`] runs `python/xds_client.py`, grpcio's own xDS client, against a
//! test control plane, with the same environment.
//!
//! [`run_otel_client`] runs `python/otel_client.py`, a grpcio client with grpcio's
//! OpenTelemetry plugin, in a second environment made the same way from
//! `python/observability-requirements.txt` (`target/testkit-python-observability/`, or
//! `TONIC_BALANCER_PYTHON_OBSERVABILITY_ENV`): grpcio-observability pins an exact
//! grpcio release of its own.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc::{self, Receiver};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// How long the peer may take to generate its stubs and start serving.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The exit code of the script when grpcio / grpcio-tools / grpcio-health-checking is missing.
const EXIT_MISSING_PACKAGES: i32 = 3;

/// The pinned packages, compiled in so a change to them is a change to the build.
const REQUIREMENTS: &str = include_str!("../python/requirements.txt");

/// The OpenTelemetry reference's packages: grpcio-observability pins its own grpcio
/// (an older patch release than the peer's), so it lives in an environment of its own.
const OBSERVABILITY_REQUIREMENTS: &str = include_str!("../python/observability-requirements.txt");

/// One virtual environment: its pinned requirements and where it lives.
struct Environment {
    requirements: &'static str,
    /// The requirements file under `python/`.
    file: &'static str,
    /// Its directory under the target directory.
    dir: &'static str,
    /// Overrides the directory.
    dir_variable: &'static str,
}

const PEER: Environment = Environment {
    requirements: REQUIREMENTS,
    file: "requirements.txt",
    dir: "testkit-python",
    dir_variable: "TONIC_BALANCER_PYTHON_ENV",
};

const OBSERVABILITY: Environment = Environment {
    requirements: OBSERVABILITY_REQUIREMENTS,
    file: "observability-requirements.txt",
    dir: "testkit-python-observability",
    dir_variable: "TONIC_BALANCER_PYTHON_OBSERVABILITY_ENV",
};

/// The directory of `interop_server.py` and `requirements.txt`.
fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python")
}

/// The interpreter that runs the peer: provisioned once per process (and per target
/// directory across processes). The error says what to do.
pub fn interpreter() -> Result<PathBuf, String> {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            if let Some(python) = std::env::var_os("TONIC_BALANCER_PYTHON") {
                return Ok(PathBuf::from(python));
            }
            provision(&PEER)
        })
        .clone()
}

/// The interpreter with grpcio's OpenTelemetry plugin (`grpcio-observability`) and the
/// OpenTelemetry SDK, in an environment of its own (`target/testkit-python-observability/`,
/// or `TONIC_BALANCER_PYTHON_OBSERVABILITY_ENV`), made as [`interpreter`] makes its own.
pub fn observability_interpreter() -> Result<PathBuf, String> {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PYTHON.get_or_init(|| provision(&OBSERVABILITY)).clone()
}

/// Runs `otel_client.py` against a server at `target` with the grpcio interpreter of
/// [`observability_interpreter`]: one OK `EmptyCall` and one `UnaryCall` that asks for
/// UNAVAILABLE, through grpcio's OpenTelemetry plugin with an in-memory metric reader.
/// Returns what the script prints: the exported metrics as JSON (see the script).
pub fn run_otel_client(target: &str) -> Result<String, String> {
    run_script(
        &observability_interpreter()?,
        "otel_client.py",
        &[target],
        &[],
    )
}

/// Runs `script` (in `testkit/python/`) with `python`, these arguments and these
/// environment variables (`None`: removed); returns its stdout, or why it failed (with
/// its stderr).
fn run_script(
    python: &Path,
    script: &str,
    args: &[&str],
    env: &[(&str, Option<&str>)],
) -> Result<String, String> {
    let script = python_dir().join(script);
    let mut command = Command::new(python);
    command.arg(&script).args(args);
    for (key, value) in env {
        match value {
            Some(value) => command.env(key, value),
            None => command.env_remove(key),
        };
    }
    let output = command
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {} ({e})", python.display()))?;
    if !output.status.success() {
        return Err(format!(
            "{} exited with {}: {}",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    String::from_utf8(output.stdout).map_err(|e| format!("output not UTF-8: {e}"))
}

/// Runs `xds_client.py`, a grpcio (C-core) client of the xDS target `target` (such as
/// `xds:///orders`) with `bootstrap` as its `GRPC_XDS_BOOTSTRAP_CONFIG`, making `calls`
/// UnaryCalls with the interpreter of [`interpreter`]. Returns the id of the server of
/// each call, in order: gRPC's own xDS client as a check of a test control plane.
pub fn run_xds_client(target: &str, bootstrap: &str, calls: usize) -> Result<Vec<String>, String> {
    let env = [
        ("GRPC_XDS_BOOTSTRAP_CONFIG", Some(bootstrap)),
        ("GRPC_XDS_BOOTSTRAP", None),
    ];
    let calls = calls.to_string();
    let stdout = run_script(&interpreter()?, "xds_client.py", &[target, &calls], &env)?;
    Ok(stdout.lines().map(str::to_owned).collect())
}

/// `xds_client.py` started with no calls: grpcio's channel to `target` only connects,
/// which starts its xDS subscriptions, and the process runs until dropped. For tests
/// that watch what gRPC's own client ACKs or NACKs.
pub fn spawn_xds_client(target: &str, bootstrap: &str) -> Result<XdsClientProcess, String> {
    let python = interpreter()?;
    let child = Command::new(&python)
        .arg(python_dir().join("xds_client.py"))
        .arg(target)
        .arg("0")
        .env("GRPC_XDS_BOOTSTRAP_CONFIG", bootstrap)
        .env_remove("GRPC_XDS_BOOTSTRAP")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {} ({e})", python.display()))?;
    Ok(XdsClientProcess { child })
}

/// A running grpcio xDS client from [`spawn_xds_client`]; killed when dropped.
#[derive(Debug)]
pub struct XdsClientProcess {
    child: Child,
}

impl Drop for XdsClientProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn provision(environment: &Environment) -> Result<PathBuf, String> {
    let requirements = environment.requirements;
    let env_dir = match std::env::var_os(environment.dir_variable) {
        Some(dir) => PathBuf::from(dir),
        None => target_dir().join(environment.dir),
    };
    let python = env_dir.join("bin").join("python");
    let marker = env_dir.join("installed-requirements.txt");
    let installed = || fs::read_to_string(&marker).is_ok_and(|text| text == requirements);
    if installed() {
        return Ok(python);
    }
    let parent = env_dir.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    // One process creates the environment; the others wait here, then find it ready.
    let lock_path = parent.join(format!("{}.lock", environment.dir));
    let lock = File::create(&lock_path)
        .map_err(|e| format!("cannot create {}: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| format!("cannot lock {}: {e}", lock_path.display()))?;
    if installed() {
        return Ok(python);
    }
    let base = std::env::var_os("PYTHON3").unwrap_or_else(|| "python3".into());
    eprintln!(
        "tonic-balancer-testkit: creating a Python environment for the grpcio peer in {} \
         (once per target directory; pip downloads about 60 MB)",
        env_dir.display()
    );
    let _ = fs::remove_dir_all(&env_dir);
    run(
        Command::new(&base).args(["-m", "venv"]).arg(&env_dir),
        "create a virtual environment",
        &format!(
            "the Python gRPC peer needs python3 with its venv module (Debian: apt-get install \
             python3-venv), or TONIC_BALANCER_PYTHON naming an interpreter that has grpcio \
             (pip install -r {})",
            python_dir().join(environment.file).display()
        ),
    )?;
    run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .arg("-r")
            .arg(python_dir().join(environment.file)),
        "install the pinned grpcio packages",
        "pip needs access to PyPI; or set TONIC_BALANCER_PYTHON to an interpreter that has \
         them",
    )?;
    fs::write(&marker, requirements)
        .map_err(|e| format!("cannot write {}: {e}", marker.display()))?;
    eprintln!("tonic-balancer-testkit: Python environment ready");
    Ok(python)
}

/// Runs a set-up step, its output passed through to the test's stderr.
fn run(command: &mut Command, what: &str, hint: &str) -> Result<(), String> {
    let shown = format!("{command:?}");
    match command.stdin(Stdio::null()).status() {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!(
            "could not {what}: `{shown}` exited with {status}; {hint}"
        )),
        Err(e) => Err(format!(
            "could not {what}: cannot run `{shown}` ({e}); {hint}"
        )),
    }
}

/// The cargo target directory this test binary was built in: the nearest ancestor of
/// the executable that holds cargo's `CACHEDIR.TAG`, else `target/` beside the workspace.
fn target_dir() -> PathBuf {
    let from_exe = std::env::current_exe().ok().and_then(|exe| {
        exe.ancestors()
            .find(|dir| dir.join("CACHEDIR.TAG").is_file())
            .map(Path::to_path_buf)
    });
    from_exe.unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// A running `interop_server.py`; killed when dropped.
///
/// Its stdin stays open (a pipe held by `child`): the script also stops on stdin EOF, so it
/// does not outlive the test process even if `drop` never runs.
#[derive(Debug)]
pub struct PythonPeer {
    child: Child,
    addr: SocketAddr,
}

impl PythonPeer {
    /// The peer's process id, for tests that freeze it (`kill -STOP`) and thaw it
    /// (`kill -CONT`) to play a server that hangs without closing its connections.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts `interop_server.py --server-id <server_id>` on 127.0.0.1 and waits for it to
    /// serve, creating the Python environment first if this build has none yet.
    ///
    /// # Panics
    ///
    /// If the environment cannot be created or the peer does not start; the message says
    /// why and what to do.
    pub fn start(server_id: &str) -> PythonPeer {
        Self::start_on(server_id, 0)
    }

    /// The same on a given port (0: any), e.g. to restart a peer where it was.
    ///
    /// # Panics
    ///
    /// As [`PythonPeer::start`].
    pub fn start_on(server_id: &str, port: u16) -> PythonPeer {
        let python = interpreter().unwrap_or_else(|why| panic!("python peer: {why}"));
        let script = python_dir().join("interop_server.py");
        let mut child = Command::new(&python)
            .arg(&script)
            .args(["--server-id", server_id])
            .args(["--port", &port.to_string()])
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {} ({e})", python.display()));
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
                    panic!(
                        "python peer: grpcio packages are missing from {}",
                        python.display()
                    )
                }
                panic!(
                    "python peer exited before serving ({}; its stderr is above)",
                    status.map_or_else(|| "unknown status".to_owned(), |s| s.to_string())
                )
            }
        }
    }

    /// The peer's address, on 127.0.0.1: connect to `http://{addr}`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Freezes the process (SIGSTOP), as a hung server or a partition looks from the
    /// client: its TCP connections stay open (the kernel still ACKs), nothing answers.
    pub fn freeze(&self) {
        signal(self.child.id(), "-STOP");
    }

    /// Resumes a frozen process (SIGCONT).
    pub fn thaw(&self) {
        signal(self.child.id(), "-CONT");
    }

    /// Kills the process at once (SIGKILL) and reaps it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PythonPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a signal with `kill(1)`, which every Unix has.
fn signal(pid: u32, which: &str) {
    let status = Command::new("kill")
        .args([which, &pid.to_string()])
        .status()
        .unwrap_or_else(|e| panic!("cannot run kill {which} {pid}: {e}"));
    assert!(status.success(), "kill {which} {pid}: {status}");
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
