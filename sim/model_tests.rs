//! Unit tests of the checker ([`distkv::simulation::model`]): it accepts
//! what the rules allow and reports what they do not.

use distkv::client::ClientError;
use distkv::key::Key;
use distkv::op::{Op, OpResult};
use distkv::simulation::model::Model;
use std::collections::BTreeSet;
use std::time::Duration;

fn k(n: u64) -> Key {
    Key::new("t", n)
}
fn v(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}
fn model() -> Model {
    Model::new(0, 2, (0..4).map(k), &[v("a"), v("b")])
}
const T: Duration = Duration::ZERO;

#[test]
fn definite_replies_narrow_and_wrong_ones_fail() {
    let mut m = model();
    let put = vec![Op::Put {
        key: k(0),
        value: v("a"),
    }];
    let inv = m.invoke(0, &put, T);
    m.complete(&inv, &Ok(vec![OpResult::Put { found: false }]), T)
        .unwrap();
    let get = vec![Op::Get { key: k(0) }];
    let inv = m.invoke(0, &get, T);
    let err = m
        .complete(&inv, &Ok(vec![OpResult::Get(None)]), T)
        .unwrap_err();
    assert!(err.contains("key t0"), "{err}");
    let inv = m.invoke(0, &get, T);
    m.complete(&inv, &Ok(vec![OpResult::Get(Some(v("a")))]), T)
        .unwrap();
}

#[test]
fn unknown_outcomes_allow_both_and_a_read_resolves_them() {
    let mut m = model();
    let put = vec![Op::Put {
        key: k(0),
        value: v("a"),
    }];
    let inv = m.invoke(0, &put, T);
    m.complete(&inv, &Err(ClientError::UnknownOutcome("x".into())), T)
        .unwrap();
    assert_eq!(m.possible(&k(0)), BTreeSet::from([None, Some(v("a"))]));
    // SWAP observing "a" proves the PUT happened.
    let swap = vec![Op::Swap {
        key: k(0),
        value: v("b"),
    }];
    let inv = m.invoke(0, &swap, T);
    m.complete(&inv, &Ok(vec![OpResult::Swap(Some(v("a")))]), T)
        .unwrap();
    assert_eq!(m.possible(&k(0)), BTreeSet::from([Some(v("b"))]));
}

#[test]
fn a_wipe_during_a_command_allows_pre_and_post_wipe_execution() {
    let mut m = model();
    let put = vec![Op::Put {
        key: k(0),
        value: v("a"),
    }];
    let inv = m.invoke(0, &put, T);
    m.complete(&inv, &Ok(vec![OpResult::Put { found: false }]), T)
        .unwrap();
    // DELETE in flight while the server is killed: it may have run before
    // (found) or after (not found) the wipe.
    let del = vec![Op::Delete { key: k(0) }];
    for found in [true, false] {
        let inv = m.invoke(0, &del, T);
        m.wipe([k(0)]);
        m.complete(&inv, &Ok(vec![OpResult::Delete { found }]), T)
            .unwrap();
        assert_eq!(m.possible(&k(0)), BTreeSet::from([None]));
        let inv = m.invoke(0, &put, T);
        m.complete(&inv, &Ok(vec![OpResult::Put { found: false }]), T)
            .unwrap();
    }
}

#[test]
fn scans_check_owned_keys_and_row_order() {
    let mut m = model();
    let put = vec![Op::Put {
        key: k(2),
        value: v("b"),
    }];
    let inv = m.invoke(0, &put, T);
    m.complete(&inv, &Ok(vec![OpResult::Put { found: false }]), T)
        .unwrap();
    let scan = vec![Op::Scan {
        start: k(0),
        end: k(3),
    }];
    // Client 1's key t1 is concurrent: anything goes.
    let inv = m.invoke(0, &scan, T);
    let rows = vec![(k(1), v("a")), (k(2), v("b"))];
    m.complete(&inv, &Ok(vec![OpResult::Scan(rows)]), T)
        .unwrap();
    // Missing t2 is a lost write.
    let inv = m.invoke(0, &scan, T);
    let err = m
        .complete(&inv, &Ok(vec![OpResult::Scan(vec![(k(1), v("a"))])]), T)
        .unwrap_err();
    assert!(err.contains("key t2"), "{err}");
    // Out of order rows.
    let inv = m.invoke(0, &scan, T);
    let rows = vec![(k(2), v("b")), (k(1), v("a"))];
    let err = m
        .complete(&inv, &Ok(vec![OpResult::Scan(rows)]), T)
        .unwrap_err();
    assert!(err.contains("not strictly after"), "{err}");
}

