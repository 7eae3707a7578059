//! The registry server fed raw bytes as a client connection: routing, repository names,
//! references, ranges, uploads, and (with token auth) the Authorization header.
//! Invariants: no panic; every answer is HTTP; no file appears outside the storage root;
//! no 5xx for what a client sent.
#![no_main]

use std::io::{self, Cursor, Read, Write};
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use registry::auth::{Auth, Mode};
use registry::server::Conn;
use registry::{Config, Registry, Storage};

/// The key the seed corpus's tokens are signed with.
const KEY: &[u8] = b"berth-fuzz-token-key";

struct Fixture {
    base: PathBuf,
    open: Registry,
    token: Registry,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let base = tempfile::Builder::new()
            .prefix("registry-")
            .tempdir_in(berth_fuzz::scratch())
            .unwrap()
            .keep();
        let htpasswd = base.join("htpasswd");
        std::fs::write(&htpasswd, "").unwrap();
        let cfg = |auth| Config {
            max_blob: 1 << 20,
            auth,
            log: false,
            max_page: 100,
        };
        let open = Registry::new(Storage::open(&base.join("open")).unwrap(), cfg(None));
        let auth = Auth::new(
            &htpasswd,
            None,
            Mode::Token {
                service: "fuzz".into(),
                key: KEY.to_vec(),
                ttl: 300,
            },
        )
        .unwrap();
        let token = Registry::new(Storage::open(&base.join("token")).unwrap(), cfg(Some(auth)));
        Fixture { base, open, token }
    })
}

struct Mem {
    input: Cursor<Vec<u8>>,
    out: Vec<u8>,
}

impl Read for Mem {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Mem {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // The answers, up to what is checked; blobs beyond are counted as sent.
        if self.out.len() < 1 << 16 {
            self.out.extend_from_slice(&buf[..buf.len().min(1 << 16)]);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Conn for Mem {
    fn shutdown_write(&mut self) {}
}

impl Conn for &mut Mem {
    fn shutdown_write(&mut self) {}
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, request)) = data.split_first() else {
        return;
    };
    let f = fixture();
    let reg = if pick & 1 == 0 { &f.open } else { &f.token };
    let mut conn = Mem {
        input: Cursor::new(request.to_vec()),
        out: Vec::new(),
    };
    reg.serve_conn(&mut conn, "127.0.0.1:1");
    let out = String::from_utf8_lossy(&conn.out);
    if !out.is_empty() {
        assert!(out.starts_with("HTTP/1."), "not an HTTP answer: {out:.80}");
    }
    for status in out
        .match_indices("HTTP/1.1 5")
        .map(|(i, _)| &out[i..(i + 40).min(out.len())])
    {
        panic!("a server error for a client's bytes: {status:?}\n{out:.2000}");
    }
    let mut top: Vec<String> = std::fs::read_dir(&f.base)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(
        top,
        ["htpasswd", "open", "token"],
        "written outside the storage roots"
    );
});
