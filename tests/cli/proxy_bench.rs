//! `benches/proxy.sh`: requests per second and p99 latency through the real
//! proxy (Caddy, nginx) during a blue/green deploy, as ratios against the
//! same load with no deploy running. Numbers, never a timed assertion.
//!
//! For each proxy kind: a one-host blue/green `ProxyFleet` (`proxy.rs`), v1
//! deployed, one warm-up deploy under load timed to size the window W (that
//! deploy + 1 s, whole seconds since `wrk -d` takes whole seconds, at least
//! 5 s: deploys vary with the machine's load). Then RUNS times, alternately: a steady window (the load for W, no deploy) and
//! a switch window (the same load for W, a blue/green deploy of a new
//! version started 0.5 s into it). A deploy that ends after W is reported.
//!
//! Two load generators measure each window, running at the same time (two
//! windows per run instead of four keeps RUNS=5 under ~3 minutes): the
//! in-test `Load` (4 workers, keep-alive, one retry of a request on a reused
//! connection the proxy closed, counted) and Debian's `wrk` (2 threads, 8
//! connections; no retry: a closed keep-alive connection is a socket read
//! error). Both share the machine with each other, the proxy, the app,
//! sshd and the deploy, so absolute numbers are of this machine and load;
//! the ratios switch/steady are the point.
//!
//! The app (python3's http.server: HTTP/1.0, a new upstream connection per
//! request, an accept queue of 5) overflows its accept queue under the 12
//! concurrent requests; a dropped connection waits for the kernel's 1 s SYN
//! retransmit. The kernel's ListenOverflows count is printed per window
//! kind: when it is not zero, a p99 near 1 s is that, not the proxy.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::load::{Load, Report};
use crate::proxy::{HOST, ProxyFleet};

/// When the deploy starts in a switch window.
const DEPLOY_AT: Duration = Duration::from_millis(500);

/// The shortest window, in seconds: a deploy here took 2-4 s under load,
/// once 6.7 s with the machine busy (a 4 s window was too short then).
const MIN_WINDOW: u64 = 5;

/// The target: p99 during the switch at most this times steady state's.
const TARGET_P99_RATIO: f64 = 2.0;

/// What `wrk --latency` printed.
#[derive(Debug, Default)]
struct Wrk {
    rps: f64,
    p99_ms: f64,
    requests: u64,
    non_2xx: u64,
    /// connect, read, write, timeout.
    socket: [u64; 4],
}

impl Wrk {
    fn failures(&self) -> u64 {
        self.non_2xx + self.socket.iter().sum::<u64>()
    }
}

/// A duration as wrk prints it ("812.00us", "1.23ms", "2.01s", "1.00m"),
/// in milliseconds.
fn wrk_ms(s: &str) -> Option<f64> {
    let (num, scale) = if let Some(n) = s.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1e3)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60e3)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600e3)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|n| n * scale)
}

fn parse_wrk(out: &str) -> Wrk {
    let mut w = Wrk::default();
    let mut p99 = None;
    let mut rps = None;
    for line in out.lines() {
        let line = line.trim();
        if let Some(v) = line.strip_prefix("99%") {
            p99 = wrk_ms(v.trim());
        } else if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            w.non_2xx = v.trim().parse().expect("wrk's non-2xx count");
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 2, write 0, timeout 0"
            for (i, part) in v.split(',').enumerate().take(4) {
                w.socket[i] = part
                    .split_whitespace()
                    .nth(1)
                    .and_then(|n| n.parse().ok())
                    .expect("wrk's socket error counts");
            }
        } else if line.contains(" requests in ") {
            w.requests = line
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        }
    }
    w.p99_ms = p99.unwrap_or_else(|| panic!("no 99% line in wrk's output:\n{out}"));
    w.rps = rps.unwrap_or_else(|| panic!("no Requests/sec in wrk's output:\n{out}"));
    w
}

