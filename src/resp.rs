//! A Redis-protocol (RESP2) front end: `server --resp-addr ADDR` lets
//! `redis-cli`, `redis-benchmark` and Redis client libraries use distkv.
//!
//! Each RESP connection is one distkv client session (commands run one at a
//! time, in order, exactly once). Keys are distkv keys (`customers42`); a
//! Redis command becomes one distkv command, so the keys of `MGET`, `MSET`,
//! `DEL` and `EXISTS` are read or written atomically even across partitions,
//! and `MULTI` ... `EXEC` runs every queued command as one one-shot
//! transaction. docs/protocol.md ("Redis protocol") lists the commands.
//!
//! The parsing and the mapping of commands to operations and of results to
//! replies are pure functions here ([`parse_request`], [`plan`],
//! [`Shape::reply`]), tested directly; [`serve`] is the socket loop.

use crate::client::{Client, ClientConfig, ClientError, Session};
use crate::key::Key;
use crate::op::{Op, OpResult, VALUE_LEN_MAX};
use crate::rt::tokio_rt::TokioRuntime;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A reply (RESP2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Simple(&'static str),
    /// The text after `-` (it starts with an error code such as `ERR`).
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    /// `None`: the null array (an `EXEC` whose transaction did not run).
    Array(Option<Vec<Reply>>),
}

impl Reply {
    pub fn err(msg: impl std::fmt::Display) -> Reply {
        // One line: a newline would end the error early on the wire.
        Reply::Error(format!("ERR {msg}").replace(['\r', '\n'], " "))
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Reply::Simple(s) => {
                out.push(b'+');
                out.extend_from_slice(s.as_bytes());
            }
            Reply::Error(s) => {
                out.push(b'-');
                out.extend_from_slice(s.as_bytes());
            }
            Reply::Int(i) => out.extend_from_slice(format!(":{i}").as_bytes()),
            Reply::Bulk(None) => out.extend_from_slice(b"$-1"),
            Reply::Bulk(Some(b)) => {
                out.extend_from_slice(format!("${}\r\n", b.len()).as_bytes());
                out.extend_from_slice(b);
            }
            Reply::Array(None) => out.extend_from_slice(b"*-1"),
            Reply::Array(Some(items)) => {
                out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
                for item in items {
                    item.encode(out);
                }
                return;
            }
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// Most arguments in one request (the largest command, `MSET`, takes two
/// per operation).
const ARGS_MAX: usize = 2 * crate::op::OPS_PER_COMMAND_MAX + 16;
/// Longest argument: a value, with room to say it is too large.
const ARG_LEN_MAX: usize = VALUE_LEN_MAX + 1024;
/// Longest inline command line.
const INLINE_MAX: usize = 64 * 1024;
/// Most bytes of arguments in one request: a command's limit, with room
/// to say it is too large. (Redis allows far more; a distkv command could
/// not use it.)
const REQUEST_BYTES_MAX: usize = crate::op::COMMAND_BYTES_MAX + 64 * 1024;

/// What [`parse_request`] found: a request's arguments and the bytes it
/// took, or `None` if more bytes are needed; or a protocol error.
pub type Parsed = Result<Option<(Vec<Vec<u8>>, usize)>, String>;

/// Parses one request at the start of `buf`: its arguments and the bytes
/// it took, `Ok(None)` if more bytes are needed, or a protocol error (the
/// connection is answered with it and closed, as Redis does). Accepts the
/// array form clients send and the inline form (`PING` typed into telnet).
pub fn parse_request(buf: &[u8]) -> Parsed {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] != b'*' {
        let Some(end) = find_crlf(buf, 0) else {
            if buf.len() > INLINE_MAX {
                return Err("Protocol error: too big inline request".into());
            }
            return Ok(None);
        };
        let line = &buf[..end];
        let args = line
            .split(|b| b.is_ascii_whitespace())
            .filter(|w| !w.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        return Ok(Some((args, end + 2)));
    }
    let Some(end) = find_crlf(buf, 1) else {
        return header_too_long(buf);
    };
    let count = parse_len(&buf[1..end], "multibulk length")?;
    if count > ARGS_MAX as i64 {
        return Err("Protocol error: invalid multibulk length".into());
    }
    // First the argument spans, copying nothing: a request that arrives in
    // many reads is walked again on each, and must not be copied each time.
    let mut at = end + 2;
    let mut spans = Vec::with_capacity(count.max(0) as usize);
    let mut total = 0usize;
    for _ in 0..count.max(0) {
        if at >= buf.len() {
            return Ok(None);
        }
        if buf[at] != b'$' {
            return Err(format!(
                "Protocol error: expected '$', got '{}'",
                buf[at] as char
            ));
        }
        let Some(end) = find_crlf(buf, at + 1) else {
            return header_too_long(&buf[at..]);
        };
        let len = parse_len(&buf[at + 1..end], "bulk length")?;
        if !(0..=ARG_LEN_MAX as i64).contains(&len) {
            return Err("Protocol error: invalid bulk length".into());
        }
        total += len as usize;
        if total > REQUEST_BYTES_MAX {
            return Err(format!(
                "Protocol error: request larger than {REQUEST_BYTES_MAX} bytes"
            ));
        }
        let start = end + 2;
        let stop = start + len as usize;
        if buf.len() < stop + 2 {
            return Ok(None);
        }
        if &buf[stop..stop + 2] != b"\r\n" {
            return Err("Protocol error: bulk string not followed by CRLF".into());
        }
        spans.push(start..stop);
        at = stop + 2;
    }
    let args = spans.into_iter().map(|r| buf[r].to_vec()).collect();
    Ok(Some((args, at)))
}

fn header_too_long(buf: &[u8]) -> Parsed {
    if buf.len() > 32 {
        Err("Protocol error: length line too long".into())
    } else {
        Ok(None)
    }
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|i| from + i)
}

fn parse_len(digits: &[u8], what: &str) -> Result<i64, String> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| format!("Protocol error: invalid {what}"))
}

