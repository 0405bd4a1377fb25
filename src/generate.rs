//! `convmart generate`: deterministic, realistic raw events.
//!
//! Every event is a pure function of (seed, day, index), so any event can be
//! regenerated on its own: that is how a re-delivery lands in the next day's
//! partition without keeping the previous day in memory. Traffic is skewed
//! (Zipf over campaigns and users), users come back over days (so touches
//! precede conversions), ~30% of conversions carry no UTM, and each day is
//! split over three files with different schemas (timestamp unit and zone,
//! integer vs double revenue, a missing optional column, an extra column).

use crate::error::{Error, Result};
use crate::input::partition_dir;
use crate::storage::Location;
use chrono::{NaiveDate, NaiveTime};
use datafusion::arrow::array::{
    ArrayRef, Float64Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
    TimestampMillisecondBuilder, TimestampNanosecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use object_store::buffered::BufWriter;
use parquet::arrow::async_writer::AsyncArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use std::sync::Arc;
use tracing::info;

const SOURCES: [(&str, &str); 8] = [
    ("google", "cpc"),
    ("facebook", "paid_social"),
    ("linkedin", "paid_social"),
    ("tiktok", "paid_social"),
    ("bing", "cpc"),
    ("newsletter", "email"),
    ("criteo", "display"),
    ("partner_hub", "affiliate"),
];
const THEMES: [&str; 10] = [
    "spring_sale",
    "brand",
    "retargeting",
    "webinar",
    "free_trial",
    "black_friday",
    "product_launch",
    "summer_promo",
    "b2b_leads",
    "app_install",
];
const TERMS: [&str; 6] = [
    "crm software",
    "buy running shoes",
    "best laptop",
    "demo booking",
    "discount code",
    "pricing",
];
const DEVICES: [(&str, u32); 4] = [("desktop", 50), ("mobile", 40), ("tablet", 8), ("", 2)];
const COUNTRIES: [(&str, u32); 12] = [
    ("US", 30),
    ("DE", 12),
    ("GB", 10),
    ("FR", 8),
    ("NL", 5),
    ("ES", 5),
    ("IT", 5),
    ("BR", 6),
    ("IN", 8),
    ("JP", 5),
    ("CA", 5),
    ("AU", 1),
];
/// (event_type, weight per 1000, is a conversion of the shipped rules)
const EVENT_TYPES: [(&str, u32, bool); 17] = [
    ("page_view", 450, false),
    ("ad_click", 150, false),
    ("search", 60, false),
    ("add_to_cart", 55, false),
    ("newsletter_signup", 25, true),
    ("email_signup", 10, true),
    ("social_like", 30, true),
    ("social_share", 15, true),
    ("social_follow", 10, true),
    ("video_complete", 30, true),
    ("wishlist_add", 20, true),
    ("purchase", 25, true),
    ("demo_request", 7, true),
    ("consultation_request", 3, true),
    ("phone_call", 5, true),
    ("login", 60, false),
    ("scroll", 45, false),
];
const CAMPAIGNS: usize = 240;

/// A small, fast, seedable generator (SplitMix64): no dependency, same output on every platform.
#[derive(Clone)]
struct Rng(u64);
impl Rng {
    fn for_event(seed: u64, day: u64, index: u64) -> Rng {
        let mut r = Rng(seed
            ^ day.wrapping_mul(0xA24B_AED4_963E_E407)
            ^ index.wrapping_mul(0x9FB2_1C65_1E98_DF25));
        r.next();
        r
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
    fn weighted<T: Copy>(&mut self, items: &[(T, u32)]) -> T {
        let total: u32 = items.iter().map(|(_, w)| w).sum();
        let mut x = self.below(total as u64) as u32;
        for (item, w) in items {
            if x < *w {
                return *item;
            }
            x -= w;
        }
        items[items.len() - 1].0
    }
    /// Zipf-like rank in 0..n: a few ranks get most draws.
    fn skewed(&mut self, n: u64, s: f64) -> u64 {
        let u = self.unit();
        ((n as f64).powf(u.powf(s)) as u64)
            .saturating_sub(1)
            .min(n - 1)
    }
}

struct Event {
    event_id: Option<String>,
    ts_us: Option<i64>,
    event_type: String,
    user_id: Option<String>,
    anonymous_id: Option<String>,
    utm: Option<[String; 5]>,
    device_type: Option<String>,
    country: Option<String>,
    revenue: Option<f64>,
    session_id: String,
}

fn campaign_utm(rng: &mut Rng, campaign: u64) -> [String; 5] {
    let (source, medium) = SOURCES[(campaign % SOURCES.len() as u64) as usize];
    let theme = THEMES[((campaign / SOURCES.len() as u64) % THEMES.len() as u64) as usize];
    let content = match rng.below(10) {
        0 => String::new(),
        n => format!("creative_{}", n % 4 + 1),
    };
    let term = if medium == "cpc" {
        TERMS[rng.below(TERMS.len() as u64) as usize].to_string()
    } else {
        String::new()
    };
    [
        source.to_string(),
        medium.to_string(),
        format!("{theme}_{campaign:03}"),
        content,
        term,
    ]
}

/// Flags that depend only on (seed, day, index), cheap to test without building the event.
fn redelivered_next_day(seed: u64, day: u64, index: u64) -> bool {
    Rng::for_event(seed ^ 0xD0_D0, day, index).below(1000) < 5
}
fn redelivered_same_day(seed: u64, day: u64, index: u64) -> bool {
    Rng::for_event(seed ^ 0xD1_D1, day, index).below(1000) < 10
}

fn make_event(seed: u64, start: NaiveDate, day: u64, index: u64, per_day: u64) -> Event {
    let mut rng = Rng::for_event(seed, day, index);
    let date = start + chrono::Days::new(day);
    let midnight = date.and_time(NaiveTime::MIN).and_utc().timestamp_micros();
    // Late arrivals: 2% happened up to 6 hours before the partition's day.
    let offset = if rng.chance(0.02) {
        -(rng.below(6 * 3_600_000_000) as i64)
    } else {
        rng.below(86_400_000_000) as i64
    };
    let users = (per_day / 3).max(50);
    // Heavy-tailed but bounded: the busiest user has ~n^(1/3) events a day,
    // like a power user, not a bot that would dwarf everyone.
    let user = ((users as f64) * rng.unit().powf(1.5)) as u64;
    let known = user % 5 < 3;
    let (user_id, anonymous_id) = match rng.below(100) {
        0 => (None, None),
        _ if known => (
            Some(format!("u{user:07}")),
            Some(format!(
                "a-{:07x}",
                user.wrapping_mul(2654435761) % 0xFFFFFFF
            )),
        ),
        _ => (
            None,
            Some(format!(
                "a-{:07x}",
                user.wrapping_mul(2654435761) % 0xFFFFFFF
            )),
        ),
    };
    let kinds: Vec<(usize, u32)> = EVENT_TYPES
        .iter()
        .enumerate()
        .map(|(i, (_, w, _))| (i, *w))
        .collect();
    let k = rng.weighted(&kinds);
    let (event_type, _, is_conversion) = EVENT_TYPES[k];
    // A user's home campaign: their touches mostly point there.
    let home = Rng::for_event(seed, u64::MAX, user).skewed(CAMPAIGNS as u64, 0.7);
    let campaign = if rng.chance(0.8) {
        home
    } else {
        rng.skewed(CAMPAIGNS as u64, 0.7)
    };
    let has_utm = match event_type {
        "ad_click" => true,
        "page_view" => rng.chance(0.25),
        _ if is_conversion => rng.chance(0.7),
        _ => rng.chance(0.05),
    };
    let utm = has_utm.then(|| campaign_utm(&mut rng, campaign));
    let revenue = match event_type {
        "purchase" => Some(((20.0 + 480.0 * rng.unit().powi(3)) * 100.0).round() / 100.0),
        _ => None,
    };
    let device = rng.weighted(&DEVICES);
    let country = if rng.chance(0.01) {
        None
    } else {
        Some(rng.weighted(&COUNTRIES).to_string())
    };
    let invalid = rng.below(10_000);
    Event {
        event_id: (invalid >= 10).then(|| format!("e{}-{index:09}", date.format("%Y%m%d"))),
        ts_us: (!(15..20).contains(&invalid)).then_some(midnight + offset),
        event_type: if (10..15).contains(&invalid) {
            String::new()
        } else {
            event_type.to_string()
        },
        user_id,
        anonymous_id,
        utm,
        device_type: (!device.is_empty()).then(|| device.to_string()),
        country,
        revenue,
        session_id: format!("s{:x}", rng.next() >> 40),
    }
}

/// The three file layouts of a day (see the module doc).
#[derive(Clone, Copy)]
enum Layout {
    MicrosUtcDoubleRevenue,
    MillisNaiveIntRevenueNoDevice,
    NanosOffsetExtraColumn,
}

fn layout_schema(layout: Layout) -> Arc<Schema> {
    let s = |n: &str| Field::new(n, DataType::Utf8, true);
    let (time_type, revenue_type) = match layout {
        Layout::MicrosUtcDoubleRevenue => (
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            DataType::Float64,
        ),
        Layout::MillisNaiveIntRevenueNoDevice => (
            DataType::Timestamp(TimeUnit::Millisecond, None),
            DataType::Int64,
        ),
        Layout::NanosOffsetExtraColumn => (
            DataType::Timestamp(TimeUnit::Nanosecond, Some("+00:00".into())),
            DataType::Float64,
        ),
    };
    let mut fields = vec![
        s("event_id"),
        Field::new("event_time", time_type, true),
        s("event_type"),
        s("user_id"),
        s("anonymous_id"),
        s("utm_source"),
        s("utm_medium"),
        s("utm_campaign"),
        s("utm_content"),
        s("utm_term"),
    ];
    if !matches!(layout, Layout::MillisNaiveIntRevenueNoDevice) {
        fields.push(s("device_type"));
    }
    fields.push(s("country"));
    fields.push(Field::new("revenue", revenue_type, true));
    if matches!(layout, Layout::NanosOffsetExtraColumn) {
        fields.push(s("session_id"));
    }
    Arc::new(Schema::new(fields))
}

fn to_batch(layout: Layout, events: &[Event]) -> Result<RecordBatch> {
    let schema = layout_schema(layout);
    let strings = |f: &dyn Fn(&Event) -> Option<&str>| -> ArrayRef {
        let mut b = StringBuilder::with_capacity(events.len(), events.len() * 12);
        for e in events {
            b.append_option(f(e));
        }
        Arc::new(b.finish())
    };
    let utm = |i: usize| strings(&|e: &Event| e.utm.as_ref().map(|u| u[i].as_str()));
    let time: ArrayRef = match layout {
        Layout::MicrosUtcDoubleRevenue => {
            let mut b =
                TimestampMicrosecondBuilder::with_capacity(events.len()).with_timezone("UTC");
            events.iter().for_each(|e| b.append_option(e.ts_us));
            Arc::new(b.finish())
        }
        Layout::MillisNaiveIntRevenueNoDevice => {
            let mut b = TimestampMillisecondBuilder::with_capacity(events.len());
            events
                .iter()
                .for_each(|e| b.append_option(e.ts_us.map(|t| t.div_euclid(1000))));
            Arc::new(b.finish())
        }
        Layout::NanosOffsetExtraColumn => {
            let mut b =
                TimestampNanosecondBuilder::with_capacity(events.len()).with_timezone("+00:00");
            events
                .iter()
                .for_each(|e| b.append_option(e.ts_us.map(|t| t * 1000)));
            Arc::new(b.finish())
        }
    };
    let revenue: ArrayRef = match layout {
        Layout::MillisNaiveIntRevenueNoDevice => {
            let mut b = Int64Builder::with_capacity(events.len());
            events
                .iter()
                .for_each(|e| b.append_option(e.revenue.map(|r| r.round() as i64)));
            Arc::new(b.finish())
        }
        _ => {
            let mut b = Float64Builder::with_capacity(events.len());
            events.iter().for_each(|e| b.append_option(e.revenue));
            Arc::new(b.finish())
        }
    };
    let mut columns = vec![
        strings(&|e| e.event_id.as_deref()),
        time,
        strings(&|e| Some(e.event_type.as_str())),
        strings(&|e| e.user_id.as_deref()),
        strings(&|e| e.anonymous_id.as_deref()),
        utm(0),
        utm(1),
        utm(2),
        utm(3),
        utm(4),
    ];
    if !matches!(layout, Layout::MillisNaiveIntRevenueNoDevice) {
        columns.push(strings(&|e| e.device_type.as_deref()));
    }
    columns.push(strings(&|e| e.country.as_deref()));
    columns.push(revenue);
    if matches!(layout, Layout::NanosOffsetExtraColumn) {
        columns.push(strings(&|e| Some(e.session_id.as_str())));
    }
    RecordBatch::try_new(schema, columns).map_err(|e| Error::internal("generate", e))
}

pub struct GenerateConfig {
    pub output: Location,
    pub start: NaiveDate,
    pub days: u32,
    pub events_per_day: u64,
    pub seed: u64,
}

/// Writes `days` partitions; returns the number of rows written.
pub async fn generate(cfg: &GenerateConfig) -> Result<u64> {
    let layouts = [
        Layout::MicrosUtcDoubleRevenue,
        Layout::MillisNaiveIntRevenueNoDevice,
        Layout::NanosOffsetExtraColumn,
    ];
    let mut total = 0u64;
    for day in 0..cfg.days as u64 {
        let (seed, start, n) = (cfg.seed, cfg.start, cfg.events_per_day);
        let files = tokio::task::spawn_blocking(move || -> Result<Vec<RecordBatch>> {
            let mut buckets: [Vec<Event>; 3] = [Vec::new(), Vec::new(), Vec::new()];
            for i in 0..n {
                let file = (Rng::for_event(seed ^ 0xF11E, day, i).below(3)) as usize;
                buckets[file].push(make_event(seed, start, day, i, n));
                if redelivered_same_day(seed, day, i) {
                    buckets[(file + 1) % 3].push(make_event(seed, start, day, i, n));
                }
                if day > 0 && redelivered_next_day(seed, day - 1, i) {
                    buckets[file].push(make_event(seed, start, day - 1, i, n));
                }
            }
            buckets
                .iter()
                .zip(layouts)
                .map(|(events, layout)| to_batch(layout, events))
                .collect()
        })
        .await
        .map_err(|e| Error::internal("generate", e))??;
        let date = cfg.start + chrono::Days::new(day);
        for (k, batch) in files.iter().enumerate() {
            let path = cfg
                .output
                .child(&format!("{}/part-{k:05}.parquet", partition_dir(date)));
            let props = WriterProperties::builder()
                .set_compression(Compression::SNAPPY)
                .build();
            let w = BufWriter::new(cfg.output.store.clone(), path.clone());
            let mut w = AsyncArrowWriter::try_new(w, batch.schema(), Some(props))
                .map_err(|e| Error::internal("generate", e))?;
            w.write(batch)
                .await
                .map_err(|e| Error::storage(cfg.output.describe(&path), e))?;
            w.close()
                .await
                .map_err(|e| Error::storage(cfg.output.describe(&path), e))?;
            total += batch.num_rows() as u64;
        }
        info!(stage = "generate", date = %date, rows = files.iter().map(|b| b.num_rows()).sum::<usize>(), "partition written");
    }
    Ok(total)
}
