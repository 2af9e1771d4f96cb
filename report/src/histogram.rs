//! Latency histograms and their text form in result files.
//!
//! Latencies are recorded in microseconds with 3 significant digits, the precision
//! wrk2 and oha use. Histograms are stored as HdrHistogram V2 + deflate, base64,
//! the interchange format of HdrHistogram's other implementations, so results from
//! several generators merge exactly (counts add bucket by bucket).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};

/// A latency histogram in microseconds.
pub type LatencyHistogram = Histogram<u64>;

/// Significant digits kept by every latency histogram.
pub const LATENCY_SIGFIG: u8 = 3;

/// Highest latency a histogram records: one hour. Longer values are clamped, so a
/// pathological stall is still counted rather than dropped.
pub const LATENCY_HISTOGRAM_MAX_US: u64 = 3_600_000_000;

/// An empty latency histogram (1 µs .. 1 h, 3 significant digits).
pub fn new_latency_histogram() -> LatencyHistogram {
    Histogram::new_with_bounds(1, LATENCY_HISTOGRAM_MAX_US, LATENCY_SIGFIG)
        .expect("constant histogram bounds are valid")
}

/// Records one latency in microseconds, clamped into the histogram's range.
pub fn record_latency(h: &mut LatencyHistogram, micros: u64) {
    let v = micros.clamp(1, LATENCY_HISTOGRAM_MAX_US);
    // Cannot fail: `v` is within the bounds the histogram was made with.
    let _ = h.record(v);
}

/// Serializes a histogram as V2 + deflate, base64 (standard alphabet, padded).
pub fn encode_histogram(h: &LatencyHistogram) -> Result<String, crate::ReportError> {
    let mut bytes = Vec::new();
    V2DeflateSerializer::new()
        .serialize(h, &mut bytes)
        .map_err(|e| crate::ReportError::Encode(format!("{e:?}")))?;
    Ok(STANDARD.encode(bytes))
}

/// Reads a histogram written by [`encode_histogram`] (or any HdrHistogram V2 or
/// V2 + deflate encoder). The error is a sentence for the user.
pub fn decode_histogram(text: &str) -> Result<LatencyHistogram, String> {
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    let h: LatencyHistogram = Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| format!("not an HdrHistogram V2 encoding: {e:?}"))?;
    Ok(h)
}