/// How a command's operation results become its reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shape {
    /// `+OK` (SET, MSET).
    Ok,
    /// The one GET's value or nil.
    Value,
    /// The old value of a SWAP, or nil (GETSET, SET ... GET).
    Old,
    /// How many DELETEs found their key (DEL).
    Deleted,
    /// How many GETs found their key (EXISTS).
    Existing,
    /// Every GET's value or nil (MGET).
    Values,
    /// `SET k v NX`: `+OK` if it ran; nil if the key existed (the CHECK
    /// before it did not hold).
    SetIfAbsent,
    /// A SCAN's keys and values, flattened: key, value, key, value (RANGE).
    Pairs,
    /// A reply that needs no data (PING, ECHO, INFO ... queued in MULTI).
    Fixed(Reply),
}

impl Shape {
    pub fn reply(&self, results: &[OpResult]) -> Reply {
        let count = |f: fn(&OpResult) -> bool| results.iter().filter(|r| f(r)).count() as i64;
        match self {
            Shape::Ok | Shape::SetIfAbsent => Reply::Simple("OK"),
            Shape::Fixed(reply) => reply.clone(),
            Shape::Value | Shape::Old => match results.last() {
                Some(OpResult::Get(v) | OpResult::Swap(v)) => Reply::Bulk(v.clone()),
                other => Reply::err(format!("unexpected result {other:?}")),
            },
            Shape::Deleted => Reply::Int(count(|r| matches!(r, OpResult::Delete { found: true }))),
            Shape::Existing => Reply::Int(count(|r| matches!(r, OpResult::Get(Some(_))))),
            Shape::Values => Reply::Array(Some(
                results
                    .iter()
                    .map(|r| match r {
                        OpResult::Get(v) => Reply::Bulk(v.clone()),
                        _ => Reply::Bulk(None),
                    })
                    .collect(),
            )),
            Shape::Pairs => {
                let mut items = Vec::new();
                if let Some(OpResult::Scan(pairs)) = results.first() {
                    for (k, v) in pairs {
                        items.push(Reply::Bulk(Some(k.to_string().into_bytes())));
                        items.push(Reply::Bulk(Some(v.clone())));
                    }
                }
                Reply::Array(Some(items))
            }
        }
    }
}

