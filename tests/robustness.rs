//! Hostile input: garbage on the TCP ports of servers and the manager, and
//! invalid flag values.
mod common;

use common::Cluster;
use distkv::wire::frame::encode_frame;
use distkv::wire::{encode_msg, Msg, PROTOCOL_VERSION};
use rand::{Rng, SeedableRng};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A valid `Hello` frame, as a client sends first.
fn hello() -> Vec<u8> {
    encode_frame(&encode_msg(&Msg::Hello { advertise: None }).unwrap())
}

/// A frame header announcing `len` payload bytes (crc not matching anything).
fn header(len: u32) -> Vec<u8> {
    let mut h = vec![PROTOCOL_VERSION];
    h.extend_from_slice(&len.to_le_bytes());
    h.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    h
}

/// The byte streams sent to every port. `true`: the peer must close the
/// connection (on its own, while we keep ours open).
fn attacks() -> Vec<(&'static str, Vec<u8>, bool)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let random: Vec<u8> = (0..4096).map(|_| rng.gen()).collect();
    let mut huge = header(u32::MAX);
    huge.extend_from_slice(b"xxxx");
    let mut bad_crc = hello();
    let mut frame = encode_frame(&encode_msg(&Msg::GetMap { req: 1, epoch: 0 }).unwrap());
    let last = frame.len() - 1;
    frame[last] ^= 0x40;
    bad_crc.extend_from_slice(&frame);
    let mut hello_then_garbage_payload = hello();
    hello_then_garbage_payload.extend_from_slice(&encode_frame(&random[..300]));
    hello_then_garbage_payload.extend_from_slice(&random);
    let mut not_hello_first = encode_frame(&encode_msg(&Msg::GetMap { req: 1, epoch: 0 }).unwrap());
    not_hello_first.extend_from_slice(b"trailing");
    vec![
        ("random bytes", random.clone(), true),
        ("huge length header", huge, true),
        (
            "HTTP request",
            b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
            true,
        ),
        (
            "wrong protocol version",
            vec![PROTOCOL_VERSION + 1; 64],
            true,
        ),
        ("frame with a bad crc after Hello", bad_crc, true),
        ("a message other than Hello first", not_hello_first, true),
        // Not closed by the peer: a frame with an undecodable payload is
        // dropped; the following random bytes then break the stream.
        (
            "garbage payload after Hello",
            hello_then_garbage_payload,
            true,
        ),
    ]
}

/// Sends `bytes`; if `expect_close`, waits (bounded) for the peer to close
/// the connection while we keep our side open.
fn attack(addr: SocketAddr, what: &str, bytes: &[u8], expect_close: bool) {
    let mut stream = common::Raw::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    // The peer may close before reading everything: a reset is fine.
    let _ = stream.write_all(bytes);
    if !expect_close {
        return;
    }
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return, // closed
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                assert!(
                    Instant::now() < deadline,
                    "{addr} did not close the connection after {what}"
                );
            }
            Err(_) => return, // reset: closed too
        }
    }
}

/// A truncated frame: the header promises 1 MiB, 100 bytes come, then EOF.
fn truncated(addr: SocketAddr) {
    let mut stream = common::Raw::connect(addr).unwrap();
    let _ = stream.write_all(&hello());
    let _ = stream.write_all(&header(1 << 20));
    let _ = stream.write_all(&[0u8; 100]);
    let _ = stream.shutdown_write();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 64];
    // The peer closes its side too (EOF or reset), within the timeout.
    match stream.read(&mut buf) {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("{addr} answered a truncated frame with {n} bytes"),
    }
}

/// Puts, reads and scans on every partition of both tables.
fn assert_serves(cluster: &mut Cluster, round: usize) {
    cluster.assert_all_running();
    let mut input = String::new();
    let mut expected = String::new();
    for key in [
        "customers1",
        "customers400",
        "customers900",
        "orders1",
        "orders50",
        "orders99",
    ] {
        input.push_str(&format!("PUT {key} r{round}\nGET {key}\n"));
        let found = if round == 0 { "not_found" } else { "found" };
        expected.push_str(&format!("PUT {key} {found}\nGET {key} r{round}\n"));
    }
    input.push_str("SCAN orders0 orders1000\nSTOP\n");
    expected.push_str(&format!(
        "SCAN orders0 orders1000 BEGIN\norders1 r{round}\norders50 r{round}\norders99 r{round}\nSCAN END\nSTOP\n"
    ));
    assert_eq!(cluster.run_benchmark(&[], &input), expected);
}

