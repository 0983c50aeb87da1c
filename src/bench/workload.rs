//! What the load generator sends: the command mix of a workload, which keys
//! it touches, and the values it writes.
//!
//! ```text
//!  CommandGen::next_command(rng)
//!     workload a/b/c/w: one op  -> GET k  (read fraction)  |  PUT k v
//!     workload txn:     4 ops   -> GET k1, GET k2, PUT k1 v1, PUT k2 v2
//!  Bank (workload bank, driven by run.rs: a transfer needs what it read)
//!     transfer: GET a, GET b  then  CHECK a old_a, CHECK b old_b, PUT a new_a, PUT b new_b
//!     read all: SCAN over every account (the sum must stay accounts x 100)
//!  keys:  KeyChooser -> uniform in [0, keys)
//!                    | zipfian rank (YCSB, theta 0.99) -> scrambled into [0, keys)
//!  values: value_size random printable ASCII bytes ('!'..='~', no whitespace)
//! ```
//! Everything is a pure function of the caller's random generator, so a
//! seeded generator reproduces the same command stream.

use crate::key::Key;
use crate::op::{Op, OpResult};
use rand::Rng;
use serde::Serialize;

/// The command mix (YCSB-style).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// 50% GET, 50% PUT (update heavy), one op per command.
    A,
    /// 95% GET, 5% PUT (read mostly), one op per command.
    B,
    /// 100% GET (read only), one op per command.
    C,
    /// 100% PUT (write only), one op per command.
    W,
    /// Multi-op commands: GET two random keys and PUT both (usually spans partitions).
    Txn,
    /// Bank transfers guarded by CHECK (GET 2 accounts, then CHECK both + PUT
    /// both), and SCANs of every balance, whose sum must stay accounts x 100.
    Bank,
}

impl Workload {
    /// The fraction of one-op commands that are GETs (the rest are PUTs);
    /// `None` for the multi-op workload.
    pub fn read_fraction(self) -> Option<f64> {
        match self {
            Workload::A => Some(0.5),
            Workload::B => Some(0.95),
            Workload::C => Some(1.0),
            Workload::W => Some(0.0),
            Workload::Txn | Workload::Bank => None,
        }
    }

    /// The name as given on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Workload::A => "a",
            Workload::B => "b",
            Workload::C => "c",
            Workload::W => "w",
            Workload::Txn => "txn",
            Workload::Bank => "bank",
        }
    }

    /// A short human description of the mix.
    pub fn describe(self) -> String {
        match self.read_fraction() {
            Some(read) => {
                let read_pct = (read * 100.0).round();
                format!("{read_pct}% GET / {}% PUT", 100.0 - read_pct)
            }
            None if self == Workload::Bank => format!(
                "transfers between 2 accounts (GET both, then CHECK both + PUT both), {}% reads of all balances",
                (BANK_READ_FRACTION * 100.0).round()
            ),
            None => "GET 2 keys + PUT both, in one command".to_string(),
        }
    }
}

/// How keys are picked from the key space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    /// Every key equally likely.
    Uniform,
    /// YCSB's scrambled Zipfian (constant 0.99): a few hot keys, spread over the key space.
    Zipfian,
}

impl Distribution {
    pub fn name(self) -> &'static str {
        match self {
            Distribution::Uniform => "uniform",
            Distribution::Zipfian => "zipfian",
        }
    }
}

/// The Zipfian generator of YCSB (Gray et al., "Quickly generating
/// billion-record synthetic databases"): returns rank `i` in `[0, items)`
/// with probability proportional to `1 / (i + 1)^theta`, so rank 0 is the
/// most popular.
#[derive(Clone, Debug)]
pub struct Zipfian {
    items: u64,
    theta: f64,
    zetan: f64,
    alpha: f64,
    eta: f64,
}

/// Terms of the zeta sum computed exactly; the rest is approximated by an
/// integral, so a huge key space does not take seconds to set up.
const ZETA_EXACT_TERMS: u64 = 1_000_000;

