//! Progress bars for long commands: what is being done, how far, how fast, and the ETA.

/// A bar with count, rate and ETA on stderr (hidden when stderr is not a terminal).
pub fn work_bar(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg} ({per_sec}) ETA {eta}",
        )
        .expect("valid template"),
    );
    bar.set_message(what.to_string());
    bar
}