#[test]
fn garbage_on_tcp_ports_closes_only_that_connection() {
    let mut cluster = Cluster::start();
    assert_serves(&mut cluster, 0);
    let mut targets = cluster.server_addrs.clone();
    targets.push(cluster.manager_addr);
    for addr in &targets {
        // A connection that is opened and closed without a byte.
        drop(TcpStream::connect(addr).unwrap());
        for (what, bytes, expect_close) in attacks() {
            attack(*addr, what, &bytes, expect_close);
        }
        truncated(*addr);
    }
    // Every process is alive and the cluster still answers correctly.
    assert_serves(&mut cluster, 1);
    // Idle half-open connections (a header, then nothing) do not block others.
    let mut idle = Vec::new();
    for addr in &targets {
        let mut s = common::Raw::connect(*addr).unwrap();
        s.write_all(&hello()).unwrap();
        s.write_all(&header(1 << 24)).unwrap();
        idle.push(s);
    }
    assert_serves(&mut cluster, 2);
    drop(idle);
    assert_serves(&mut cluster, 3);
}

/// Well-formed frames with messages a process does not expect from that
/// peer: a client-looking connection must not be able to stop a server by
/// sending it what only the manager sends (a `RegisterReply` with an error,
/// or with a map whose partitions have no replicas).
#[test]
fn unexpected_messages_from_a_client_do_not_stop_a_server() {
    let mut cluster = Cluster::start();
    let mut bad_map =
        distkv::map::PartitionMap::build(&[("customers".into(), 1000)], &cluster.server_addrs, 1)
            .unwrap();
    bad_map.epoch = 1_000;
    for p in bad_map.partitions.values_mut() {
        p.replicas.clear();
    }
    let forged = [
        vec![
            Msg::GetMap { req: 1, epoch: 0 },
            Msg::Hello { advertise: None },
            Msg::MapReply {
                req: 1,
                map: bad_map.clone(),
            },
            Msg::RegisterReply {
                result: Err("forged".into()),
            },
        ],
        vec![Msg::RegisterReply {
            result: Ok(bad_map),
        }],
    ];
    for (addr, msgs) in cluster.server_addrs.clone().into_iter().zip(forged) {
        let mut s = common::Raw::connect(addr).unwrap();
        s.write_all(&hello()).unwrap();
        for m in &msgs {
            s.write_all(&encode_frame(&encode_msg(m).unwrap())).unwrap();
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_serves(&mut cluster, 0);
}

/// Unexpected but well-formed messages sent to the manager are ignored.
#[test]
fn unexpected_messages_to_the_manager_are_ignored() {
    let mut cluster = Cluster::start();
    let msgs = [
        Msg::RegisterReply {
            result: Err("forged".into()),
        },
        Msg::Hello { advertise: None },
        Msg::ExecuteReply {
            req: 1,
            result: Ok(vec![]),
        },
        Msg::Execute {
            req: 1,
            session: 1,
            seq: 1,
            sent_ms: 0,
            partition: 0,
            ops: vec![],
        },
        // A node id the manager does not know is refused, not adopted.
        Msg::Register {
            node_id: 99,
            addr: "127.0.0.1:1".parse().unwrap(),
            epoch: 0,
            join: false,
            replicas: vec![],
        },
        // Admin requests sent to the wrong process are ignored.
        Msg::TransferLeader {
            req: 6,
            partition: 0,
            to: 1,
        },
        Msg::GetMap { req: 5, epoch: 0 },
    ];
    let mut s = common::Raw::connect(cluster.manager_addr).unwrap();
    s.write_all(&hello()).unwrap();
    for m in &msgs {
        s.write_all(&encode_frame(&encode_msg(m).unwrap())).unwrap();
    }
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = vec![0u8; 9];
    if common::tls_mode() {
        // With TLS this is a client certificate's connection: the manager
        // closes it at the first message only members send.
        let closed = match s.read(&mut buf) {
            Ok(n) => n == 0,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        };
        assert!(
            closed,
            "the manager kept a client's connection that sent RegisterReply"
        );
    } else {
        // The manager answers GetMap on the same connection: it is still healthy.
        s.read_exact(&mut buf)
            .expect("a reply frame from the manager");
        assert_eq!(buf[0], PROTOCOL_VERSION);
    }
    drop(s);
    assert_serves(&mut cluster, 0);
}

/// Runs a binary with bad flags: it must exit non-zero quickly, say why on
/// stderr's first line, and not panic.
fn assert_rejected(program: &str, args: &[&str], reason: &str) {
    let out = common::run(program, args, "");
    assert!(
        !out.status.success() && out.status.code().is_some(),
        "{program} {args:?} must exit non-zero, got {}",
        out.status
    );
    assert!(
        out.stdout.is_empty(),
        "{program} {args:?} printed {:?}",
        out.stdout
    );
    assert!(
        !out.stderr.contains("panicked"),
        "{program} {args:?} panicked:\n{}",
        out.stderr
    );
    let first = out.stderr.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("error") && first.contains(reason),
        "{program} {args:?}: first stderr line should give the reason ({reason:?}), got:\n{}",
        out.stderr
    );
    // One reason: no other line repeats "error" (clap may add a usage hint).
    assert_eq!(
        out.stderr.lines().filter(|l| l.contains("error")).count(),
        1,
        "{program} {args:?}: one reason line expected:\n{}",
        out.stderr
    );
}

#[test]
fn invalid_flag_values_exit_non_zero_with_a_reason() {
    use common::{BENCHMARK, CLIENT, MANAGER, SERVER};
    let ok_servers = ["--servers", "127.0.0.1:1"];
    let ok_tables = ["--tables", "t=5"];
    fn manager<'a>(extra: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec!["--listen-addr", "127.0.0.1:0"];
        v.extend_from_slice(extra);
        v
    }
    assert_rejected(
        MANAGER,
        &manager(&["--servers", "notanaddr", "--tables", "t=5"]),
        "notanaddr",
    );
    assert_rejected(
        MANAGER,
        &manager(&[ok_servers[0], ok_servers[1], "--tables", "t=0"]),
        "t=0",
    );
    assert_rejected(
        MANAGER,
        &manager(&[ok_servers[0], ok_servers[1], "--tables", "1bad=5"]),
        "1bad",
    );
    assert_rejected(
        MANAGER,
        &manager(&[ok_servers[0], ok_servers[1], "--tables", "t=x"]),
        "t=x",
    );
    assert_rejected(
        MANAGER,
        &manager(&[ok_servers[0], ok_servers[1], "--tables", "t=5,t=6"]),
        "'t'",
    );
    assert_rejected(
        MANAGER,
        &manager(&[
            ok_servers[0],
            ok_servers[1],
            ok_tables[0],
            ok_tables[1],
            "--replicas",
            "0",
        ]),
        "replicas",
    );
    assert_rejected(SERVER, &["--batch-size", "0"], "batch-size");
    assert_rejected(SERVER, &["--listen-addr", "nope"], "nope");
    assert_rejected(SERVER, &["--node-id", "-1"], "-1");
    assert_rejected(BENCHMARK, &["--connect-addr", "x:y"], "x:y");
    assert_rejected(BENCHMARK, &["--key-len", "abc"], "abc");
    assert_rejected(CLIENT, &["--timeout-ms", "0"], "timeout-ms");
    // Nothing listens there: a clear error, not a hang or a panic.
    assert_rejected(
        BENCHMARK,
        &["--connect-addr", "127.0.0.1:1", "--timeout-ms", "300"],
        "cannot connect",
    );
}

/// A port already in use: the server and the manager exit and name the
/// address, instead of a bare "Address already in use" that does not say
/// which process should move.
#[test]
fn a_taken_listen_port_is_named() {
    use common::{MANAGER, SERVER};
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let addr = taken.local_addr().unwrap().to_string();
    let reason = format!("cannot listen on {addr}");
    assert_rejected(
        SERVER,
        &["--listen-addr", &addr, "--manager-addr", "127.0.0.1:1"],
        &reason,
    );
    assert_rejected(
        MANAGER,
        &[
            "--listen-addr",
            &addr,
            "--servers",
            "127.0.0.1:1",
            "--tables",
            "t=1",
        ],
        &reason,
    );
}
