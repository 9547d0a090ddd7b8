//! Idle and slow connections are closed (issue 14, item 1): on both ports (the gRPC door and
//! the AWS door) connections that send nothing, half a TLS ClientHello or half a request are
//! shed when the caps (total and per source address) are reached, and closed at their
//! deadlines, while a normal client is still served. Runs the real daemon with small caps
//! and short deadlines.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use p11kms::core::{Clock, SystemClock};
use p11kms::pb;
use p11kms::server::{self, RunningServer, ServerOptions};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const AK_ADMIN: &str = "AKIAADMIN00000000001";

/// The caps and deadlines of the test daemon.
const MAX_CONNECTIONS: usize = 64;
const MAX_PER_SOURCE: usize = 48;
const DEADLINE: Duration = Duration::from_millis(4000);
/// How long the test waits for the daemon to shed over-cap connections (well before
/// [`DEADLINE`], so that no deadline has closed them yet).
const SHED_WINDOW: Duration = Duration::from_millis(800);
/// Slack for a loaded machine, on top of a deadline.
const MARGIN: Duration = Duration::from_millis(1500);

async fn start_daemon(name: &str) -> RunningServer {
    start_daemon_with(name, "").await
}

/// [`start_daemon`] with more `[server]` settings.
async fn start_daemon_with(name: &str, more: &str) -> RunningServer {
    let dir = data_dir(name);
    let ms = DEADLINE.as_millis();
    let limits = format!(
        "handshake_timeout_ms = {ms}\nrequest_head_timeout_ms = {ms}\n\
         request_body_timeout_ms = {ms}\nidle_timeout_ms = {ms}\n\
         max_connections = {MAX_CONNECTIONS}\nmax_connections_per_source = {MAX_PER_SOURCE}\n\
         {more}\n\n[hsm]"
    );
    let mut text = config_text(&dir).replacen("[hsm]", &limits, 1);
    text.push_str("\n[aws_json]\nenabled = true\nlisten = \"127.0.0.1:0\"\ntls = true\n");
    let config = load_config_text(&dir.join("p11kms.toml"), text);
    server::start(
        &config,
        ServerOptions {
            clock: Arc::new(SystemClock),
            sweep_interval: None,
        },
    )
    .await
    .expect("daemon starts")
}

/// A TCP connection to `to` from the loopback address `from` (each 127.0.0.x is a source of
/// its own).
async fn tcp_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    socket.connect(to).await.expect("connect")
}

/// What a held connection sends before going quiet.
#[derive(Clone, Copy)]
enum Quiet {
    /// Nothing at all.
    Nothing,
    /// The first bytes of a TLS ClientHello.
    HalfClientHello,
    /// A full TLS handshake (with this ALPN), then these first bytes of a request.
    HalfRequest(&'static [u8], &'static [u8]),
}

type Held = Box<dyn AsyncRead + Unpin + Send>;

async fn hold(to: SocketAddr, from: &str, n: usize, how: Quiet) -> Vec<Held> {
    let mut held: Vec<Held> = Vec::new();
    for _ in 0..n {
        let mut tcp = tcp_from(from, to).await;
        match how {
            Quiet::Nothing => held.push(Box::new(tcp)),
            Quiet::HalfClientHello => {
                // Handshake record header (length 512) and the start of a ClientHello.
                tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03])
                    .await
                    .unwrap();
                held.push(Box::new(tcp));
            }
            Quiet::HalfRequest(alpn, bytes) => {
                let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
                let mut tls = test_ca_connector(alpn)
                    .connect(name, tcp)
                    .await
                    .expect("TLS handshake");
                tls.write_all(bytes).await.unwrap();
                tls.flush().await.unwrap();
                held.push(Box::new(tls));
            }
        }
    }
    held
}