/// `sum_{i=1..n} i^-theta`: exact for the first [`ZETA_EXACT_TERMS`] terms,
/// then the midpoint-rule integral `∫ x^-theta dx` over `[m + 0.5, n + 0.5]`
/// (relative error far below 1e-6 at that point).
fn zeta(n: u64, theta: f64) -> f64 {
    let exact = n.min(ZETA_EXACT_TERMS);
    let mut sum: f64 = (1..=exact).map(|i| (i as f64).powf(-theta)).sum();
    if n > exact {
        let e = 1.0 - theta;
        sum += ((n as f64 + 0.5).powf(e) - (exact as f64 + 0.5).powf(e)) / e;
    }
    sum
}

impl Zipfian {
    /// The Zipfian constant YCSB uses.
    pub const YCSB_THETA: f64 = 0.99;

    /// A generator over `items` ranks (at least 1) with skew `theta` in
    /// `(0, 1)`.
    pub fn new(items: u64, theta: f64) -> Zipfian {
        let items = items.max(1);
        let zetan = zeta(items, theta);
        let zeta2 = zeta(2.min(items), theta);
        let eta = if items > 2 {
            (1.0 - (2.0 / items as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan)
        } else {
            0.0 // unused: with one or two items the first two branches decide
        };
        Zipfian {
            items,
            theta,
            zetan,
            alpha: 1.0 / (1.0 - theta),
            eta,
        }
    }

    /// The next rank, in `[0, items)`.
    pub fn next_rank<G: Rng + ?Sized>(&self, rng: &mut G) -> u64 {
        let u: f64 = rng.gen();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1.min(self.items - 1);
        }
        let rank = (self.items as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        rank.min(self.items - 1)
    }
}

/// FNV-1a over the 8 bytes of `x`, as YCSB's scrambled Zipfian uses to
/// spread popular ranks over the key space (so hot keys do not all sit in
/// the first partition).
fn fnv1a64(x: u64) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in x.to_le_bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Picks key numbers in `[0, keys)`.
#[derive(Clone, Debug)]
pub enum KeyChooser {
    Uniform { keys: u64 },
    Zipfian { keys: u64, zipf: Zipfian },
}

impl KeyChooser {
    /// A chooser over `[0, keys)`; `keys` must be at least 1.
    pub fn new(distribution: Distribution, keys: u64) -> KeyChooser {
        let keys = keys.max(1);
        match distribution {
            Distribution::Uniform => KeyChooser::Uniform { keys },
            Distribution::Zipfian => KeyChooser::Zipfian {
                keys,
                zipf: Zipfian::new(keys, Zipfian::YCSB_THETA),
            },
        }
    }

    pub fn keys(&self) -> u64 {
        match self {
            KeyChooser::Uniform { keys } | KeyChooser::Zipfian { keys, .. } => *keys,
        }
    }

    /// The next key number.
    pub fn next<G: Rng + ?Sized>(&self, rng: &mut G) -> u64 {
        match self {
            KeyChooser::Uniform { keys } => rng.gen_range(0..*keys),
            KeyChooser::Zipfian { keys, zipf } => fnv1a64(zipf.next_rank(rng)) % keys,
        }
    }
}

/// `len` random printable ASCII bytes without whitespace.
pub fn random_value<G: Rng + ?Sized>(rng: &mut G, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.gen_range(b'!'..=b'~')).collect()
}

/// Most attempts at drawing a second key different from the first.
const DISTINCT_KEY_ATTEMPTS: usize = 64;

/// The balance every account starts with. An absent account holds it, so
/// no set-up phase is needed, and the invariant (the balances sum to
/// accounts x this) carries over from one bank run to the next on the same
/// table with the same `--keys`.
pub const BANK_INITIAL_BALANCE: u64 = 100;
/// The fraction of bank turns that read every balance (the rest transfer).
pub const BANK_READ_FRACTION: f64 = 0.1;
/// Most attempts at one transfer: a transfer whose CHECK failed (another
/// client moved money from or to one of its accounts after it read them)
/// reads the two balances again and retries, up to this many times in all.
pub const BANK_TRANSFER_ATTEMPTS_MAX: usize = 16;

/// One turn of a bank client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BankTurn {
    /// Read every balance in one command and check their sum.
    ReadAll,
    /// Move money from account `from` to account `to` (account indexes).
    Transfer { from: u64, to: u64 },
}

