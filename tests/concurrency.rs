//! Several benchmark processes at once, on disjoint keys: every reply is
//! exactly what a sequential run would print.
mod common;

use common::Cluster;
use std::thread;

const PROCESSES: u64 = 4;
/// Keys per process; 4 operations per key.
const KEYS: u64 = 50;

/// Process `p`'s requests and the replies they must get. Keys interleave
/// across processes (`j * PROCESSES + p`) and spread over every partition of
/// `customers` (key space 1000, 3 servers) and `orders` (key space 100).
fn script(p: u64) -> (String, String) {
    let (mut input, mut expected) = (String::new(), String::new());
    for j in 0..KEYS {
        let table = if j % 2 == 0 { "customers" } else { "orders" };
        let stride = if table == "customers" { 41 } else { 3 };
        let key = format!("{table}{}", (j * stride) * PROCESSES + p);
        input.push_str(&format!(
            "PUT {key} v{p}_{j}\nGET {key}\nSWAP {key} w{p}_{j}\nDELETE {key}\n"
        ));
        expected.push_str(&format!(
            "PUT {key} not_found\nGET {key} v{p}_{j}\nSWAP {key} v{p}_{j}\nDELETE {key} found\n"
        ));
    }
    // Leave one key per process behind, read back by a SCAN afterwards.
    let last = format!("orders{}", 1_000_000 + p);
    input.push_str(&format!("PUT {last} done{p}\nSTOP\n"));
    expected.push_str(&format!("PUT {last} not_found\nSTOP\n"));
    (input, expected)
}

#[test]
fn concurrent_benchmarks_on_disjoint_keys_get_correct_replies() {
    let cluster = Cluster::start();
    let results: Vec<(String, String)> = thread::scope(|s| {
        let handles: Vec<_> = (0..PROCESSES)
            .map(|p| {
                let cluster = &cluster;
                s.spawn(move || {
                    let (input, expected) = script(p);
                    (cluster.run_benchmark(&[], &input), expected)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (p, (got, expected)) in results.iter().enumerate() {
        assert_eq!(
            got.lines().count(),
            expected.lines().count(),
            "process {p}: one reply per request"
        );
        for (i, (g, e)) in got.lines().zip(expected.lines()).enumerate() {
            assert_eq!(g, e, "process {p}, reply {i}");
        }
    }
    // Everything but the last key of each process was deleted.
    let mut expected = String::from("SCAN orders0 orders18446744073709551615 BEGIN\n");
    for p in 0..PROCESSES {
        expected.push_str(&format!("orders{} done{p}\n", 1_000_000 + p));
    }
    expected.push_str(
        "SCAN END\nSCAN customers0 customers18446744073709551615 BEGIN\nSCAN END\nSTOP\n",
    );
    let got = cluster.run_benchmark(
        &[],
        "SCAN orders0 orders18446744073709551615\nSCAN customers0 customers18446744073709551615\nSTOP\n",
    );
    assert_eq!(got, expected);
}
