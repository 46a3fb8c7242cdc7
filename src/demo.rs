//! The telecom demo database: a fast, deterministic generator and a mutator.
//!
//! custos is demonstrated and benchmarked on a generated operator database in
//! SQLite: a CRM (customers, subscriptions, tickets) plus a billing feed of
//! call detail records (CDRs) that makes up about 90% of the file.
//!
//! * [`generate`] creates a new database whose content depends only on the
//!   seed and the size: every value comes from a seeded PRNG and every date
//!   is relative to the fixed [`REFERENCE_DATE`], never to today.
//! * [`mutate`] applies "one day" of changes to such a database (new CDRs for
//!   the next day, updates spread across customers, subscriptions and
//!   tickets, a few CDR corrections, deletion of old closed tickets); the
//!   result depends only on the database content and the seed.
//!
//! Schema (`PRAGMA user_version = 3`):
//!
//! | table | subject column | time column |
//! |---|---|---|
//! | `customers` | `id` | `created_at`, `closed_at` |
//! | `subscriptions` | `customer_id` | `started_at` |
//! | `tickets` | `customer_id` | `opened_at` |
//! | `ticket_history` | `customer_id` | `changed_at` |
//! | `cdrs` | `customer_id` | `started_at` |
//! | `settings` | none | none |
//!
//! plus indexes `cdrs_customer_time`, `subscriptions_customer`,
//! `tickets_customer`, `ticket_history_ticket`, the view `active_customers`
//! and the trigger `tickets_status_history`, which records every status
//! change of a ticket in `ticket_history`, stamped with the database's
//! business clock (`settings.clock`) so that the content stays deterministic.
//!
//! All times are ISO 8601 UTC text, `YYYY-MM-DDTHH:MM:SSZ`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rusqlite::{params, Connection, OptionalExtension};

use crate::progress::Progress;

/// The schema version written to `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 3;

/// The fixed "now" of a generated database, `YYYY-MM-DD` (midnight UTC).
/// CDRs cover the 365 days before it; it is also the initial business clock.
pub const REFERENCE_DATE: &str = "2026-03-16";

/// Customers in [`DemoSize::Small`].
pub const SMALL_CUSTOMERS: u64 = 2_000;

/// Average CDRs per customer over the year (the heavy tail makes some
/// customers have a hundred times more than others).
const CDRS_PER_CUSTOMER: u64 = 37;

/// Measured file bytes per customer (customer row, subscriptions, tickets,
/// their CDRs and all index entries); used to turn a byte target into a
/// customer count.
const BYTES_PER_CUSTOMER: u64 = 4_130;

/// The smallest byte target accepted.
const MIN_BYTES: u64 = 1 << 20;

/// The largest byte target accepted (1 TiB).
const MAX_BYTES: u64 = 1 << 40;

/// Rows per progress report.
const PROGRESS_EVERY: u64 = 8_192;

/// Errors of the demo data generator and mutator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DemoError {
    /// The target path exists already; the generator never overwrites.
    #[error("demo database {path} already exists: choose a new path or remove the file first")]
    Exists { path: PathBuf },
    /// A file system operation failed.
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A SQLite operation failed.
    #[error("SQLite failed while {what} in {path}: {source}; check that the file is a writable SQLite database and the disk has room")]
    Sqlite {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// The database is not a custos demo database of the expected version.
    #[error("{path} is not a custos demo database (schema version {found}, expected {SCHEMA_VERSION}, or tables missing): create one with the demo generator")]
    NotDemo { path: PathBuf, found: i64 },
    /// A size given as text could not be read.
    #[error("invalid demo size {input:?}: {reason}; use \"small\" or a size such as 256m, 1g, 4GiB, 500MB")]
    InvalidSize { input: String, reason: &'static str },
    /// The mutation fraction is out of range.
    #[error("invalid mutation fraction {fraction}: use a number greater than 0 and at most 0.5 (0.01 = 1% of rows)")]
    InvalidFraction { fraction: f64 },
}

/// How big a generated database is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DemoSize {
    /// About 2,000 customers and 8 MB: tests and the default demo.
    Small,
    /// A target file size in bytes (e.g. 1 GiB); the file ends within about
    /// ±10% of it.
    Bytes(u64),
}

impl DemoSize {
    /// The number of customers generated for this size.
    pub fn customers(self) -> u64 {
        match self {
            DemoSize::Small => SMALL_CUSTOMERS,
            DemoSize::Bytes(n) => (n / BYTES_PER_CUSTOMER).max(50),
        }
    }
}

impl FromStr for DemoSize {
    type Err = DemoError;

    /// Reads `small` or a size: a number (decimals allowed) with an optional
    /// unit. As with `dd`, `k`, `m`, `g`, `t` and `kib`, `mib`, `gib`, `tib`
    /// are powers of 1024, `kb`, `mb`, `gb`, `tb` are powers of 1000, and `b`
    /// or no unit means bytes. Case and blanks are ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason| DemoError::InvalidSize {
            input: s.to_string(),
            reason,
        };
        let t: String = s
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_lowercase();
        if t == "small" {
            return Ok(DemoSize::Small);
        }
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        if num.is_empty() {
            return Err(bad("no number"));
        }
        let value: f64 = num.parse().map_err(|_| bad("not a number"))?;
        let mult: u64 = match unit {
            "" | "b" => 1,
            "k" | "kib" => 1 << 10,
            "m" | "mib" => 1 << 20,
            "g" | "gib" => 1 << 30,
            "t" | "tib" => 1 << 40,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            _ => return Err(bad("unknown unit")),
        };
        let bytes = value * mult as f64;
        if !bytes.is_finite() || bytes < MIN_BYTES as f64 {
            return Err(bad("smaller than the minimum of 1 MiB"));
        }
        if bytes > MAX_BYTES as f64 {
            return Err(bad("larger than the maximum of 1 TiB"));
        }
        Ok(DemoSize::Bytes(bytes.round() as u64))
    }
}

/// What [`generate`] wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GenStats {
    pub customers: u64,
    pub subscriptions: u64,
    pub tickets: u64,
    /// Rows of `ticket_history`.
    pub ticket_history: u64,
    pub cdrs: u64,
    /// The size of the database file.
    pub bytes: u64,
}

/// What [`mutate`] changed, counted in rows of the data tables (`customers`,
/// `subscriptions`, `tickets`, `ticket_history`, `cdrs`). Rows written by the
/// status trigger count as inserted; the `settings` row is not counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MutateStats {
    pub updated: u64,
    pub inserted: u64,
    pub deleted: u64,
}

// ---------------------------------------------------------------------------
// PRNG and time helpers
// ---------------------------------------------------------------------------

/// SplitMix64: tiny, fast, and good enough for synthetic data.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, stream: u64) -> Self {
        let mut r = Rng(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        r.next();
        r
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }
    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        ((self.next() as u128 * n as u128) >> 64) as u64
    }
    /// Uniform in `lo..hi` (`hi > lo`).
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo) as u64) as i64
    }
    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
    /// An index into `weights`, with probability proportional to its weight.
    fn weighted(&mut self, weights: &[u32]) -> usize {
        let total: u64 = weights.iter().map(|&w| w as u64).sum();
        let mut x = self.below(total);
        for (i, &w) in weights.iter().enumerate() {
            if x < w as u64 {
                return i;
            }
            x -= w as u64;
        }
        weights.len() - 1
    }
}

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const DAY: i64 = 86_400;

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day number.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// An ISO 8601 UTC timestamp, formatted without allocation.
struct Ts([u8; 20]);

