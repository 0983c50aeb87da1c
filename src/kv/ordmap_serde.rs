//! Deserializing an [`OrdMap`] without trusting the encoded length.
//!
//! `imbl`'s own `Deserialize` reserves room for as many entries as the input
//! claims, so a corrupt length in a snapshot or log record aborts the
//! process on a failed allocation. This one inserts entries as they decode,
//! so memory grows only with bytes actually present (like serde's
//! `BTreeMap`). The encoding is the same: a map, in key order.

use imbl::OrdMap;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use std::fmt;
use std::marker::PhantomData;

pub fn deserialize<'de, D, K, V>(deserializer: D) -> Result<OrdMap<K, V>, D::Error>
where
    D: Deserializer<'de>,
    K: Deserialize<'de> + Ord + Clone,
    V: Deserialize<'de> + Clone,
{
    struct MapVisitor<K, V>(PhantomData<(K, V)>);

    impl<'de, K, V> Visitor<'de> for MapVisitor<K, V>
    where
        K: Deserialize<'de> + Ord + Clone,
        V: Deserialize<'de> + Clone,
    {
        type Value = OrdMap<K, V>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a map")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
            let mut map = OrdMap::new();
            while let Some((k, v)) = access.next_entry()? {
                map.insert(k, v);
            }
            Ok(map)
        }
    }

    deserializer.deserialize_map(MapVisitor(PhantomData))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bincode::Options;

    #[derive(serde::Deserialize)]
    struct Wrapped(#[serde(deserialize_with = "deserialize")] OrdMap<u64, Vec<u8>>);

    #[test]
    fn a_huge_claimed_length_is_an_error_not_an_allocation() {
        // A map that claims 2^60 entries and holds none.
        let bytes = bincode::DefaultOptions::new()
            .serialize(&(1u64 << 60))
            .unwrap();
        let got = bincode::DefaultOptions::new().deserialize::<Wrapped>(&bytes);
        assert!(got.is_err());
    }

    #[test]
    fn decodes_what_a_btreemap_encodes() {
        let m: std::collections::BTreeMap<u64, Vec<u8>> = [(1, b"a".to_vec()), (7, b"b".to_vec())]
            .into_iter()
            .collect();
        let bytes = bincode::DefaultOptions::new().serialize(&m).unwrap();
        let got = bincode::DefaultOptions::new()
            .deserialize::<Wrapped>(&bytes)
            .unwrap();
        assert_eq!(
            got.0.into_iter().collect::<Vec<_>>(),
            m.into_iter().collect::<Vec<_>>()
        );
    }
}