/// What one request asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// Answer without touching data.
    Reply(Reply),
    /// Run these operations as one command; shape the results.
    Run(Vec<Op>, Shape),
    Multi,
    Exec,
    Discard,
    Info,
    Quit,
    /// `AUTH [default] <password>`.
    Auth(Vec<u8>),
}

fn text(arg: &[u8]) -> String {
    String::from_utf8_lossy(arg).into_owned()
}

fn key(arg: &[u8]) -> Result<Key, Reply> {
    let s = std::str::from_utf8(arg)
        .map_err(|_| Reply::err("invalid key: not UTF-8 (keys look like customers42)"))?;
    Key::parse(s).map_err(|e| Reply::err(format!("invalid key: {e}")))
}

fn arity(name: &str, ok: bool) -> Result<(), Reply> {
    if ok {
        Ok(())
    } else {
        Err(Reply::err(format!(
            "wrong number of arguments for '{}' command",
            name.to_ascii_lowercase()
        )))
    }
}

/// Maps one request (its arguments) to what to do.
pub fn plan(args: &[Vec<u8>]) -> Plan {
    match plan_inner(args) {
        Ok(plan) => plan,
        Err(reply) => Plan::Reply(reply),
    }
}

fn plan_inner(args: &[Vec<u8>]) -> Result<Plan, Reply> {
    let Some(first) = args.first() else {
        return Ok(Plan::Reply(Reply::err("empty command")));
    };
    let name = text(first).to_ascii_uppercase();
    let rest = &args[1..];
    let n = rest.len();
    Ok(match name.as_str() {
        "PING" => {
            arity(&name, n <= 1)?;
            match rest.first() {
                Some(msg) => Plan::Reply(Reply::Bulk(Some(msg.clone()))),
                None => Plan::Reply(Reply::Simple("PONG")),
            }
        }
        "ECHO" => {
            arity(&name, n == 1)?;
            Plan::Reply(Reply::Bulk(Some(rest[0].clone())))
        }
        "GET" => {
            arity(&name, n == 1)?;
            Plan::Run(
                vec![Op::Get {
                    key: key(&rest[0])?,
                }],
                Shape::Value,
            )
        }
        "SET" => {
            arity(&name, n >= 2)?;
            let (k, value) = (key(&rest[0])?, rest[1].clone());
            let mut options: Vec<String> = rest[2..]
                .iter()
                .map(|o| text(o).to_ascii_uppercase())
                .collect();
            options.dedup();
            match options.as_slice() {
                [] => Plan::Run(vec![Op::Put { key: k, value }], Shape::Ok),
                [o] if o == "GET" => Plan::Run(vec![Op::Swap { key: k, value }], Shape::Old),
                [o] if o == "NX" => Plan::Run(
                    vec![
                        Op::Check {
                            key: k.clone(),
                            expected: None,
                        },
                        Op::Put { key: k, value },
                    ],
                    Shape::SetIfAbsent,
                ),
                _ => {
                    return Err(Reply::err(format!(
                        "SET option {} is not supported (SET key value [NX | GET])",
                        options.join(" ")
                    )))
                }
            }
        }
        "GETSET" => {
            arity(&name, n == 2)?;
            let value = rest[1].clone();
            Plan::Run(
                vec![Op::Swap {
                    key: key(&rest[0])?,
                    value,
                }],
                Shape::Old,
            )
        }
        "DEL" | "UNLINK" | "EXISTS" | "MGET" => {
            arity(&name, n >= 1)?;
            let op = |key| match name.as_str() {
                "DEL" | "UNLINK" => Op::Delete { key },
                _ => Op::Get { key },
            };
            let ops = rest
                .iter()
                .map(|k| key(k).map(op))
                .collect::<Result<_, _>>()?;
            let shape = match name.as_str() {
                "DEL" | "UNLINK" => Shape::Deleted,
                "EXISTS" => Shape::Existing,
                _ => Shape::Values,
            };
            Plan::Run(ops, shape)
        }
        "MSET" => {
            arity(&name, n >= 2 && n % 2 == 0)?;
            let ops = rest
                .chunks(2)
                .map(|kv| {
                    key(&kv[0]).map(|key| Op::Put {
                        key,
                        value: kv[1].clone(),
                    })
                })
                .collect::<Result<_, _>>()?;
            Plan::Run(ops, Shape::Ok)
        }
        "RANGE" => {
            arity(&name, n == 2)?;
            Plan::Run(
                vec![Op::Scan {
                    start: key(&rest[0])?,
                    end: key(&rest[1])?,
                }],
                Shape::Pairs,
            )
        }
        "MULTI" => {
            arity(&name, n == 0)?;
            Plan::Multi
        }
        "EXEC" => {
            arity(&name, n == 0)?;
            Plan::Exec
        }
        "DISCARD" => {
            arity(&name, n == 0)?;
            Plan::Discard
        }
        "INFO" => Plan::Info,
        "QUIT" => Plan::Quit,
        "SELECT" => {
            arity(&name, n == 1)?;
            if rest[0] == b"0" {
                Plan::Reply(Reply::Simple("OK"))
            } else {
                Plan::Reply(Reply::err("distkv has one database: only SELECT 0"))
            }
        }
        // What clients send on connecting: accepted, nothing to do.
        "CLIENT" => Plan::Reply(Reply::Simple("OK")),
        "COMMAND" => Plan::Reply(Reply::Array(Some(Vec::new()))),
        "AUTH" => {
            arity(&name, n == 1 || n == 2)?;
            if n == 2 && rest[0] != b"default" {
                return Err(Reply::Error(WRONGPASS.into()));
            }
            Plan::Auth(rest[n - 1].clone())
        }
        "SCAN" | "KEYS" => Plan::Reply(Reply::err(format!(
            "'{}' is not supported: read a range of keys with RANGE <first> <last> \
             (e.g. RANGE customers1 customers100)",
            name.to_ascii_lowercase()
        ))),
        "WATCH" | "UNWATCH" => Plan::Reply(Reply::err(
            "WATCH is not supported: MULTI/EXEC is one atomic transaction; \
             make it conditional with SET key value NX",
        )),
        _ => Plan::Reply(Reply::err(format!(
            "unknown command '{}', with args beginning with: {}",
            text(first),
            rest.iter()
                .take(3)
                .map(|a| format!("'{}'", text(a)))
                .collect::<Vec<_>>()
                .join(" ")
        ))),
    })
}