/// The bank workload: `accounts` accounts (`--keys`), account `i` being key
/// number `i * stride` of `table`, so the accounts spread over every
/// partition of the table. Balances are decimal text; an absent account
/// holds [`BANK_INITIAL_BALANCE`]. A transfer reads two balances (one
/// command of two GETs), then in a second command CHECKs that both still
/// hold what it read and PUTs both new balances, moving a random amount
/// from one to the other, never below 0. A read of all balances is one
/// SCAN over the accounts' range.
#[derive(Clone, Debug)]
pub struct Bank {
    table: String,
    accounts: u64,
    stride: u64,
    chooser: KeyChooser,
}

impl Bank {
    /// `accounts` at least 1, `stride` at least 1; the accounts are picked
    /// by `distribution`.
    pub fn new(table: String, accounts: u64, stride: u64, distribution: Distribution) -> Bank {
        let accounts = accounts.max(1);
        Bank {
            table,
            accounts,
            stride: stride.max(1),
            chooser: KeyChooser::new(distribution, accounts),
        }
    }

    /// The sum every read of all balances must find.
    pub fn total(&self) -> u64 {
        self.accounts.saturating_mul(BANK_INITIAL_BALANCE)
    }

    /// The key of account `i`.
    pub fn key(&self, account: u64) -> Key {
        Key::new(self.table.clone(), account.saturating_mul(self.stride))
    }

    /// The account a key belongs to, if any.
    fn account_of(&self, key: &Key) -> Option<u64> {
        (key.table == self.table
            && key.num % self.stride == 0
            && key.num / self.stride < self.accounts)
            .then(|| key.num / self.stride)
    }

    /// What the next turn does.
    pub fn next_turn<G: Rng + ?Sized>(&self, rng: &mut G) -> BankTurn {
        if rng.gen::<f64>() < BANK_READ_FRACTION {
            return BankTurn::ReadAll;
        }
        let from = self.chooser.next(rng);
        let mut to = self.chooser.next(rng);
        for _ in 0..DISTINCT_KEY_ATTEMPTS {
            if to != from || self.accounts < 2 {
                break;
            }
            to = self.chooser.next(rng);
        }
        BankTurn::Transfer { from, to }
    }

    /// One SCAN over every account.
    pub fn read_all(&self) -> Vec<Op> {
        vec![Op::Scan {
            start: self.key(0),
            end: self.key(self.accounts - 1),
        }]
    }

    /// The sum of the balances a [`Bank::read_all`] returned (absent
    /// accounts count [`BANK_INITIAL_BALANCE`]); `Err` names a row that is
    /// not a balance. Rows between accounts (other keys of the table) are
    /// not accounts and are skipped.
    pub fn sum(&self, results: &[OpResult]) -> Result<u64, String> {
        let mut present = 0u64;
        let mut sum = 0u64;
        for result in results {
            let OpResult::Scan(rows) = result else {
                return Err(format!("unexpected result {result:?}"));
            };
            for (key, value) in rows {
                if self.account_of(key).is_none() {
                    continue;
                }
                present += 1;
                sum = sum.saturating_add(parse_balance(key, Some(value))?);
            }
        }
        let absent = self.accounts.saturating_sub(present);
        Ok(sum.saturating_add(absent.saturating_mul(BANK_INITIAL_BALANCE)))
    }

    /// The first command of a transfer: read both balances.
    pub fn read_pair(&self, from: u64, to: u64) -> Vec<Op> {
        vec![
            Op::Get {
                key: self.key(from),
            },
            Op::Get { key: self.key(to) },
        ]
    }

    /// The second command of a transfer, given what [`Bank::read_pair`]
    /// returned: CHECK both values are still the ones read, then PUT both
    /// new balances, moving a random amount (at least 1 when `from` has
    /// money) from `from` to `to`. `Err` if a value read is not a balance.
    pub fn transfer<G: Rng + ?Sized>(
        &self,
        rng: &mut G,
        from: u64,
        to: u64,
        read: &[OpResult],
    ) -> Result<Vec<Op>, String> {
        let [OpResult::Get(old_from), OpResult::Get(old_to)] = read else {
            return Err(format!("unexpected results {read:?}"));
        };
        let (key_from, key_to) = (self.key(from), self.key(to));
        let balance_from = parse_balance(&key_from, old_from.as_deref())?;
        let balance_to = parse_balance(&key_to, old_to.as_deref())?;
        let amount = if from == to || balance_from == 0 {
            0
        } else {
            rng.gen_range(1..=balance_from)
        };
        let balance_to = if from == to {
            balance_to
        } else {
            balance_to.saturating_add(amount)
        };
        let text = |n: u64| n.to_string().into_bytes();
        Ok(vec![
            Op::Check {
                key: key_from.clone(),
                expected: old_from.clone(),
            },
            Op::Check {
                key: key_to.clone(),
                expected: old_to.clone(),
            },
            Op::Put {
                key: key_from,
                value: text(balance_from - amount),
            },
            Op::Put {
                key: key_to,
                value: text(balance_to),
            },
        ])
    }
}

