//! Deterministic, realistic JSON documents for the examples and `benches/json.rs`.
//!
//! A document is a catalogue of instrument records (numbers, strings with non-ASCII characters and
//! escapes, nested objects, arrays, `null`s), serialised with `serde_json` at three sizes: about
//! 1 KB, 100 KB and 2 MB. The generator uses a fixed-seed xorshift, so **every run, on every
//! machine, produces byte-identical strings**: figures measured on them are comparable, and a test
//! can compare a response with the document it came from.
//!
//! One source, included where needed rather than copied:
//! - examples: `mod support;` (see `support/mod.rs`) or
//!   `#[path = "support/documents.rs"] mod documents;`
//! - benches: `#[path = "../examples/support/documents.rs"] mod documents;`
//!
//! ```ignore
//! let text: String = documents::document(documents::Size::Medium);
//! let typed: documents::Catalogue = serde_json::from_str(&text)?;
//! assert_eq!(typed, documents::catalogue(documents::Size::Medium));
//! ```

// Every example and bench compiles its own copy of this module and uses a different part of it
// (the bench never parses a size key, the JSON example never needs the typed records), so the
// unused part of each copy would otherwise warn.
#![allow(dead_code)]

use serde::{Deserialize, Serialize};

/// The three document sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Size {
    /// About 1 KB: a couple of records.
    Small,
    /// About 100 KB: a few hundred records.
    Medium,
    /// About 2 MB: several thousand records; tens of milliseconds of parse and serialise.
    Big,
}

impl Size {
    /// All sizes, smallest first.
    pub const fn all() -> [Size; 3] {
        [Size::Small, Size::Medium, Size::Big]
    }

    /// The key of this size in URLs, flags and benchmark names: `small`, `medium` or `big`.
    pub const fn key(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Medium => "medium",
            Size::Big => "big",
        }
    }

    /// The size whose [`key`](Size::key) is `key`, if any.
    pub fn from_key(key: &str) -> Option<Size> {
        Size::all().into_iter().find(|size| size.key() == key)
    }

    /// The length the document reaches (it ends at the first record that reaches it, so the
    /// document is at most one record, about 450 bytes, longer).
    pub const fn target_len(self) -> usize {
        match self {
            Size::Small => 1024,
            Size::Medium => 100 * 1024,
            Size::Big => 2 * 1024 * 1024,
        }
    }
}

/// A document: some metadata and a list of instruments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Catalogue {
    /// Where the data notionally comes from.
    pub source: String,
    /// Snapshot time, RFC 3339.
    pub as_of: String,
    /// Number of records in `instruments`.
    pub count: usize,
    /// The records.
    pub instruments: Vec<Instrument>,
}

/// One instrument record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instrument {
    /// Unique, increasing.
    pub id: u64,
    /// Ticker, 3 to 5 capital letters.
    pub symbol: String,
    /// 12-character ISIN-like code.
    pub isin: String,
    /// Company name; some contain non-ASCII characters or `&`.
    pub name: String,
    /// `equity`, `etf`, `bond` or `fund`.
    pub kind: String,
    /// ISO 4217 currency of the prices.
    pub currency: String,
    /// Latest quote.
    pub prices: Prices,
    /// Recent daily closes, oldest first.
    pub history: Vec<f64>,
    /// Where it trades.
    pub listing: Listing,
    /// Free-form classification.
    pub tags: Vec<String>,
    /// Trading flags.
    pub flags: Flags,
    /// Credit rating, `null` for most equities.
    pub rating: Option<String>,
    /// Analyst note with quotes and a newline (escaped in JSON), `null` for most records.
    pub note: Option<String>,
}

/// A quote. Prices have two decimals so they survive any JSON round-trip exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prices {
    /// Last trade.
    pub last: f64,
    /// Opening price.
    pub open: f64,
    /// Session high.
    pub high: f64,
    /// Session low.
    pub low: f64,
    /// Best bid.
    pub bid: f64,
    /// Best ask.
    pub ask: f64,
    /// Change since the previous close, in percent.
    pub change_pct: f64,
    /// Shares traded.
    pub volume: u64,
}

/// The nested listing object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Listing {
    /// ISO 10383 market identifier code.
    pub venue: String,
    /// ISO 3166 country code.
    pub country: String,
    /// Listing date, `YYYY-MM-DD`.
    pub since: String,
    /// Minimum tradable quantity.
    pub lot_size: u32,
}