const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

/// The reply to a failed command.
pub fn error_reply(e: &ClientError) -> Reply {
    match e {
        ClientError::Unavailable(why) => {
            Reply::Error(format!("TRYAGAIN unavailable: {why}").replace(['\r', '\n'], " "))
        }
        other => Reply::err(other),
    }
}

/// The queued commands of a `MULTI` block.
#[derive(Default)]
struct Queued {
    ops: Vec<Op>,
    /// Each command's shape and how many of `ops` are its.
    shapes: Vec<(Shape, usize)>,
    /// A queued command was refused: EXEC answers EXECABORT.
    refused: bool,
}

/// One connection's state: its session, any `MULTI` block, and whether it
/// still has to authenticate.
struct Conn {
    session: Session<TokioRuntime>,
    multi: Option<Queued>,
    /// The password (`server --resp-password-file`), if any.
    password: Option<Arc<[u8]>>,
    authenticated: bool,
}

impl Conn {
    /// Runs one request: the reply, and whether the connection stays open.
    async fn request(&mut self, args: &[Vec<u8>]) -> (Reply, bool) {
        let plan = plan(args);
        match (&plan, &self.password) {
            (Plan::Auth(_), None) => {
                let e =
                    "AUTH <password> called without any password configured for the default user";
                return (Reply::err(e), true);
            }
            (Plan::Auth(given), Some(password)) => {
                // A wrong password does not undo an earlier login (Redis).
                return if constant_time_eq(given, password) {
                    self.authenticated = true;
                    (Reply::Simple("OK"), true)
                } else {
                    (Reply::Error(WRONGPASS.into()), true)
                };
            }
            (Plan::Quit, _) => {}
            (_, Some(_)) if !self.authenticated => {
                return (Reply::Error("NOAUTH Authentication required.".into()), true);
            }
            _ => {}
        }
        if let Some(queued) = &mut self.multi {
            match plan {
                Plan::Exec => {
                    let queued = self.multi.take().unwrap();
                    return (self.exec(queued).await, true);
                }
                Plan::Discard => {
                    self.multi = None;
                    return (Reply::Simple("OK"), true);
                }
                Plan::Multi => return (Reply::err("MULTI calls can not be nested"), true),
                Plan::Run(ops, shape) => {
                    queued.shapes.push((shape, ops.len()));
                    queued.ops.extend(ops);
                    return (Reply::Simple("QUEUED"), true);
                }
                Plan::Reply(Reply::Error(e)) => {
                    queued.refused = true;
                    return (Reply::Error(e), true);
                }
                // Answered in EXEC's array, in order, like Redis.
                Plan::Reply(reply) => {
                    queued.shapes.push((Shape::Fixed(reply), 0));
                    return (Reply::Simple("QUEUED"), true);
                }
                Plan::Info => {
                    let info = Reply::Bulk(Some(self.info().into_bytes()));
                    let queued = self.multi.as_mut().unwrap();
                    queued.shapes.push((Shape::Fixed(info), 0));
                    return (Reply::Simple("QUEUED"), true);
                }
                Plan::Quit => return (Reply::Simple("OK"), false),
                Plan::Auth(_) => unreachable!("answered above"),
            }
        }
        match plan {
            Plan::Reply(r) => (r, true),
            Plan::Run(ops, shape) => (self.run(ops, &shape).await, true),
            Plan::Multi => {
                self.multi = Some(Queued::default());
                (Reply::Simple("OK"), true)
            }
            Plan::Exec => (Reply::err("EXEC without MULTI"), true),
            Plan::Discard => (Reply::err("DISCARD without MULTI"), true),
            Plan::Info => (Reply::Bulk(Some(self.info().into_bytes())), true),
            Plan::Quit => (Reply::Simple("OK"), false),
            Plan::Auth(_) => unreachable!("answered above"),
        }
    }

