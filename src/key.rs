//! Keys: a table name followed by an unsigned 64-bit number (`customers123`).
//!
//! Keys order by `(table, number)`, so `customers2 < customers10`, and
//! `customers007` is the same key as `customers7`. The canonical text form has
//! no leading zeros; [`Key::display_padded`] zero-pads for `--key-len`.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest table name we accept, in bytes.
pub const TABLE_NAME_LEN_MAX: usize = 64;
/// Longest key text we accept (table name plus digits, leading zeros included).
pub const KEY_TEXT_LEN_MAX: usize = 128;

/// A key: `(table, number)`. Derived `Ord` compares the table first, then the
/// number, which is exactly the key order users see.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Key {
    pub table: String,
    pub num: u64,
}

/// Why a key's text was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("malformed key '{0}': expected a table name (letters and '_') followed by a decimal number, e.g. customers42")]
    Malformed(String),
    #[error("malformed key '{0}': the number does not fit in 64 bits")]
    Overflow(String),
    #[error("malformed key: longer than {KEY_TEXT_LEN_MAX} characters")]
    TooLong,
    #[error("malformed key '{0}': table name longer than {TABLE_NAME_LEN_MAX} characters")]
    TableTooLong(String),
}

/// Whether `name` is a valid table name: non-empty, letters and `_` only.
pub fn is_valid_table_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= TABLE_NAME_LEN_MAX
        && name.bytes().all(|b| b.is_ascii_alphabetic() || b == b'_')
}

/// A valid table name for number `n`, for generated tables (benchmarks,
/// simulations): `t` then `n` in letters, `ta`, `tb`, ..., `tz`, `tba`, ...
pub fn numbered_table_name(mut n: usize) -> String {
    let mut letters = Vec::new();
    loop {
        letters.push(b'a' + (n % 26) as u8);
        n /= 26;
        if n == 0 {
            break;
        }
    }
    letters.push(b't');
    letters.reverse();
    String::from_utf8(letters).expect("ASCII letters")
}

impl Key {
    pub fn new(table: impl Into<String>, num: u64) -> Key {
        Key {
            table: table.into(),
            num,
        }
    }

    /// Parses `table123`. The table part is letters and `_`; the number part is
    /// one or more decimal digits (leading zeros allowed) that fit in a `u64`.
    pub fn parse(text: &str) -> Result<Key, KeyError> {
        if text.len() > KEY_TEXT_LEN_MAX {
            return Err(KeyError::TooLong);
        }
        let split = text
            .find(|c: char| c.is_ascii_digit())
            .ok_or_else(|| KeyError::Malformed(text.to_string()))?;
        let (table, digits) = text.split_at(split);
        if table.is_empty()
            || !table.bytes().all(|b| b.is_ascii_alphabetic() || b == b'_')
            || !digits.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(KeyError::Malformed(text.to_string()));
        }
        if table.len() > TABLE_NAME_LEN_MAX {
            return Err(KeyError::TableTooLong(text.to_string()));
        }
        let num = digits
            .parse::<u64>()
            .map_err(|_| KeyError::Overflow(text.to_string()))?;
        Ok(Key::new(table, num))
    }

    /// The key with its number zero-padded to at least `width` digits
    /// (`width` 0 gives the canonical form).
    pub fn display_padded(&self, width: usize) -> String {
        format!("{}{:0width$}", self.table, self.num, width = width)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.table, self.num)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn numbered_table_names_are_valid_and_distinct() {
        let names: Vec<String> = (0..1000).map(super::numbered_table_name).collect();
        assert_eq!(&names[..3], ["ta", "tb", "tc"]);
        assert_eq!(names[26], "tba");
        assert!(names.iter().all(|n| super::is_valid_table_name(n)));
        let distinct: std::collections::BTreeSet<&String> = names.iter().collect();
        assert_eq!(distinct.len(), names.len());
    }

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_canonical_and_padded_forms_to_the_same_key() {
        assert_eq!(Key::parse("customers7").unwrap(), Key::new("customers", 7));
        assert_eq!(
            Key::parse("customers007").unwrap(),
            Key::new("customers", 7)
        );
        assert_eq!(Key::parse("a_b0").unwrap(), Key::new("a_b", 0));
        assert_eq!(Key::new("customers", 7).to_string(), "customers7");
        assert_eq!(Key::new("t", 7).display_padded(4), "t0007");
        assert_eq!(Key::new("t", 12345).display_padded(2), "t12345");
    }

    #[test]
    fn rejects_malformed_keys() {
        for bad in [
            "",
            "123",
            "customers",
            "cust-1",
            "c1x",
            "c 1",
            "1c",
            "c-1",
            "ü1",
            "c+1",
        ] {
            assert!(Key::parse(bad).is_err(), "{bad:?} must be rejected");
        }
        assert_eq!(
            Key::parse("t18446744073709551616"),
            Err(KeyError::Overflow("t18446744073709551616".into()))
        );
        assert_eq!(
            Key::parse("t18446744073709551615").unwrap().num,
            u64::MAX,
            "u64::MAX is a valid key number"
        );
        assert_eq!(Key::parse(&"t".repeat(200)), Err(KeyError::TooLong));
    }

    #[test]
    fn keys_order_by_table_then_number() {
        let k = |s| Key::parse(s).unwrap();
        assert!(k("customers2") < k("customers10"));
        assert!(k("a99") < k("b0"));
        assert!(k("customers007") == k("customers7"));
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(table in "[a-zA-Z_]{1,20}", num: u64, pad in 0usize..25) {
            let key = Key::new(table, num);
            prop_assert_eq!(Key::parse(&key.to_string()).unwrap(), key.clone());
            prop_assert_eq!(Key::parse(&key.display_padded(pad)).unwrap(), key);
        }

        #[test]
        fn order_matches_numeric_order(table in "[a-z]{1,8}", a: u64, b: u64) {
            let (ka, kb) = (Key::new(table.clone(), a), Key::new(table, b));
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,40}") {
            let _ = Key::parse(&s);
        }
    }
}