impl Ts {
    fn new(secs: i64) -> Ts {
        let (y, mo, d) = civil_from_days(secs.div_euclid(DAY));
        let s = secs.rem_euclid(DAY);
        let mut b = *b"0000-00-00T00:00:00Z";
        put_digits(&mut b[0..4], y as u64);
        put_digits(&mut b[5..7], mo as u64);
        put_digits(&mut b[8..10], d as u64);
        put_digits(&mut b[11..13], (s / 3600) as u64);
        put_digits(&mut b[14..16], (s / 60 % 60) as u64);
        put_digits(&mut b[17..19], (s % 60) as u64);
        Ts(b)
    }
    fn as_str(&self) -> &str {
        // Only ASCII digits and separators are ever written.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

fn put_digits(out: &mut [u8], mut v: u64) {
    for b in out.iter_mut().rev() {
        *b = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// Reads `YYYY-MM-DD` or `YYYY-MM-DDTHH:MM:SSZ` as seconds since the epoch.
fn parse_ts(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    if b.len() < 10 {
        return None;
    }
    let days = days_from_civil(num(0..4)?, num(5..7)? as u32, num(8..10)? as u32);
    let mut secs = days * DAY;
    if b.len() >= 19 {
        secs += num(11..13)? * 3600 + num(14..16)? * 60 + num(17..19)?;
    }
    Some(secs)
}

fn reference_secs() -> i64 {
    parse_ts(REFERENCE_DATE).unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Reference data
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Country {
    Cn,
    De,
    Fr,
    Es,
    It,
    Nl,
    Pl,
    Se,
}

const EUROPE: [Country; 7] = [
    Country::De,
    Country::Fr,
    Country::Es,
    Country::It,
    Country::Nl,
    Country::Pl,
    Country::Se,
];

/// Chinese surnames with pinyin, most frequent first.
#[rustfmt::skip]
const CN_SURNAMES: &[(&str, &str)] = &[
    ("王", "Wang"), ("李", "Li"), ("张", "Zhang"), ("刘", "Liu"), ("陈", "Chen"),
    ("杨", "Yang"), ("黄", "Huang"), ("赵", "Zhao"), ("吴", "Wu"), ("周", "Zhou"),
    ("徐", "Xu"), ("孙", "Sun"), ("马", "Ma"), ("朱", "Zhu"), ("胡", "Hu"),
    ("郭", "Guo"), ("何", "He"), ("高", "Gao"), ("林", "Lin"), ("罗", "Luo"),
    ("郑", "Zheng"), ("梁", "Liang"), ("谢", "Xie"), ("宋", "Song"), ("唐", "Tang"),
    ("许", "Xu"), ("韩", "Han"), ("冯", "Feng"), ("邓", "Deng"), ("曹", "Cao"),
    ("彭", "Peng"), ("曾", "Zeng"), ("肖", "Xiao"), ("田", "Tian"), ("董", "Dong"),
    ("袁", "Yuan"), ("潘", "Pan"), ("于", "Yu"), ("蒋", "Jiang"), ("蔡", "Cai"),
    ("余", "Yu"), ("杜", "Du"), ("叶", "Ye"), ("程", "Cheng"), ("苏", "Su"),
    ("魏", "Wei"), ("吕", "Lyu"), ("丁", "Ding"), ("任", "Ren"), ("沈", "Shen"),
    ("姚", "Yao"), ("卢", "Lu"), ("姜", "Jiang"), ("崔", "Cui"), ("钟", "Zhong"),
    ("谭", "Tan"), ("陆", "Lu"), ("汪", "Wang"), ("范", "Fan"), ("金", "Jin"),
    ("石", "Shi"), ("廖", "Liao"), ("贾", "Jia"), ("夏", "Xia"), ("韦", "Wei"),
    ("方", "Fang"), ("白", "Bai"), ("邹", "Zou"), ("孟", "Meng"), ("熊", "Xiong"),
    ("秦", "Qin"), ("邱", "Qiu"), ("江", "Jiang"), ("尹", "Yin"), ("薛", "Xue"),
    ("段", "Duan"), ("雷", "Lei"), ("侯", "Hou"), ("龙", "Long"), ("史", "Shi"),
    ("陶", "Tao"), ("贺", "He"), ("顾", "Gu"), ("毛", "Mao"), ("郝", "Hao"),
    ("龚", "Gong"), ("邵", "Shao"), ("万", "Wan"), ("钱", "Qian"), ("严", "Yan"),
    ("欧阳", "Ouyang"), ("司马", "Sima"), ("上官", "Shangguan"),
];

/// Characters of Chinese given names with pinyin.
#[rustfmt::skip]
const CN_GIVEN: &[(&str, &str)] = &[
    ("伟", "wei"), ("芳", "fang"), ("娜", "na"), ("敏", "min"), ("静", "jing"),
    ("丽", "li"), ("强", "qiang"), ("磊", "lei"), ("军", "jun"), ("洋", "yang"),
    ("勇", "yong"), ("艳", "yan"), ("杰", "jie"), ("娟", "juan"), ("涛", "tao"),
    ("明", "ming"), ("超", "chao"), ("秀", "xiu"), ("霞", "xia"), ("平", "ping"),
    ("刚", "gang"), ("英", "ying"), ("华", "hua"), ("玉", "yu"), ("兰", "lan"),
    ("建", "jian"), ("国", "guo"), ("文", "wen"), ("辉", "hui"), ("鹏", "peng"),
    ("宇", "yu"), ("浩", "hao"), ("然", "ran"), ("欣", "xin"), ("怡", "yi"),
    ("子", "zi"), ("涵", "han"), ("梓", "zi"), ("轩", "xuan"), ("晨", "chen"),
    ("雨", "yu"), ("佳", "jia"), ("思", "si"), ("嘉", "jia"), ("俊", "jun"),
    ("博", "bo"), ("诗", "shi"), ("婷", "ting"), ("雪", "xue"), ("梅", "mei"),
    ("琳", "lin"), ("晓", "xiao"), ("东", "dong"), ("海", "hai"), ("波", "bo"),
    ("斌", "bin"), ("宁", "ning"), ("红", "hong"), ("志", "zhi"), ("昊", "hao"),
    ("一", "yi"), ("可", "ke"), ("心", "xin"), ("安", "an"), ("乐", "le"),
    ("泽", "ze"), ("瑞", "rui"), ("凯", "kai"), ("飞", "fei"), ("云", "yun"),
    ("鑫", "xin"), ("慧", "hui"), ("颖", "ying"), ("倩", "qian"), ("琪", "qi"),
];

/// Chinese places: address prefix, districts with their ID region codes.
#[rustfmt::skip]
const CN_PLACES: &[(&str, &[(&str, u32)])] = &[
    ("北京市", &[("朝阳区", 110105), ("海淀区", 110108), ("东城区", 110101)]),
    ("上海市", &[("浦东新区", 310115), ("徐汇区", 310104), ("静安区", 310106)]),
    ("广东省广州市", &[("天河区", 440106), ("越秀区", 440104)]),
    ("广东省深圳市", &[("南山区", 440305), ("福田区", 440304)]),
    ("浙江省杭州市", &[("西湖区", 330106), ("滨江区", 330108)]),
    ("四川省成都市", &[("武侯区", 510107), ("锦江区", 510104)]),
    ("湖北省武汉市", &[("洪山区", 420111), ("江汉区", 420103)]),
    ("江苏省南京市", &[("鼓楼区", 320106), ("玄武区", 320102)]),
];

#[rustfmt::skip]
const CN_ROADS: &[&str] = &[
    "人民路", "解放路", "中山路", "建设路", "和平路", "长江路", "新华路", "文化路",
    "学院路", "朝阳路", "建国路", "南京路", "科技园路", "滨江大道", "花园街",
];

const CN_EMAIL: &[&str] = &["qq.com", "163.com", "126.com", "sina.com", "gmail.com"];

/// Everything the generator needs about one European country.
struct Europe {
    code: &'static str,
    mobile: &'static [&'static str],
    first: &'static [&'static str],
    last: &'static [&'static str],
    streets: &'static [&'static str],
    /// City and the first digits of its postcodes.
    cities: &'static [(&'static str, u32)],
    email: &'static [&'static str],
}