    async fn run(&mut self, ops: Vec<Op>, shape: &Shape) -> Reply {
        match self.session.execute(ops).await {
            Ok(results) => shape.reply(&results),
            Err(ClientError::CheckFailed { .. }) if *shape == Shape::SetIfAbsent => {
                Reply::Bulk(None)
            }
            Err(e) => error_reply(&e),
        }
    }

    async fn exec(&mut self, queued: Queued) -> Reply {
        if queued.refused {
            return Reply::Error(
                "EXECABORT Transaction discarded because of previous errors.".into(),
            );
        }
        let outcome = if queued.ops.is_empty() {
            Ok(Vec::new()) // nothing to run: only fixed replies, if anything
        } else {
            self.session.execute(queued.ops).await
        };
        match outcome {
            Ok(results) => {
                let mut replies = Vec::with_capacity(queued.shapes.len());
                let mut at = 0;
                for (shape, n) in &queued.shapes {
                    replies.push(shape.reply(&results[at..at + n]));
                    at += n;
                }
                Reply::Array(Some(replies))
            }
            // A queued SET ... NX found its key: nothing ran, as when a
            // WATCHed key changed in Redis.
            Err(ClientError::CheckFailed { .. }) => Reply::Array(None),
            Err(e) => error_reply(&e),
        }
    }

