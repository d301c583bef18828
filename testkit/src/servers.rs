//! Real servers on 127.0.0.1 for the image library's tests (library/'s and the e2e tests'),
//! each a child process the test owns and kills when dropped: `s3s-fs` (an S3 server over a
//! directory) and nginx (a static web server serving that directory, as a depot would serve a
//! pushed library), plus a listener that accepts connections and never answers (a stalled
//! server).

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The access key the S3 server is started with.
pub const ACCESS_KEY: &str = "tek-test-access";
/// Its secret.
pub const SECRET_KEY: &str = "tek-test-secret-Zx81";
/// The bucket the tests use.
pub const BUCKET: &str = "library";

/// A free port on 127.0.0.1 (bound, then released; the server binds it right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding a free port")
        .port()
}

fn wait_listening(port: u16, child: &mut Child, what: &str, log: Option<&Path>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(st)) = child.try_wait() {
            let log = log.and_then(|l| std::fs::read_to_string(l).ok());
            panic!(
                "{what} exited before listening: {st}; {}",
                log.unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} not listening on port {port} after 20 s");
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The `s3s-fs` binary: on PATH or where `cargo install` puts it; None if absent.
pub fn s3s_fs() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let installed = home.join(".cargo/bin/s3s-fs");
    if installed.is_file() {
        return Some(installed);
    }
    crate::have("s3s-fs").then(|| PathBuf::from("s3s-fs"))
}

/// The nginx binary (Debian puts it in /usr/sbin); None if absent.
pub fn nginx() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// `s3s-fs` serving `root` (the bucket is the directory `root/library`).
pub struct S3Server {
    child: Option<Child>,
    bin: PathBuf,
    /// Its port.
    pub port: u16,
    /// The directory it stores objects in.
    pub root: PathBuf,
}

impl S3Server {
    /// Starts it on a free port with [`ACCESS_KEY`] / [`SECRET_KEY`].
    pub fn start(bin: &Path, root: &Path) -> S3Server {
        std::fs::create_dir_all(root.join(BUCKET)).expect("creating the bucket directory");
        let mut s = S3Server {
            child: None,
            bin: bin.to_path_buf(),
            port: free_port(),
            root: root.to_path_buf(),
        };
        s.restart();
        s
    }

    /// Kills it (SIGKILL: requests in flight are cut off).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(&mut c);
        }
    }

    /// Starts it again on the same port over the same directory.
    pub fn restart(&mut self) {
        self.kill();
        let mut child = Command::new(&self.bin)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&self.root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting s3s-fs");
        wait_listening(self.port, &mut child, "s3s-fs", None);
        self.child = Some(child);
    }

    /// Where object `key` of the bucket lives on disk.
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.root.join(BUCKET).join(key)
    }

    /// Its endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// nginx serving `root` on a free port; config, pid and logs in its own scratch directory.
pub struct Nginx {
    child: Option<Child>,
    bin: PathBuf,
    conf: PathBuf,
    /// Its port.
    pub port: u16,
    /// Its access log (one line per request: `STATUS PATH`).
    pub access_log: PathBuf,
}

impl Nginx {
    /// Starts nginx serving `root`; `rate` limits each response (`limit_rate`, e.g. "200k").
    pub fn start(bin: &Path, root: &Path, scratch: &Path, rate: Option<&str>) -> Nginx {
        std::fs::create_dir_all(scratch).expect("creating nginx scratch");
        let port = free_port();
        let conf = scratch.join("nginx.conf");
        let access_log = scratch.join("access.log");
        let root_user = if nix::unistd::geteuid().is_root() {
            "user root;"
        } else {
            ""
        };
        let text = format!(
            "{root_user}
daemon off;
master_process off;
worker_processes 1;
pid {scratch}/nginx.pid;
error_log {scratch}/error.log;
events {{ worker_connections 256; }}
http {{
  log_format tek '$status $request_uri';
  access_log {log} tek;
  client_body_temp_path {scratch}/body;
  proxy_temp_path {scratch}/proxy;
  fastcgi_temp_path {scratch}/fastcgi;
  uwsgi_temp_path {scratch}/uwsgi;
  scgi_temp_path {scratch}/scgi;
  server {{
    listen 127.0.0.1:{port};
    root {root};
    {limit}
  }}
}}
",
            scratch = scratch.display(),
            log = access_log.display(),
            root = root.display(),
            limit = rate.map(|r| format!("limit_rate {r};")).unwrap_or_default(),
        );
        std::fs::write(&conf, text).expect("writing nginx.conf");
        let mut n = Nginx {
            child: None,
            bin: bin.to_path_buf(),
            conf,
            port,
            access_log,
        };
        n.restart();
        n
    }

    /// Its base URL.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    /// Kills it (SIGKILL: connections drop mid-response).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(&mut c);
        }
    }

    /// Starts it again on the same port with the same config.
    pub fn restart(&mut self) {
        self.kill();
        let error_log = self.conf.with_file_name("error.log");
        let mut child = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.conf)
            .arg("-e")
            .arg(&error_log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nginx");
        wait_listening(self.port, &mut child, "nginx", Some(&error_log));
        self.child = Some(child);
    }

    /// Requests logged so far: (status, path).
    pub fn requests(&self) -> Vec<(u16, String)> {
        let text = std::fs::read_to_string(&self.access_log).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let (st, path) = l.split_once(' ')?;
                Some((st.parse().ok()?, path.to_string()))
            })
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A server that accepts connections and never answers; its thread ends when dropped.
pub struct Stall {
    /// Its port.
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Stall {
    /// Starts listening on a free port.
    pub fn start() -> Stall {
        let l = TcpListener::bind("127.0.0.1:0").expect("binding the stall server");
        let port = l.local_addr().expect("its address").port();
        l.set_nonblocking(true).expect("nonblocking listener");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        // Read the request so the client's write completes; answer nothing.
                        let _ = c.set_read_timeout(Some(Duration::from_millis(50)));
                        let _ = c.read(&mut [0u8; 4096]);
                        held.push(c);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Stall {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Stall {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