/// Whether the server closed the connection (EOF or error) within `wait`; whatever else it
/// sends meanwhile is read and ignored.
async fn closed_within(s: &mut Held, wait: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// Probes every connection at once: how many of each group were closed within `wait`.
async fn probe(groups: &mut [&mut Vec<Held>], wait: Duration) -> Vec<usize> {
    let mut set = tokio::task::JoinSet::new();
    for (g, group) in groups.iter_mut().enumerate() {
        for (i, mut s) in std::mem::take(*group).into_iter().enumerate() {
            set.spawn(async move {
                let closed = closed_within(&mut s, wait).await;
                (g, i, closed, s)
            });
        }
    }
    let mut back: Vec<Vec<(usize, Held)>> = groups.iter().map(|_| Vec::new()).collect();
    let mut closed = vec![0; groups.len()];
    while let Some(r) = set.join_next().await {
        let (g, i, c, s) = r.unwrap();
        closed[g] += usize::from(c);
        back[g].push((i, s));
    }
    for (g, mut v) in back.into_iter().enumerate() {
        v.sort_by_key(|(i, _)| *i);
        *groups[g] = v.into_iter().map(|(_, s)| s).collect();
    }
    closed
}

/// Probes every connection at once: how many of each group are still open after `wait`.
async fn still_open(groups: &mut [&mut Vec<Held>], wait: Duration) -> Vec<usize> {
    let closed = probe(groups, wait).await;
    groups
        .iter()
        .zip(&closed)
        .map(|(g, c)| g.len() - c)
        .collect()
}

/// Fills a port with quiet connections from three sources and checks the caps, then that
/// `served` succeeds, then that every quiet connection is closed by its deadline.
async fn flood_then_serve<F: std::future::Future<Output = ()>>(
    port: &str,
    addr: SocketAddr,
    half_request: Quiet,
    served: impl FnOnce() -> F,
) {
    let short = SHED_WINDOW;
    // One source over its cap: the oldest idle ones of that source are shed.
    let mut silent = hold(addr, "127.0.0.2", 60, Quiet::Nothing).await;
    let closed = probe(&mut [&mut silent], short).await;
    assert_eq!(
        closed[0],
        60 - MAX_PER_SOURCE,
        "{port}: per-source cap: {} of 60 connections from one source closed at once",
        closed[0]
    );
    // Two more sources take the total over its cap.
    let mut hello = hold(addr, "127.0.0.3", 30, Quiet::HalfClientHello).await;
    let mut half = hold(addr, "127.0.0.4", 20, half_request).await;
    let opened = Instant::now();
    let open = still_open(&mut [&mut silent, &mut hello, &mut half], short).await;
    let total: usize = open.iter().sum();
    println!("{port}: open after the flood: {open:?} (total {total})");
    assert!(
        total <= MAX_CONNECTIONS,
        "{port}: {total} connections open, over the cap of {MAX_CONNECTIONS}"
    );
    assert!(open[0] <= MAX_PER_SOURCE);

    // A normal client is served meanwhile.
    let t = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), served())
        .await
        .unwrap_or_else(|_| panic!("{port}: a normal client was not served"));
    println!(
        "{port}: normal client served in {} ms with the port full of idle connections",
        t.elapsed().as_millis()
    );

    // Every quiet connection is closed by its deadline.
    let wait = (DEADLINE + MARGIN).saturating_sub(opened.elapsed());
    let left = still_open(&mut [&mut silent, &mut hello, &mut half], wait).await;
    assert_eq!(
        left,
        [0, 0, 0],
        "{port}: connections (silent, half ClientHello, half request) still open {} ms after \
         they were opened (deadline {} ms)",
        opened.elapsed().as_millis(),
        DEADLINE.as_millis()
    );
}