    fn info(&self) -> String {
        let map = self.session.client().map();
        let tables: Vec<String> = map.tables.keys().cloned().collect();
        format!(
            "# Server\r\ndistkv_version:{}\r\nredis_mode:standalone\r\n\r\n\
             # Cluster\r\nmap_epoch:{}\r\nservers:{}\r\npartitions:{}\r\ntables:{}\r\n\
             \r\n# Keyspace\r\nkeys:distkv form, e.g. {}42\r\n",
            env!("CARGO_PKG_VERSION"),
            map.epoch,
            map.servers.len(),
            map.partitions.len(),
            tables.join(","),
            tables.first().map_or("customers", String::as_str)
        )
    }
}

/// Whether two byte strings are equal, in a time that depends only on
/// their lengths (a password check must not tell how much of a guess was
/// right).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// How long a TLS client may take to finish its handshake.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves RESP on `listener` for the cluster whose managers are `managers`,
/// until the process ends. Each connection gets its own session; the
/// cluster client is made at the first connection (and again after a
/// failure to reach the managers). With a `password`, a connection must
/// `AUTH` before anything else; with TLS on in this process
/// ([`crate::rt::tls`]), every connection is mutual TLS with the cluster's
/// CA, like the cluster's own (`redis-cli --tls --cacert ca.pem --cert
/// client.pem --key client.key`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    managers: Vec<SocketAddr>,
    password: Option<Arc<[u8]>>,
) {
    let client: Arc<tokio::sync::Mutex<Option<Client<TokioRuntime>>>> = Arc::default();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("RESP: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (client, managers, password) = (client.clone(), managers.clone(), password.clone());
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let tls = crate::rt::tls::get();
            let stream = match &tls {
                None => Stream::Plain(stream),
                Some(tls) => match crate::rt::tls::accept(tls, stream, TLS_HANDSHAKE_TIMEOUT).await
                {
                    Ok(s) => Stream::Tls(Box::new(s)),
                    Err(why) => {
                        tracing::warn!(%peer, "RESP: {why}");
                        return;
                    }
                },
            };
            let session = {
                let mut guard = client.lock().await;
                if guard.is_none() {
                    match Client::connect(TokioRuntime, ClientConfig::with_managers(managers)).await
                    {
                        Ok(c) => *guard = Some(c),
                        Err(e) => {
                            let mut out = Vec::new();
                            error_reply(&e).encode(&mut out);
                            let mut stream = stream;
                            let _ = stream.write_all(&out).await;
                            let _ = stream.shutdown().await;
                            return;
                        }
                    }
                }
                guard.as_ref().unwrap().session()
            };
            if let Err(e) = connection(stream, session, password).await {
                tracing::debug!(%peer, "RESP connection ended: {e}");
            }
        });
    }
}

/// Reply bytes handed to a connection's writer and not yet taken by the
/// client; past it the connection is closed (a client that pipelines
/// without ever reading would otherwise hold them without bound).
const OUTPUT_PENDING_MAX: usize = 64 * 1024 * 1024;

/// A client connection, with TLS or without.
enum Stream {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
}

impl tokio::io::AsyncRead for Stream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => std::pin::Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => std::pin::Pin::new(s).poll_shutdown(cx),
        }
    }
}