/// Boolean flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flags {
    /// Currently tradable.
    pub active: bool,
    /// Can be sold short.
    pub shortable: bool,
    /// Can be bought on margin.
    pub marginable: bool,
    /// Meets the ESG screen.
    pub esg: bool,
}

/// The document of `size`, serialised (compact, fields in declaration order). Deterministic:
/// the same string on every call, run and machine.
pub fn document(size: Size) -> String {
    // Serialising plain structs with string keys cannot fail.
    serde_json::to_string(&catalogue(size)).expect("a catalogue always serialises")
}

/// The typed catalogue behind [`document`]: `serde_json::from_str::<Catalogue>(&document(size))`
/// equals `catalogue(size)`.
pub fn catalogue(size: Size) -> Catalogue {
    const HEADER: &str = r#"{"source":"hogwatch-example-feed","as_of":"2026-01-15T16:30:00Z","count":0000,"instruments":[]}"#;
    let mut rng = Rng::new();
    let mut instruments = Vec::new();
    let mut len = HEADER.len();
    while len < size.target_len() {
        let id = instruments.len() as u64 + 1;
        let instrument = instrument(id, &mut rng);
        // Each record adds its own length and a comma (one too many: a byte of slack).
        len += serde_json::to_string(&instrument).map_or(0, |text| text.len()) + 1;
        instruments.push(instrument);
    }
    Catalogue {
        source: "hogwatch-example-feed".to_owned(),
        as_of: "2026-01-15T16:30:00Z".to_owned(),
        count: instruments.len(),
        instruments,
    }
}

const VENUES: [(&str, &str, &str); 8] = [
    ("XNYS", "US", "USD"),
    ("XNAS", "US", "USD"),
    ("XLON", "GB", "GBP"),
    ("XETR", "DE", "EUR"),
    ("XPAR", "FR", "EUR"),
    ("XSWX", "CH", "CHF"),
    ("XTKS", "JP", "JPY"),
    ("BVMF", "BR", "BRL"),
];
const NAMES: [&str; 12] = [
    "Northwind",
    "Aurora",
    "Blue Harbor",
    "Kestrel",
    "Société Lumière",
    "Müller & Söhne",
    "São Bento",
    "Fjällräven Nordic",
    "Tōkai",
    "Crescent",
    "Ironbridge",
    "Halcyon",
];
const INDUSTRIES: [&str; 8] = [
    "Robotics",
    "Energy",
    "Pharmaceuticals",
    "Logistics",
    "Capital",
    "Semiconductors",
    "Foods",
    "Telecom",
];
const SUFFIXES: [&str; 6] = ["plc", "AG", "SA", "Inc.", "N.V.", "K.K."];
const KINDS: [&str; 4] = ["equity", "equity", "etf", "bond"];
const TAGS: [&str; 14] = [
    "large-cap",
    "mid-cap",
    "small-cap",
    "dividend",
    "growth",
    "value",
    "technology",
    "energy",
    "healthcare",
    "financials",
    "index:ftse-100",
    "index:s&p-500",
    "esg-leader",
    "recent-ipo",
];
const RATINGS: [&str; 6] = ["AAA", "AA+", "AA", "A-", "BBB", "BB+"];
const NOTES: [&str; 3] = [
    "Ex-dividend on 2026-03-02; \"special\" distribution of 0.45 per share.\nSee the issuer's notice.",
    "Trading halted 14:02–14:17 CET pending news (\"volatility interruption\").",
    "Guidance raised: revenue +8 %, margin ≥ 21 %.\r\nConsensus: \"overweight\".",
];