#[rustfmt::skip]
const DE: Europe = Europe {
    code: "49",
    mobile: &["151", "160", "170", "176"],
    first: &["Lukas", "Anna", "Jürgen", "Sophie", "Maximilian", "Lea", "Stefan", "Katrin", "Jörg", "Mia", "Uwe", "Sabine"],
    last: &["Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker", "Schäfer", "Koch", "Groß", "Köhler"],
    streets: &["Hauptstraße", "Bahnhofstraße", "Gartenweg", "Schillerstraße", "Goethestraße", "Lindenallee"],
    cities: &[("Berlin", 10), ("Hamburg", 20), ("München", 80), ("Köln", 50), ("Leipzig", 4)],
    email: &["web.de", "gmx.de", "t-online.de", "gmail.com"],
};
#[rustfmt::skip]
const FR: Europe = Europe {
    code: "33",
    mobile: &["6", "7"],
    first: &["Camille", "Louis", "Chloé", "Hugo", "Léa", "Théo", "Manon", "Jérôme", "Élodie", "François", "Inès", "Benoît"],
    last: &["Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand", "Lefèvre", "Moreau", "Girard", "Fournier"],
    streets: &["rue de la Paix", "avenue Victor Hugo", "rue Pasteur", "boulevard Voltaire", "rue des Lilas", "place de la République"],
    cities: &[("Paris", 75), ("Lyon", 69), ("Marseille", 13), ("Toulouse", 31), ("Lille", 59)],
    email: &["orange.fr", "free.fr", "laposte.net", "gmail.com"],
};
#[rustfmt::skip]
const ES: Europe = Europe {
    code: "34",
    mobile: &["6", "7"],
    first: &["Lucía", "Hugo", "Martina", "Mateo", "Sofía", "Álvaro", "Carmen", "José", "Paula", "Íñigo", "Nuria", "Andrés"],
    last: &["García", "Fernández", "González", "Rodríguez", "López", "Martínez", "Sánchez", "Pérez", "Gómez", "Muñoz", "Jiménez", "Ruiz"],
    streets: &["Calle Mayor", "Calle de Alcalá", "Avenida de la Constitución", "Calle Real", "Paseo de Gracia", "Calle del Sol"],
    cities: &[("Madrid", 28), ("Barcelona", 8), ("Valencia", 46), ("Sevilla", 41), ("Bilbao", 48)],
    email: &["telefonica.net", "hotmail.es", "yahoo.es", "gmail.com"],
};
#[rustfmt::skip]
const IT: Europe = Europe {
    code: "39",
    mobile: &["320", "333", "347", "380"],
    first: &["Giulia", "Francesco", "Sofia", "Alessandro", "Aurora", "Lorenzo", "Chiara", "Niccolò", "Martina", "Mattia", "Elena", "Andrea"],
    last: &["Rossi", "Russo", "Ferrari", "Esposito", "Bianchi", "Romano", "Colombo", "Ricci", "Marino", "Greco", "Bruno", "Gallo"],
    streets: &["Via Roma", "Via Garibaldi", "Corso Vittorio Emanuele", "Via Dante", "Piazza del Popolo", "Via Verdi"],
    cities: &[("Roma", 0), ("Milano", 20), ("Napoli", 80), ("Torino", 10), ("Bologna", 40)],
    email: &["libero.it", "tiscali.it", "virgilio.it", "gmail.com"],
};
#[rustfmt::skip]
const NL: Europe = Europe {
    code: "31",
    mobile: &["6"],
    first: &["Daan", "Emma", "Sem", "Julia", "Lucas", "Tess", "Bram", "Sanne", "Joost", "Fenna", "Ruben", "Lotte"],
    last: &["de Jong", "Jansen", "de Vries", "van den Berg", "van Dijk", "Bakker", "Janssen", "Visser", "Smit", "Meijer", "de Boer", "Mulder"],
    streets: &["Kerkstraat", "Dorpsstraat", "Molenweg", "Stationsweg", "Prinsengracht", "Schoolstraat"],
    cities: &[("Amsterdam", 10), ("Rotterdam", 30), ("Utrecht", 35), ("Den Haag", 25), ("Eindhoven", 56)],
    email: &["ziggo.nl", "kpnmail.nl", "hotmail.nl", "gmail.com"],
};
#[rustfmt::skip]
const PL: Europe = Europe {
    code: "48",
    mobile: &["50", "51", "60", "69", "72"],
    first: &["Zofia", "Jakub", "Zuzanna", "Szymon", "Łucja", "Jan", "Małgorzata", "Paweł", "Agnieszka", "Michał", "Katarzyna", "Wojciech"],
    last: &["Nowak", "Kowalski", "Wiśniewski", "Wójcik", "Kowalczyk", "Kamiński", "Lewandowski", "Zieliński", "Szymański", "Woźniak", "Dąbrowski", "Kozłowski"],
    streets: &["ul. Marszałkowska", "ul. Długa", "ul. Polna", "ul. Kościuszki", "ul. Mickiewicza", "ul. Ogrodowa"],
    cities: &[("Warszawa", 0), ("Kraków", 30), ("Łódź", 90), ("Wrocław", 50), ("Gdańsk", 80)],
    email: &["wp.pl", "onet.pl", "interia.pl", "gmail.com"],
};
#[rustfmt::skip]
const SE: Europe = Europe {
    code: "46",
    mobile: &["70", "72", "73", "76"],
    first: &["Alice", "William", "Maja", "Oscar", "Elsa", "Lars", "Åsa", "Björn", "Ingrid", "Göran", "Linnéa", "Erik"],
    last: &["Andersson", "Johansson", "Karlsson", "Nilsson", "Eriksson", "Larsson", "Olsson", "Persson", "Svensson", "Gustafsson", "Lindström", "Åberg"],
    streets: &["Storgatan", "Drottninggatan", "Kungsgatan", "Skolgatan", "Södra vägen", "Järnvägsgatan"],
    cities: &[("Stockholm", 11), ("Göteborg", 41), ("Malmö", 21), ("Uppsala", 75), ("Västerås", 72)],
    email: &["telia.com", "bredband.net", "hotmail.se", "gmail.com"],
};

impl Country {
    fn europe(self) -> &'static Europe {
        match self {
            Country::De => &DE,
            Country::Fr => &FR,
            Country::Es => &ES,
            Country::It => &IT,
            Country::Nl => &NL,
            Country::Pl => &PL,
            Country::Se | Country::Cn => &SE,
        }
    }

    fn calling_code(self) -> &'static str {
        match self {
            Country::Cn => "86",
            c => c.europe().code,
        }
    }

    /// The country of a stored phone number (`+CC ...`).
    fn from_phone(phone: &str) -> Country {
        let digits = phone.trim_start_matches('+');
        std::iter::once(Country::Cn)
            .chain(EUROPE)
            .find(|c| digits.starts_with(c.calling_code()))
            .unwrap_or(Country::De)
    }

    /// A mobile number in E.164 digits (no `+`); `n` picks the subscriber
    /// number, so distinct `n < 10^9` give distinct numbers.
    fn msisdn(self, n: u64, out: &mut String) {
        out.clear();
        out.push_str(self.calling_code());
        match self {
            Country::Cn => {
                const CN_MOBILE: [&str; 8] = ["13", "13", "15", "18", "13", "17", "19", "18"];
                out.push_str(CN_MOBILE[(n % 8) as usize]);
            }
            c => {
                let m = c.europe().mobile;
                out.push_str(m[(n % m.len() as u64) as usize]);
            }
        }
        // A bijection of 0..10^9 spreads consecutive counters over the space.
        let scrambled = (n % 1_000_000_000)
            .wrapping_mul(387_420_489)
            .wrapping_add(123_456_789)
            % 1_000_000_000;
        let mut digits = [0u8; 9];
        put_digits(&mut digits, scrambled);
        out.push_str(std::str::from_utf8(&digits).unwrap_or("000000000"));
    }
}

/// Folds a European name to ASCII (ä → ae, é → e, ł → l, ...).
fn fold_latin(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let r = match c {
            'ä' => "ae",
            'ö' => "oe",
            'ü' => "ue",
            'Ä' => "Ae",
            'Ö' => "Oe",
            'Ü' => "Ue",
            'ß' => "ss",
            'á' | 'à' | 'â' | 'å' | 'ą' => "a",
            'Á' | 'Å' => "A",
            'é' | 'è' | 'ê' | 'ë' | 'ę' => "e",
            'É' => "E",
            'í' | 'ì' | 'î' => "i",
            'Í' => "I",
            'ó' | 'ò' | 'ô' => "o",
            'ú' | 'ù' => "u",
            'ç' | 'ć' => "c",
            'ñ' | 'ń' => "n",
            'ł' => "l",
            'Ł' => "L",
            'ś' => "s",
            'ż' | 'ź' => "z",
            _ => {
                out.push(c);
                continue;
            }
        };
        out.push_str(r);
    }
    out
}

/// One generated person (the identity part of a customer row).
struct Person {
    name: String,
    name_latin: String,
    id_number: String,
    email: String,
    address: String,
}

/// Birth date (day number) of an adult customer, 18 to 85 years old.
fn birth_day(rng: &mut Rng) -> i64 {
    let now = reference_secs() / DAY;
    now - rng.range(18 * 365 + 5, 85 * 365)
}

fn person(rng: &mut Rng, country: Country) -> Person {
    let mut buf = String::new();
    if country == Country::Cn {
        // Surname frequency is steep: favour the head of the table.
        let u = rng.unit();
        let (sur, sur_py) = CN_SURNAMES[((u * u) * CN_SURNAMES.len() as f64) as usize];
        let (g1, p1) = *rng.pick(CN_GIVEN);
        let mut name = format!("{sur}{g1}");
        let mut given_py = capitalize(p1);
        if rng.chance(0.6) {
            let (g2, p2) = *rng.pick(CN_GIVEN);
            name.push_str(g2);
            given_py.push_str(p2);
        }
        let name_latin = format!("{sur_py} {given_py}");
        let email_local = format!("{}{}", sur_py.to_lowercase(), given_py.to_lowercase());
        let email = email_address(rng, &email_local, CN_EMAIL);
        let born = birth_day(rng);
        let (city, districts) = *rng.pick(CN_PLACES);
        let (district, _) = *rng.pick(districts);
        let birthplace = rng_place(rng);
        let (_, region) = *rng.pick(birthplace);
        let id_number = cn_id(rng, region, born);
        let _ = write!(
            buf,
            "{city}{district}{}{}号{}单元{}室",
            rng.pick(CN_ROADS),
            rng.range(1, 400),
            rng.range(1, 9),
            rng.range(1, 33) * 100 + rng.range(1, 7)
        );
        Person {
            name,
            name_latin,
            id_number,
            email,
            address: buf,
        }
    } else {
        let e = country.europe();
        let first = *rng.pick(e.first);
        let last = *rng.pick(e.last);
        let name = format!("{first} {last}");
        let name_latin = fold_latin(&name);
        let local: String = format!(
            "{}.{}",
            fold_latin(first).to_lowercase(),
            fold_latin(last).to_lowercase().replace(' ', "")
        );
        let email = email_address(rng, &local, e.email);
        let born = birth_day(rng);
        let id_number = eu_id(rng, country, born);
        let address = eu_address(rng, country);
        Person {
            name,
            name_latin,
            id_number,
            email,
            address,
        }
    }
}