async fn connection(
    stream: Stream,
    session: Session<TokioRuntime>,
    password: Option<Arc<[u8]>>,
) -> std::io::Result<()> {
    let (mut read, write) = tokio::io::split(stream);
    // Replies go out on their own task, so that reading goes on while the
    // client is still sending a long pipeline and not reading yet.
    let pending = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let writer = tokio::spawn(write_replies(write, rx, pending.clone()));
    let mut conn = Conn {
        session,
        multi: None,
        authenticated: password.is_none(),
        password,
    };
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let result = loop {
        // Every complete request in the buffer, replies handed over together.
        let mut out = Vec::new();
        let mut used = 0;
        let mut open = true;
        while open {
            match parse_request(&buf[used..]) {
                Ok(Some((args, n))) => {
                    used += n;
                    if args.is_empty() {
                        continue; // an empty inline line
                    }
                    let (reply, keep) = conn.request(&args).await;
                    reply.encode(&mut out);
                    open = keep;
                }
                Ok(None) => break,
                Err(e) => {
                    Reply::err(e).encode(&mut out);
                    open = false;
                }
            }
        }
        buf.drain(..used);
        if !out.is_empty() {
            let n = out.len();
            if pending.fetch_add(n, Ordering::Relaxed) + n > OUTPUT_PENDING_MAX {
                writer.abort();
                return Err(std::io::Error::other(format!(
                    "closed: over {OUTPUT_PENDING_MAX} bytes of replies the client has not read"
                )));
            }
            if tx.send(out).is_err() {
                break Ok(()); // the writer stopped: the client went away
            }
        }
        if !open {
            break Ok(());
        }
        match read.read(&mut chunk).await {
            Ok(0) => break Ok(()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => break Err(e),
        }
    };
    // Let the last replies out (a protocol error's, QUIT's), within reason.
    drop(tx);
    let abort = writer.abort_handle();
    if tokio::time::timeout(std::time::Duration::from_secs(10), writer)
        .await
        .is_err()
    {
        abort.abort();
        tracing::debug!("RESP: a client did not read its last replies");
    }
    result
}

async fn write_replies(
    mut write: tokio::io::WriteHalf<Stream>,
    mut replies: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    pending: Arc<AtomicUsize>,
) {
    while let Some(bytes) = replies.recv().await {
        if write.write_all(&bytes).await.is_err() {
            return;
        }
        pending.fetch_sub(bytes.len(), Ordering::Relaxed);
    }
    let _ = write.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<Vec<u8>> {
        words.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    fn wire(words: &[&str]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", words.len()).into_bytes();
        for w in words {
            out.extend_from_slice(format!("${}\r\n{w}\r\n", w.len()).as_bytes());
        }
        out
    }

    #[test]
    fn parses_array_and_inline_requests_and_waits_for_more_bytes() {
        let bytes = wire(&["SET", "customers1", "hello world"]);
        assert_eq!(
            parse_request(&bytes).unwrap(),
            Some((args(&["SET", "customers1", "hello world"]), bytes.len()))
        );
        for cut in 0..bytes.len() {
            assert_eq!(parse_request(&bytes[..cut]).unwrap(), None, "cut at {cut}");
        }
        let mut two = bytes.clone();
        two.extend_from_slice(b"PING  hi\r\n");
        let (_, n) = parse_request(&two).unwrap().unwrap();
        assert_eq!(
            parse_request(&two[n..]).unwrap(),
            Some((args(&["PING", "hi"]), 10))
        );
        // Binary-safe values.
        let bin = b"*2\r\n$4\r\nECHO\r\n$3\r\na\r\n\r\n".to_vec();
        assert_eq!(
            parse_request(&bin).unwrap().unwrap().0[1],
            b"a\r\n".to_vec()
        );
    }

    #[test]
    fn malformed_requests_are_protocol_errors() {
        for bad in [
            &b"*x\r\n"[..],
            b"*1\r\n:5\r\n",
            b"*1\r\n$-5\r\n",
            b"*1\r\n$3\r\nabcde\r\n",
            b"*99999999\r\n",
            b"*1\r\n$99999999\r\n",
        ] {
            assert!(
                parse_request(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(parse_request(&[b'*'; 40]).is_err(), "endless length line");
        // More argument bytes than any command may carry: refused as soon as
        // the headers say so, before the bytes arrive.
        let mut big = format!("*{}\r\n$4\r\nMSET\r\n", 2 * 40 + 1).into_bytes();
        for i in 0..80 {
            big.extend_from_slice(format!("$65536\r\n{}\r\n", "x".repeat(65536)).as_bytes());
            if i == 70 {
                break;
            }
        }
        let e = parse_request(&big).unwrap_err();
        assert!(e.contains("request larger than"), "{e}");
        assert!(parse_request(&vec![b'a'; INLINE_MAX + 1]).is_err());
    }

    #[test]
    fn commands_map_to_one_distkv_command_each() {
        let k = |s: &str| Key::parse(s).unwrap();
        assert_eq!(
            plan(&args(&["set", "customers1", "v"])),
            Plan::Run(
                vec![Op::Put {
                    key: k("customers1"),
                    value: b"v".to_vec()
                }],
                Shape::Ok
            )
        );
        assert_eq!(
            plan(&args(&["MGET", "customers1", "orders2"])),
            Plan::Run(
                vec![
                    Op::Get {
                        key: k("customers1")
                    },
                    Op::Get { key: k("orders2") }
                ],
                Shape::Values
            )
        );
        let Plan::Run(ops, Shape::Ok) = plan(&args(&["MSET", "customers1", "a", "orders2", "b"]))
        else {
            panic!("MSET")
        };
        assert_eq!(ops.len(), 2);
        let Plan::Run(ops, Shape::SetIfAbsent) = plan(&args(&["SET", "customers1", "a", "nx"]))
        else {
            panic!("SET NX")
        };
        assert!(matches!(ops[0], Op::Check { expected: None, .. }));
        assert!(matches!(
            plan(&args(&["SET", "customers1", "a", "GET"])),
            Plan::Run(_, Shape::Old)
        ));
        assert!(matches!(
            plan(&args(&["GETSET", "customers1", "a"])),
            Plan::Run(_, Shape::Old)
        ));
        assert_eq!(plan(&args(&["ping"])), Plan::Reply(Reply::Simple("PONG")));
        assert_eq!(plan(&args(&["multi"])), Plan::Multi);
    }

    #[test]
    fn bad_commands_get_redis_style_errors() {
        let error = |words: &[&str]| match plan(&args(words)) {
            Plan::Reply(Reply::Error(e)) => e,
            other => panic!("{words:?}: {other:?}"),
        };
        assert!(error(&["GET"]).starts_with("ERR wrong number of arguments for 'get'"));
        assert!(error(&["MSET", "customers1"]).contains("wrong number"));
        assert!(error(&["GET", "user:1"]).contains("invalid key"));
        assert!(error(&["SET", "customers1", "v", "EX", "10"]).contains("not supported"));
        assert!(error(&["FLUSHALL"]).starts_with("ERR unknown command 'FLUSHALL'"));
        assert!(error(&["SCAN", "0"]).contains("RANGE"));
        assert!(error(&["AUTH", "a", "b", "c"]).contains("wrong number"));
        assert!(error(&["AUTH", "alice", "pw"]).starts_with("WRONGPASS"));
        assert_eq!(plan(&args(&["AUTH", "pw"])), Plan::Auth(b"pw".to_vec()));
        assert_eq!(
            plan(&args(&["auth", "default", "pw"])),
            Plan::Auth(b"pw".to_vec())
        );
        assert!(constant_time_eq(b"pw", b"pw"));
        assert!(!constant_time_eq(b"pw", b"pW") && !constant_time_eq(b"pw", b"pw2"));
    }

    #[test]
    fn results_shape_into_replies() {
        let get = |v: Option<&str>| OpResult::Get(v.map(|s| s.as_bytes().to_vec()));
        assert_eq!(
            Shape::Values.reply(&[get(Some("a")), get(None)]),
            Reply::Array(Some(vec![
                Reply::Bulk(Some(b"a".to_vec())),
                Reply::Bulk(None)
            ]))
        );
        assert_eq!(
            Shape::Existing.reply(&[get(Some("a")), get(None), get(Some("b"))]),
            Reply::Int(2)
        );
        assert_eq!(
            Shape::Deleted.reply(&[
                OpResult::Delete { found: true },
                OpResult::Delete { found: false }
            ]),
            Reply::Int(1)
        );
        let mut out = Vec::new();
        Reply::Array(Some(vec![
            Reply::Simple("OK"),
            Reply::Bulk(None),
            Reply::Int(3),
        ]))
        .encode(&mut out);
        assert_eq!(out, b"*3\r\n+OK\r\n$-1\r\n:3\r\n");
        let mut out = Vec::new();
        Reply::err("two\r\nlines").encode(&mut out);
        assert_eq!(out, b"-ERR two  lines\r\n");
    }
}