#[test]
fn an_unknown_write_may_land_late_until_a_later_write_fences_it() {
    let mut m = model();
    let put = |value: &str| {
        vec![Op::Put {
            key: k(0),
            value: v(value),
        }]
    };
    let get = vec![Op::Get { key: k(0) }];
    let inv = m.invoke(0, &put("a"), T);
    m.complete(&inv, &Err(ClientError::UnknownOutcome("x".into())), T)
        .unwrap();
    // A read sees it has not happened (yet)...
    let inv = m.invoke(0, &get, T);
    m.complete(&inv, &Ok(vec![OpResult::Get(None)]), T).unwrap();
    // ...and a later one that it has: it was queued at a frozen leader.
    let inv = m.invoke(0, &get, T);
    m.complete(&inv, &Ok(vec![OpResult::Get(Some(v("a")))]), T)
        .unwrap();
    // Unknown again; then an acknowledged write of the same client in the
    // same partition fences it: it landed before (found) or never will.
    let inv = m.invoke(0, &put("b"), T);
    m.complete(&inv, &Err(ClientError::UnknownOutcome("x".into())), T)
        .unwrap();
    let del = vec![Op::Delete { key: k(2) }];
    let inv = m.invoke(0, &del, T);
    m.complete(&inv, &Ok(vec![OpResult::Delete { found: false }]), T)
        .unwrap();
    assert_eq!(
        m.possible(&k(0)),
        BTreeSet::from([Some(v("a")), Some(v("b"))])
    );
    let inv = m.invoke(0, &get, T);
    m.complete(&inv, &Ok(vec![OpResult::Get(Some(v("a")))]), T)
        .unwrap();
    let inv = m.invoke(0, &get, T);
    let err = m
        .complete(&inv, &Ok(vec![OpResult::Get(Some(v("b")))]), T)
        .unwrap_err();
    assert!(err.contains("key t0"), "{err}");
}

/// An acknowledged CHECK is a read of its expected value: it must be
/// explained by a possible state, and it narrows an uncertain one.
#[test]
fn an_acknowledged_check_is_a_read_of_its_expected_value() {
    let mut m = model();
    let put = vec![Op::Put {
        key: k(0),
        value: v("a"),
    }];
    let inv = m.invoke(0, &put, T);
    m.complete(&inv, &Err(ClientError::UnknownOutcome("x".into())), T)
        .unwrap();
    assert_eq!(m.possible(&k(0)), BTreeSet::from([None, Some(v("a"))]));
    let check = |expected: Option<&str>| {
        vec![Op::Check {
            key: k(0),
            expected: expected.map(v),
        }]
    };
    // CHECK t0 a held: the PUT happened.
    let inv = m.invoke(0, &check(Some("a")), T);
    m.complete(&inv, &Ok(vec![OpResult::Check]), T).unwrap();
    assert_eq!(m.possible(&k(0)), BTreeSet::from([Some(v("a"))]));
    // A CHECK of absent cannot hold any more.
    let inv = m.invoke(0, &check(None), T);
    let err = m.complete(&inv, &Ok(vec![OpResult::Check]), T).unwrap_err();
    assert!(err.contains("key t0"), "{err}");
    // One that failed applied nothing.
    let guarded = vec![
        Op::Check {
            key: k(0),
            expected: Some(v("b")),
        },
        Op::Delete { key: k(0) },
    ];
    let inv = m.invoke(0, &guarded, T);
    let failed = ClientError::CheckFailed {
        index: 0,
        key: k(0),
        actual: Some(v("a")),
    };
    m.complete(&inv, &Err(failed), T).unwrap();
    assert_eq!(m.possible(&k(0)), BTreeSet::from([Some(v("a"))]));
}