fn start_wrk(port: u16, secs: u64) -> Child {
    Command::new("wrk")
        .args(["-t2", "-c8", &format!("-d{secs}s"), "--latency", "-H"])
        .arg(format!("Host: {HOST}"))
        .arg(format!("http://127.0.0.1:{port}/version"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run wrk (Debian's wrk package)")
}

/// One window of `secs` seconds under both generators; with `deploy`, it
/// starts `DEPLOY_AT` into the window. The deploy's end since the window's
/// start, if any.
struct Window {
    load: Report,
    wrk: Wrk,
    deploy_end: Option<Duration>,
    /// The kernel's TcpExt ListenOverflows during the window.
    overflows: u64,
}

/// TcpExt ListenOverflows of this network namespace (connections dropped
/// because a listener's accept queue was full; the client's SYN is sent
/// again after 1 s). Every process in the namespace counts.
fn listen_overflows() -> u64 {
    let netstat = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut tcp_ext = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (tcp_ext.next(), tcp_ext.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "ListenOverflows")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

fn window(p: &ProxyFleet, secs: u64, deploy: Option<&str>) -> Window {
    let w = Duration::from_secs(secs);
    let overflows = listen_overflows();
    let load = Load::start(p.http_port, HOST, "/version", 4);
    let wrk = start_wrk(p.http_port, secs);
    let start = Instant::now();
    let deploy_end = deploy.map(|version| {
        p.client(version, "ok");
        p.fleet.commit(&format!("web {version}"));
        std::thread::sleep(DEPLOY_AT.saturating_sub(start.elapsed()));
        p.deploy().code(0);
        start.elapsed()
    });
    std::thread::sleep(w.saturating_sub(start.elapsed()));
    let load = load.stop();
    let out = wrk.wait_with_output().expect("wait for wrk");
    let overflows = listen_overflows() - overflows;
    assert!(
        out.status.success(),
        "wrk: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Window {
        load,
        wrk: parse_wrk(&String::from_utf8_lossy(&out.stdout)),
        deploy_end,
        overflows,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn load_rps(r: &Report) -> f64 {
    r.total() as f64 / r.duration.as_secs_f64()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One generator's line: medians, ratios, the target as text.
fn line(name: &str, rps: [Vec<f64>; 2], p99: [Vec<f64>; 2], failures: &str) {
    let [rps_steady, rps_switch] = rps.map(median);
    let [p99_steady, p99_switch] = p99.clone().map(median);
    let p99_ratio = p99_switch / p99_steady;
    println!(
        "  {name:<12} rps {rps_steady:>7.0} → {rps_switch:>7.0} ({:.2}×)   p99 {p99_steady:>6.2} → {p99_switch:>6.2} ms ({p99_ratio:.2}×, target ≤ {TARGET_P99_RATIO:.1}×: {})",
        rps_switch / rps_steady,
        if p99_ratio <= TARGET_P99_RATIO {
            "met"
        } else {
            "NOT met"
        }
    );
    println!("  {:<12} {failures}", "");
    let runs = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.1}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "  {:<12} p99 per run (ms): steady {}; switch {}",
        "",
        runs(&p99[0]),
        runs(&p99[1])
    );
}

fn bench(kind: &str, runs: usize) {
    let began = Instant::now();
    let p = ProxyFleet::new(kind, "blue_green");
    p.deploy().code(0);

    // The window: a warm-up deploy, timed under the same generators' load
    // (the in-test one; wrk needs its duration up front), + 1 s.
    p.client("v2", "ok");
    p.fleet.commit("web v2");
    let ((run, deploy_took), _, _) = p.under_load(|| {
        let t = Instant::now();
        let run = p.deploy();
        (run, t.elapsed())
    });
    run.code(0);
    let secs = ((deploy_took.as_secs_f64() + 1.0).ceil() as u64).max(MIN_WINDOW);

    let mut steady = Vec::new();
    let mut switch = Vec::new();
    for i in 0..runs {
        steady.push(window(&p, secs, None));
        switch.push(window(&p, secs, Some(&format!("v{}", i + 3))));
    }

    let ends: Vec<f64> = switch
        .iter()
        .map(|w| w.deploy_end.unwrap().as_secs_f64())
        .collect();
    let late = ends.iter().filter(|&&e| e > secs as f64).count();
    println!(
        "{kind}: window {secs} s (warm-up deploy under load took {:.2} s; + 1 s, at least {MIN_WINDOW} s); deploy at 0.5 s, \
         ended at {:.2}..{:.2} s into the window{}; medians of {runs} runs, steady → switch:",
        deploy_took.as_secs_f64(),
        ends.iter().copied().fold(f64::INFINITY, f64::min),
        ends.iter().copied().fold(0.0, f64::max),
        if late > 0 {
            format!(
                " ({late} AFTER the window: those windows ran longer for load, wrk stopped at W)"
            )
        } else {
            String::new()
        }
    );

    let sum = |ws: &[Window], f: &dyn Fn(&Window) -> usize| ws.iter().map(f).sum::<usize>();
    line(
        "load (c=4)",
        [&steady, &switch].map(|ws| ws.iter().map(|w| load_rps(&w.load)).collect()),
        [&steady, &switch].map(|ws| ws.iter().map(|w| ms(w.load.p99())).collect()),
        &format!(
            "failures: switch {} (retries {}), steady {} (retries {})",
            sum(&switch, &|w| w.load.failures().len()),
            sum(&switch, &|w| w.load.retries),
            sum(&steady, &|w| w.load.failures().len()),
            sum(&steady, &|w| w.load.retries),
        ),
    );
    let wrk_failures = |ws: &[Window]| {
        let non_2xx: u64 = ws.iter().map(|w| w.wrk.non_2xx).sum();
        let s = ws.iter().fold([0u64; 4], |mut a, w| {
            for (x, y) in a.iter_mut().zip(w.wrk.socket) {
                *x += y;
            }
            a
        });
        format!(
            "{} (non-2xx {non_2xx}; socket connect {}, read {}, write {}, timeout {})",
            ws.iter().map(|w| w.wrk.failures()).sum::<u64>(),
            s[0],
            s[1],
            s[2],
            s[3]
        )
    };
    line(
        "wrk (c=8)",
        [&steady, &switch].map(|ws| ws.iter().map(|w| w.wrk.rps).collect()),
        [&steady, &switch].map(|ws| ws.iter().map(|w| w.wrk.p99_ms).collect()),
        &format!(
            "failures: switch {}, steady {}",
            wrk_failures(&switch),
            wrk_failures(&steady)
        ),
    );
    for (i, w) in switch.iter().enumerate() {
        for f in w.load.failures().iter().take(3) {
            println!("  switch {} load failure: {f}", i + 1);
        }
    }
    println!(
        "  accept queues overflowed (kernel ListenOverflows, whole network namespace): switch {}, steady {}",
        switch.iter().map(|w| w.overflows).sum::<u64>(),
        steady.iter().map(|w| w.overflows).sum::<u64>()
    );
    let requests: u64 = switch.iter().chain(&steady).map(|w| w.wrk.requests).sum();
    println!(
        "  ({} load requests, {requests} wrk requests; {kind} took {:.0} s)",
        sum(&switch, &|w| w.load.total()) + sum(&steady, &|w| w.load.total()),
        began.elapsed().as_secs_f64()
    );
}

#[test]
#[ignore = "a benchmark: benches/proxy.sh"]
fn bench_switch() {
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "proxy switch bench (debug fleetgate, Debian caddy/nginx, app: python3 http.server; load {}):",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    for kind in ["caddy", "nginx"] {
        bench(kind, runs);
    }
}

#[test]
fn wrk_output_is_parsed() {
    let out = "Running 5s test @ http://127.0.0.1:1/version
  2 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.20ms  500.00us  10.00ms   90.00%
    Req/Sec     3.00k   200.00     3.50k    70.00%
  Latency Distribution
     50%    1.10ms
     75%    1.30ms
     90%    1.60ms
     99%  812.50us
  30000 requests in 5.00s, 4.00MB read
  Socket errors: connect 1, read 2, write 3, timeout 4
  Non-2xx or 3xx responses: 5
Requests/sec:   6000.50
Transfer/sec:    800.00KB
";
    let w = parse_wrk(out);
    assert_eq!(w.rps, 6000.5);
    assert!((w.p99_ms - 0.8125).abs() < 1e-9);
    assert_eq!((w.requests, w.non_2xx, w.socket), (30000, 5, [1, 2, 3, 4]));
    assert_eq!(w.failures(), 15);
    assert!((wrk_ms("2.01s").unwrap() - 2010.0).abs() < 1e-9);
    assert_eq!(wrk_ms("1.00m"), Some(60000.0));
    assert_eq!(wrk_ms("12"), None);
}
