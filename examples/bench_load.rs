//! Load shapes `wrk` cannot make, for scripts/bench/run.sh.
//!
//! ```text
//! bench_load open URL RATE SECONDS CONNS STATUS [HEADER]   fixed-rate (open-loop) load
//! bench_load hold URL CONNS SECONDS 0 STATUS [HEADER]      CONNS idle keep-alive connections
//! bench_load each URL COUNT 0 0 STATUS [HEADER]            COUNT requests in turn, `{i}` in URL
//!                                                          replaced by 0..COUNT
//! ```
//!
//! `open`: request i is due at `start + i / RATE`. A dispatcher thread hands out due times (it
//! sleeps with `std::thread::sleep`, ~50 µs slack, not tokio's 1 ms timer); CONNS keep-alive
//! connections take them in turn. Latency is measured **from the due time**, not from when a
//! connection got round to sending, so a server that falls behind is charged for the queue it
//! causes (no coordinated omission). Prints one line:
//! `sent=N ok=N bad=N rate=R p50_us=.. p90_us=.. p99_us=.. p999_us=.. max_us=..`
//! where `bad` counts responses whose status is not STATUS and transport errors.
//!
//! `each`: one keep-alive connection, one request at a time, each to its own URL (the cold
//! scenario: every request names a resource the guard has not seen). Prints
//! `sent=N ok=N bad=N p50_us=.. p99_us=.. max_us=..`, latency from send to the body's end.
//!
//! `hold`: opens CONNS connections, sends one request on each (so the server has served it
//! and keeps the connection idle), holds them SECONDS, then prints `held=N bad=N`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

type Sender = http1::SendRequest<Empty<Bytes>>;

fn usage() -> ! {
    eprintln!(
        "usage: bench_load open URL RATE SECONDS CONNS STATUS [HEADER]\n       bench_load hold URL CONNS SECONDS 0 STATUS [HEADER]\n       bench_load each URL COUNT 0 0 STATUS [HEADER]"
    );
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 6 {
        usage()
    }
    let uri: Uri = args[1]
        .replace("{i}", "0")
        .parse()
        .unwrap_or_else(|_| usage());
    let num = |i: usize| -> f64 { args[i].parse().unwrap_or_else(|_| usage()) };
    let status = StatusCode::from_u16(num(5) as u16).unwrap_or_else(|_| usage());
    let header = args.get(6).map(|h| {
        let (k, v) = h.split_once(':').unwrap_or_else(|| usage());
        (k.trim().to_owned(), v.trim().to_owned())
    });
    let target = Target {
        uri,
        header,
        status,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    match args[0].as_str() {
        "open" => rt.block_on(open(
            Arc::new(target),
            num(2),
            Duration::from_secs_f64(num(3)),
            num(4) as usize,
        )),
        "each" => rt.block_on(each(Arc::new(target), &args[1], num(2) as usize)),
        "hold" => rt.block_on(hold(
            Arc::new(target),
            num(2) as usize,
            Duration::from_secs_f64(num(3)),
        )),
        _ => usage(),
    }
}

struct Target {
    uri: Uri,
    header: Option<(String, String)>,
    status: StatusCode,
}

impl Target {
    async fn connect(&self) -> std::io::Result<Sender> {
        let host = self.uri.host().unwrap_or("127.0.0.1");
        let port = self.uri.port_u16().unwrap_or(80);
        let stream = TcpStream::connect((host, port)).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        Ok(sender)
    }

    /// One request; `true` when it answered with the expected status (body read to the end).
    async fn request(&self, sender: &mut Sender) -> bool {
        let path = self.uri.path_and_query().map_or("/", |p| p.as_str());
        self.request_to(sender, path).await
    }

    async fn request_to(&self, sender: &mut Sender, path: &str) -> bool {
        let mut req = Request::get(path).header(
            http::header::HOST,
            self.uri.authority().map_or("localhost", |a| a.as_str()),
        );
        if let Some((k, v)) = &self.header {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req.body(Empty::new()).expect("request");
        if sender.ready().await.is_err() {
            return false;
        }
        match sender.send_request(req).await {
            Ok(res) => {
                let ok = res.status() == self.status;
                ok && res.into_body().collect().await.is_ok()
            }
            Err(_) => false,
        }
    }
}

async fn open(target: Arc<Target>, rate: f64, duration: Duration, conns: usize) {
    let total = (rate * duration.as_secs_f64()) as u64;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let bad = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..conns {
        let mut sender = target.connect().await.expect("connect");
        let (rx, bad, target) = (rx.clone(), bad.clone(), target.clone());
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let due = { rx.lock().await.recv().await };
                let Some(due) = due else { break };
                if !target.request(&mut sender).await {
                    bad.fetch_add(1, Ordering::Relaxed);
                    match target.connect().await {
                        Ok(s) => sender = s,
                        Err(_) => continue,
                    }
                }
                lat.push(due.elapsed().as_micros() as u64);
            }
            lat
        }));
    }
    let start = Instant::now() + Duration::from_millis(10);
    let dispatcher = std::thread::spawn(move || {
        let interval = Duration::from_secs_f64(1.0 / rate);
        for i in 0..total {
            let due = start + interval.mul_f64(i as f64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if tx.send(due).is_err() {
                break;
            }
        }
    });
    dispatcher.join().expect("dispatcher");
    let mut lat = Vec::new();
    for w in workers {
        lat.extend(w.await.expect("worker"));
    }
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let q = |p: f64| quantile(&lat, p);
    println!(
        "sent={} ok={} bad={} rate={:.0} p50_us={} p90_us={} p99_us={} p999_us={} max_us={}",
        total,
        lat.len() as u64 - bad.load(Ordering::Relaxed).min(lat.len() as u64),
        bad.load(Ordering::Relaxed),
        lat.len() as f64 / elapsed,
        q(0.50),
        q(0.90),
        q(0.99),
        q(0.999),
        lat.last().copied().unwrap_or(0),
    );
}

fn quantile(sorted: &[u64], p: f64) -> u64 {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0)
}

async fn each(target: Arc<Target>, template: &str, count: usize) {
    let mut sender = target.connect().await.expect("connect");
    let (mut lat, mut bad) = (Vec::with_capacity(count), 0u64);
    for i in 0..count {
        let uri: Uri = template
            .replace("{i}", &i.to_string())
            .parse()
            .expect("URL");
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let sent = Instant::now();
        if target.request_to(&mut sender, path).await {
            lat.push(sent.elapsed().as_micros() as u64);
        } else {
            bad += 1;
            sender = target.connect().await.expect("reconnect");
        }
    }
    lat.sort_unstable();
    println!(
        "sent={count} ok={} bad={bad} p50_us={} p99_us={} max_us={}",
        lat.len(),
        quantile(&lat, 0.50),
        quantile(&lat, 0.99),
        lat.last().copied().unwrap_or(0)
    );
}

async fn hold(target: Arc<Target>, conns: usize, duration: Duration) {
    let mut held = Vec::with_capacity(conns);
    let mut bad = 0;
    for _ in 0..conns {
        match target.connect().await {
            Ok(mut s) => {
                if target.request(&mut s).await {
                    held.push(s);
                } else {
                    bad += 1;
                }
            }
            Err(_) => bad += 1,
        }
    }
    println!("held={} bad={bad}", held.len());
    tokio::time::sleep(duration).await;
    drop(held);
}
