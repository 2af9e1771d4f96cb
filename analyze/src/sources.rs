//! The per-source table of `show` (`loadgen --source-ips`): how the server met
//! the connections of each local address. Presentation only.
//!
//! A run may spread over thousands of addresses; past [`MAX_ROWS`] the table
//! shows the addresses the server refused most (the ones a per-IP limit tripped
//! on), one row for the rest, and the totals.

use comfy_table::Table;
use report::SourceMetrics;

use crate::tables::new_table;

/// Most addresses listed one by one; the rest are summed in one row.
pub const MAX_ROWS: usize = 16;

/// Connections that got no banner, whatever the reason.
fn turned_away(s: &SourceMetrics) -> u64 {
    s.refused_421 + s.refused_other + s.connect_failed + s.unanswered
}

/// The table: every address when there are few, else the most refused first.
pub fn source_table(sources: &[SourceMetrics]) -> Table {
    let unanswered = sources.iter().any(|s| s.unanswered > 0);
    let mut header = vec![
        "source address",
        "connections",
        "banners",
        "421",
        "refused other",
        "connect failed",
    ];
    if unanswered {
        header.push("unanswered");
    }
    let mut t = new_table(&header);
    let row = |label: String, s: &SourceMetrics| {
        let mut cells = vec![
            label,
            s.connections.to_string(),
            s.banners.to_string(),
            s.refused_421.to_string(),
            s.refused_other.to_string(),
            s.connect_failed.to_string(),
        ];
        if unanswered {
            cells.push(s.unanswered.to_string());
        }
        cells
    };
    let (shown, rest) = split_rows(sources);
    for s in &shown {
        t.add_row(row(s.address.clone(), s));
    }
    if !rest.is_empty() {
        let label = format!("{} more addresses", rest.len());
        t.add_row(row(label, &sum(rest.iter().copied())));
    }
    if sources.len() > 1 {
        let label = format!("total ({} addresses)", sources.len());
        t.add_row(row(label, &sum(sources.iter())));
    }
    t
}

/// The addresses listed one by one (in the result's order when they all fit,
/// else the [`MAX_ROWS`] most refused) and the rest.
fn split_rows(sources: &[SourceMetrics]) -> (Vec<&SourceMetrics>, Vec<&SourceMetrics>) {
    let mut all: Vec<&SourceMetrics> = sources.iter().collect();
    if all.len() <= MAX_ROWS {
        return (all, Vec::new());
    }
    // Stable: equally refused addresses keep the result's (address) order.
    all.sort_by_key(|s| std::cmp::Reverse(turned_away(s)));
    let rest = all.split_off(MAX_ROWS);
    (all, rest)
}

fn sum<'a>(items: impl Iterator<Item = &'a SourceMetrics>) -> SourceMetrics {
    let mut total = SourceMetrics::default();
    for s in items {
        total.add(s);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(i: u32, connections: u64, refused_421: u64) -> SourceMetrics {
        SourceMetrics {
            address: format!("127.0.{}.{}", i / 256, i % 256),
            connections,
            banners: connections - refused_421,
            refused_421,
            ..Default::default()
        }
    }

    #[test]
    fn a_few_addresses_are_listed_in_order_with_a_total() {
        let text = source_table(&[source(2, 5, 0), source(3, 5, 2)]).to_string();
        let lines: Vec<&str> = text.lines().filter(|l| l.contains("127.0.")).collect();
        assert!(lines[0].contains("127.0.0.2") && lines[1].contains("127.0.0.3"));
        let total = text.lines().find(|l| l.contains("total")).unwrap();
        assert!(total.contains("total (2 addresses)"), "{text}");
        let cells: Vec<&str> = total.split(['│', '┆']).map(str::trim).collect();
        assert_eq!(&cells[2..6], ["10", "8", "2", "0"], "{text}");
        assert!(!text.contains("unanswered"), "{text}");
    }

    #[test]
    fn many_addresses_show_the_most_refused_then_the_rest_summed() {
        let mut sources: Vec<SourceMetrics> = (0..1000).map(|i| source(i, 3, 0)).collect();
        sources[700] = source(700, 3, 3);
        sources[5] = source(5, 3, 1);
        sources[9].unanswered = 1;
        let text = source_table(&sources).to_string();
        let rows: Vec<&str> = text.lines().filter(|l| l.contains("127.0.")).collect();
        assert_eq!(rows.len(), MAX_ROWS, "{text}");
        assert!(
            rows[0].contains("127.0.2.188"),
            "the most refused first: {text}"
        );
        assert!(rows[1].contains("127.0.0.5"), "{text}");
        let more = text.lines().find(|l| l.contains("more addresses")).unwrap();
        assert!(more.contains("984 more addresses"), "{text}");
        let total = text.lines().find(|l| l.contains("total")).unwrap();
        let cells: Vec<&str> = total.split(['│', '┆']).map(str::trim).collect();
        assert_eq!(
            &cells[1..8],
            ["total (1000 addresses)", "3000", "2996", "4", "0", "0", "1"]
        );
    }
}
