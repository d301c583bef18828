//! A meddling proxy on 127.0.0.1 in front of a real server (s3s-fs): each request is
//! forwarded, answered by the proxy itself, or never answered, as the test's rule says, and
//! every request line is recorded. One upstream connection per request, closed after its
//! response, so the proxy sees each request of a kept-alive client connection.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the proxy does with one request.
pub enum Act {
    /// Pass it to the server and its response back.
    Forward,
    /// Answer with these bytes (a whole HTTP response) instead; the server never sees it.
    Reply(Vec<u8>),
    /// Forward it, then answer the client with the server's response rewritten by the function.
    Rewrite(fn(Vec<u8>) -> Vec<u8>),
    /// Keep the connection open and never answer (a stalled server).
    Stall,
}

/// A running proxy. Its threads end with the test process.
pub struct Proxy {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The request lines seen (`"GET /library/lib/... HTTP/1.1"`), in order.
    pub seen: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    /// A proxy in front of `upstream` (`http://host:port`); `rule` gets each request's first
    /// line and its head, lowercased.
    pub fn start(upstream: &str, rule: fn(&str, &str) -> Act) -> Proxy {
        let upstream = upstream.trim_start_matches("http://").to_string();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(c) = c else { return };
                let (upstream, log) = (upstream.clone(), log.clone());
                std::thread::spawn(move || serve(c, &upstream, &log, rule));
            }
        });
        Proxy {
            endpoint: format!("http://127.0.0.1:{port}"),
            seen,
        }
    }

    /// How many requests the proxy saw whose first line starts with `method` and contains
    /// `part`.
    pub fn count(&self, method: &str, part: &str) -> usize {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|l| l.starts_with(method) && l.contains(part))
            .count()
    }
}

fn serve(c: TcpStream, upstream: &str, log: &Mutex<Vec<String>>, rule: fn(&str, &str) -> Act) {
    let mut out = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    loop {
        let mut head = Vec::new();
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
            if lower.starts_with("connection:") {
                continue;
            }
            if line == "\r\n" {
                head.extend_from_slice(b"Connection: close\r\n\r\n");
                break;
            }
            head.extend_from_slice(line.as_bytes());
        }
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let text = String::from_utf8_lossy(&head).to_string();
        let first = text.lines().next().unwrap_or("").to_string();
        log.lock().unwrap().push(first.clone());
        let forward = || {
            let mut up = TcpStream::connect(upstream).unwrap();
            up.write_all(&head).unwrap();
            up.write_all(&body).unwrap();
            let mut resp = Vec::new();
            up.read_to_end(&mut resp).unwrap();
            resp
        };
        match rule(&first, &text.to_ascii_lowercase()) {
            Act::Reply(resp) => {
                let _ = out.write_all(&resp);
                continue;
            }
            Act::Stall => {
                std::thread::sleep(Duration::from_secs(600));
                return;
            }
            Act::Forward => {
                // The upstream closed: so does this connection, after the response.
                let _ = out.write_all(&forward());
                return;
            }
            Act::Rewrite(f) => {
                let _ = out.write_all(&f(forward()));
                return;
            }
        }
    }
}