fn instrument(id: u64, rng: &mut Rng) -> Instrument {
    let (venue, country, currency) = *rng.pick(&VENUES);
    let kind = *rng.pick(&KINDS);
    let symbol: String = (0..rng.range(3, 6))
        .map(|_| char::from(b'A' + rng.range(0, 26) as u8))
        .collect();
    let isin_body: String = (0..9)
        .map(|_| char::from(b"0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"[rng.range(0, 34) as usize]))
        .collect();
    let isin = format!("{country}{isin_body}{}", id % 10);
    let name = format!(
        "{} {} {}",
        rng.pick(&NAMES),
        rng.pick(&INDUSTRIES),
        rng.pick(&SUFFIXES)
    );

    // Prices in cents, so every value is exactly `cents / 100` and prints with two decimals.
    let close = rng.range(150, 250_000) as i64;
    let cents = |rng: &mut Rng, around: i64, spread: i64| (around + rng.signed(spread)).max(1);
    let spread = (close / 50).max(2);
    let last = cents(rng, close, spread);
    let open = cents(rng, close, spread);
    let high = last.max(open) + rng.range(0, spread as u64) as i64;
    let low = (last.min(open) - rng.range(0, spread as u64) as i64).max(1);
    let bid = (last - 1).max(1);
    let change_bp = (last - close) * 10_000 / close;
    let mut history = Vec::with_capacity(8);
    let mut day = close;
    for _ in 0..8 {
        day = cents(rng, day, spread);
        history.push(money(day));
    }

    let mut tags: Vec<String> = Vec::new();
    for _ in 0..rng.range(1, 5) {
        let tag = rng.pick(&TAGS).to_string();
        if !tags.contains(&tag) {
            tags.push(tag);
        }
    }

    Instrument {
        id,
        symbol,
        isin,
        name,
        kind: kind.to_owned(),
        currency: currency.to_owned(),
        prices: Prices {
            last: money(last),
            open: money(open),
            high: money(high),
            low: money(low),
            bid: money(bid),
            ask: money(last + 1),
            change_pct: money(change_bp),
            volume: rng.range(100, 40_000_000),
        },
        history,
        listing: Listing {
            venue: venue.to_owned(),
            country: country.to_owned(),
            since: format!(
                "{}-{:02}-{:02}",
                rng.range(1985, 2025),
                rng.range(1, 13),
                rng.range(1, 29)
            ),
            lot_size: [1, 10, 100][rng.range(0, 3) as usize],
        },
        tags,
        flags: Flags {
            active: rng.range(0, 20) != 0,
            shortable: rng.range(0, 3) != 0,
            marginable: rng.range(0, 4) != 0,
            esg: rng.range(0, 3) == 0,
        },
        rating: (kind == "bond" || rng.range(0, 5) == 0).then(|| rng.pick(&RATINGS).to_string()),
        note: (rng.range(0, 6) == 0).then(|| rng.pick(&NOTES).to_string()),
    }
}

/// An amount in hundredths as a float with two decimals.
fn money(hundredths: i64) -> f64 {
    hundredths as f64 / 100.0
}

/// xorshift64* with a constant seed: deterministic and good enough for test data.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        Rng(0x9E37_79B9_7F4A_7C15)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `low..high` (`high > low`).
    fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low)
    }

    /// A number in `-spread..=spread`.
    fn signed(&mut self, spread: i64) -> i64 {
        self.range(0, 2 * spread as u64 + 1) as i64 - spread
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.range(0, items.len() as u64) as usize]
    }
}

#[cfg(test)]
mod tests {
    // `cargo test --examples` runs these. The bench (`harness = false`) is also checked with
    // `cfg(test)` by `cargo clippy --all-targets`, but without a test harness, which drops the
    // `#[test]` functions and leaves this import unused there.
    #[allow(unused_imports)]
    use super::*;

    #[test]
    fn documents_are_deterministic_and_near_their_target_size() {
        for size in Size::all() {
            let text = document(size);
            assert_eq!(text, document(size), "{size:?} differs between calls");
            assert!(text.len() >= size.target_len(), "{size:?}: {}", text.len());
            assert!(
                text.len() < size.target_len() + 1024,
                "{size:?}: {}",
                text.len()
            );
        }
    }

    #[test]
    fn documents_round_trip_through_value_and_typed_records() {
        for size in Size::all() {
            let text = document(size);
            let typed: Catalogue = serde_json::from_str(&text).unwrap();
            assert_eq!(typed, catalogue(size));
            assert_eq!(typed.count, typed.instruments.len());
            let value: serde_json::Value = serde_json::from_str(&text).unwrap();
            let again: serde_json::Value =
                serde_json::from_str(&serde_json::to_string(&value).unwrap()).unwrap();
            assert_eq!(value, again);
        }
    }

    #[test]
    fn keys_name_sizes() {
        for size in Size::all() {
            assert_eq!(Size::from_key(size.key()), Some(size));
        }
        assert_eq!(Size::from_key("huge"), None);
    }
}