/// The birthplace table for a Chinese identity number.
fn rng_place(rng: &mut Rng) -> &'static [(&'static str, u32)] {
    rng.pick(CN_PLACES).1
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

fn email_address(rng: &mut Rng, local: &str, domains: &[&str]) -> String {
    if rng.chance(0.5) {
        format!("{local}{}@{}", rng.range(1, 100), rng.pick(domains))
    } else {
        format!("{local}@{}", rng.pick(domains))
    }
}

/// A Chinese resident identity number: region, birth date, sequence and the
/// ISO 7064 MOD 11-2 check character. Fake, but well formed.
fn cn_id(rng: &mut Rng, region: u32, born: i64) -> String {
    let (y, m, d) = civil_from_days(born);
    let body = format!("{region:06}{y:04}{m:02}{d:02}{:03}", rng.range(1, 1000));
    const W: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    let sum: u32 = body
        .bytes()
        .zip(W)
        .map(|(c, w)| (c - b'0') as u32 * w)
        .sum();
    let check = b"10X98765432"[(sum % 11) as usize] as char;
    format!("{body}{check}")
}

/// A national identity number in the format of a European country, with its
/// check digit. Fake, but well formed.
fn eu_id(rng: &mut Rng, country: Country, born: i64) -> String {
    let (y, m, d) = civil_from_days(born);
    match country {
        Country::De => {
            // Identity card number: 9 characters, check digit (weights 7,3,1).
            const CH: &[u8] = b"CFGHJKLMNPRTVWXYZ0123456789";
            let mut s = String::with_capacity(10);
            s.push(*rng.pick(&CH[..17]) as char);
            for _ in 0..8 {
                s.push(*rng.pick(CH) as char);
            }
            let sum: u32 = s
                .bytes()
                .zip([7u32, 3, 1].iter().cycle())
                .map(|(c, w)| {
                    let v = if c.is_ascii_digit() {
                        (c - b'0') as u32
                    } else {
                        (c - b'A') as u32 + 10
                    };
                    v * w
                })
                .sum();
            let _ = write!(s, "{}", sum % 10);
            s
        }
        Country::Fr => {
            // NIR: sex, year, month, department, commune, order, key (97 - n mod 97).
            let n: u64 = rng.range(1, 3) as u64 * 1_000_000_000_000
                + (y % 100) as u64 * 10_000_000_000
                + m as u64 * 100_000_000
                + rng.range(1, 96) as u64 * 1_000_000
                + rng.range(1, 990) as u64 * 1_000
                + rng.range(1, 999) as u64;
            format!("{n:013}{:02}", 97 - n % 97)
        }
        Country::Es => {
            let n = rng.range(10_000_000, 99_999_999);
            let letter = b"TRWAGMYFPDXBNJZSQVHLCKE"[(n % 23) as usize] as char;
            format!("{n:08}{letter}")
        }
        Country::It => {
            // Electronic identity card number: CA 12345 AB.
            let l = |rng: &mut Rng| (b'A' + rng.below(26) as u8) as char;
            format!(
                "C{}{:05}{}{}",
                l(rng),
                rng.range(0, 100_000),
                l(rng),
                l(rng)
            )
        }
        Country::Nl => loop {
            // BSN with the eleven test.
            let mut digits = [0u32; 9];
            for dgt in digits.iter_mut().take(8) {
                *dgt = rng.below(10) as u32;
            }
            digits[0] = digits[0].max(1);
            let sum: u32 = digits[..8]
                .iter()
                .zip((2..=9).rev())
                .map(|(a, w)| a * w)
                .sum();
            let last = sum % 11;
            if last < 10 {
                digits[8] = last;
                return digits.iter().map(|d| char::from(b'0' + *d as u8)).collect();
            }
        },
        Country::Pl => {
            // PESEL: yymmdd (month + 20 after 1999), serial, check digit.
            let mm = if y >= 2000 { m + 20 } else { m };
            let body = format!("{:02}{mm:02}{d:02}{:04}", y % 100, rng.range(0, 10_000));
            const W: [u32; 10] = [1, 3, 7, 9, 1, 3, 7, 9, 1, 3];
            let sum: u32 = body
                .bytes()
                .zip(W)
                .map(|(c, w)| (c - b'0') as u32 * w)
                .sum();
            format!("{body}{}", (10 - sum % 10) % 10)
        }
        Country::Se | Country::Cn => {
            // Personnummer YYMMDD-NNNC with the Luhn check digit.
            let body = format!("{:02}{m:02}{d:02}{:03}", y % 100, rng.range(0, 1000));
            let sum: u32 = body
                .bytes()
                .enumerate()
                .map(|(i, c)| {
                    let v = (c - b'0') as u32 * if i % 2 == 0 { 2 } else { 1 };
                    v / 10 + v % 10
                })
                .sum();
            format!("{}-{}{}", &body[..6], &body[6..], (10 - sum % 10) % 10)
        }
    }
}

fn eu_address(rng: &mut Rng, country: Country) -> String {
    let e = country.europe();
    let street = rng.pick(e.streets);
    let (city, pc) = *rng.pick(e.cities);
    let no = rng.range(1, 180);
    match country {
        Country::Fr => format!("{no} {street}, {pc:02}{:03} {city}", rng.range(0, 1000)),
        Country::Nl => format!(
            "{street} {no}, {pc:02}{:02} {}{} {city}",
            rng.range(10, 100),
            (b'A' + rng.below(26) as u8) as char,
            (b'A' + rng.below(26) as u8) as char
        ),
        Country::Pl => format!("{street} {no}, {pc:02}-{:03} {city}", rng.range(0, 1000)),
        Country::Se => format!(
            "{street} {no}, {pc:02}{} {:02} {city}",
            rng.range(0, 10),
            rng.range(0, 100)
        ),
        _ => format!("{street} {no}, {pc:02}{:03} {city}", rng.range(0, 1000)),
    }
}

const SEGMENTS: &[&str] = &["consumer", "prepaid", "business", "enterprise", "vip"];
const SEGMENT_WEIGHTS: &[u32] = &[70, 12, 12, 3, 3];

/// Plans and their monthly fees.
const PLANS: &[(&str, f64)] = &[
    ("Prepaid Flex", 0.0),
    ("Basic 5GB", 9.99),
    ("Smart 20GB", 19.99),
    ("Family 50GB", 34.5),
    ("Unlimited 5G", 39.99),
    ("Business Pro", 59.0),
    ("IoT Data 1GB", 2.5),
];
const PLAN_WEIGHTS: &[u32] = &[10, 25, 30, 10, 15, 7, 3];

const CHANNELS: &[&str] = &["phone", "web", "app", "shop", "email", "chat"];
const TICKET_CN: &[&str] = &[
    "话费账单有疑问",
    "家中信号差，通话经常中断",
    "申请更换套餐",
    "国际漫游无法使用",
    "SIM卡丢失，申请补办",
    "移动数据网速慢",
    "投诉不明增值业务扣费",
    "携号转网咨询",
    "宽带故障报修",
    "发票开具申请",
];
const TICKET_EN: &[&str] = &[
    "Billing query about the last invoice",
    "No signal at home address, calls drop",
    "Plan change request",
    "Roaming not working abroad",
    "SIM card lost, replacement requested",
    "Slow mobile data in the evening",
    "Complaint about premium SMS charges",
    "Number porting question",
    "eSIM activation failed",
    "Request for a copy of the contract",
];

// ---------------------------------------------------------------------------
// Schema
// ---------------------------------------------------------------------------

const TABLES_SQL: &str = "
CREATE TABLE settings(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE customers(
    id INTEGER PRIMARY KEY,
    name TEXT,
    name_latin TEXT,
    id_number TEXT NOT NULL,
    email TEXT,
    phone TEXT,
    address TEXT,
    segment TEXT,
    created_at TEXT,
    closed_at TEXT
);
CREATE TABLE subscriptions(
    id INTEGER PRIMARY KEY,
    customer_id INTEGER REFERENCES customers(id),
    msisdn TEXT UNIQUE,
    plan TEXT,
    monthly_fee REAL,
    started_at TEXT,
    ended_at TEXT
);
CREATE TABLE tickets(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    customer_id INTEGER,
    opened_at TEXT,
    status TEXT,
    channel TEXT,
    summary TEXT
);
CREATE TABLE ticket_history(
    id INTEGER PRIMARY KEY,
    ticket_id INTEGER NOT NULL,
    customer_id INTEGER NOT NULL,
    changed_at TEXT NOT NULL,
    old_status TEXT,
    new_status TEXT NOT NULL
);
CREATE TABLE cdrs(
    id INTEGER PRIMARY KEY,
    customer_id INTEGER NOT NULL,
    started_at TEXT NOT NULL,
    duration_s INTEGER,
    kind TEXT,
    callee TEXT,
    cell_id INTEGER,
    bytes_up INTEGER,
    bytes_down INTEGER,
    cost REAL
);
";

/// Indexes, view and trigger: created after the bulk load (faster to build
/// an index from sorted data than to maintain it row by row).
const POST_LOAD_SQL: [&str; 6] = [
    "CREATE INDEX cdrs_customer_time ON cdrs(customer_id, started_at)",
    "CREATE INDEX subscriptions_customer ON subscriptions(customer_id)",
    "CREATE INDEX tickets_customer ON tickets(customer_id)",
    "CREATE INDEX ticket_history_ticket ON ticket_history(ticket_id)",
    "CREATE VIEW active_customers AS
    SELECT c.id, c.name, c.name_latin, c.segment, count(s.id) AS active_subscriptions
    FROM customers c JOIN subscriptions s ON s.customer_id = c.id AND s.ended_at IS NULL
    WHERE c.closed_at IS NULL
    GROUP BY c.id",
    "CREATE TRIGGER tickets_status_history AFTER UPDATE OF status ON tickets
    WHEN NEW.status IS NOT OLD.status
BEGIN
    INSERT INTO ticket_history(ticket_id, customer_id, changed_at, old_status, new_status)
    VALUES (NEW.id, NEW.customer_id,
            COALESCE((SELECT value FROM settings WHERE key = 'clock'), NEW.opened_at),
            OLD.status, NEW.status);
END",
];

/// The data tables, in the order [`MutateStats`] counts them.
pub const DATA_TABLES: [&str; 5] = [
    "customers",
    "subscriptions",
    "tickets",
    "ticket_history",
    "cdrs",
];

// ---------------------------------------------------------------------------
// generate
// ---------------------------------------------------------------------------

/// What the CDR generator remembers about a customer.
struct CustUse {
    id: i64,
    country: Country,
    /// First and last day (day numbers) on which the customer can make calls.
    from_day: i64,
    until_day: i64,
    home_cell: i64,
}

/// Creates a NEW SQLite database (refuses an existing path) with
/// deterministic content for a seed.
///
/// The content depends only on `size` and `seed`. The file is written in one
/// transaction with journaling and syncing off (it is a fresh file: a crash
/// leaves garbage, which is removed on error). Phases are reported through
/// `progress`.
pub fn generate(
    path: &Path,
    size: DemoSize,
    seed: u64,
    progress: &dyn Progress,
) -> Result<GenStats, DemoError> {
    // Create the file atomically so an existing path is never touched.
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(DemoError::Exists {
                path: path.to_path_buf(),
            })
        }
        Err(source) => {
            return Err(DemoError::Io {
                what: "create",
                path: path.to_path_buf(),
                source,
            })
        }
    }
    let result = generate_into(path, size, seed, progress);
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
}