/// A balance as stored: decimal text; absent is [`BANK_INITIAL_BALANCE`].
fn parse_balance(key: &Key, value: Option<&[u8]>) -> Result<u64, String> {
    let Some(value) = value else {
        return Ok(BANK_INITIAL_BALANCE);
    };
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| {
            format!(
                "{key} holds {:?}, not a balance (run bank on a table that only bank uses)",
                String::from_utf8_lossy(value)
            )
        })
}

/// Builds the commands of one workload.
#[derive(Clone, Debug)]
pub struct CommandGen {
    table: String,
    workload: Workload,
    keys: KeyChooser,
    value_size: usize,
}

impl CommandGen {
    pub fn new(table: String, workload: Workload, keys: KeyChooser, value_size: usize) -> Self {
        CommandGen {
            table,
            workload,
            keys,
            value_size,
        }
    }

    /// The next command (operations run as one transaction).
    pub fn next_command<G: Rng + ?Sized>(&self, rng: &mut G) -> Vec<Op> {
        match self.workload.read_fraction() {
            Some(read) => vec![self.single_op(rng, read)],
            // Bank commands depend on what earlier ones read: see [`Bank`].
            None => self.read_two_write_both(rng),
        }
    }

    fn key<G: Rng + ?Sized>(&self, rng: &mut G) -> Key {
        Key::new(self.table.clone(), self.keys.next(rng))
    }

    fn value<G: Rng + ?Sized>(&self, rng: &mut G) -> Vec<u8> {
        random_value(rng, self.value_size)
    }

    fn single_op<G: Rng + ?Sized>(&self, rng: &mut G, read_fraction: f64) -> Op {
        let key = self.key(rng);
        if rng.gen::<f64>() < read_fraction {
            Op::Get { key }
        } else {
            Op::Put {
                key,
                value: self.value(rng),
            }
        }
    }