/// A request to the AWS door signed as the admin, over HTTP/1.1 and TLS.
async fn aws_request(addr: SocketAddr, target: &str, body: &[u8]) -> HttpAnswer {
    let extra = [
        ("content-type", "application/x-amz-json-1.1"),
        ("x-amz-target", target),
    ];
    let credentials = fixture_credentials(AK_ADMIN);
    let now = SystemClock.now_ms() / 1000;
    aws_door_post(addr, &credentials, "kms", now, &extra, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_connections_are_shed_and_closed_while_clients_are_served() {
    let server = start_daemon("conn-limits").await;
    let grpc = server.addr;
    let door = server.aws_json_addr.expect("AWS door enabled");

    // The gRPC port: half of the HTTP/2 connection preface after TLS.
    flood_then_serve(
        "gRPC",
        grpc,
        Quiet::HalfRequest(b"h2", b"PRI * HTTP/2.0\r\n"),
        || async move {
            let mut client = admin(grpc).await;
            client
                .list_keys(pb::ListKeysRequest::default())
                .await
                .expect("ListKeys over gRPC");
        },
    )
    .await;

    // The AWS door: half a request line after TLS.
    flood_then_serve(
        "AWS door",
        door,
        Quiet::HalfRequest(b"http/1.1", b"POST / HT"),
        || async move {
            let reply = aws_request(door, "TrentService.ListKeys", b"{}").await;
            let body = String::from_utf8_lossy(&reply.body);
            assert_eq!(reply.status, 200, "signed ListKeys on the AWS door: {body}");
        },
    )
    .await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_stalls_is_cut_off_at_its_deadline() {
    let server = start_daemon("conn-body").await;
    let door = server.aws_json_addr.expect("AWS door enabled");
    let mut tls = tls_http1(door).await;
    // The head announces 100 bytes; one arrives.
    let head = format!(
        "POST / HTTP/1.1\r\nhost: 127.0.0.1:{}\r\nx-amz-target: TrentService.ListKeys\r\n\
         content-type: application/x-amz-json-1.1\r\ncontent-length: 100\r\n\r\n{{",
        door.port()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    let t = Instant::now();
    let mut out = Vec::new();
    let read = tokio::time::timeout(DEADLINE + MARGIN, tls.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(
        read.is_ok(),
        "the connection with a stalled body is still open after {} ms (got {text:?})",
        t.elapsed().as_millis()
    );
    assert!(
        text.starts_with("HTTP/1.1 4"),
        "a stalled body gets a client error: {text:?}"
    );
    server.shutdown().await.unwrap();
}

/// The real daemon binary with its file limit at 128 (set by the shell, for the child only):
/// 200 quiet connections run it out of descriptors. The accept loop backs off and logs the
/// failures at a bounded rate, and once the quiet connections are closed at their handshake
/// deadline a normal client is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_accept_loop_backs_off_and_logs_at_a_bounded_rate() {
    use std::io::BufRead;
    let dir = data_dir("conn-emfile");
    // Short: the quiet connections are closed in waves of about 70 (the file limit).
    let ms = 2000;
    let limits = format!(
        "handshake_timeout_ms = {ms}\nidle_timeout_ms = {ms}\nmax_connections = 4000\n\
         max_connections_per_source = 4000\n\n[hsm]"
    );
    let mut text = config_text(&dir).replacen("[hsm]", &limits, 1);
    text.push_str("\n[aws_json]\nenabled = true\nlisten = \"127.0.0.1:0\"\ntls = true\n");
    let config = dir.join("p11kms.toml");
    std::fs::write(&config, text).unwrap();
    let log_path = dir.join("daemon.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = hermetic_command("sh", scratch_dir())
        .args(["-c", "ulimit -n 128 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_p11kms"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::from(log.try_clone().unwrap()))
        .stderr(std::process::Stdio::from(log))
        .spawn()
        .expect("start p11kms serve");
    let _child = KillOnDrop(child);
    let lines = || -> Vec<String> {
        std::fs::File::open(&log_path)
            .map(|f| {
                std::io::BufReader::new(f)
                    .lines()
                    .map_while(Result::ok)
                    .collect()
            })
            .unwrap_or_default()
    };
    // The daemon logs the address of the AWS door (port 0); the flood starts once it has
    // finished starting ("serving"), as a flood against a running daemon.
    let mut door = None;
    for _ in 0..200 {
        let log = lines();
        let serving = log.iter().any(|l| l.contains("p11kms serving"));
        door = serving
            .then(|| {
                log.iter().find_map(|l| {
                    let port = l.split("https://127.0.0.1:").nth(1)?;
                    let port: String = port.chars().take_while(char::is_ascii_digit).collect();
                    Some(SocketAddr::from((
                        [127, 0, 0, 1],
                        port.parse::<u16>().ok()?,
                    )))
                })
            })
            .flatten();
        if door.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let door = door.unwrap_or_else(|| panic!("the daemon did not start: {:?}", lines()));

    let started = Instant::now();
    let held = hold(door, "127.0.0.2", 200, Quiet::Nothing).await;
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(started.elapsed())).await;
    let failures: Vec<String> = lines()
        .into_iter()
        .filter(|l| l.contains("accept failed"))
        .collect();
    println!(
        "accept-failure log lines in the first 3 s: {}; first: {:?}",
        failures.len(),
        failures.first()
    );
    assert!(
        !failures.is_empty(),
        "the daemon never ran out of descriptors: the test proves nothing"
    );
    assert!(
        failures.len() <= 2,
        "{} accept-failure lines in 3 s: {failures:#?}",
        failures.len()
    );
    let t = Instant::now();
    // A refused connect is retried as the AWS SDKs retry it; the daemon must still be there
    // and serve within the window (its log is shown when it does not).
    let reply = tokio::time::timeout(Duration::from_secs(15), async {
        while tokio::net::TcpStream::connect(door).await.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        aws_request(door, "TrentService.ListKeys", b"{}").await
    })
    .await
    .unwrap_or_else(|_| {
        let tail = lines();
        panic!(
            "a normal client is not served once the quiet connections are closed; the \
             daemon's log ends with: {:#?}",
            &tail[tail.len().saturating_sub(20)..]
        )
    });
    println!(
        "normal client served {} ms after the flood's first 3 s",
        t.elapsed().as_millis()
    );
    let body = String::from_utf8_lossy(&reply.body);
    assert_eq!(reply.status, 200, "ListKeys: {body}");
    drop(held);
}

/// Reads HTTP/2 frames until a PING from the server (`Ok(())`), or the end of the connection
/// (`Err` with what came before).
async fn await_ping<S: AsyncRead + Unpin>(s: &mut S) -> Result<(), String> {
    let mut seen = Vec::new();
    loop {
        let mut head = [0u8; 9];
        if let Err(e) = s.read_exact(&mut head).await {
            return Err(format!("connection ended ({e}) after frames {seen:?}"));
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let mut payload = vec![0u8; len];
        if let Err(e) = s.read_exact(&mut payload).await {
            return Err(format!("connection ended ({e}) after frames {seen:?}"));
        }
        seen.push(kind);
        // PING (type 6) without the ACK flag.
        if kind == 6 && flags & 1 == 0 {
            return Ok(());
        }
    }
}

/// HTTP/2 keep-alive: on both ports the daemon PINGs an HTTP/2 peer, and closes the
/// connection when the peer does not answer, well before the idle deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_peers_are_pinged_and_dropped_when_they_do_not_answer() {
    let server = start_daemon_with(
        "conn-ping",
        "http2_keepalive_interval_ms = 500\nhttp2_keepalive_timeout_ms = 500",
    )
    .await;
    let ports = [
        ("gRPC", server.addr),
        ("AWS door", server.aws_json_addr.expect("AWS door enabled")),
    ];
    for (port, addr) in ports {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = test_ca_connector(b"h2").connect(name, tcp).await.unwrap();
        // The connection preface and an empty SETTINGS frame; then silence.
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .await
            .unwrap();
        tls.flush().await.unwrap();
        let t = Instant::now();
        let pinged = tokio::time::timeout(Duration::from_secs(3), await_ping(&mut tls)).await;
        assert!(
            matches!(pinged, Ok(Ok(()))),
            "{port}: no HTTP/2 PING within 3 s: {pinged:?}"
        );
        let mut held: Held = Box::new(tls);
        assert!(
            closed_within(&mut held, Duration::from_millis(500) + MARGIN).await,
            "{port}: an unanswered PING did not close the connection"
        );
        println!(
            "{port}: pinged, and closed {} ms after the connection was set up (idle deadline {} ms)",
            t.elapsed().as_millis(),
            DEADLINE.as_millis()
        );
        assert!(
            t.elapsed() < DEADLINE,
            "{port}: closed by the idle deadline, not the PING"
        );
    }
    server.shutdown().await.unwrap();
}

/// A body over `max_body_bytes` sent in full without waiting for an answer (as most clients
/// send) is read and dropped by the door, which answers 413 RequestEntityTooLargeException
/// rather than closing on the unread body (the client would meet a reset, not the answer),
/// and the same connection then serves the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_sent_in_full_gets_its_413_and_the_connection_serves_on() {
    let server = start_daemon("oversized-drain").await;
    let door = server.aws_json_addr.expect("AWS door enabled");
    let credentials = fixture_credentials(AK_ADMIN);
    let signer = (
        credentials.access_key_id.as_str(),
        credentials.secret_access_key.as_str(),
    );
    let now = SystemClock.now_ms() / 1000;
    let request = |target: &str, body: &[u8], close: bool| {
        let extra = [
            ("content-type", "application/x-amz-json-1.1"),
            ("x-amz-target", target),
        ];
        let headers = aws_door_headers(door, Some(signer), "kms", now, &extra, body);
        http_post_bytes(&headers, body, close)
    };
    // Over the 64 KiB default, under the door's drain bound.
    let big = vec![b' '; 256 * 1024];
    let mut bytes = request("TrentService.Encrypt", &big, false);
    bytes.extend(request("TrentService.ListKeys", b"{}", true));

    let mut tls = tls_http1(door).await;
    let exchange = async {
        tls.write_all(&bytes).await?;
        let mut raw = Vec::new();
        tls.read_to_end(&mut raw).await.map(|_| raw)
    };
    let raw = tokio::time::timeout(DEADLINE + MARGIN, exchange)
        .await
        .expect("the door answers both requests in time")
        .expect("no connection reset while the oversized body was written");
    let (first, rest) = split_first_answer(&raw);
    assert_eq!(first.status, 413, "{}", String::from_utf8_lossy(&raw));
    let body = String::from_utf8_lossy(&first.body);
    assert!(body.contains("RequestEntityTooLargeException"), "{body}");
    let second = parse_http_answer(rest);
    assert_eq!(second.status, 200, "{}", String::from_utf8_lossy(rest));
    let keys: serde_json::Value = serde_json::from_slice(&second.body).unwrap();
    assert!(keys["Keys"].is_array(), "{keys}");
    server.shutdown().await.unwrap();
}

/// A TLS connection to the AWS door (the test CA, ALPN `http/1.1`).
async fn tls_http1(door: SocketAddr) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(door).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    test_ca_connector(b"http/1.1")
        .connect(name, tcp)
        .await
        .unwrap()
}

/// The first of several HTTP/1.1 answers (framed by `content-length`) and the bytes after it.
fn split_first_answer(raw: &[u8]) -> (HttpAnswer, &[u8]) {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP head")
        + 4;
    let first = parse_http_answer(&raw[..head_end]);
    let length: usize = first
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse().unwrap())
        .expect("a content-length");
    let end = head_end + length;
    (parse_http_answer(&raw[..end]), &raw[end..])
}