fn generate_into(
    path: &Path,
    size: DemoSize,
    seed: u64,
    progress: &dyn Progress,
) -> Result<GenStats, DemoError> {
    let sq = |what: &'static str| {
        let path = path.to_path_buf();
        move |source| DemoError::Sqlite { what, path, source }
    };
    let mut conn = Connection::open(path).map_err(sq("opening the new database"))?;
    conn.execute_batch(
        "PRAGMA journal_mode = OFF;
         PRAGMA synchronous = OFF;
         PRAGMA cache_size = -131072;
         PRAGMA temp_store = MEMORY;
         PRAGMA threads = 2;",
    )
    .map_err(sq("setting load pragmas"))?;
    let mut stats = GenStats::default();
    let tx = conn.transaction().map_err(sq("starting the load"))?;
    tx.execute_batch(TABLES_SQL)
        .map_err(sq("creating the tables"))?;
    let now = reference_secs();
    tx.execute(
        "INSERT INTO settings(key, value) VALUES ('clock', ?1), ('reference_date', ?2), ('generator_seed', ?3)",
        params![Ts::new(now).as_str(), REFERENCE_DATE, seed.to_string()],
    )
    .map_err(sq("writing settings"))?;

    let n_customers = size.customers();
    let customers = gen_customers(&tx, seed, n_customers, progress, &mut stats)
        .map_err(sq("writing customers, subscriptions and tickets"))?;
    let n_cdrs = n_customers * CDRS_PER_CUSTOMER;
    stats.cdrs = gen_cdrs(&tx, seed, &customers, n_cdrs, progress).map_err(sq("writing cdrs"))?;

    progress.phase(
        "building indexes",
        Some(POST_LOAD_SQL.len() as u64),
        "statements",
    );
    for stmt in POST_LOAD_SQL {
        tx.execute_batch(stmt)
            .map_err(sq("creating indexes, view and trigger"))?;
        progress.advance(1);
    }
    tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION};"))
        .map_err(sq("setting user_version"))?;
    progress.finish_phase();
    tx.commit().map_err(sq("committing the load"))?;
    conn.close().map_err(|(_, e)| sq("closing")(e))?;

    stats.bytes = std::fs::metadata(path)
        .map_err(|source| DemoError::Io {
            what: "measure",
            path: path.to_path_buf(),
            source,
        })?
        .len();
    Ok(stats)
}