    /// `GET k1, GET k2, PUT k1 v1, PUT k2 v2` with `k1 != k2` when the key
    /// space allows it.
    fn read_two_write_both<G: Rng + ?Sized>(&self, rng: &mut G) -> Vec<Op> {
        let first = self.key(rng);
        let mut second = self.key(rng);
        for _ in 0..DISTINCT_KEY_ATTEMPTS {
            if second != first || self.keys.keys() < 2 {
                break;
            }
            second = self.key(rng);
        }
        vec![
            Op::Get { key: first.clone() },
            Op::Get {
                key: second.clone(),
            },
            Op::Put {
                key: first,
                value: self.value(rng),
            },
            Op::Put {
                key: second,
                value: self.value(rng),
            },
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    fn gen(workload: Workload, distribution: Distribution, keys: u64) -> CommandGen {
        CommandGen::new(
            "usertable".into(),
            workload,
            KeyChooser::new(distribution, keys),
            10,
        )
    }

    /// The fraction of GETs among `n` one-op commands.
    fn read_share(workload: Workload, n: usize) -> f64 {
        let g = gen(workload, Distribution::Uniform, 1000);
        let mut rng = SmallRng::seed_from_u64(7);
        let mut reads = 0;
        for _ in 0..n {
            let ops = g.next_command(&mut rng);
            assert_eq!(ops.len(), 1);
            match &ops[0] {
                Op::Get { .. } => reads += 1,
                Op::Put { value, .. } => assert_eq!(value.len(), 10),
                other => panic!("unexpected op {other:?}"),
            }
        }
        reads as f64 / n as f64
    }

    #[test]
    fn workload_mixes_have_their_proportions() {
        // 20000 draws: the standard deviation of a 50% share is 0.35%.
        let n = 20_000;
        let a = read_share(Workload::A, n);
        assert!((a - 0.5).abs() < 0.015, "workload a reads {a}");
        let b = read_share(Workload::B, n);
        assert!((b - 0.95).abs() < 0.006, "workload b reads {b}");
        assert_eq!(read_share(Workload::C, n), 1.0);
        assert_eq!(read_share(Workload::W, n), 0.0);
    }

    #[test]
    fn txn_reads_two_distinct_keys_and_writes_both() {
        let g = gen(Workload::Txn, Distribution::Zipfian, 1000);
        let mut rng = SmallRng::seed_from_u64(1);
        for _ in 0..1000 {
            let ops = g.next_command(&mut rng);
            let [Op::Get { key: r1 }, Op::Get { key: r2 }, Op::Put { key: w1, value: v1 }, Op::Put { key: w2, value: v2 }] =
                ops.as_slice()
            else {
                panic!("unexpected command {ops:?}");
            };
            assert_ne!(r1, r2);
            assert_eq!((r1, r2), (w1, w2));
            assert_eq!((v1.len(), v2.len()), (10, 10));
        }
        // A key space of one key cannot give two distinct keys; still works.
        let one = gen(Workload::Txn, Distribution::Uniform, 1);
        assert_eq!(one.next_command(&mut rng).len(), 4);
    }

    #[test]
    fn bank_turns_mix_reads_and_transfers_between_distinct_accounts() {
        let bank = Bank::new("acct".into(), 50, 3, Distribution::Uniform);
        let mut rng = SmallRng::seed_from_u64(4);
        let n = 20_000;
        let mut reads = 0;
        for _ in 0..n {
            match bank.next_turn(&mut rng) {
                BankTurn::ReadAll => reads += 1,
                BankTurn::Transfer { from, to } => {
                    assert_ne!(from, to);
                    assert!(from < 50 && to < 50);
                }
            }
        }
        let share = reads as f64 / n as f64;
        assert!((share - BANK_READ_FRACTION).abs() < 0.01, "reads {share}");
        // Accounts are every stride-th key; a read covers all of them.
        assert_eq!(bank.key(2), Key::new("acct", 6));
        assert_eq!(
            bank.read_all(),
            vec![Op::Scan {
                start: Key::new("acct", 0),
                end: Key::new("acct", 147)
            }]
        );
        assert_eq!(bank.total(), 50 * BANK_INITIAL_BALANCE);
    }

    #[test]
    fn a_bank_transfer_checks_what_it_read_and_keeps_the_sum() {
        let bank = Bank::new("acct".into(), 10, 1, Distribution::Uniform);
        let mut rng = SmallRng::seed_from_u64(8);
        assert_eq!(
            bank.read_pair(1, 2),
            vec![
                Op::Get {
                    key: Key::new("acct", 1)
                },
                Op::Get {
                    key: Key::new("acct", 2)
                }
            ]
        );
        for _ in 0..1000 {
            // Account 1 absent (the initial balance), account 2 holds 7.
            let read = [OpResult::Get(None), OpResult::Get(Some(b"7".to_vec()))];
            let ops = bank.transfer(&mut rng, 1, 2, &read).unwrap();
            let [Op::Check {
                key: c1,
                expected: e1,
            }, Op::Check {
                key: c2,
                expected: e2,
            }, Op::Put { key: p1, value: v1 }, Op::Put { key: p2, value: v2 }] = ops.as_slice()
            else {
                panic!("unexpected command {ops:?}");
            };
            assert_eq!((c1, c2), (p1, p2));
            assert_eq!((e1, e2), (&None, &Some(b"7".to_vec())));
            let n = |v: &[u8]| std::str::from_utf8(v).unwrap().parse::<u64>().unwrap();
            let (from, to) = (n(v1), n(v2));
            assert_eq!(from + to, BANK_INITIAL_BALANCE + 7, "money is conserved");
            assert!(from < BANK_INITIAL_BALANCE, "at least 1 moves");
        }
        // An empty account gives nothing and goes no lower.
        let read = [
            OpResult::Get(Some(b"0".to_vec())),
            OpResult::Get(Some(b"5".to_vec())),
        ];
        let ops = bank.transfer(&mut rng, 1, 2, &read).unwrap();
        assert_eq!(
            ops[2],
            Op::Put {
                key: Key::new("acct", 1),
                value: b"0".to_vec()
            }
        );
        assert_eq!(
            ops[3],
            Op::Put {
                key: Key::new("acct", 2),
                value: b"5".to_vec()
            }
        );
        // A value that is not a balance is an error, not a guess.
        let read = [OpResult::Get(Some(b"x".to_vec())), OpResult::Get(None)];
        assert!(bank.transfer(&mut rng, 1, 2, &read).is_err());
    }

    #[test]
    fn a_bank_read_sums_present_and_absent_accounts() {
        let bank = Bank::new("acct".into(), 4, 10, Distribution::Uniform);
        let row = |num: u64, v: &str| (Key::new("acct", num), v.as_bytes().to_vec());
        // Accounts 0 and 2 present; key 15 is not an account and is skipped.
        let rows = vec![row(0, "50"), row(15, "junk"), row(20, "130")];
        assert_eq!(bank.sum(&[OpResult::Scan(rows)]), Ok(50 + 130 + 2 * 100));
        assert_eq!(bank.sum(&[OpResult::Scan(vec![])]), Ok(bank.total()));
        assert!(bank.sum(&[OpResult::Scan(vec![row(10, "x")])]).is_err());
    }

    #[test]
    fn the_same_seed_gives_the_same_commands() {
        let g = gen(Workload::A, Distribution::Zipfian, 500);
        let run = |seed| {
            let mut rng = SmallRng::seed_from_u64(seed);
            (0..100)
                .map(|_| g.next_command(&mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }

    #[test]
    fn values_are_printable_without_whitespace() {
        let mut rng = SmallRng::seed_from_u64(2);
        let value = random_value(&mut rng, 10_000);
        assert_eq!(value.len(), 10_000);
        assert!(value.iter().all(|b| b.is_ascii_graphic()));
    }

    #[test]
    fn zipfian_stays_in_range_and_is_skewed() {
        let items = 1000;
        let zipf = Zipfian::new(items, Zipfian::YCSB_THETA);
        let mut rng = SmallRng::seed_from_u64(11);
        let n = 200_000;
        let mut counts = vec![0u64; items as usize];
        for _ in 0..n {
            let rank = zipf.next_rank(&mut rng);
            assert!(rank < items);
            counts[rank as usize] += 1;
        }
        // P(rank 0) = 1 / zeta(1000, 0.99) ~ 0.134; rank 1 about half that.
        let p0 = counts[0] as f64 / n as f64;
        let expected = 1.0 / zeta(items, Zipfian::YCSB_THETA);
        assert!((p0 - expected).abs() < 0.01, "p0 {p0}, expected {expected}");
        let ratio = counts[0] as f64 / counts[1] as f64;
        assert!((1.8..2.2).contains(&ratio), "rank0/rank1 = {ratio}");
        // The 10 hottest ranks get far more than their uniform share (1%).
        let top10: u64 = counts[..10].iter().sum();
        assert!(top10 as f64 / n as f64 > 0.3);
        // The tail is still reached.
        assert!(counts[500..].iter().sum::<u64>() > 0);
    }

    #[test]
    fn zipfian_handles_tiny_and_huge_key_spaces() {
        let mut rng = SmallRng::seed_from_u64(5);
        for items in [1, 2, 3] {
            let zipf = Zipfian::new(items, Zipfian::YCSB_THETA);
            for _ in 0..1000 {
                assert!(zipf.next_rank(&mut rng) < items);
            }
        }
        let huge = Zipfian::new(u64::MAX / 2, Zipfian::YCSB_THETA);
        for _ in 0..1000 {
            assert!(huge.next_rank(&mut rng) < u64::MAX / 2);
        }
    }

    #[test]
    fn zeta_tail_approximation_is_close() {
        let n = 3 * ZETA_EXACT_TERMS;
        let exact: f64 = (1..=n).map(|i| (i as f64).powf(-0.99)).sum();
        let approx = zeta(n, 0.99);
        assert!((exact - approx).abs() / exact < 1e-9, "{exact} vs {approx}");
    }

    #[test]
    fn scrambled_keys_stay_in_the_key_space() {
        for distribution in [Distribution::Uniform, Distribution::Zipfian] {
            let chooser = KeyChooser::new(distribution, 37);
            let mut rng = SmallRng::seed_from_u64(9);
            for _ in 0..10_000 {
                assert!(chooser.next(&mut rng) < 37);
            }
        }
    }
}
