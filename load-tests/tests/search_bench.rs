//! The search benchmark on a small mailbox: both mailboxes give the same hits.

use mailfleet_load_tests::search::{run_search_bench, SearchBenchConfig, RARE_EVERY};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexed_and_scan_find_the_same_messages() {
    let report = run_search_bench(&SearchBenchConfig {
        messages: 2 * RARE_EVERY,
        body_size: 200,
        repeat: 1,
        time_budget: Duration::from_secs(30),
        data_dir: None,
    })
    .await
    .expect("bench");
    let by = |mb: &str| -> Vec<(String, usize)> {
        report
            .timings
            .iter()
            .filter(|t| t.mailbox == mb)
            .map(|t| (t.criteria.clone(), t.hits))
            .collect()
    };
    assert_eq!(by("Indexed"), by("Scan"));
    let hits = by("Indexed");
    assert_eq!(hits[0].1, 2, "the rare word is in two messages: {hits:?}");
    assert_eq!(hits[1].1, 200, "one in ten has 'invoice': {hits:?}");
    assert_eq!(hits[2].1, 1, "{hits:?}");
}