/// A subscription row before it is written: id, msisdn, plan, fee, start, end.
type SubRow = (i64, String, &'static str, f64, i64, Option<i64>);

fn gen_customers(
    tx: &Connection,
    seed: u64,
    n: u64,
    progress: &dyn Progress,
    stats: &mut GenStats,
) -> rusqlite::Result<Vec<(CustUse, u32)>> {
    let mut rng = Rng::new(seed, 1);
    let now = reference_secs();
    let now_day = now / DAY;
    let mut ins_c = tx.prepare(
        "INSERT INTO customers(id, name, name_latin, id_number, email, phone, address, segment, created_at, closed_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    let mut ins_s = tx.prepare(
        "INSERT INTO subscriptions(id, customer_id, msisdn, plan, monthly_fee, started_at, ended_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    let mut ins_t = tx.prepare(
        "INSERT INTO tickets(customer_id, opened_at, status, channel, summary) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    let mut ins_h = tx.prepare(
        "INSERT INTO ticket_history(ticket_id, customer_id, changed_at, old_status, new_status)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    progress.phase("generating customers", Some(n), "customers");
    let mut out = Vec::with_capacity(n as usize);
    let mut sub_id: u64 = 0;
    let mut msisdn = String::new();
    let mut subs: Vec<SubRow> = Vec::new();
    for id in 1..=n as i64 {
        let country = if rng.chance(0.5) {
            Country::Cn
        } else {
            *rng.pick(&EUROPE)
        };
        let p = person(&mut rng, country);
        let segment = SEGMENTS[rng.weighted(SEGMENT_WEIGHTS)];
        // Customers joined over the last 12 years, more of them recently.
        let age_days = ((1.0 - rng.unit().sqrt()) * (12.0 * 365.0)) as i64 + 30;
        let created = now - age_days * DAY + rng.range(8 * 3600, 20 * 3600);
        let closed = if created + 31 * DAY < now - 3600 && rng.chance(0.06) {
            Some(rng.range(created + 30 * DAY, now - 3600))
        } else {
            None
        };

        // Subscriptions: most have one, businesses several.
        let n_subs = match segment {
            "business" | "enterprise" => rng.range(1, 7),
            _ if rng.chance(0.25) => rng.range(2, 4),
            _ => 1,
        };
        subs.clear();
        for k in 0..n_subs {
            sub_id += 1;
            country.msisdn(sub_id, &mut msisdn);
            let (plan, fee) = PLANS[rng.weighted(PLAN_WEIGHTS)];
            let started = if k == 0 {
                created
            } else {
                rng.range(created, closed.unwrap_or(now))
            };
            let ended = match closed {
                Some(c) => Some(c),
                None if k > 0 && rng.chance(0.2) => Some(rng.range(started, now)),
                None => None,
            };
            subs.push((sub_id as i64, msisdn.clone(), plan, fee, started, ended));
        }
        let phone = format_phone(country, &subs[0].1);
        ins_c.execute(params![
            id,
            p.name,
            p.name_latin,
            p.id_number,
            p.email,
            phone,
            p.address,
            segment,
            Ts::new(created).as_str(),
            closed.map(Ts::new).as_ref().map(Ts::as_str),
        ])?;
        for (sid, number, plan, fee, started, ended) in &subs {
            ins_s.execute(params![
                sid,
                id,
                number,
                plan,
                fee,
                Ts::new(*started).as_str(),
                ended.map(Ts::new).as_ref().map(Ts::as_str),
            ])?;
            stats.subscriptions += 1;
        }

        // Tickets over the last three years of the customer's life.
        let n_tickets = match rng.below(100) {
            0..=34 => 0,
            35..=69 => 1,
            70..=89 => 2,
            _ => rng.range(3, 8),
        };
        let end = closed.unwrap_or(now);
        let start = created.max(now - 3 * 365 * DAY);
        for _ in 0..n_tickets {
            if end - start < 3600 {
                break;
            }
            let opened = rng.range(start, end);
            let age = now - opened;
            let status = if age > 30 * DAY {
                [
                    "closed", "closed", "closed", "closed", "resolved", "pending",
                ][rng.below(6) as usize]
            } else {
                ["open", "open", "pending", "resolved"][rng.below(4) as usize]
            };
            let summary = if country == Country::Cn {
                rng.pick(TICKET_CN)
            } else {
                rng.pick(TICKET_EN)
            };
            let channel = rng.pick(CHANNELS);
            ins_t.execute(params![
                id,
                Ts::new(opened).as_str(),
                status,
                channel,
                summary
            ])?;
            let ticket_id = tx.last_insert_rowid();
            stats.tickets += 1;
            // The path the ticket took to its status (kept for half a year).
            let path: &[&str] = match status {
                _ if age > 180 * DAY => &[],
                "pending" => &["pending"],
                "resolved" => &["pending", "resolved"],
                "closed" => &["pending", "resolved", "closed"],
                _ => &[],
            };
            let mut at = opened;
            let mut old = "open";
            for &new in path {
                at = (at + rng.range(600, 5 * DAY)).min(now - 60);
                ins_h.execute(params![ticket_id, id, Ts::new(at).as_str(), old, new])?;
                stats.ticket_history += 1;
                old = new;
            }
        }

        // Usage weight: Pareto-like heavy tail, businesses use more.
        let mut w = (1.0 - rng.unit()).powf(-1.0 / 1.3).min(300.0);
        if segment == "business" || segment == "enterprise" {
            w *= 2.0;
        }
        let from_day = created.div_euclid(DAY);
        let until_day = closed.map(|c| c.div_euclid(DAY)).unwrap_or(now_day);
        out.push((
            CustUse {
                id,
                country,
                from_day,
                until_day,
                home_cell: 100_000 + rng.range(0, 60_000),
            },
            (w * 100.0) as u32,
        ));
        stats.customers += 1;
        if (id as u64).is_multiple_of(PROGRESS_EVERY) {
            progress.advance(PROGRESS_EVERY);
        }
    }
    progress.advance(n % PROGRESS_EVERY);
    progress.finish_phase();
    Ok(out)
}

/// Display form of an E.164 number: `+CC`, three digits, then groups of
/// three or four (`+86 138 1234 5678`, `+49 151 234 567 890`).
fn format_phone(country: Country, msisdn: &str) -> String {
    let cc = country.calling_code();
    let rest = msisdn.get(cc.len()..).unwrap_or("");
    let (head, mut tail) = rest.split_at(rest.len().min(3));
    let mut out = format!("+{cc} {head}");
    while !tail.is_empty() {
        let n = if tail.len() % 4 == 0 {
            4
        } else {
            3.min(tail.len())
        };
        out.push(' ');
        out.push_str(&tail[..n]);
        tail = &tail[n..];
    }
    out
}

/// Relative call volume by hour of day (UTC; the demo does not model zones).
#[rustfmt::skip]
const HOUR_WEIGHTS: [u32; 24] = [
    2, 1, 1, 1, 1, 2, 4, 7, 10, 11, 11, 11, 12, 11, 11, 11, 11, 12, 12, 12, 11, 9, 6, 4,
];

fn gen_cdrs(
    tx: &Connection,
    seed: u64,
    customers: &[(CustUse, u32)],
    total: u64,
    progress: &dyn Progress,
) -> rusqlite::Result<u64> {
    let mut rng = Rng::new(seed, 2);
    let now_day = reference_secs() / DAY;
    let first_day = now_day - 365;
    // Cumulative usage weights for sampling a customer.
    let mut cumulative = Vec::with_capacity(customers.len());
    let mut acc: u64 = 0;
    for (c, w) in customers {
        let active = c.until_day > first_day;
        acc += if active { (*w).max(1) as u64 } else { 0 };
        cumulative.push(acc);
    }
    if acc == 0 {
        return Ok(0);
    }
    // Daily volumes: weekdays busier, a slow growth over the year.
    let day_weight = |d: i64| -> f64 {
        let dow = (d + 3).rem_euclid(7); // 0 = Monday
        let week = if dow >= 5 { 0.8 } else { 1.05 };
        week * (0.9 + 0.2 * (d - first_day) as f64 / 365.0)
    };
    let sum_w: f64 = (first_day..now_day).map(day_weight).sum();
    let mut hour_cum = [0u32; 24];
    let mut h_acc = 0;
    for (i, w) in HOUR_WEIGHTS.iter().enumerate() {
        h_acc += w;
        hour_cum[i] = h_acc;
    }

    let mut ins = tx.prepare(
        "INSERT INTO cdrs(id, customer_id, started_at, duration_s, kind, callee, cell_id, bytes_up, bytes_down, cost)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    progress.phase("generating call records", Some(total), "records");
    let mut day_buf: Vec<(u32, u32)> = Vec::new();
    let mut callee = String::new();
    let mut id: i64 = 0;
    let mut done_w = 0.0;
    let mut planned: u64 = 0;
    let mut since_report = 0u64;
    for day in first_day..now_day {
        done_w += day_weight(day);
        let target = ((done_w / sum_w) * total as f64).round() as u64;
        let n_today = target.saturating_sub(planned);
        planned = target;
        day_buf.clear();
        for _ in 0..n_today {
            let mut chosen = None;
            for _ in 0..16 {
                let x = rng.below(acc);
                let i = cumulative.partition_point(|&c| c <= x);
                let c = &customers[i].0;
                if c.from_day <= day && day < c.until_day {
                    chosen = Some(i);
                    break;
                }
            }
            let Some(i) = chosen else { continue };
            let hx = rng.below(h_acc as u64) as u32;
            let hour = hour_cum.partition_point(|&c| c <= hx) as u32;
            let sec = hour * 3600 + rng.below(3600) as u32;
            day_buf.push((sec, i as u32));
        }
        day_buf.sort_unstable();
        let day_start = day * DAY;
        for &(sec, i) in &day_buf {
            let c = &customers[i as usize].0;
            id += 1;
            let started = Ts::new(day_start + sec as i64);
            let r = cdr_fields(&mut rng, c.id, c.country, c.home_cell, &mut callee);
            ins.execute(params![
                id,
                c.id,
                started.as_str(),
                r.duration,
                r.kind,
                r.callee.then_some(callee.as_str()),
                r.cell,
                r.up,
                r.down,
                r.cost
            ])?;
            since_report += 1;
            if since_report == PROGRESS_EVERY {
                progress.advance(since_report);
                since_report = 0;
            }
        }
    }
    progress.advance(since_report);
    progress.finish_phase();
    Ok(id as u64)
}

/// The random part of one CDR.
struct CdrFields {
    duration: i64,
    kind: &'static str,
    /// Whether `callee` (the buffer) holds the called number.
    callee: bool,
    cell: i64,
    up: i64,
    down: i64,
    cost: f64,
}

fn cdr_fields(
    rng: &mut Rng,
    customer: i64,
    country: Country,
    home_cell: i64,
    callee: &mut String,
) -> CdrFields {
    let cell = if rng.chance(0.7) {
        home_cell
    } else {
        100_000 + rng.range(0, 60_000)
    };
    let k = rng.below(100);
    let round = |x: f64| (x * 10_000.0).round() / 10_000.0;
    if (35..80).contains(&k) {
        // Data session: log-uniform volume from 10 kB to 500 MB.
        let down = (9.21 + rng.unit() * 10.61).exp() as i64;
        let up = down / rng.range(4, 20);
        let duration = rng.range(5, 3600);
        let cost = round((down + up) as f64 / 1_048_576.0 * 0.002);
        return CdrFields {
            duration,
            kind: "data",
            callee: false,
            cell,
            up,
            down,
            cost,
        };
    }
    // A few favourite contacts make up most calls and messages.
    let international = rng.chance(0.04);
    let callee_country = if international {
        if country == Country::Cn {
            *rng.pick(&EUROPE)
        } else {
            Country::Cn
        }
    } else {
        country
    };
    let n = if rng.chance(0.6) {
        mix64(customer as u64 * 16 + rng.below(8))
    } else {
        rng.next()
    };
    callee_country.msisdn(n % 1_000_000_000 + 1_000_000_000, callee);
    if k < 35 {
        // Voice: mostly short, a long tail.
        let duration = ((-(1.0 - rng.unit()).ln()) * 140.0) as i64 + 1;
        let duration = duration.min(7_200);
        let per_min = if international { 0.49 } else { 0.05 };
        let cost = round(((duration + 59) / 60) as f64 * per_min);
        CdrFields {
            duration,
            kind: "voice",
            callee: true,
            cell,
            up: 0,
            down: 0,
            cost,
        }
    } else {
        let cost = if international { 0.19 } else { 0.08 };
        CdrFields {
            duration: 0,
            kind: "sms",
            callee: true,
            cell,
            up: 0,
            down: 0,
            cost,
        }
    }
}

// ---------------------------------------------------------------------------
// mutate
// ---------------------------------------------------------------------------

/// Changes about `fraction` of all rows (0.01 = 1%): updates spread across
/// customers (addresses, phone numbers, plan changes, ticket statuses, a few
/// CDR corrections), new call records in the latest month (most of the
/// change), some deletions (closed tickets). Deterministic for a seed.
///
/// One call is one business day: the new CDRs fall on the day after the
/// latest CDR (so successive calls move forward, into a new month when the
/// day crosses one), and the business clock (`settings.clock`) moves to that
/// day. The outcome depends only on the database content and `seed`. Of the
/// changed rows about 70% are new CDRs, 2% new tickets, 25% updates (customers
/// 8%, subscriptions 6%, tickets 6% plus their history rows, CDR corrections
/// 3%), and up to 5% deletions of tickets closed more than a year ago (with
/// their history). Everything happens in one transaction.
pub fn mutate(path: &Path, fraction: f64, seed: u64) -> Result<MutateStats, DemoError> {
    if fraction.is_nan() || fraction <= 0.0 || fraction > 0.5 {
        return Err(DemoError::InvalidFraction { fraction });
    }
    let sq = |what: &'static str| {
        let path = path.to_path_buf();
        move |source| DemoError::Sqlite { what, path, source }
    };
    if !path.is_file() {
        return Err(DemoError::Io {
            what: "open",
            path: path.to_path_buf(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
    }
    let mut conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)
        .map_err(sq("opening the database"))?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sq("reading user_version"))?;
    let tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN
             ('settings', 'customers', 'subscriptions', 'tickets', 'ticket_history', 'cdrs')",
            [],
            |r| r.get(0),
        )
        .map_err(sq("reading the schema"))?;
    if version != SCHEMA_VERSION || tables != 6 {
        return Err(DemoError::NotDemo {
            path: path.to_path_buf(),
            found: version,
        });
    }
    let tx = conn.transaction().map_err(sq("starting the change"))?;
    let stats = mutate_in(&tx, fraction, seed).map_err(sq("changing rows"))?;
    tx.commit().map_err(sq("committing the change"))?;
    Ok(stats)
}

fn mutate_in(tx: &Connection, fraction: f64, seed: u64) -> rusqlite::Result<MutateStats> {
    let mut stats = MutateStats::default();
    let count = |t: &str| -> rusqlite::Result<u64> {
        tx.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| {
            r.get::<_, i64>(0)
        })
        .map(|n| n as u64)
    };
    let mut rows = 0;
    for t in DATA_TABLES {
        rows += count(t)?;
    }
    let max_cdr: i64 = tx.query_row("SELECT coalesce(max(id), 0) FROM cdrs", [], |r| r.get(0))?;
    // Mixing the content in makes successive days differ under one seed.
    let mut rng = Rng::new(seed ^ mix64(rows ^ (max_cdr as u64).rotate_left(32)), 3);
    let changes = ((rows as f64) * fraction).round().max(1.0) as u64;
    let share = |p: f64| ((changes as f64) * p).round() as u64;

    // The new business day: the day after the latest CDR.
    let last_at: Option<String> = tx
        .query_row(
            "SELECT started_at FROM cdrs ORDER BY id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()?;
    let last_secs = last_at
        .as_deref()
        .and_then(parse_ts)
        .unwrap_or_else(reference_secs);
    let day_start = (last_secs.div_euclid(DAY) + 1) * DAY;
    let day = Ts::new(day_start);
    let clock = Ts::new(day_start + 12 * 3600);
    tx.execute(
        "INSERT OR REPLACE INTO settings(key, value) VALUES ('clock', ?1)",
        params![clock.as_str()],
    )?;

    // Customers no longer able to call.
    let closed: BTreeSet<i64> = {
        let mut st =
            tx.prepare("SELECT id FROM customers WHERE closed_at IS NOT NULL AND closed_at < ?1")?;
        let ids = st.query_map(params![day.as_str()], |r| r.get(0))?;
        ids.collect::<rusqlite::Result<_>>()?
    };
    let latest_month_start = {
        let (y, m, _) = civil_from_days(last_secs.div_euclid(DAY));
        days_from_civil(y, m, 1) * DAY
    };
    let first_latest = first_cdr_at_or_after(tx, latest_month_start, max_cdr)?;

    // 1. CDR corrections (re-rated costs) in the latest month, before inserts.
    let n_fix = share(0.03);
    if max_cdr > 0 {
        let mut picked = BTreeSet::new();
        let mut tries = 0;
        while (picked.len() as u64) < n_fix && tries < n_fix * 10 + 10 {
            tries += 1;
            picked.insert(rng.range(first_latest, max_cdr + 1));
        }
        let mut upd = tx.prepare(
            "UPDATE cdrs SET cost = CASE WHEN round(cost * ?2, 4) = cost THEN round(cost + 0.01, 4)
                                         ELSE round(cost * ?2, 4) END
             WHERE id = ?1",
        )?;
        for id in picked {
            let factor = [0.0, 0.5, 0.9, 1.1][rng.below(4) as usize];
            stats.updated += upd.execute(params![id, factor])? as u64;
        }
    }

    // 2. New CDRs for the day, for customers active in the latest month
    //    (sampling existing records keeps the heavy tail).
    let n_new = share(0.70);
    if max_cdr > 0 && n_new > 0 {
        let mut who = tx.prepare("SELECT customer_id FROM cdrs WHERE id = ?1")?;
        let mut phone = tx.prepare("SELECT phone FROM customers WHERE id = ?1")?;
        let mut cell = tx.prepare(
            "SELECT cell_id FROM cdrs WHERE customer_id = ?1 ORDER BY started_at DESC LIMIT 1",
        )?;
        let mut known: BTreeMap<i64, (Country, i64)> = BTreeMap::new();
        let mut new_rows: Vec<(u32, i64)> = Vec::with_capacity(n_new as usize);
        let mut tries = 0;
        while (new_rows.len() as u64) < n_new && tries < n_new * 4 {
            tries += 1;
            let Some(cust) = who
                .query_row(params![rng.range(first_latest, max_cdr + 1)], |r| {
                    r.get::<_, i64>(0)
                })
                .optional()?
            else {
                continue;
            };
            if closed.contains(&cust) {
                continue;
            }
            let hx = rng.below(HOUR_WEIGHTS.iter().sum::<u32>() as u64) as u32;
            let mut acc = 0;
            let hour = HOUR_WEIGHTS
                .iter()
                .position(|&w| {
                    acc += w;
                    hx < acc
                })
                .unwrap_or(12) as u32;
            new_rows.push((hour * 3600 + rng.below(3600) as u32, cust));
        }
        new_rows.sort_unstable();
        let mut ins = tx.prepare(
            "INSERT INTO cdrs(customer_id, started_at, duration_s, kind, callee, cell_id, bytes_up, bytes_down, cost)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        let mut callee = String::new();
        for (sec, cust) in new_rows {
            let (country, home_cell) = match known.get(&cust) {
                Some(v) => *v,
                None => {
                    let p: Option<String> = phone
                        .query_row(params![cust], |r| r.get(0))
                        .optional()?
                        .flatten();
                    let c = Country::from_phone(p.as_deref().unwrap_or(""));
                    let h: i64 = cell
                        .query_row(params![cust], |r| r.get(0))
                        .optional()?
                        .flatten()
                        .unwrap_or(100_000);
                    known.insert(cust, (c, h));
                    (c, h)
                }
            };
            let r = cdr_fields(&mut rng, cust, country, home_cell, &mut callee);
            stats.inserted += ins.execute(params![
                cust,
                Ts::new(day_start + sec as i64).as_str(),
                r.duration,
                r.kind,
                r.callee.then_some(callee.as_str()),
                r.cell,
                r.up,
                r.down,
                r.cost
            ])? as u64;
        }
    }

    let n_customers: i64 = tx.query_row("SELECT coalesce(max(id), 0) FROM customers", [], |r| {
        r.get(0)
    })?;

    // 3. Customer updates: moves, new contact numbers, new e-mail addresses.
    let n_cust = share(0.08);
    if n_customers > 0 {
        let mut picked = BTreeSet::new();
        let mut tries = 0;
        while (picked.len() as u64) < n_cust && tries < n_cust * 10 + 10 {
            tries += 1;
            let id = rng.range(1, n_customers + 1);
            if !closed.contains(&id) {
                picked.insert(id);
            }
        }
        let mut get = tx.prepare("SELECT phone FROM customers WHERE id = ?1")?;
        for id in picked {
            let Some(phone) = get
                .query_row(params![id], |r| r.get::<_, Option<String>>(0))
                .optional()?
            else {
                continue;
            };
            let country = Country::from_phone(phone.as_deref().unwrap_or(""));
            let p = person(&mut rng, country);
            let (col, value) = match rng.below(10) {
                0..=4 => ("address", p.address),
                5..=7 => {
                    let mut m = String::new();
                    country.msisdn(rng.below(1_000_000_000) + 2_000_000_000, &mut m);
                    ("phone", format_phone(country, &m))
                }
                _ => ("email", p.email),
            };
            stats.updated += tx.execute(
                &format!("UPDATE customers SET {col} = ?2 WHERE id = ?1 AND {col} IS NOT ?2"),
                params![id, value],
            )? as u64;
        }
    }

    // 4. Subscription updates: plan changes, a few terminations.
    let n_subs = share(0.06);
    {
        let ids: Vec<i64> = {
            let mut st =
                tx.prepare("SELECT id FROM subscriptions WHERE ended_at IS NULL ORDER BY id")?;
            let v = st.query_map([], |r| r.get(0))?;
            v.collect::<rusqlite::Result<_>>()?
        };
        let mut current = tx.prepare("SELECT plan FROM subscriptions WHERE id = ?1")?;
        let mut plan_upd =
            tx.prepare("UPDATE subscriptions SET plan = ?2, monthly_fee = ?3 WHERE id = ?1")?;
        let mut end_upd = tx.prepare("UPDATE subscriptions SET ended_at = ?2 WHERE id = ?1")?;
        for id in sample(&mut rng, &ids, n_subs) {
            if rng.chance(0.1) {
                let at = Ts::new(day_start + rng.range(8 * 3600, 20 * 3600));
                stats.updated += end_upd.execute(params![id, at.as_str()])? as u64;
            } else {
                let old: Option<String> = current.query_row(params![id], |r| r.get(0))?;
                let mut i = rng.weighted(PLAN_WEIGHTS);
                if old.as_deref() == Some(PLANS[i].0) {
                    i = (i + 1) % PLANS.len();
                }
                let (plan, fee) = PLANS[i];
                stats.updated += plan_upd.execute(params![id, plan, fee])? as u64;
            }
        }
    }

    // 5. Deletions: tickets closed more than a year ago, with their history.
    let n_del = share(0.05);
    {
        let cutoff = Ts::new(day_start - 365 * DAY);
        let ids: Vec<i64> = {
            let mut st = tx.prepare(
                "SELECT id FROM tickets WHERE status = 'closed' AND opened_at < ?1 ORDER BY id",
            )?;
            let v = st.query_map(params![cutoff.as_str()], |r| r.get(0))?;
            v.collect::<rusqlite::Result<_>>()?
        };
        let mut del_h = tx.prepare("DELETE FROM ticket_history WHERE ticket_id = ?1")?;
        let mut del_t = tx.prepare("DELETE FROM tickets WHERE id = ?1")?;
        let mut deleted = 0;
        for id in sample(&mut rng, &ids, n_del) {
            if deleted >= n_del {
                break;
            }
            let n = del_h.execute(params![id])? + del_t.execute(params![id])?;
            deleted += n as u64;
            stats.deleted += n as u64;
        }
    }

    // 6. Ticket status progress (the trigger writes the history rows).
    let n_tkt = share(0.06);
    {
        let ids: Vec<i64> = {
            let mut st =
                tx.prepare("SELECT id FROM tickets WHERE status <> 'closed' ORDER BY id")?;
            let v = st.query_map([], |r| r.get(0))?;
            v.collect::<rusqlite::Result<_>>()?
        };
        let mut upd = tx.prepare(
            "UPDATE tickets SET status = CASE status
                 WHEN 'open' THEN 'pending' WHEN 'pending' THEN 'resolved' ELSE 'closed' END
             WHERE id = ?1",
        )?;
        // Each change is two rows: the ticket and its history row.
        for id in sample(&mut rng, &ids, n_tkt.div_ceil(2)) {
            let n = upd.execute(params![id])? as u64;
            stats.updated += n;
            stats.inserted += n; // the history row of the trigger
        }
    }

    // 7. New tickets opened today.
    let n_new_t = share(0.02);
    if n_customers > 0 {
        let mut get =
            tx.prepare("SELECT phone FROM customers WHERE id = ?1 AND closed_at IS NULL")?;
        let mut ins = tx.prepare(
            "INSERT INTO tickets(customer_id, opened_at, status, channel, summary) VALUES (?1, ?2, 'open', ?3, ?4)",
        )?;
        let mut opened: Vec<(i64, i64)> = Vec::new();
        let mut tries = 0;
        while (opened.len() as u64) < n_new_t && tries < n_new_t * 10 + 10 {
            tries += 1;
            let id = rng.range(1, n_customers + 1);
            if !closed.contains(&id) {
                opened.push((rng.range(7 * 3600, 22 * 3600), id));
            }
        }
        opened.sort_unstable();
        for (sec, id) in opened {
            let Some(phone) = get
                .query_row(params![id], |r| r.get::<_, Option<String>>(0))
                .optional()?
            else {
                continue;
            };
            let summary = if Country::from_phone(phone.as_deref().unwrap_or("")) == Country::Cn {
                rng.pick(TICKET_CN)
            } else {
                rng.pick(TICKET_EN)
            };
            let at = Ts::new(day_start + sec);
            stats.inserted +=
                ins.execute(params![id, at.as_str(), rng.pick(CHANNELS), summary])? as u64;
        }
    }
    Ok(stats)
}

/// Up to `k` distinct items of `ids`, in a seed-determined order.
fn sample(rng: &mut Rng, ids: &[i64], k: u64) -> Vec<i64> {
    let mut v = ids.to_vec();
    let k = (k as usize).min(v.len());
    for i in 0..k {
        let j = i + rng.below((v.len() - i) as u64) as usize;
        v.swap(i, j);
    }
    v.truncate(k);
    v
}

/// The id of the first CDR that started at or after `secs` (CDRs are stored
/// in time order); `max_id + 1` when there is none.
fn first_cdr_at_or_after(tx: &Connection, secs: i64, max_id: i64) -> rusqlite::Result<i64> {
    let target = Ts::new(secs);
    let mut at =
        tx.prepare("SELECT id, started_at FROM cdrs WHERE id >= ?1 ORDER BY id LIMIT 1")?;
    let (mut lo, mut hi) = (1i64, max_id + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let row: Option<(i64, String)> = at
            .query_row(params![mid], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        match row {
            Some((id, started)) if started.as_str() < target.as_str() => lo = id + 1,
            _ => hi = mid,
        }
    }
    Ok(lo.min(max_id.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        for secs in [0, 951_782_400, 1_773_619_200, 1_709_164_800 + 3_723] {
            let t = Ts::new(secs);
            assert_eq!(parse_ts(t.as_str()), Some(secs), "{}", t.as_str());
        }
        assert_eq!(Ts::new(reference_secs()).as_str(), "2026-03-16T00:00:00Z");
        assert_eq!(Ts::new(951_782_400).as_str(), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn id_numbers_are_well_formed() {
        let mut rng = Rng::new(7, 0);
        // A known valid Chinese identity number body: 11010519491231002 -> X.
        let id = {
            let body = "11010519491231002";
            const W: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
            let s: u32 = body
                .bytes()
                .zip(W)
                .map(|(c, w)| (c - b'0') as u32 * w)
                .sum();
            b"10X98765432"[(s % 11) as usize] as char
        };
        assert_eq!(id, 'X');
        for _ in 0..50 {
            let born = birth_day(&mut rng);
            let cn = cn_id(&mut rng, 110105, born);
            assert_eq!(cn.len(), 18);
            let es = eu_id(&mut rng, Country::Es, born);
            assert_eq!(es.len(), 9);
            let n: u64 = es[..8].parse().unwrap();
            assert_eq!(
                es.as_bytes()[8],
                b"TRWAGMYFPDXBNJZSQVHLCKE"[(n % 23) as usize]
            );
            let fr = eu_id(&mut rng, Country::Fr, born);
            let n: u64 = fr[..13].parse().unwrap();
            assert_eq!(fr[13..].parse::<u64>().unwrap(), 97 - n % 97);
            let nl = eu_id(&mut rng, Country::Nl, born);
            let d: Vec<i64> = nl.bytes().map(|c| (c - b'0') as i64).collect();
            let s: i64 = (0..8).map(|i| d[i] * (9 - i as i64)).sum::<i64>() - d[8];
            assert_eq!(s % 11, 0, "{nl}");
        }
    }

    #[test]
    fn msisdns_are_distinct() {
        let mut seen = BTreeSet::new();
        let mut s = String::new();
        for n in 0..20_000 {
            Country::Cn.msisdn(n, &mut s);
            assert!(seen.insert(s[4..].to_string()), "duplicate {s}");
        }
        assert_eq!(
            Country::from_phone(&format_phone(Country::Pl, "48501234567")),
            Country::Pl
        );
    }
}
